//! walsh's tokenizers against llama.cpp's own tokenizer test suite
//! (`tests/data/llama.cpp/`, README there): every text of each `.inp` file must give
//! exactly the ids of its `.out` line, as llama.cpp's `test-tokenizer-0` checks them
//! (no BOS, special tokens not parsed). Also: decoding gives the text back, and the
//! streaming detokenizer gives it back fed one token at a time.

use std::path::{Path, PathBuf};

use walsh::gguf::Gguf;
use walsh::tokenizer::{Tokenizer, TokenizerKind};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama.cpp")
}

fn load(name: &str) -> Tokenizer {
    let bytes = std::fs::read(data().join(format!("ggml-vocab-{name}.gguf"))).unwrap();
    let gguf = Gguf::parse(&bytes).unwrap();
    Tokenizer::from_gguf(&gguf).unwrap()
}

/// The (text, ids) pairs of `name`, read as test-tokenizer-0.cpp reads them.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(data().join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(data().join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    const SEP: &str = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(SEP) {
            Some(i) => {
                texts.push(rest[..i].to_string());
                rest = &rest[i + SEP.len()..];
            }
            None => {
                texts.push(rest.to_string());
                break;
            }
        }
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{name}: inputs and outputs differ in number"
    );
    texts.into_iter().zip(ids).collect()
}

fn check_vocab(name: &str, kind: TokenizerKind) {
    let tok = load(name);
    assert_eq!(tok.kind(), kind);
    let cases = cases(name);
    assert!(cases.len() > 30, "{name}: {} cases", cases.len());
    let mut failures = Vec::new();
    for (text, expected) in &cases {
        let ids = tok.encode(text, false);
        if &ids != expected {
            failures.push(format!(
                "{text:?}\n  walsh:    {ids:?}\n  llama.cpp: {expected:?}"
            ));
            continue;
        }
        // Decoding gives the text back (control tokens are not in these texts).
        let back = tok.decode(&ids, false).unwrap();
        assert_eq!(
            String::from_utf8(back).unwrap(),
            *text,
            "{name}: decode of {text:?}"
        );
        // One token at a time, too.
        let mut d = tok.detokenizer(false);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&d.push(id).unwrap());
        }
        streamed.push_str(&d.finish());
        assert_eq!(streamed, *text, "{name}: streamed decode of {text:?}");
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_spm_matches_llama_cpp() {
    check_vocab("llama-spm", TokenizerKind::Spm);
}

#[test]
fn llama_bpe_matches_llama_cpp() {
    check_vocab("llama-bpe", TokenizerKind::Bpe);
}

#[test]
fn gpt2_matches_llama_cpp() {
    check_vocab("gpt-2", TokenizerKind::Bpe);
}

#[test]
fn qwen2_matches_llama_cpp() {
    check_vocab("qwen2", TokenizerKind::Bpe);
}

// ---- Hugging Face tokenizer.json -------------------------------------------------------

/// The ids Hugging Face's `tokenizers` gives (tests/data/hf/make_fixtures.py made the files
/// and cases.json with it): walsh must give the same, with and without the template's
/// specials, and decode to the library's text (specials skipped).
fn check_hf(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf");
    let json = std::fs::read(dir.join(format!("{name}.json"))).unwrap();
    let tok = Tokenizer::from_hf_json(&json, None).unwrap();
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    let cases = cases["cases"][name].as_array().unwrap();
    assert!(cases.len() > 40);
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        // The library parses added tokens in any text.
        let with = tok.encode_with(text, true, true);
        let without = tok.encode_with(text, false, true);
        if with != ids(&case["ids"]) || without != ids(&case["ids_no_special"]) {
            failures.push(format!(
                "{text:?}\n  walsh: {with:?}\n  hf:    {:?}",
                ids(&case["ids"])
            ));
            continue;
        }
        let decoded = tok.decode_lossy(&with, false).unwrap();
        if decoded != case["decoded"].as_str().unwrap() {
            failures.push(format!(
                "{text:?} decodes to {decoded:?}, hf {:?}",
                case["decoded"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn hf_bytelevel_llama3_matches_tokenizers() {
    check_hf("bytelevel-llama3");
}

#[test]
fn hf_bytelevel_gpt2_matches_tokenizers() {
    check_hf("bytelevel-gpt2");
}

#[test]
fn hf_llama2_prepend_matches_tokenizers() {
    check_hf("llama2-prepend");
}

#[test]
fn hf_llama2_metaspace_matches_tokenizers() {
    check_hf("llama2-metaspace");
}
