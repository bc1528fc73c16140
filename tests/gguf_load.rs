//! Loading GGUF models (`walsh::model::gguf_load`, docs/model-format.md#loading-gguf):
//!
//! - every walsh variant, weight type, grouping and tying through `walsh export --gguf`
//!   and back: the same tensors bit for bit (quantized types: what `walsh quantize` makes)
//!   and the same greedy tokens and logits on the CPU decoder;
//! - files written by llama.cpp's own Python writer (`gguf` from PyPI;
//!   `tests/data/gguf/make_fixtures.py`): the same weights as the Hugging Face safetensors
//!   of the model (dequantized by gguf-py for Q8_0 / Q4_0), the same CPU logits;
//! - llama.cpp itself on the llama-bpe and llama-spm vocabularies
//!   (`tests/data/gguf/make_llama_cpp_reference.py`): its prompt ids, greedy tokens and
//!   logits on the CPU decoder and every software adapter;
//! - malformed files: each fault a typed error naming the tensor or key.

use std::path::{Path, PathBuf};

use walsh::blocks::QuantFormat;
use walsh::gguf::{GgmlType, Gguf, Value};
use walsh::model::cpu::CpuDecoder;
use walsh::model::gguf::{GgufWeights, gguf_bytes};
use walsh::model::gguf_load::{from_gguf_bytes, load_gguf};
use walsh::model::init::random_model;
use walsh::model::quant::quantized;
use walsh::model::tokens::load_tokenizer;
use walsh::model::weights::{Model, Tensor, TensorData};
use walsh::model::{AttnOutput, Config, ModelError, Query};
use walsh::ops::WeightFormat;
use walsh::ops::attention::KvFormat;
use walsh::tokenizer::TokenizerKind;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf")
}

/// The index of the largest logit, the first among ties (walsh's and llama.cpp's greedy).
fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0 as u32
}

/// Greedy tokens after `prompt` and every step's logits, on the CPU decoder (f32 cache).
fn greedy(model: &Model, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut dec = CpuDecoder::new(model, prompt.len() + steps, KvFormat::F32).unwrap();
    let mut logits = Vec::new();
    for (pos, &t) in prompt.iter().enumerate() {
        logits = dec.forward(t, pos).unwrap().to_vec();
    }
    let mut out = Vec::new();
    let mut all = vec![logits.clone()];
    for step in 0..steps {
        let next = argmax(&logits);
        out.push(next);
        if step + 1 < steps {
            logits = dec.forward(next, prompt.len() + step).unwrap().to_vec();
            all.push(logits.clone());
        }
    }
    (out, all)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_f32().iter().map(|v| v.to_bits()).collect()
}

/// `loaded`'s tensors are `want`'s: the same names, shapes and stored data, except that
/// a vector (written F32) and a quantized matrix whose rows are not whole GGML blocks
/// (written F32 of scale x level) hold the same values in f32.
fn assert_same_tensors(want: &Model, loaded: &Model, what: &str) {
    let (a, b) = (want.weights.tensors(), loaded.weights.tensors());
    assert_eq!(a.len(), b.len(), "{what}");
    for (a, b) in a.iter().zip(&b) {
        assert_eq!((&a.name, &a.shape), (&b.name, &b.shape), "{what}");
        let widened =
            a.shape.len() == 1 || matches!(&a.data, TensorData::Quant(q) if q.cols % 32 != 0);
        if widened {
            assert!(matches!(b.data, TensorData::F32(_)), "{what}: {}", a.name);
            assert_eq!(bits(a), bits(b), "{what}: {}", a.name);
        } else {
            assert_eq!(a.data, b.data, "{what}: {}", a.name);
        }
    }
}

#[test]
fn every_variant_and_weight_type_round_trips_through_export_bit_for_bit() {
    // (attn_output, query, KV heads, tied, FFN width): GQA and not, tied and untied, an FFN
    // of whole blocks and one of 80 (its down projection written F32 when quantized).
    let variants = [
        (AttnOutput::Dense, Query::Dense, Some(2), false, 96),
        (AttnOutput::Dense, Query::Dense, None, true, 80),
        (AttnOutput::Hadamard, Query::Dense, Some(2), true, 64),
        (AttnOutput::Hadamard, Query::Identity, None, false, 64),
        (AttnOutput::Dense, Query::ResidualMlp, Some(1), false, 64),
        (AttnOutput::Dense, Query::ResidualMlp, None, true, 64),
        (AttnOutput::Hadamard, Query::ResidualMlp, Some(2), true, 80),
    ];
    let prompt = [82, 79, 77, 69, 79, 46, 10];
    for (i, &(o, q, kv, tied, ffn)) in variants.iter().enumerate() {
        let config = Config {
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: kv,
            intermediate_size: ffn,
            vocab_size: 256,
            max_position_embeddings: 32,
            rms_norm_eps: 1e-6,
            rope_theta: 5000.0,
            tie_word_embeddings: tied,
            attn_output: o,
            query: q,
            // One residual MLP of a set width (not whole blocks: q_up written F32).
            query_mlp_hidden: (i == 5).then_some(24),
            ..Default::default()
        };
        for weights in [
            GgufWeights::F32,
            GgufWeights::F16,
            GgufWeights::Q8_0,
            GgufWeights::Q4_0,
        ] {
            let source_format = match weights {
                GgufWeights::F32 => WeightFormat::F32,
                _ => WeightFormat::F16,
            };
            let source = random_model(&config, 30 + i as u64, source_format).unwrap();
            let want = match weights.quant() {
                Some(f) => quantized(&source, f).unwrap().0,
                None => source.clone(),
            };
            let what = format!(
                "{} kv {kv:?} tied {tied} ffn {ffn} {weights}",
                config.variant()
            );
            let bytes = gguf_bytes(&source, "rt", weights).unwrap();
            let path = Path::new("rt.gguf");
            let (loaded, tok) = from_gguf_bytes(path, &bytes).unwrap();
            assert_eq!(loaded.dir, path);
            assert_eq!(loaded.config, want.config, "{what}");
            assert_same_tensors(&want, &loaded, &what);
            // The export's 256 byte tokens are walsh's byte tokenizer again.
            assert_eq!(tok.kind(), TokenizerKind::Byte, "{what}");
            assert_eq!(tok.encode("a b", false), vec![97, 32, 98]);
            let (t0, l0) = greedy(&want, &prompt, 6);
            let (t1, l1) = greedy(&loaded, &prompt, 6);
            assert_eq!(t0, t1, "{what}");
            let b = |l: &[Vec<f32>]| -> Vec<Vec<u32>> {
                l.iter()
                    .map(|v| v.iter().map(|x| x.to_bits()).collect())
                    .collect()
            };
            assert_eq!(b(&l0), b(&l1), "{what}: logits");
        }
    }
}

#[test]
fn a_quantized_model_exports_and_loads_as_its_own_blocks() {
    // A q4 model exported as Q4_0 is read back into the very same blocks.
    let config = Config {
        num_key_value_heads: Some(2),
        ..walsh_small(96)
    };
    for format in [WeightFormat::Q8, WeightFormat::Q4] {
        let model = random_model(&config, 5, format).unwrap();
        let weights = match format {
            WeightFormat::Q8 => GgufWeights::Q8_0,
            _ => GgufWeights::Q4_0,
        };
        let bytes = gguf_bytes(&model, "q", weights).unwrap();
        let (loaded, _) = from_gguf_bytes(Path::new("q.gguf"), &bytes).unwrap();
        assert_eq!(loaded.config, model.config);
        assert_same_tensors(&model, &loaded, &format!("{format:?}"));
    }
}

fn walsh_small(ffn: usize) -> Config {
    Config {
        hidden_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        intermediate_size: ffn,
        vocab_size: 256,
        max_position_embeddings: 16,
        ..Default::default()
    }
}

#[test]
fn model_load_and_load_tokenizer_take_a_gguf_file_path() {
    let model = random_model(&walsh_small(64), 3, WeightFormat::F16).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, gguf_bytes(&model, "m", GgufWeights::F16).unwrap()).unwrap();
    let loaded = Model::load(&path).unwrap();
    assert_eq!(loaded.dir, path);
    assert_eq!(loaded.config, model.config);
    let tok = load_tokenizer(&path, &loaded.config).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Byte);
    let (again, _) = load_gguf(&path).unwrap();
    assert_eq!(again.weights, loaded.weights);
    // A file that is not GGUF is still read as a model directory (and fails as one).
    let other = dir.path().join("not.gguf");
    std::fs::write(&other, b"GGML....").unwrap();
    let e = Model::load(&other).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
}

// ---- Files by llama.cpp's own Python writer ---------------------------------------------

/// The model of `tests/data/gguf/tiny-gqa` (Hugging Face layout) with its matrices replaced
/// by `matrices` (a safetensors file of f32 matrices by HF name) or rounded to f16.
fn reference(matrices: Option<&str>, f16: bool) -> Model {
    let dir = data_dir().join("tiny-gqa");
    let mut model = Model::load(&dir).unwrap();
    let bytes = matrices.map(|f| std::fs::read(data_dir().join(f)).unwrap());
    let file = bytes
        .as_ref()
        .map(|b| safetensors::SafeTensors::deserialize(b).unwrap());
    let mut tensors: Vec<Tensor> = model.weights.tensors().into_iter().cloned().collect();
    for t in &mut tensors {
        if t.shape.len() != 2 {
            continue;
        }
        if let Some(file) = &file {
            let view = file.tensor(&t.name).unwrap();
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            t.data = TensorData::F32(v);
        } else if f16 {
            let v = t.to_f32();
            t.data = TensorData::F16(
                v.iter()
                    .map(|&x| half::f16::from_f32(x).to_bits())
                    .collect(),
            );
        }
    }
    model = Model::from_tensors(&dir, model.config.clone(), tensors).unwrap();
    model
}

#[test]
fn files_by_llama_cpps_python_writer_load_to_the_safetensors_weights() {
    let prompt = [270, 100, 3, 257, 72];
    for (file, reference_model, ty) in [
        ("tiny-gqa-f32.gguf", reference(None, false), GgmlType::F32),
        ("tiny-gqa-f16.gguf", reference(None, true), GgmlType::F16),
        (
            "tiny-gqa-q8_0.gguf",
            reference(Some("tiny-gqa-q8_0.dequant.safetensors"), false),
            GgmlType::Q8_0,
        ),
        (
            "tiny-gqa-q4_0.gguf",
            reference(Some("tiny-gqa-q4_0.dequant.safetensors"), false),
            GgmlType::Q4_0,
        ),
    ] {
        let path = data_dir().join(file);
        let (model, tok) = load_gguf(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.require_tensor("blk.1.attn_k.weight").unwrap().ty, ty);
        let mut want_config = reference_model.config.clone();
        want_config.quantization = match ty {
            GgmlType::Q8_0 => Some(walsh::model::config::Quantization::new(QuantFormat::Q8)),
            GgmlType::Q4_0 => Some(walsh::model::config::Quantization::new(QuantFormat::Q4)),
            _ => None,
        };
        assert_eq!(model.config, want_config, "{file}");
        assert_eq!(model.config.kv_heads(), 2);
        for (a, b) in reference_model
            .weights
            .tensors()
            .iter()
            .zip(model.weights.tensors())
        {
            assert_eq!((&a.name, &a.shape), (&b.name, &b.shape), "{file}");
            assert_eq!(bits(a), bits(b), "{file}: {}", a.name);
            if ty == GgmlType::F16 && a.shape.len() == 2 {
                assert_eq!(a.data, b.data, "{file}: {}", a.name);
            }
        }
        // Q4_0 from ggml's quantizer: negative scales and level -8 are there and kept.
        if ty == GgmlType::Q4_0 {
            let TensorData::Quant(q) = &model.weights.layers[0].gate_proj.data else {
                panic!("{file}: gate_proj not quantized");
            };
            assert!(
                q.scales
                    .iter()
                    .any(|&s| half::f16::from_bits(s).is_sign_negative())
            );
            assert!((0..q.cols).any(|c| (0..q.rows).any(|r| q.level(r, c) == -8)));
        }
        let (t0, l0) = greedy(&reference_model, &prompt, 5);
        let (t1, l1) = greedy(&model, &prompt, 5);
        assert_eq!(t0, t1, "{file}");
        assert_eq!(l0, l1, "{file}: logits");
        // The BPE vocabulary: 256 byte characters, 16 merges, BOS and EOS.
        assert_eq!(tok.kind(), TokenizerKind::Bpe);
        assert_eq!(
            (tok.vocab_size(), tok.bos(), tok.eos()),
            (274, Some(272), Some(273))
        );
        let ids = tok.encode(" the rest", true);
        assert_eq!(ids[0], 272);
        assert_eq!(ids[1], 258, "` the` is the merge Ġt + he");
        assert_eq!(tok.decode(&ids[1..], false).unwrap(), b" the rest");
    }
}

// ---- Malformed files ---------------------------------------------------------------------

/// A metadata value the test writer writes.
#[derive(Clone, Debug)]
enum Kv {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Arr(u32, Vec<Kv>),
}

impl Kv {
    fn code(&self) -> u32 {
        match self {
            Kv::U32(_) => 4,
            Kv::I32(_) => 5,
            Kv::F32(_) => 6,
            Kv::Bool(_) => 7,
            Kv::Str(_) => 8,
            Kv::Arr(..) => 9,
        }
    }

    fn of(v: Value) -> Kv {
        match v {
            Value::U32(x) => Kv::U32(x),
            Value::I32(x) => Kv::I32(x),
            Value::F32(x) => Kv::F32(x),
            Value::Bool(x) => Kv::Bool(x),
            Value::Str(s) => Kv::Str(s.into()),
            Value::Array(a) => Kv::Arr(a.elem().code(), a.iter().map(Kv::of).collect()),
            other => panic!("the export writes no {other:?}"),
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Kv::U32(x) => out.extend(x.to_le_bytes()),
            Kv::I32(x) => out.extend(x.to_le_bytes()),
            Kv::F32(x) => out.extend(x.to_le_bytes()),
            Kv::Bool(x) => out.push(u8::from(*x)),
            Kv::Str(s) => {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            }
            Kv::Arr(elem, items) => {
                out.extend(elem.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| i.put(out));
            }
        }
    }
}

/// A GGUF file as lists, to edit and write again (a writer written here from the format).
struct File {
    kv: Vec<(String, Kv)>,
    /// (name, dims innermost first, ggml type id, bytes)
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl File {
    fn of(bytes: &[u8]) -> File {
        let g = Gguf::parse(bytes).unwrap();
        File {
            kv: g
                .metadata()
                .iter()
                .map(|(k, v)| (k.to_string(), Kv::of(*v)))
                .collect(),
            tensors: g
                .tensors()
                .iter()
                .map(|t| {
                    (
                        t.name.to_string(),
                        t.dims.clone(),
                        t.ty.id(),
                        t.data.to_vec(),
                    )
                })
                .collect(),
        }
    }

    fn set(&mut self, key: &str, v: Kv) -> &mut Self {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.into(), v));
        self
    }

    fn tensor(&mut self, name: &str) -> &mut (String, Vec<u64>, u32, Vec<u8>) {
        self.tensors.iter_mut().find(|t| t.0 == name).unwrap()
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            Kv::Str(k.clone()).put(&mut out);
            out.extend(v.code().to_le_bytes());
            v.put(&mut out);
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            Kv::Str(name.clone()).put(&mut out);
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + data.len() as u64).next_multiple_of(32);
        }
        out.resize(out.len().next_multiple_of(32), 0);
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(out.len().next_multiple_of(32), 0);
        }
        out
    }

    fn load(&self) -> Result<Model, ModelError> {
        from_gguf_bytes(Path::new("bad.gguf"), &self.bytes()).map(|(m, _)| m)
    }
}

/// A small exported GQA model (FFN 64: every matrix whole blocks), as a file to edit.
fn exported(weights: GgufWeights) -> File {
    let config = Config {
        num_key_value_heads: Some(2),
        ..walsh_small(64)
    };
    let model = random_model(&config, 8, WeightFormat::F16).unwrap();
    File::of(&gguf_bytes(&model, "m", weights).unwrap())
}

#[test]
fn the_test_writer_writes_what_the_export_wrote() {
    let model = random_model(&walsh_small(64), 8, WeightFormat::F16).unwrap();
    let bytes = gguf_bytes(&model, "m", GgufWeights::Q4_0).unwrap();
    assert_eq!(File::of(&bytes).bytes(), bytes);
}

fn expect(r: Result<Model, ModelError>, what: &str, check: impl Fn(&ModelError) -> bool) {
    let e = r.expect_err(what);
    assert!(check(&e), "{what}: {e:?}");
    assert!(e.to_string().contains("bad.gguf"), "{what}: {e}");
}

#[test]
fn truncated_and_corrupt_files_are_reader_errors() {
    let bytes = exported(GgufWeights::F16).bytes();
    for cut in [3, 20, 1000, bytes.len() - 1] {
        let e = from_gguf_bytes(Path::new("bad.gguf"), &bytes[..cut]).unwrap_err();
        assert!(matches!(e, ModelError::Gguf { .. }), "{cut}: {e:?}");
    }
    let mut bad = bytes.clone();
    bad[0] = b'X';
    let e = from_gguf_bytes(Path::new("bad.gguf"), &bad).unwrap_err();
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
}

#[test]
fn a_missing_or_unexpected_tensor_is_named() {
    let mut f = exported(GgufWeights::F16);
    f.tensors.retain(|t| t.0 != "blk.0.ffn_up.weight");
    expect(
        f.load(),
        "missing",
        |e| matches!(e, ModelError::MissingTensor { name, .. } if name == "blk.0.ffn_up.weight"),
    );
    let mut f = exported(GgufWeights::F16);
    f.tensors.retain(|t| t.0 != "token_embd.weight");
    expect(
        f.load(),
        "no embedding",
        |e| matches!(e, ModelError::MissingTensor { name, .. } if name == "token_embd.weight"),
    );
    // A bias llama.cpp would add, and llama 3's RoPE factors: refused, not ignored.
    for extra in ["blk.0.attn_output.bias", "rope_freqs.weight"] {
        let mut f = exported(GgufWeights::F16);
        f.tensors.push((extra.into(), vec![64], 0, vec![0; 256]));
        expect(
            f.load(),
            extra,
            |e| matches!(e, ModelError::UnexpectedTensor { name, .. } if name == extra),
        );
    }
}

#[test]
fn a_wrong_shape_is_named_with_both_shapes() {
    let mut f = exported(GgufWeights::F16);
    let t = f.tensor("blk.0.attn_k.weight");
    t.1 = vec![64, 64];
    t.3 = vec![0; 64 * 64 * 2];
    expect(f.load(), "k as [64, 64]", |e| {
        matches!(e, ModelError::Shape { name, expected, found, .. }
            if name == "blk.0.attn_k.weight" && expected == &[64, 32] && found == &[64, 64])
    });
    // Trailing 1s are llama.cpp's [n] too.
    let mut f = exported(GgufWeights::F16);
    f.tensor("output_norm.weight").1 = vec![64, 1];
    f.load().unwrap();
    // An embedding of another width.
    let mut f = exported(GgufWeights::F16);
    let t = f.tensor("token_embd.weight");
    t.1 = vec![32, 512];
    expect(
        f.load(),
        "embedding width",
        |e| matches!(e, ModelError::Shape { name, .. } if name == "token_embd.weight"),
    );
}

#[test]
fn an_unsupported_tensor_type_is_named_with_the_type() {
    // Q5_0: 22 bytes per 32 values.
    let mut f = exported(GgufWeights::F16);
    let t = f.tensor("blk.0.ffn_gate.weight");
    t.2 = GgmlType::Q5_0.id();
    t.3 = vec![0; 64 * 2 * 22];
    expect(f.load(), "Q5_0", |e| {
        matches!(e, ModelError::GgufType { name, found: GgmlType::Q5_0, .. }
            if name == "blk.0.ffn_gate.weight")
            && e.to_string().contains("Q8_0 or Q4_0")
    });
    // A quantized norm: only matrices are blocks.
    let mut f = exported(GgufWeights::F16);
    let t = f.tensor("blk.0.attn_norm.weight");
    t.2 = GgmlType::Q8_0.id();
    t.3 = vec![0; 2 * 34];
    expect(f.load(), "Q8_0 norm", |e| {
        matches!(e, ModelError::GgufType { name, found: GgmlType::Q8_0, .. }
            if name == "blk.0.attn_norm.weight")
    });
    // One block format per model.
    let mut f = exported(GgufWeights::Q8_0);
    let q4 = exported(GgufWeights::Q4_0);
    let (_, _, ty, data) = q4
        .tensors
        .iter()
        .find(|t| t.0 == "blk.0.ffn_up.weight")
        .unwrap();
    let t = f.tensor("blk.0.ffn_up.weight");
    (t.2, t.3) = (*ty, data.clone());
    expect(
        f.load(),
        "mixed",
        |e| matches!(e, ModelError::Quantized { name, .. } if name == "blk.0.ffn_up.weight"),
    );
    // The embedding may be another block format than the layers (llama.cpp's files).
    let mut f = exported(GgufWeights::Q8_0);
    let block: Vec<u8> = [0u8, 0].into_iter().chain([0x88; 16]).collect();
    let t = f.tensor("token_embd.weight");
    (t.2, t.3) = (GgmlType::Q4_0.id(), block.repeat(256 * 2));
    let m = f.load().unwrap();
    assert!(
        matches!(&m.weights.embed_tokens.data, TensorData::Quant(q) if q.format == QuantFormat::Q4)
    );
    assert_eq!(
        m.config.quantization.map(|q| q.weights),
        Some(QuantFormat::Q8)
    );
}

#[test]
fn non_finite_values_and_scales_are_named() {
    let mut f = exported(GgufWeights::F16);
    f.tensor("blk.0.ffn_norm.weight").3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    expect(
        f.load(),
        "NaN norm",
        |e| matches!(e, ModelError::NonFinite { name, .. } if name == "blk.0.ffn_norm.weight"),
    );
    let mut f = exported(GgufWeights::F16);
    f.tensor("blk.0.attn_v.weight").3[..2].copy_from_slice(&0x7c00u16.to_le_bytes());
    expect(
        f.load(),
        "inf f16",
        |e| matches!(e, ModelError::NonFinite { name, .. } if name == "blk.0.attn_v.weight"),
    );
    let mut f = exported(GgufWeights::Q4_0);
    f.tensor("blk.0.attn_q.weight").3[18..20].copy_from_slice(&0x7e00u16.to_le_bytes());
    expect(
        f.load(),
        "NaN scale",
        |e| matches!(e, ModelError::Quantized { name, .. } if name == "blk.0.attn_q.weight"),
    );
}

#[test]
fn metadata_walsh_does_not_compute_is_refused_naming_the_key() {
    let key = |e: &ModelError| match e {
        ModelError::GgufMetadata { key, .. } => key.clone(),
        other => panic!("{other:?}"),
    };
    let cases: Vec<(&str, Kv, &str)> = vec![
        ("general.architecture", Kv::Str("qwen2".into()), "`qwen2`"),
        (
            "llama.rope.scaling.type",
            Kv::Str("yarn".into()),
            "unscaled RoPE",
        ),
        ("llama.rope.scaling.factor", Kv::F32(8.0), "unscaled RoPE"),
        ("llama.rope.dimension_count", Kv::U32(8), "16"),
        ("llama.attention.key_length", Kv::U32(32), "16"),
        ("llama.attention.value_length", Kv::U32(8), "16"),
        ("llama.expert_count", Kv::U32(8), "experts"),
        ("llama.vocab_size", Kv::U32(300), "256 rows"),
        (
            "llama.block_count",
            Kv::Str("two".into()),
            "expected an unsigned integer",
        ),
        ("llama.context_length", Kv::I32(-1), "not a size"),
        ("llama.rope.freq_base", Kv::U32(10000), "expected f32"),
        ("walsh.attn_output", Kv::Str("sparse".into()), "`sparse`"),
        ("walsh.query", Kv::Str("mlp".into()), "`mlp`"),
        ("walsh.query_mlp_hidden", Kv::U32(8), "not `residual_mlp`"),
    ];
    for (k, v, says) in cases {
        let mut f = exported(GgufWeights::F16);
        f.set(k, v);
        let e = f.load().unwrap_err();
        assert_eq!(key(&e), k, "{e}");
        assert!(e.to_string().contains(says), "{k}: {e}");
        assert!(e.to_string().contains("bad.gguf"), "{e}");
    }
    // A missing required key; and values that change nothing.
    let mut f = exported(GgufWeights::F16);
    f.kv.retain(|(k, _)| k != "llama.embedding_length");
    assert_eq!(key(&f.load().unwrap_err()), "llama.embedding_length");
    let mut f = exported(GgufWeights::F16);
    f.set("llama.rope.scaling.type", Kv::Str("linear".into()))
        .set("llama.rope.scaling.factor", Kv::F32(1.0))
        .set("llama.expert_count", Kv::U32(0))
        .set("llama.attention.key_length", Kv::U32(16));
    f.load().unwrap();
    // The config's own rules, from the metadata.
    let mut f = exported(GgufWeights::F16);
    f.set("llama.attention.head_count_kv", Kv::U32(3));
    let e = f.load().unwrap_err();
    assert!(matches!(e, ModelError::Config { .. }), "{e:?}");
    assert!(e.to_string().contains("num_key_value_heads = 3"), "{e}");
}

#[test]
fn a_bad_tokenizer_is_a_tokenizer_error() {
    let mut f = exported(GgufWeights::F16);
    f.kv.retain(|(k, _)| k != "tokenizer.ggml.model");
    let e = from_gguf_bytes(Path::new("bad.gguf"), &f.bytes()).unwrap_err();
    assert!(matches!(e, ModelError::Tokenizer { .. }), "{e:?}");
    assert!(e.to_string().contains("tokenizer.ggml.model"), "{e}");
    // More tokens than embedding rows.
    let mut f = exported(GgufWeights::F16);
    let tokens: Vec<Kv> = (0..300).map(|i| Kv::Str(format!("t{i}"))).collect();
    f.set("tokenizer.ggml.tokens", Kv::Arr(8, tokens))
        .set("tokenizer.ggml.scores", Kv::Arr(6, vec![Kv::F32(0.0); 300]))
        .set(
            "tokenizer.ggml.token_type",
            Kv::Arr(5, vec![Kv::I32(1); 300]),
        );
    let e = from_gguf_bytes(Path::new("bad.gguf"), &f.bytes()).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::TokenizerTooLarge {
                tokens: 300,
                vocab: 256,
                ..
            }
        ),
        "{e:?}"
    );
}

// ---- On the GPU --------------------------------------------------------------------------

/// One device per test backend (`WALSH_TEST_BACKENDS`, default vulkan,gl); in CI a
/// missing one fails.
fn gpus() -> Vec<walsh::gpu::Gpu> {
    let wanted = std::env::var("WALSH_TEST_BACKENDS").unwrap_or_else(|_| "vulkan,gl".into());
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let mut out = Vec::new();
    for name in wanted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let selector: walsh::gpu::AdapterSelector = name.parse().unwrap();
        match walsh::gpu::Gpu::new(&selector) {
            Ok(g) => out.push(g),
            Err(e) if in_ci => panic!("CI: no {name} adapter: {e}"),
            Err(e) => eprintln!("skipping {name}: {e}"),
        }
    }
    out
}

/// The files by llama.cpp's Python writer, Q4_0 embedding and head included (the gather
/// reads the quantized table's exact f32 values), give the CPU decoder's greedy tokens on
/// every software adapter, two prompts in one batch.
#[test]
fn gguf_models_decode_as_on_the_cpu_on_every_software_adapter() {
    use std::ops::ControlFlow;
    use walsh::model::generate::{CpuBatch, Decoder, GenerateOptions, generate};
    use walsh::model::gpu::GpuDecoder;
    use walsh::ops::sample::SamplingParams;
    let gpus = gpus();
    let prompts = vec![vec![272, 258, 100, 3], vec![272, 77, 270]];
    let options = GenerateOptions::new(
        8,
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        },
    );
    for file in [
        "tiny-gqa-f16.gguf",
        "tiny-gqa-q4_0.gguf",
        "tiny-gqa-q8_0.gguf",
    ] {
        let (model, _) = load_gguf(&data_dir().join(file)).unwrap();
        let context = model.config.max_position_embeddings;
        let mut cpu = CpuBatch::new(&model, 2, context, KvFormat::F32).unwrap();
        let want = generate(&mut cpu, &prompts, &options, |_| ControlFlow::Continue(()))
            .unwrap()
            .tokens;
        for gpu in &gpus {
            let mut dec = GpuDecoder::new(gpu, &model, 2, context, KvFormat::F32).unwrap();
            let d: &mut dyn Decoder = &mut dec;
            let got = generate(d, &prompts, &options, |_| ControlFlow::Continue(()))
                .unwrap()
                .tokens;
            assert_eq!(got, want, "{file} on {}", gpu.describe());
        }
    }
}

// ---- llama.cpp as the reference ----------------------------------------------------------

/// One of the files llama.cpp ran for `vocab` (`llama-bpe`, `llama-spm`;
/// `tests/data/gguf/make_llama_cpp_reference.py`), joined back from its committed parts:
/// the type's weights file, the shared Q4_0 embedding, and the tokenizer metadata of
/// llama.cpp's vocabulary file.
fn llama_cpp_file(vocab: &str, tag: &str) -> Vec<u8> {
    let dir = data_dir().join(vocab);
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut f = File::of(&read(dir.join(format!("{tag}.weights.gguf"))));
    let embd = File::of(&read(dir.join("embd.gguf")));
    let vocab_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/data/llama.cpp/ggml-vocab-{vocab}.gguf"));
    let vocab_bytes = read(vocab_path);
    let vocab = Gguf::parse(&vocab_bytes).unwrap();
    for (k, v) in vocab.metadata() {
        if k.starts_with("tokenizer.") {
            f.kv.push((k.to_string(), Kv::of(*v)));
        }
    }
    f.tensors.insert(0, embd.tensors[0].clone());
    f.bytes()
}

/// Greedy decoding through the public [`Decoder`](walsh::model::generate::Decoder) API:
/// the prompt in one step, then one token at a time; the tokens and each step's logits.
fn greedy_logits(
    dec: &mut dyn walsh::model::generate::Decoder,
    prompt: &[u32],
    steps: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    dec.reset();
    let mut rows = pollster::block_on(dec.logits(&[(0, prompt)]))
        .unwrap()
        .remove(0);
    let vocab = rows.len() / prompt.len();
    let mut logits = rows.split_off(rows.len() - vocab);
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let next = argmax(&logits);
        tokens.push(next);
        let last = std::mem::take(&mut logits);
        if step + 1 < steps {
            logits = pollster::block_on(dec.logits(&[(0, &[next])]))
                .unwrap()
                .remove(0);
        }
        all.push(last);
    }
    (tokens, all)
}

/// The largest |walsh - llama.cpp| over each step's 8 largest llama.cpp logits (`top`, from
/// `llama_cpp.json`), as a fraction of the step's largest.
fn worst_logit_difference(logits: &[Vec<f32>], top: &serde_json::Value) -> f64 {
    let mut worst = 0f64;
    for (step, top) in top.as_array().unwrap().iter().enumerate() {
        let top = top.as_array().unwrap();
        let scale = top[0][1].as_f64().unwrap().abs();
        for pair in top {
            let (id, l) = (pair[0].as_u64().unwrap(), pair[1].as_f64().unwrap());
            worst = worst.max((logits[step][id as usize] as f64 - l).abs() / scale);
        }
    }
    worst
}

/// Greedy decoding of `vocab`'s model (d_model 32, 8 heads, 2 KV heads, a tied Q4_0
/// embedding of `n_vocab` rows) from the F16, Q8_0 and Q4_0 files llama.cpp 0c1e570 ran on
/// the CPU (f32 KV cache, flash attention off; `tests/data/gguf/<vocab>/llama_cpp.json`),
/// on the CPU decoder and every software adapter: walsh's tokenizer gives llama.cpp's
/// prompt ids, and each decoder llama.cpp's greedy tokens, those of the file itself and
/// of its F32 twin (every tensor dequantized to F32, so that llama.cpp computes in f32).
///
/// Logits: each step's 8 largest, as a fraction of the step's largest.
/// - Against the F32 twin, within 1e-3: the same weights and the same f32 math, summed in
///   other orders (the GPUs' head multiplies by the packed tied Q4_0 table). Measured at
///   most 4.1e-7 (CPU), 4.5e-7 (lavapipe), 5.6e-7 (GL) over both vocabularies and all
///   three types.
/// - Against the quantized file, within 1e-2: llama.cpp's CPU products round their
///   activations to f16 (F16 weights) or to 8-bit Q8_0 blocks (Q8_0 / Q4_0 weights, and
///   the tied Q4_0 head in every file) where walsh computes in f32. Measured 2.8e-3,
///   5.2e-3, 5.1e-3 (llama-bpe F16, Q8_0, Q4_0), 4.3e-3, 6.2e-3, 8.1e-3 (llama-spm), the
///   same on every decoder: the distance between llama.cpp's two runs.
///
/// A wrong RoPE pair or head order would be off by far more (and change the tokens).
fn check_against_llama_cpp(vocab: &str, n_vocab: usize) {
    use walsh::model::generate::{CpuBatch, Decoder};
    use walsh::model::gpu::GpuDecoder;
    let json = std::fs::read_to_string(data_dir().join(vocab).join("llama_cpp.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&json).unwrap();
    let gpus = gpus();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for tag in ["f16", "q8_0", "q4_0"] {
        let path = PathBuf::from(format!("{vocab}-{tag}.gguf"));
        let (model, tok) = from_gguf_bytes(&path, &llama_cpp_file(vocab, tag)).unwrap();
        assert_eq!(model.config.vocab_size, n_vocab);
        assert_eq!((model.config.kv_heads(), model.config.head_dim()), (2, 4));
        assert!(model.config.tie_word_embeddings);
        let context = model.config.max_position_embeddings;
        let mut decoders: Vec<Box<dyn Decoder + '_>> = vec![Box::new(
            CpuBatch::new(&model, 1, context, KvFormat::F32).unwrap(),
        )];
        for gpu in &gpus {
            decoders.push(Box::new(
                GpuDecoder::new(gpu, &model, 1, context, KvFormat::F32).unwrap(),
            ));
        }
        let quantized = reference[tag].as_array().unwrap();
        let twin = reference[format!("{tag}/f32")].as_array().unwrap();
        assert_eq!(quantized.len(), twin.len());
        for dec in &mut decoders {
            let device = dec.device();
            let (mut worst_twin, mut worst_quantized) = (0f64, 0f64);
            for (case, exact) in quantized.iter().zip(twin) {
                let prompt_text = case["prompt"].as_str().unwrap();
                let what = format!("{vocab} {tag} {prompt_text:?} on {device}");
                let prompt = ids(&case["prompt_ids"]);
                let want = ids(&case["tokens"]);
                assert_eq!(tok.encode(prompt_text, true), prompt, "{what}");
                assert_eq!(ids(&exact["prompt_ids"]), prompt, "{what}");
                let (got, logits) = greedy_logits(dec.as_mut(), &prompt, want.len());
                assert_eq!(got, want, "{what}: llama.cpp's tokens");
                assert_eq!(got, ids(&exact["tokens"]), "{what}: F32 twin's tokens");
                let d = worst_logit_difference(&logits, &exact["top"]);
                assert!(d <= 1e-3, "{what}: {d:e} from the F32 twin's logits");
                worst_twin = worst_twin.max(d);
                let d = worst_logit_difference(&logits, &case["top"]);
                assert!(d <= 1e-2, "{what}: {d:e} from llama.cpp's logits");
                worst_quantized = worst_quantized.max(d);
            }
            eprintln!(
                "{vocab} {tag} on {device}: largest top-8 logit difference of the step's \
                 largest {worst_twin:.1e} from the F32 twin, {worst_quantized:.1e} from \
                 llama.cpp's {tag} run"
            );
        }
    }
}

#[test]
fn llama_cpp_greedy_tokens_and_logits_on_the_llama_bpe_vocabulary() {
    check_against_llama_cpp("llama-bpe", 128256);
}

#[test]
fn llama_cpp_greedy_tokens_and_logits_on_the_llama_spm_vocabulary() {
    check_against_llama_cpp("llama-spm", 32000);
}

/// A tied Q4_0 embedding (llama-bpe, 128256 x 32) is the LM head as stored on every GPU:
/// the model's weights take the packed table's 2.3 MB (18 bytes per 32 values) plus the
/// layers', not the 16.4 MB of its f32 values; the logits match the F32 twin within 1e-3
/// (`check_against_llama_cpp`).
#[test]
fn a_tied_quantized_embedding_is_the_head_as_stored() {
    use walsh::gpu::MemoryCategory;
    use walsh::model::gpu::GpuDecoder;
    let path = PathBuf::from("llama-bpe-q4_0.gguf");
    let (model, _) = from_gguf_bytes(&path, &llama_cpp_file("llama-bpe", "q4_0")).unwrap();
    assert!(model.config.tie_word_embeddings);
    let packed = 128256 * 18; // rows x bytes of a row's one block of 32
    for gpu in gpus() {
        let weights = || {
            let r = gpu.memory().report();
            r.by_category
                .iter()
                .find(|c| c.0 == MemoryCategory::Weights)
                .map_or(0, |c| c.1)
        };
        let before = weights();
        let dec = GpuDecoder::new(&gpu, &model, 1, 16, KvFormat::F32).unwrap();
        let bytes = weights() - before;
        assert!(
            bytes >= packed as u64 && bytes < packed as u64 + 1_000_000,
            "{}: {bytes} bytes of weights",
            gpu.describe()
        );
        drop(dec);
    }
}
