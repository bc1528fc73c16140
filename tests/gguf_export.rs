//! `walsh export --gguf` read back by a minimal GGUF reader written here from the format's
//! description (ggml's docs/gguf.md), not from the writer: every tensor must decode, by the
//! GGML rules (Q8_0: f16 d + 32 int8, value d x q; Q4_0: f16 d + 16 bytes, element j in the
//! low nibble of byte j and j + 16 in the high one, value d x (q - 8)), with q and k rows
//! un-permuted from GGML's interleaved RoPE pairs, to exactly walsh's own weights.

use std::collections::HashMap;
use std::path::Path;

use half::f16;

use walsh::blocks::QuantFormat;
use walsh::model::gguf::{GgufError, GgufWeights, gguf_bytes, write_gguf};
use walsh::model::init::random_model;
use walsh::model::quant::quantized;
use walsh::model::weights::Model;
use walsh::model::{AttnOutput, Config, Query};
use walsh::ops::WeightFormat;

#[derive(Debug, Clone, PartialEq)]
enum Kv {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Arr(Vec<Kv>),
}

struct Info {
    ne: Vec<usize>,
    ty: u32,
    offset: usize,
}

struct Gguf {
    kv: HashMap<String, Kv>,
    tensors: Vec<(String, Info)>,
    data_start: usize,
    bytes: Vec<u8>,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn value(&mut self, ty: u32) -> Kv {
        match ty {
            4 => Kv::U32(self.u32()),
            5 => Kv::I32(self.u32() as i32),
            6 => Kv::F32(f32::from_bits(self.u32())),
            7 => Kv::Bool(match self.take(1)[0] {
                0 => false,
                1 => true,
                b => panic!("bool byte {b}"),
            }),
            8 => Kv::Str(self.string()),
            9 => {
                let elem = self.u32();
                let n = self.u64() as usize;
                Kv::Arr((0..n).map(|_| self.value(elem)).collect())
            }
            other => panic!("unexpected value type {other}"),
        }
    }
}

fn parse(bytes: Vec<u8>) -> Gguf {
    let mut c = Cursor { b: &bytes, at: 0 };
    assert_eq!(c.take(4), b"GGUF");
    assert_eq!(c.u32(), 3, "version");
    let n_tensors = c.u64() as usize;
    let n_kv = c.u64() as usize;
    let mut kv = HashMap::new();
    for _ in 0..n_kv {
        let key = c.string();
        let ty = c.u32();
        let value = c.value(ty);
        assert!(
            kv.insert(key.clone(), value).is_none(),
            "duplicate key {key}"
        );
    }
    let align = match kv.get("general.alignment") {
        Some(Kv::U32(a)) => *a as usize,
        None => 32,
        other => panic!("general.alignment {other:?}"),
    };
    assert_eq!(align, 32);
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string();
        let n_dims = c.u32() as usize;
        let ne = (0..n_dims).map(|_| c.u64() as usize).collect();
        let ty = c.u32();
        let offset = c.u64() as usize;
        assert_eq!(offset % align, 0, "{name} offset {offset}");
        tensors.push((name, Info { ne, ty, offset }));
    }
    let data_start = c.at.div_ceil(align) * align;
    assert!(bytes[c.at..data_start].iter().all(|&b| b == 0));
    Gguf {
        kv,
        tensors,
        data_start,
        bytes,
    }
}

fn f16_at(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// (type name, row-major values) of one tensor, by the GGML block rules.
fn decode(g: &Gguf, info: &Info) -> (&'static str, Vec<f32>) {
    let n: usize = info.ne.iter().product();
    let at = g.data_start + info.offset;
    let b = &g.bytes[at..];
    match info.ty {
        0 => (
            "F32",
            (0..n)
                .map(|i| f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()))
                .collect(),
        ),
        1 => ("F16", (0..n).map(|i| f16_at(&b[2 * i..])).collect()),
        8 => {
            assert_eq!(info.ne[0] % 32, 0);
            let mut out = Vec::with_capacity(n);
            for block in b[..n / 32 * 34].chunks_exact(34) {
                let d = f16_at(block);
                out.extend(block[2..].iter().map(|&q| d * (q as i8) as f32));
            }
            ("Q8_0", out)
        }
        2 => {
            assert_eq!(info.ne[0] % 32, 0);
            let mut out = Vec::with_capacity(n);
            for block in b[..n / 32 * 18].chunks_exact(18) {
                let d = f16_at(block);
                let qs = &block[2..];
                let mut vals = [0f32; 32];
                for j in 0..16 {
                    vals[j] = d * ((qs[j] & 0xf) as i32 - 8) as f32;
                    vals[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
                }
                out.extend(vals);
            }
            ("Q4_0", out)
        }
        other => panic!("unexpected ggml type {other}"),
    }
}

/// convert_hf_to_gguf.py's permute, `w.reshape(H, 2, hd/2, d).swapaxes(1, 2)`, undone:
/// GGUF row r = (h, i, t) holds HF row (h, t, i).
fn unpermute(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        let (h, i, t) = (r / hd, (r % hd) / 2, r % 2);
        let src = h * hd + t * (hd / 2) + i;
        out[src * cols..(src + 1) * cols].copy_from_slice(&values[r * cols..(r + 1) * cols]);
    }
    out
}

fn config(tied: bool) -> Config {
    Config {
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        // Not a multiple of 32: down_proj's rows cannot be GGML blocks.
        intermediate_size: 80,
        vocab_size: 256,
        max_position_embeddings: 48,
        rms_norm_eps: 1e-6,
        rope_theta: 5000.0,
        tie_word_embeddings: tied,
        ..Default::default()
    }
}

/// GGUF name -> walsh name.
fn walsh_name(gguf: &str) -> String {
    let map = [
        ("attn_norm", "input_layernorm.weight"),
        ("attn_q", "self_attn.q_proj.weight"),
        ("attn_k", "self_attn.k_proj.weight"),
        ("attn_v", "self_attn.v_proj.weight"),
        ("attn_output", "self_attn.o_proj.weight"),
        ("ffn_norm", "post_attention_layernorm.weight"),
        ("ffn_gate", "mlp.gate_proj.weight"),
        ("ffn_up", "mlp.up_proj.weight"),
        ("ffn_down", "mlp.down_proj.weight"),
    ];
    match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let parts: Vec<&str> = gguf.split('.').collect();
            assert_eq!(parts[0], "blk");
            let (_, w) = map.iter().find(|(g, _)| *g == parts[2]).unwrap();
            format!("model.layers.{}.{w}", parts[1])
        }
    }
}

/// Exports `model` as `weights`, reads it back, and checks every tensor equals `expect`'s
/// (walsh's weights as they run: dequantized for q8/q4) exactly, with the GGML type `ty`
/// gives it. Returns the parsed file.
fn check_export(
    model: &Model,
    weights: GgufWeights,
    expect: &Model,
    ty: impl Fn(&str) -> &'static str,
) -> Gguf {
    let g = parse(gguf_bytes(model, "test-model", weights).unwrap());
    let want: HashMap<String, (Vec<usize>, Vec<f32>)> = expect
        .weights
        .tensors()
        .into_iter()
        .map(|t| (t.name.clone(), (t.shape.clone(), t.to_f32())))
        .collect();
    assert_eq!(g.tensors.len(), want.len(), "{weights}: tensor count");
    let mut end = 0;
    for (name, info) in &g.tensors {
        let (shape, values) = &want[&walsh_name(name)];
        // ne is innermost first: [in, out] of an HF [out, in] matrix.
        let ne: Vec<usize> = shape.iter().rev().copied().collect();
        assert_eq!(info.ne, ne, "{weights} {name}");
        let (found_ty, mut got) = decode(&g, info);
        assert_eq!(found_ty, ty(name), "{weights} {name}");
        let bytes = match found_ty {
            "F32" => got.len() * 4,
            "F16" => got.len() * 2,
            "Q8_0" => got.len() / 32 * 34,
            _ => got.len() / 32 * 18,
        };
        assert!(info.offset >= end, "{name} overlaps the tensor before it");
        end = info.offset + bytes;
        // q has the query heads, k (grouped-query attention) the KV heads.
        if name.contains("attn_q") {
            got = unpermute(&got, shape[0], shape[1], expect.config.num_attention_heads);
        } else if name.contains("attn_k") {
            got = unpermute(&got, shape[0], shape[1], expect.config.kv_heads());
        }
        let same = got
            .iter()
            .zip(values)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{weights} {name}: values differ from walsh's");
    }
    assert!(g.data_start + end <= g.bytes.len());
    g
}

/// The types of an F16 export: the norms F32, the rest F16.
fn f16_types(name: &str) -> &'static str {
    if name.ends_with("norm.weight") {
        "F32"
    } else {
        "F16"
    }
}

fn kv_u32(g: &Gguf, key: &str) -> u32 {
    match g.kv.get(key) {
        Some(Kv::U32(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn metadata_describes_a_llama_model_with_a_byte_vocabulary() {
    let model = random_model(&config(false), 3, WeightFormat::F16).unwrap();
    let g = check_export(&model, GgufWeights::F16, &model, f16_types);
    let s = |k: &str| g.kv.get(k).cloned();
    assert_eq!(s("general.architecture"), Some(Kv::Str("llama".into())));
    assert_eq!(s("general.name"), Some(Kv::Str("test-model".into())));
    assert_eq!(kv_u32(&g, "general.file_type"), 1);
    assert_eq!(kv_u32(&g, "llama.context_length"), 48);
    assert_eq!(kv_u32(&g, "llama.embedding_length"), 64);
    assert_eq!(kv_u32(&g, "llama.block_count"), 2);
    assert_eq!(kv_u32(&g, "llama.feed_forward_length"), 80);
    assert_eq!(kv_u32(&g, "llama.attention.head_count"), 4);
    assert_eq!(kv_u32(&g, "llama.attention.head_count_kv"), 4);
    assert_eq!(kv_u32(&g, "llama.rope.dimension_count"), 16);
    assert_eq!(kv_u32(&g, "llama.vocab_size"), 256);
    assert_eq!(
        s("llama.attention.layer_norm_rms_epsilon"),
        Some(Kv::F32(1e-6))
    );
    assert_eq!(s("llama.rope.freq_base"), Some(Kv::F32(5000.0)));
    assert_eq!(s("tokenizer.ggml.model"), Some(Kv::Str("llama".into())));
    let tokens: Vec<Kv> = (0..256).map(|b| Kv::Str(format!("<0x{b:02X}>"))).collect();
    assert_eq!(s("tokenizer.ggml.tokens"), Some(Kv::Arr(tokens)));
    assert_eq!(
        s("tokenizer.ggml.token_type"),
        Some(Kv::Arr(vec![Kv::I32(6); 256]))
    );
    assert_eq!(
        s("tokenizer.ggml.scores"),
        Some(Kv::Arr(vec![Kv::F32(0.0); 256]))
    );
    for k in ["add_bos_token", "add_eos_token", "add_space_prefix"] {
        assert_eq!(s(&format!("tokenizer.ggml.{k}")), Some(Kv::Bool(false)));
    }
    assert!(kv_u32(&g, "tokenizer.ggml.bos_token_id") < 256);
    assert!(kv_u32(&g, "tokenizer.ggml.eos_token_id") < 256);
    let names: Vec<&str> = g.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..3],
        [
            "token_embd.weight",
            "blk.0.attn_norm.weight",
            "blk.0.attn_q.weight"
        ]
    );
    assert_eq!(
        names[names.len() - 2..],
        ["output_norm.weight", "output.weight"]
    );
}

#[test]
fn grouped_query_attention_exports_kv_heads_and_permutes_k_by_them() {
    // 4 query heads, 2 KV heads of 16: k and v are [32, 64], k's rows permuted within each
    // of its 2 heads (check_export un-permutes by kv_heads and compares bit for bit).
    let cfg = Config {
        num_key_value_heads: Some(2),
        ..config(false)
    };
    let model = random_model(&cfg, 7, WeightFormat::F16).unwrap();
    let g = check_export(&model, GgufWeights::F16, &model, f16_types);
    assert_eq!(kv_u32(&g, "llama.attention.head_count"), 4);
    assert_eq!(kv_u32(&g, "llama.attention.head_count_kv"), 2);
    let k = &g
        .tensors
        .iter()
        .find(|(n, _)| n == "blk.1.attn_k.weight")
        .unwrap()
        .1;
    assert_eq!(k.ne, [64, 32]);
    // Permuted by 4 heads of 8 rows instead, the rows would differ.
    let hf = model.weights.layers[1].k_proj.to_f32();
    let (_, got) = decode(&g, k);
    assert_ne!(unpermute(&got, 32, 64, 4), hf);
    assert_eq!(unpermute(&got, 32, 64, 2), hf);
}

#[test]
fn every_weight_type_decodes_to_walshs_own_weights() {
    let cfg = config(false);
    let f16_model = random_model(&cfg, 5, WeightFormat::F16).unwrap();
    let f32_model = random_model(&cfg, 5, WeightFormat::F32).unwrap();
    let norm = |n: &str| n.ends_with("norm.weight");
    // f32: exact for any source.
    check_export(&f32_model, GgufWeights::F32, &f32_model, |_| "F32");
    // f16 of an f32 model: the matrices rounded to nearest, as walsh's f16 model has them.
    let f16_of_f32 = random_model(&cfg, 5, WeightFormat::F16).unwrap();
    check_export(&f32_model, GgufWeights::F16, &f16_of_f32, f16_types);
    for (weights, format, block) in [
        (GgufWeights::Q8_0, QuantFormat::Q8, "Q8_0"),
        (GgufWeights::Q4_0, QuantFormat::Q4, "Q4_0"),
    ] {
        // Layer matrices in GGML blocks, bit for bit walsh's; down_proj (80 wide) as F32
        // of the same values; embedding and head as stored (F16).
        let ty = |n: &str| {
            if norm(n) || n.contains("ffn_down") {
                "F32"
            } else if n.starts_with("blk.") {
                block
            } else {
                "F16"
            }
        };
        let walsh_q = quantized(&f16_model, format).unwrap().0;
        // From f16 with walsh's quantizer, and from walsh's own quantized model.
        check_export(&f16_model, weights, &walsh_q, ty);
        check_export(&walsh_q, weights, &walsh_q, ty);
        assert_eq!(
            gguf_bytes(&f16_model, "m", weights).unwrap(),
            gguf_bytes(&walsh_q, "m", weights).unwrap()
        );
        // f32 of a quantized model: exact too.
        check_export(&walsh_q, GgufWeights::F32, &walsh_q, |_| "F32");
    }
}

#[test]
fn q4_0_keeps_level_minus_seven_and_the_nibble_order() {
    // A q4 block whose levels are known: element k has level (k % 15) - 7, scale 0.5.
    let cfg = Config {
        hidden_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
        vocab_size: 256,
        max_position_embeddings: 8,
        ..Default::default()
    };
    let model = random_model(&cfg, 1, WeightFormat::F16).unwrap();
    let mut tensors: Vec<_> = model.weights.tensors().into_iter().cloned().collect();
    let v = tensors
        .iter_mut()
        .find(|t| t.name == "model.layers.0.self_attn.v_proj.weight")
        .unwrap();
    let levels: Vec<f32> = (0..32 * 32)
        .map(|k| ((k % 15) as f32 - 7.0) * 0.5)
        .collect();
    v.data = walsh::model::weights::TensorData::F32(levels.clone());
    let model = Model::from_tensors(Path::new("m"), cfg, tensors).unwrap();
    let g = parse(gguf_bytes(&model, "m", GgufWeights::Q4_0).unwrap());
    let (_, info) = g
        .tensors
        .iter()
        .find(|(n, _)| n == "blk.0.attn_v.weight")
        .unwrap();
    let raw = &g.bytes[g.data_start + info.offset..];
    assert_eq!(f16_at(raw), 0.5);
    // Byte 0: element 0 (level -7 -> 1) low, element 16 (16 % 15 - 7 = -6 -> 2) high.
    assert_eq!(raw[2], 0x21);
    assert_eq!(decode(&g, info).1, levels);
}

#[test]
fn a_tied_model_has_no_output_tensor() {
    let model = random_model(&config(true), 2, WeightFormat::F16).unwrap();
    let g = check_export(&model, GgufWeights::F16, &model, f16_types);
    assert!(g.tensors.iter().all(|(n, _)| n != "output.weight"));
}

#[test]
fn walsh_variants_export_with_walshs_keys_and_tensors() {
    // llama.cpp cannot run these (no attn_output.weight / attn_q.weight); walsh loads them
    // back (tests/gguf_load.rs).
    use walsh::gguf::Gguf as Reader;
    let cases = [
        (
            AttnOutput::Hadamard,
            Query::Dense,
            "attn_output_scale",
            "attn_output.weight",
        ),
        (
            AttnOutput::Dense,
            Query::Identity,
            "attn_output.weight",
            "attn_q.weight",
        ),
        (
            AttnOutput::Hadamard,
            Query::ResidualMlp,
            "attn_q_down.weight",
            "attn_q.weight",
        ),
    ];
    for (o, q, has, lacks) in cases {
        let cfg = Config {
            attn_output: o,
            query: q,
            ..config(false)
        };
        let model = random_model(&cfg, 1, WeightFormat::F16).unwrap();
        let bytes = gguf_bytes(&model, "m", GgufWeights::F16).unwrap();
        let g = Reader::parse(&bytes).unwrap();
        assert!(g.tensor(&format!("blk.0.{has}")).is_some(), "{o:?} {q:?}");
        assert!(g.tensor(&format!("blk.0.{lacks}")).is_none(), "{o:?} {q:?}");
        let hadamard = o == AttnOutput::Hadamard;
        assert_eq!(
            g.get_str("walsh.attn_output").ok(),
            hadamard.then_some("hadamard")
        );
        let query = g.get_str("walsh.query").ok();
        assert_eq!(
            query,
            (q != Query::Dense).then(|| if q == Query::Identity {
                "identity"
            } else {
                "residual_mlp"
            })
        );
        // As in config.json, only when set (absent: d / 2).
        assert!(g.get_u32("walsh.query_mlp_hidden").is_err());
    }
    let cfg = Config {
        query: Query::ResidualMlp,
        query_mlp_hidden: Some(24),
        ..config(false)
    };
    let model = random_model(&cfg, 1, WeightFormat::F16).unwrap();
    let bytes = gguf_bytes(&model, "m", GgufWeights::F16).unwrap();
    let g = Reader::parse(&bytes).unwrap();
    assert_eq!(g.get_u32("walsh.query_mlp_hidden").unwrap(), 24);
    {}
    // A dense/dense file carries none of walsh's keys.
    let model = random_model(&config(false), 1, WeightFormat::F16).unwrap();
    let bytes = gguf_bytes(&model, "m", GgufWeights::F16).unwrap();
    let g = Reader::parse(&bytes).unwrap();
    assert!(g.metadata().iter().all(|(k, _)| !k.starts_with("walsh.")));
}

#[test]
fn models_the_export_cannot_write_are_refused_naming_why() {
    let cfg = Config {
        vocab_size: 300,
        ..config(false)
    };
    let model = random_model(&cfg, 1, WeightFormat::F16).unwrap();
    let e = gguf_bytes(&model, "m", GgufWeights::F16).unwrap_err();
    assert!(matches!(e, GgufError::Vocab { vocab: 300, .. }), "{e:?}");
    // A q4 model is not re-quantized to q8, nor rounded to f16.
    let q4 = random_model(&config(false), 1, WeightFormat::Q4).unwrap();
    for w in [GgufWeights::Q8_0, GgufWeights::F16] {
        let e = gguf_bytes(&q4, "m", w).unwrap_err();
        assert!(matches!(e, GgufError::Requantize { .. }), "{e:?}");
        assert!(e.to_string().contains("q4_0"), "{e}");
    }
    assert!(matches!(
        "q5_k".parse::<GgufWeights>(),
        Err(GgufError::UnknownWeights(_))
    ));
}

#[test]
fn a_bad_output_path_is_an_error_naming_it() {
    let model = random_model(&config(false), 1, WeightFormat::F16).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("m.gguf");
    let e = write_gguf(&model, "m", GgufWeights::F16, &missing).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such-dir"), "{e}");
    let e = write_gguf(&model, "m", GgufWeights::F16, dir.path()).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e:?}");
    let path = dir.path().join("m.gguf");
    let s = write_gguf(&model, "m", GgufWeights::F16, &path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, s.bytes);
}

/// The test reader's value of one of walsh's reader's values.
fn kv_of(v: walsh::gguf::Value) -> Kv {
    use walsh::gguf::Value;
    match v {
        Value::U32(x) => Kv::U32(x),
        Value::I32(x) => Kv::I32(x),
        Value::F32(x) => Kv::F32(x),
        Value::Bool(x) => Kv::Bool(x),
        Value::Str(s) => Kv::Str(s.to_string()),
        Value::Array(a) => Kv::Arr(a.iter().map(kv_of).collect()),
        other => panic!("the writer writes no {other:?}"),
    }
}

/// walsh's own GGUF reader (`walsh::gguf`) reads every export as this file's reader does:
/// the same keys and values, tensor names, shapes, types, offsets and bytes; and the
/// tokenizer it describes gives walsh's byte ids, except that llama.cpp's SentencePiece
/// tokenizer turns each space into U+2581 first (docs/model-format.md#gguf-export).
#[test]
fn walshs_reader_reads_the_export_back() {
    use walsh::gguf::Gguf as Reader;
    use walsh::tokenizer::Tokenizer;
    let model = random_model(&config(false), 9, WeightFormat::F32).unwrap();
    for weights in [
        GgufWeights::F32,
        GgufWeights::F16,
        GgufWeights::Q8_0,
        GgufWeights::Q4_0,
    ] {
        let bytes = gguf_bytes(&model, "round-trip", weights).unwrap();
        let mine = Reader::parse(&bytes).unwrap();
        let theirs = parse(bytes.clone());
        assert_eq!(mine.version, 3);
        assert_eq!(mine.data_start, theirs.data_start);
        assert_eq!(mine.metadata().len(), theirs.kv.len(), "{weights}");
        for (key, value) in mine.metadata() {
            assert_eq!(Some(&kv_of(*value)), theirs.kv.get(*key), "{weights} {key}");
        }
        assert_eq!(mine.tensors().len(), theirs.tensors.len());
        let sizes: HashMap<u32, (u64, u64)> =
            [(0, (1, 4)), (1, (1, 2)), (8, (32, 34)), (2, (32, 18))].into();
        for (t, (name, info)) in mine.tensors().iter().zip(&theirs.tensors) {
            assert_eq!(t.name, name);
            assert_eq!(
                t.dims,
                info.ne.iter().map(|&d| d as u64).collect::<Vec<_>>()
            );
            assert_eq!((t.ty.id(), t.offset as usize), (info.ty, info.offset));
            let (block, block_bytes) = sizes[&info.ty];
            let len = (t.elements() / block * block_bytes) as usize;
            let at = theirs.data_start + info.offset;
            assert_eq!(t.data, &bytes[at..at + len], "{weights} {name}");
        }
        let tok = Tokenizer::from_gguf(&mine).unwrap();
        let text = "ROMEO.\nBut soft — añ😀";
        let ids = tok.encode(text, true);
        let escaped = text.replace(' ', "\u{2581}");
        assert_eq!(
            ids,
            escaped.bytes().map(u32::from).collect::<Vec<_>>(),
            "{weights}"
        );
        assert_eq!(tok.decode(&ids, false).unwrap(), escaped.as_bytes());
        let no_space = "ROMEO.\nañ😀";
        assert_eq!(
            tok.encode(no_space, true),
            no_space.bytes().map(u32::from).collect::<Vec<_>>()
        );
    }
}
