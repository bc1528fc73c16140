//! A tokenizer from a Hugging Face `tokenizer.json` (and optionally its
//! `tokenizer_config.json`). Two shapes are read, the ones llama-style models ship:
//!
//! - byte-level BPE: `pre_tokenizer` `ByteLevel` (GPT-2's expression when `use_regex`), or a
//!   `Sequence` of a `Split` by one of the expressions [`PreTokenizer::from_regex`] knows
//!   (Llama 3, Qwen2) and `ByteLevel` without its own expression;
//! - Llama-2-style BPE: `byte_fallback`, spaces as `▁` by a `Prepend("▁")` + `Replace(" ",
//!   "▁")` normalizer or a `Metaspace` pre-tokenizer (without `split`), no byte mapping.
//!
//! Anything else (another model type, normalizer or pre-tokenizer) is refused by name
//! rather than tokenized differently from the library. Added tokens become special tokens
//! (control when `special`, else user-defined) cut out of text before the rest, longest
//! first, as for GGUF; BOS and EOS come from the `TemplateProcessing` post-processor or
//! from tokenizer_config.json, which may also hold the chat template.

use serde_json::Value;

use super::bpe::{Bpe, Fallback};
use super::load_gguf::split_merge;
use super::{
    Model, PreTokenizer, Result, SpacePrefix, Token, TokenType, Tokenizer, TokenizerError, Vocab,
};

fn json_err(what: impl Into<String>) -> TokenizerError {
    TokenizerError::Json(what.into())
}

fn unsupported(what: impl Into<String>) -> TokenizerError {
    TokenizerError::UnsupportedHf(what.into())
}

/// The `type` of a component object.
fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A component and, for a `Sequence`, its parts (under `key`), flattened.
fn flatten<'v>(v: &'v Value, key: &str) -> Vec<&'v Value> {
    match (type_of(v), v.get(key).and_then(Value::as_array)) {
        ("Sequence", Some(parts)) => parts.iter().flat_map(|p| flatten(p, key)).collect(),
        _ if v.is_null() => Vec::new(),
        _ => vec![v],
    }
}

/// How the text reaches the BPE model.
struct Shape {
    pre: Option<PreTokenizer>,
    byte_level: bool,
    space_prefix: SpacePrefix,
    escape_whitespace: bool,
}

fn shape(json: &Value) -> Result<Shape> {
    let mut s = Shape {
        pre: None,
        byte_level: false,
        space_prefix: SpacePrefix::None,
        escape_whitespace: false,
    };
    let normalizers = flatten(
        json.get("normalizer").unwrap_or(&Value::Null),
        "normalizers",
    );
    for n in normalizers {
        let str_field = |key: &str| n.get(key).and_then(Value::as_str);
        match type_of(n) {
            "Prepend" if str_field("prepend") == Some("\u{2581}") => {
                s.space_prefix = SpacePrefix::Every;
            }
            "Replace"
                if n.pointer("/pattern/String").and_then(Value::as_str) == Some(" ")
                    && str_field("content") == Some("\u{2581}") =>
            {
                s.escape_whitespace = true;
            }
            other => return Err(unsupported(format!("normalizer `{other}`"))),
        }
    }
    if s.space_prefix == SpacePrefix::Every && !s.escape_whitespace {
        return Err(unsupported(
            "a Prepend normalizer without Replace(\" \", \"▁\")",
        ));
    }
    let pres = flatten(
        json.get("pre_tokenizer").unwrap_or(&Value::Null),
        "pretokenizers",
    );
    for p in pres {
        let flag =
            |key: &str, default: bool| p.get(key).and_then(Value::as_bool).unwrap_or(default);
        match type_of(p) {
            "ByteLevel" => {
                if s.byte_level {
                    return Err(unsupported("two ByteLevel pre-tokenizers"));
                }
                s.byte_level = true;
                if flag("use_regex", true) {
                    if s.pre.is_some() {
                        return Err(unsupported("a Split before a ByteLevel with use_regex"));
                    }
                    s.pre = Some(PreTokenizer::Gpt2);
                }
                if flag("add_prefix_space", false) {
                    s.space_prefix = SpacePrefix::Always;
                }
            }
            "Split" => {
                let regex = p
                    .pointer("/pattern/Regex")
                    .and_then(Value::as_str)
                    .ok_or_else(|| unsupported("a Split pre-tokenizer without a Regex pattern"))?;
                let behavior = p.get("behavior").and_then(Value::as_str);
                if behavior != Some("Isolated") || flag("invert", false) || s.pre.is_some() {
                    return Err(unsupported(format!("Split pre-tokenizer {p}")));
                }
                s.pre = Some(PreTokenizer::from_regex(regex).ok_or_else(|| {
                    unsupported(format!("the pre-tokenizer expression `{regex}`"))
                })?);
            }
            "Metaspace" => {
                if p.get("replacement").and_then(Value::as_str) != Some("\u{2581}")
                    || flag("split", true)
                {
                    return Err(unsupported(format!("Metaspace pre-tokenizer {p}")));
                }
                s.escape_whitespace = true;
                s.space_prefix = match p.get("prepend_scheme").and_then(Value::as_str) {
                    Some("first") => SpacePrefix::First,
                    Some("never") => SpacePrefix::None,
                    Some("always") | None => SpacePrefix::Always,
                    Some(other) => {
                        return Err(unsupported(format!("Metaspace prepend_scheme `{other}`")));
                    }
                };
            }
            other => return Err(unsupported(format!("pre-tokenizer `{other}`"))),
        }
    }
    if s.byte_level && s.escape_whitespace {
        return Err(unsupported("byte-level BPE with spaces as ▁"));
    }
    if s.pre.is_some() && !s.byte_level {
        return Err(unsupported("a Split pre-tokenizer without ByteLevel"));
    }
    Ok(s)
}

/// A token named in tokenizer_config.json: a string, or an object with `content`.
fn config_token(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// The tokenizer of a Hugging Face `tokenizer.json` (module docs of `load_hf` list the
    /// shapes read), with `tokenizer_config.json`'s `bos_token`, `eos_token`,
    /// `add_bos_token`, `add_eos_token` and `chat_template` when given.
    pub fn from_hf_json(tokenizer_json: &[u8], config_json: Option<&[u8]>) -> Result<Self> {
        let json: Value =
            serde_json::from_slice(tokenizer_json).map_err(|e| json_err(e.to_string()))?;
        let config: Value = match config_json {
            Some(c) => serde_json::from_slice(c)
                .map_err(|e| json_err(format!("tokenizer_config.json: {e}")))?,
            None => Value::Null,
        };
        let model = json.get("model").ok_or_else(|| json_err("no `model`"))?;
        let model_type = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
        if model_type != "BPE" {
            return Err(unsupported(format!("model type `{model_type}`")));
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if model.get(key).is_some_and(|v| !v.is_null() && v != "") {
                return Err(unsupported(format!("BPE `{key}`")));
            }
        }
        if model
            .get("dropout")
            .and_then(Value::as_f64)
            .is_some_and(|d| d > 0.0)
        {
            return Err(unsupported("BPE dropout"));
        }
        let flag = |key: &str| model.get(key).and_then(Value::as_bool).unwrap_or(false);
        let byte_fallback = flag("byte_fallback");
        let ignore_merges = flag("ignore_merges");
        let unk_text = model.get("unk_token").and_then(Value::as_str);
        let shape = shape(&json)?;

        // The vocabulary: the model's, then the added tokens, ids contiguous from 0.
        let vocab_map = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| json_err("`model.vocab` is not an object"))?;
        let no_added = Vec::new();
        let added = match json.get("added_tokens") {
            None | Some(Value::Null) => &no_added,
            Some(Value::Array(a)) => a,
            Some(_) => return Err(json_err("`added_tokens` is not an array")),
        };
        // Bounded before anything is allocated by id: every id names a distinct entry.
        let n = vocab_map.len() + added.len();
        let mut slots: Vec<Option<Token>> = Vec::new();
        let place = |id: u64, token: Token, slots: &mut Vec<Option<Token>>| -> Result<()> {
            let i = usize::try_from(id)
                .ok()
                .filter(|&i| i < n)
                .ok_or_else(|| json_err(format!("token `{}` has id {id} of {n}", token.text)))?;
            if slots.len() <= i {
                slots.resize(i + 1, None);
            }
            match &mut slots[i] {
                // An added token that is also in the vocabulary: the same entry, retyped.
                Some(t) if t.text == token.text => *t = token,
                Some(t) => {
                    return Err(json_err(format!(
                        "id {i} is both `{}` and `{}`",
                        t.text, token.text
                    )));
                }
                slot => *slot = Some(token),
            }
            Ok(())
        };
        for (text, id) in vocab_map {
            let id = id
                .as_u64()
                .ok_or_else(|| json_err(format!("vocabulary id of `{text}` is not a number")))?;
            let ty = if unk_text == Some(text.as_str()) {
                TokenType::Unknown
            } else if byte_fallback && super::byte_of(text).is_some() {
                TokenType::Byte
            } else {
                TokenType::Normal
            };
            place(id, plain(text, ty), &mut slots)?;
        }
        for a in added {
            let text = a
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| json_err("an added token without `content`"))?;
            let id = a
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| json_err(format!("added token `{text}` has no id")))?;
            let is = |key: &str| a.get(key).and_then(Value::as_bool).unwrap_or(false);
            let ty = if unk_text == Some(text) {
                TokenType::Unknown
            } else if is("special") {
                TokenType::Control
            } else {
                TokenType::UserDefined
            };
            let mut token = plain(text, ty);
            token.lstrip = is("lstrip");
            token.rstrip = is("rstrip");
            place(id, token, &mut slots)?;
        }
        let tokens: Vec<Token> = slots
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.ok_or_else(|| json_err(format!("no token has id {i}"))))
            .collect::<Result<_>>()?;
        let vocab = Vocab::new(tokens)?;
        let unk = unk_text.and_then(|t| vocab.id(t));

        let merges = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| json_err("`model.merges` is not an array"))?;
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|m| match m {
                Value::String(s) => Some(split_merge(s)),
                Value::Array(p) => match p.as_slice() {
                    [Value::String(a), Value::String(b)] => Some((a.as_str(), b.as_str())),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(|| json_err("a merge is neither \"a b\" nor [\"a\", \"b\"]"))?;
        let fallback = if byte_fallback {
            Fallback::HexBytes
        } else {
            Fallback::Unknown
        };
        let bpe = Bpe::new(
            &vocab,
            pairs,
            shape.pre,
            shape.byte_level,
            ignore_merges,
            fallback,
            unk,
        );
        let mut tok = Tokenizer::with_vocab(Model::Bpe(Box::new(bpe)), vocab);
        tok.space_prefix = shape.space_prefix;
        tok.escape_whitespace = shape.escape_whitespace;
        // Decoding drops the space encoding added when the decoder strips one.
        tok.decode_strip = flatten(json.get("decoder").unwrap_or(&Value::Null), "decoders")
            .iter()
            .any(|d| {
                type_of(d) == "Strip"
                    && d.get("content").and_then(Value::as_str) == Some(" ")
                    && d.get("start").and_then(Value::as_u64).unwrap_or(0) >= 1
            });

        // BOS / EOS: the post-processor's template, then tokenizer_config.json.
        let special_id = |name: &str| -> Option<u32> {
            json.pointer("/post_processor/special_tokens")
                .or_else(|| {
                    flatten(json.get("post_processor")?, "processors")
                        .into_iter()
                        .find_map(|p| p.get("special_tokens"))
                })
                .and_then(|s| s.get(name)?.get("ids")?.get(0)?.as_u64())
                .and_then(|id| u32::try_from(id).ok())
                .or_else(|| tok.vocab.id(name))
        };
        let template = flatten(
            json.get("post_processor").unwrap_or(&Value::Null),
            "processors",
        )
        .into_iter()
        .find(|p| type_of(p) == "TemplateProcessing")
        .and_then(|p| p.get("single")?.as_array().cloned())
        .unwrap_or_default();
        let special_at = |item: Option<&Value>| -> Option<u32> {
            special_id(item?.pointer("/SpecialToken/id")?.as_str()?)
        };
        let (first, last) = (special_at(template.first()), special_at(template.last()));
        tok.bos = first;
        tok.add_bos = first.is_some();
        if template.len() > 1 {
            tok.eos = last;
            tok.add_eos = last.is_some();
        }
        let vocab_len = tok.vocab.tokens.len();
        let lookup = |key: &str| -> Result<Option<u32>> {
            match config_token(&config, key) {
                None => Ok(None),
                Some(text) => tok.vocab.id(&text).map(Some).ok_or_else(|| {
                    json_err(format!(
                        "tokenizer_config.json: `{key}` `{text}` is not in the vocabulary"
                    ))
                }),
            }
        };
        let (bos, eos) = (lookup("bos_token")?, lookup("eos_token")?);
        tok.bos = bos.or(tok.bos);
        tok.eos = eos.or(tok.eos);
        for (key, slot) in [
            ("add_bos_token", &mut tok.add_bos),
            ("add_eos_token", &mut tok.add_eos),
        ] {
            if let Some(b) = config.get(key).and_then(Value::as_bool) {
                *slot = b;
            }
        }
        for (what, id) in [("bos", tok.bos), ("eos", tok.eos)] {
            if let Some(id) = id.filter(|&id| id as usize >= vocab_len) {
                return Err(TokenizerError::SpecialOutOfRange {
                    what: what.into(),
                    id: u64::from(id),
                    vocab: vocab_len,
                });
            }
        }
        tok.find_eog(&[]);
        tok.chat_template = match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: the default one, else the first.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_string),
            _ => None,
        };
        Ok(tok)
    }
}

fn plain(text: &str, ty: TokenType) -> Token {
    Token {
        text: text.to_string(),
        ty,
        score: 0.0,
        lstrip: false,
        rstrip: false,
    }
}
