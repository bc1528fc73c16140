use super::*;
use crate::gguf::Gguf;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/data/llama.cpp/ggml-vocab-{name}.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(path).unwrap()
}

fn from_fixture(name: &str) -> Tokenizer {
    Tokenizer::from_gguf(&Gguf::parse(&fixture(name)).unwrap()).unwrap()
}

/// Feeds `ids` one at a time; returns the pieces pushed and the text of `finish`.
fn stream(d: &mut Detokenizer, ids: &[u32]) -> (Vec<String>, String) {
    let pieces = ids.iter().map(|&id| d.push(id).unwrap()).collect();
    (pieces, d.finish())
}

#[test]
fn byte_level_is_walshs_encoding() {
    let t = Tokenizer::byte_level();
    let text = "ROMEO.\naño 😀";
    let ids = t.encode(text, true);
    assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
    assert_eq!(t.encode_with(text, true, true), ids);
    assert_eq!(
        (t.kind(), t.vocab_size(), t.bos(), t.eos()),
        (TokenizerKind::Byte, 256, None, None)
    );
    assert_eq!(t.decode(&ids, false).unwrap(), text.as_bytes());
    assert_eq!(
        t.decode(&[256], false).unwrap_err(),
        TokenizerError::UnknownId {
            id: 256,
            vocab: 256
        }
    );
    assert!(t.chat_template().is_none() && t.eog_ids().is_empty());
}

#[test]
fn the_stream_holds_back_split_characters_and_nothing_else() {
    let t = Tokenizer::byte_level();
    // Every character of a multi-byte text split at every byte: nothing comes out until
    // the character is whole, and no U+FFFD ever.
    let text = "añ€😀b";
    let mut d = t.detokenizer(false);
    let (pieces, rest) = stream(&mut d, &t.encode(text, false));
    assert_eq!(pieces.concat() + &rest, text);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
    assert_eq!(pieces.iter().filter(|p| !p.is_empty()).count(), 5);
    // Bytes that can never be a character come out as from_utf8_lossy has them.
    let mut d = t.detokenizer(false);
    assert_eq!(d.push(0xE2).unwrap(), "");
    assert_eq!(d.pending(), [0xE2]);
    assert_eq!(d.push(u32::from(b'x')).unwrap(), "\u{FFFD}x");
    for bytes in [
        &b"\xff\xfeab"[..],
        b"\xf0\x9f\x98",
        b"\xe2\x82\xac\xe2\x82",
        b"\xc3\x28\xa0\xa1",
        b"\xed\xa0\x80x",
    ] {
        let ids: Vec<u32> = bytes.iter().map(|&b| u32::from(b)).collect();
        let mut d = t.detokenizer(false);
        let (pieces, rest) = stream(&mut d, &ids);
        assert_eq!(
            pieces.concat() + &rest,
            String::from_utf8_lossy(bytes),
            "{bytes:?}"
        );
    }
}

#[test]
fn the_stream_splits_byte_fallback_characters_exactly() {
    // SentencePiece: characters outside the vocabulary are <0xNN> byte tokens.
    let t = from_fixture("llama-spm");
    let text = "Hi 🦙 ⅳ 𝄞 done";
    let ids = t.encode(text, true);
    assert_eq!(ids[0], 1, "BOS");
    let bytes = (0..t.vocab_size() as u32)
        .filter(|&i| t.token(i).unwrap().1 == TokenType::Byte)
        .count();
    assert_eq!(bytes, 256);
    assert!(
        ids.iter()
            .filter(|&&i| t.token(i).unwrap().1 == TokenType::Byte)
            .count()
            >= 4
    );
    let mut d = t.detokenizer(false);
    let (pieces, rest) = stream(&mut d, &ids);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.concat() + &rest, text);
    assert_eq!(t.decode_lossy(&ids, false).unwrap(), text);
    // Rendering specials shows the BOS, which then is the first text: the space stays, as
    // Hugging Face's Strip decoder leaves it. A continuation keeps the leading space.
    assert_eq!(t.decode_lossy(&ids, true).unwrap(), format!("<s> {text}"));
    let mut c = t.continuation(false);
    assert_eq!(c.push(ids[1]).unwrap(), " Hi");
}

#[test]
fn specials_are_parsed_only_when_asked() {
    let t = from_fixture("llama-bpe");
    assert_eq!(
        (t.bos(), t.eos(), t.add_bos(), t.add_eos()),
        (Some(128000), Some(128001), true, false)
    );
    let text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
    let parsed = t.encode_with(text, true, true);
    let start = t.token_id("<|start_header_id|>").unwrap();
    let eot = t.token_id("<|eot_id|>").unwrap();
    assert_eq!(parsed[..2], [128000, start]);
    assert_eq!(*parsed.last().unwrap(), eot);
    // Not parsed: the markers are text.
    let plain = t.encode(text, false);
    assert!(!plain.contains(&start) && !plain.contains(&eot));
    assert_eq!(t.decode_lossy(&plain, false).unwrap(), text);
    // Rendered or not.
    assert_eq!(
        t.decode_lossy(&parsed, true).unwrap(),
        format!("<|begin_of_text|>{text}")
    );
    assert_eq!(t.decode_lossy(&parsed, false).unwrap(), "user\n\nHi");
    // End of generation: EOS, and <|eot_id|> by its text.
    assert!(t.is_eog(128001) && t.is_eog(eot) && !t.is_eog(start));
}

#[test]
fn user_defined_tokens_are_matched_always() {
    // Qwen2's [PAD...] tokens are user-defined (type 4).
    let t = from_fixture("qwen2");
    let pad = t.token_id("[PAD151646]").unwrap();
    assert_eq!(t.token(pad).unwrap().1, TokenType::UserDefined);
    let ids = t.encode("a[PAD151646]b", false);
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[1], pad);
    assert_eq!(t.decode_lossy(&ids, false).unwrap(), "a[PAD151646]b");
    // Qwen2's template comes with the GGUF; it adds no BOS.
    assert!(t.chat_template().unwrap().contains("<|im_start|>"));
    assert!(!t.add_bos());
    let im_end = t.token_id("<|im_end|>").unwrap();
    assert!(t.is_eog(im_end));
    assert_eq!(t.encode_with("<|im_end|>", false, true), [im_end]);
}

#[test]
fn adding_specials_adds_bos_and_eos_as_the_model_says() {
    let t = from_fixture("llama-spm");
    assert_eq!(t.encode("", true), [1]);
    assert!(t.encode("", false).is_empty());
    let mut eos = t.clone();
    eos.add_eos = true;
    assert_eq!(eos.encode("", true), [1, 2]);
    let gpt2 = from_fixture("gpt-2");
    assert!(!gpt2.add_bos());
    assert_eq!(gpt2.encode("Hello", true), gpt2.encode("Hello", false));
}

/// A GGUF of `entries` (key, type code, value bytes) and no tensors.
fn gguf_of(entries: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((entries.len() as u64).to_le_bytes());
    for (k, code, v) in entries {
        out.extend((k.len() as u64).to_le_bytes());
        out.extend(k.as_bytes());
        out.extend(code.to_le_bytes());
        out.extend(v);
    }
    out
}

fn str_value(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

fn str_array(items: &[&str]) -> Vec<u8> {
    let mut v = 8u32.to_le_bytes().to_vec();
    v.extend((items.len() as u64).to_le_bytes());
    items.iter().for_each(|s| v.extend(str_value(s)));
    v
}

fn load(entries: &[(&str, u32, Vec<u8>)]) -> Result<Tokenizer> {
    Tokenizer::from_gguf(&Gguf::parse(&gguf_of(entries)).unwrap())
}

#[test]
fn gguf_errors_name_what_is_wrong() {
    let tokens = ("tokenizer.ggml.tokens", 9, str_array(&["a", "b", "ab"]));
    let e = load(std::slice::from_ref(&tokens)).unwrap_err();
    assert_eq!(e.to_string(), "GGUF key `tokenizer.ggml.model` is missing");
    let model = |m: &str| ("tokenizer.ggml.model", 8, str_value(m));
    let e = load(&[model("t5"), tokens.clone()]).unwrap_err();
    assert_eq!(e, TokenizerError::UnsupportedModel("t5".into()));
    let e = load(&[model("gpt2"), tokens.clone()]).unwrap_err();
    assert_eq!(e, TokenizerError::MissingPreTokenizer);
    let pre = |p: &str| ("tokenizer.ggml.pre", 8, str_value(p));
    let e = load(&[model("gpt2"), pre("falcon"), tokens.clone()]).unwrap_err();
    assert!(e.to_string().contains("`falcon`"), "{e}");
    let e = load(&[model("gpt2"), pre("gpt-2"), tokens.clone()]).unwrap_err();
    assert!(e.to_string().contains("tokenizer.ggml.merges"), "{e}");
    let e = load(&[model("llama"), ("tokenizer.ggml.tokens", 8, str_value("a"))]).unwrap_err();
    assert!(
        e.to_string().contains("is str, expected array of str"),
        "{e}"
    );
    let short = ("tokenizer.ggml.scores", 9, {
        let mut v = 6u32.to_le_bytes().to_vec();
        v.extend(1u64.to_le_bytes());
        v.extend(0f32.to_le_bytes());
        v
    });
    let e = load(&[model("llama"), tokens.clone(), short]).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::ShortArray {
                len: 1,
                tokens: 3,
                ..
            }
        ),
        "{e}"
    );
    let dup = ("tokenizer.ggml.tokens", 9, str_array(&["a", "a"]));
    let e = load(&[model("llama"), dup]).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::DuplicateToken {
                first: 0,
                second: 1,
                ..
            }
        ),
        "{e}"
    );
    let bos = (
        "tokenizer.ggml.bos_token_id",
        4,
        7u32.to_le_bytes().to_vec(),
    );
    let e = load(&[model("llama"), tokens.clone(), bos]).unwrap_err();
    assert!(e.to_string().contains("bos_token_id"), "{e}");
    // A small SentencePiece vocabulary works, with llama.cpp's defaults.
    let t = load(&[model("llama"), tokens]).unwrap();
    assert_eq!(
        (t.vocab_size(), t.bos(), t.eos(), t.add_bos()),
        (3, Some(1), Some(2), true)
    );
}

#[test]
fn a_gpt2_vocabulary_merges_by_rank() {
    // "a b" (rank 0) before "b c" (rank 1): "abc" is "ab" + "c".
    let model = ("tokenizer.ggml.model", 8, str_value("gpt2"));
    let pre = ("tokenizer.ggml.pre", 8, str_value("gpt-2"));
    let tokens = (
        "tokenizer.ggml.tokens",
        9,
        str_array(&["a", "b", "c", "ab", "bc", "Ġ"]),
    );
    let merges = ("tokenizer.ggml.merges", 9, str_array(&["a b", "b c"]));
    let t = load(&[model.clone(), pre.clone(), tokens.clone(), merges]).unwrap();
    assert_eq!(t.encode("abc", false), [3, 2]);
    assert_eq!(t.encode("bc a", false), [4, 5, 0]);
    let merges = ("tokenizer.ggml.merges", 9, str_array(&["b c", "a b"]));
    let t = load(&[model, pre, tokens, merges]).unwrap();
    assert_eq!(t.encode("abc", false), [0, 4]);
    assert_eq!(t.decode_lossy(&[0, 4, 5], false).unwrap(), "abc ");
}

#[test]
fn hf_json_errors_name_what_is_unsupported() {
    let e = Tokenizer::from_hf_json(b"{", None).unwrap_err();
    assert!(matches!(e, TokenizerError::Json(_)), "{e}");
    let e = Tokenizer::from_hf_json(br#"{"model": {"type": "Unigram"}}"#, None).unwrap_err();
    assert!(e.to_string().contains("`Unigram`"), "{e}");
    let json = br#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                    "normalizer": {"type": "NFKC"}}"#;
    let e = Tokenizer::from_hf_json(json, None).unwrap_err();
    assert!(e.to_string().contains("normalizer `NFKC`"), "{e}");
    let json = br#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                    "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "Isolated"}}"#;
    let e = Tokenizer::from_hf_json(json, None).unwrap_err();
    assert!(e.to_string().contains("\\d+"), "{e}");
    // An id far beyond the vocabulary is refused before anything is sized by it.
    let json = br#"{"model": {"type": "BPE", "vocab": {"a": 4000000000}, "merges": []}}"#;
    let e = Tokenizer::from_hf_json(json, None).unwrap_err();
    assert!(e.to_string().contains("4000000000"), "{e}");
    let json = br#"{"model": {"type": "BPE", "vocab": {"a": 1}, "merges": []}}"#;
    let e = Tokenizer::from_hf_json(json, None).unwrap_err();
    assert!(e.to_string().contains("id 1"), "{e}");
    // A minimal one loads, with tokenizer_config.json's specials and template.
    let json =
        br#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
                    "added_tokens": [{"id": 3, "content": "<s>", "special": true}]}"#;
    let config = br#"{"bos_token": {"content": "<s>"}, "add_bos_token": true,
                      "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#;
    let t = Tokenizer::from_hf_json(json, Some(config)).unwrap();
    assert_eq!(t.encode("ab<s>a", true), [3, 2, 0]);
    assert_eq!(t.encode_with("ab<s>a", true, true), [3, 2, 3, 0]);
    assert_eq!(t.chat_template(), Some("D"));
}
