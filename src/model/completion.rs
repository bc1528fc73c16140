//! OpenAI's completions request, read and answered as text: the body of
//! `POST /v1/completions` parsed and checked against the model ([`CompletionRequest`]),
//! and one choice's text assembled from its tokens ([`Output`]): UTF-8 across tokens, stop
//! strings found even when split across tokens, streamed text held back while it could
//! still begin one. `walsh serve` (the binary's `cli::api`) puts these on HTTP; here they
//! are plain functions, which the fuzz test runs over mutated bodies.

use serde_json::Value;
use thiserror::Error;

use super::batch::Finish;
use super::chat;
use crate::ops::sample::SamplingParams;
use crate::tokenizer::{Detokenizer, Tokenizer};

/// Why a body is not a completions request walsh takes: the message names the field or
/// the limit (`walsh serve` answers it with 400).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RequestError(pub String);

impl RequestError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// What happens to one request, as its output takes it.
#[derive(Clone, Debug)]
pub enum Update {
    Token(u32),
    Finished(Finish),
    Failed(String),
}

/// Which endpoint a body is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/completions`: `prompt`, a string or a list of them.
    Completions,
    /// `POST /v1/chat/completions`: `messages` rendered by the model's chat template.
    Chat,
}

/// A parsed `/v1/completions` or `/v1/chat/completions` body.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    pub endpoint: Endpoint,
    /// One prompt per choice, as tokens.
    pub prompts: Vec<Vec<u32>>,
    /// The prompts as text (for `echo`; a chat's rendered conversation).
    pub texts: Vec<String>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Up to four non-empty stop strings.
    pub stop: Vec<String>,
    pub stream: bool,
    pub echo: bool,
}

/// Fields every body may have.
const COMMON: [&str; 11] = [
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "n",
    "user",
    "logprobs",
];

/// Typed reads of a body's fields; `null` is the same as absent.
struct Fields<'a>(&'a serde_json::Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn uint(&self, key: &str, default: u64) -> Result<u64, RequestError> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_u64()
                .ok_or_else(|| RequestError::new(format!("`{key}` must be a whole number")))
        })
    }

    /// A whole number as usize: past usize (a 32-bit target) is as far past any limit as
    /// usize::MAX.
    fn size(&self, key: &str, default: u64) -> Result<usize, RequestError> {
        Ok(usize::try_from(self.uint(key, default)?).unwrap_or(usize::MAX))
    }

    fn float(&self, key: &str, default: f64) -> Result<f32, RequestError> {
        self.get(key)
            .map_or(Some(default), Value::as_f64)
            .map(|v| v as f32)
            .ok_or_else(|| RequestError::new(format!("`{key}` must be a number")))
    }

    fn flag(&self, key: &str) -> Result<bool, RequestError> {
        self.get(key).map_or(Ok(false), |v| {
            v.as_bool()
                .ok_or_else(|| RequestError::new(format!("`{key}` must be true or false")))
        })
    }
}

/// A string, or a non-empty list of strings.
fn strings(v: &Value, what: &str) -> Result<Vec<String>, RequestError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| RequestError::new(format!("`{what}` must hold strings"))),
        _ => Err(RequestError::new(format!(
            "`{what}` must be a string or a list of strings"
        ))),
    }
}

impl CompletionRequest {
    /// Reads a body for `endpoint` against a model of `context` positions whose text
    /// `tokenizer` encodes: every field OpenAI's API takes there that walsh supports,
    /// unknown fields refused by name. A chat's `messages` go through the tokenizer's chat
    /// template (an error when it has none).
    pub fn parse(
        body: &Value,
        endpoint: Endpoint,
        context: usize,
        tokenizer: &Tokenizer,
    ) -> Result<Self, RequestError> {
        let Some(map) = body.as_object() else {
            return Err(RequestError::new("the body must be a JSON object"));
        };
        let own: &[&str] = match endpoint {
            Endpoint::Completions => &["prompt", "echo"],
            Endpoint::Chat => &["messages", "max_completion_tokens"],
        };
        if let Some(k) = map
            .keys()
            .find(|k| !COMMON.contains(&k.as_str()) && !own.contains(&k.as_str()))
        {
            return Err(RequestError::new(format!(
                "`{k}` is not supported (walsh takes {}, {})",
                own.join(", "),
                COMMON.join(", ")
            )));
        }
        let fields = Fields(map);
        let texts = match endpoint {
            Endpoint::Completions => {
                strings(fields.get("prompt").unwrap_or(&Value::Null), "prompt")?
            }
            Endpoint::Chat => vec![chat::render(
                tokenizer,
                fields.get("messages").unwrap_or(&Value::Null),
            )?],
        };
        if fields.uint("n", 1)? != 1 {
            return Err(RequestError::new(
                "`n` must be 1 (give a list of prompts instead)",
            ));
        }
        if fields
            .get("logprobs")
            .is_some_and(|v| v != &Value::Bool(false))
        {
            return Err(RequestError::new("`logprobs` is not supported"));
        }
        let max_tokens = match fields.get("max_completion_tokens") {
            Some(_) => fields.size("max_completion_tokens", 16)?,
            None => fields.size("max_tokens", 16)?,
        };
        let sampling = SamplingParams {
            temperature: fields.float("temperature", 1.0)?,
            top_k: fields.size("top_k", 0)?,
            top_p: fields.float("top_p", 1.0)?,
            seed: fields.uint("seed", 0)?,
        };
        sampling.validate().map_err(RequestError)?;
        let stop = match fields.get("stop") {
            None => Vec::new(),
            Some(v) => strings(v, "stop")?,
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(RequestError::new("`stop` takes up to 4 non-empty strings"));
        }
        if texts.len() > 16 {
            return Err(RequestError::new("at most 16 prompts per request"));
        }
        let prompts: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| match endpoint {
                // The template wrote the special tokens (BOS among them) as text.
                Endpoint::Chat => tokenizer.encode_with(t, false, true),
                Endpoint::Completions => tokenizer.encode(t, true),
            })
            .collect();
        for p in &prompts {
            if p.is_empty() {
                return Err(RequestError::new("a prompt is empty"));
            }
            if max_tokens == 0 || p.len().saturating_add(max_tokens) > context {
                return Err(RequestError::new(format!(
                    "a prompt of {} tokens and max_tokens {max_tokens} need {} positions: \
                     the model's context is {context} (max_tokens must be 1 to {})",
                    p.len(),
                    p.len().saturating_add(max_tokens),
                    context.saturating_sub(p.len())
                )));
            }
        }
        Ok(Self {
            endpoint,
            prompts,
            texts,
            max_tokens,
            sampling,
            stop,
            stream: fields.flag("stream")?,
            echo: fields.flag("echo")?,
        })
    }
}

/// One choice's text as its tokens arrive: UTF-8 reassembled across tokens, stop strings
/// found (and cut) even when split across tokens; streamed text holds back what could
/// still become a stop string.
pub struct Output<'t> {
    /// The prompt, with `echo` (stop strings are not looked for in it).
    pub prefix: String,
    /// The generated text.
    pub text: String,
    /// Bytes of `text` already handed out by [`Output::push`].
    sent: usize,
    tokenizer: &'t Tokenizer,
    detokenizer: Detokenizer<'t>,
    stop: Vec<String>,
    /// Tokens received.
    pub tokens: usize,
    /// OpenAI's finish reason (`stop`, `length`), or `error`, once known.
    pub finish: Option<String>,
    /// Why the decoder failed, with finish `error`.
    pub error: Option<String>,
}

impl<'t> Output<'t> {
    /// The output of choice `index` of `c`.
    pub fn new(c: &CompletionRequest, index: usize, tokenizer: &'t Tokenizer) -> Self {
        let prefix = if c.echo {
            c.texts[index].clone()
        } else {
            String::new()
        };
        Self {
            prefix,
            sent: 0,
            text: String::new(),
            tokenizer,
            detokenizer: tokenizer.continuation(false),
            stop: c.stop.clone(),
            tokens: 0,
            finish: None,
            error: None,
        }
    }

    /// Takes an update; returns the text that is now final (None when nothing is).
    pub fn push(&mut self, update: Update) -> Option<String> {
        if self.finish.is_some() {
            return None;
        }
        match update {
            Update::Token(t) if self.tokenizer.is_eog(t) => {
                // End of generation (EOS, EOT): the text ends before it.
                self.tokens += 1;
                self.text.push_str(&self.detokenizer.finish());
                self.finish = Some("stop".into());
            }
            Update::Token(t) => {
                self.tokens += 1;
                // A token the tokenizer cannot render (past its vocabulary, in a model
                // whose vocab_size is larger) adds nothing.
                self.text
                    .push_str(&self.detokenizer.push(t).unwrap_or_default());
                if let Some(at) = self.stop.iter().filter_map(|s| self.text.find(s)).min() {
                    self.text.truncate(at);
                    self.finish = Some("stop".into());
                }
            }
            Update::Finished(f) => {
                self.text.push_str(&self.detokenizer.finish());
                self.finish = Some(
                    match f {
                        Finish::Length | Finish::Context => "length",
                        Finish::Stop => "stop",
                    }
                    .into(),
                );
            }
            Update::Failed(e) => {
                self.error = Some(e);
                self.finish = Some("error".into());
            }
        }
        // Hold back the longest tail that could begin a stop string.
        let hold = if self.finish.is_some() {
            0
        } else {
            self.stop
                .iter()
                .flat_map(|s| {
                    (1..s.len())
                        .filter(|&n| s.is_char_boundary(n))
                        .map(move |n| &s[..n])
                })
                .filter(|prefix| self.text.ends_with(prefix))
                .map(str::len)
                .max()
                .unwrap_or(0)
        };
        let end = self.text.len().saturating_sub(hold).max(self.sent);
        let end = (end..=self.text.len())
            .find(|&e| self.text.is_char_boundary(e))
            .unwrap_or(self.text.len());
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use serde_json::json;

    use super::*;

    static BYTES: LazyLock<Tokenizer> = LazyLock::new(Tokenizer::byte_level);

    /// Feeds `text`'s bytes as tokens; returns the streamed pieces joined, the final text
    /// (prefix + generated) and the finish reason.
    fn run(body: Value, text: &str) -> (String, String, Option<String>) {
        let c = CompletionRequest::parse(&body, Endpoint::Completions, 128, &BYTES).unwrap();
        let mut out = Output::new(&c, 0, &BYTES);
        let mut streamed = out.prefix.clone();
        for &b in text.as_bytes() {
            streamed += &out.push(Update::Token(b as u32)).unwrap_or_default();
            if out.finish.is_some() {
                break;
            }
        }
        if out.finish.is_none() {
            streamed += &out.push(Update::Finished(Finish::Length)).unwrap();
        }
        (streamed, out.prefix.clone() + &out.text, out.finish)
    }

    /// An end-of-generation token ends the text before it, with finish `stop`, even
    /// mid-chunk: what follows it is not taken.
    #[test]
    fn an_end_of_turn_token_stops_the_text() {
        let tokenizer = Tokenizer::from_hf_json(
            include_bytes!("../../tests/data/chat/tokenizer.json"),
            Some(include_bytes!(
                "../../tests/data/chat/tokenizer_config.json"
            )),
        )
        .unwrap();
        let eot = tokenizer.token_id("<|eot_id|>").unwrap();
        assert!(tokenizer.is_eog(eot));
        let body = json!({"prompt": "To be", "max_tokens": 8});
        let c = CompletionRequest::parse(&body, Endpoint::Completions, 128, &tokenizer).unwrap();
        assert_eq!(c.prompts[0][0], tokenizer.bos().unwrap(), "add_bos_token");
        let mut out = Output::new(&c, 0, &tokenizer);
        let words = tokenizer.encode(" or not", false);
        let mut streamed = String::new();
        for &t in words.iter().chain([eot, words[0]].iter()) {
            streamed += &out.push(Update::Token(t)).unwrap_or_default();
        }
        assert_eq!(
            (streamed.as_str(), out.text.as_str()),
            (" or not", " or not")
        );
        assert_eq!(out.finish.as_deref(), Some("stop"));
        assert_eq!(
            out.tokens,
            words.len() + 1,
            "the end token counts, what follows not"
        );
    }

    /// Found by the fuzz test's request target: max_tokens near u64::MAX overflowed the
    /// context check.
    #[test]
    fn huge_numbers_are_refused_not_overflowed() {
        for body in [
            json!({"prompt": "ROMEO.", "max_tokens": u64::MAX}),
            json!({"prompt": "ROMEO.", "max_tokens": 18446744073709551615u64 - 3}),
            json!({"prompt": "ROMEO.", "max_tokens": 4294967297u64}),
        ] {
            let e =
                CompletionRequest::parse(&body, Endpoint::Completions, 128, &BYTES).unwrap_err();
            assert!(e.0.contains("the model's context is 128"), "{e}");
        }
        let huge_k = json!({"prompt": "a", "top_k": u64::MAX});
        assert_eq!(
            CompletionRequest::parse(&huge_k, Endpoint::Completions, 128, &BYTES)
                .unwrap()
                .sampling
                .top_k,
            usize::MAX
        );
    }

    #[test]
    fn stop_strings_cut_the_generated_text_streamed_or_not() {
        let stop = json!({"prompt": "a stop here", "stop": ["stop", "ZZ"]});
        // Found across tokens; what streamed before it is exactly the text kept.
        let (streamed, text, finish) = run(stop.clone(), "so it stops there");
        assert_eq!((streamed.as_str(), text.as_str()), ("so it ", "so it "));
        assert_eq!(finish.as_deref(), Some("stop"));
        // A tail that only looked like a stop string's start is sent at the end.
        let (streamed, text, finish) = run(stop, "no st");
        assert_eq!((streamed.as_str(), text.as_str()), ("no st", "no st"));
        assert_eq!(finish.as_deref(), Some("length"));
        // With echo the prompt comes first and its own "stop" does not end anything.
        let echo = json!({"prompt": "a stop here", "stop": "stop", "echo": true});
        let (streamed, text, _) = run(echo, " and on");
        assert_eq!(
            (streamed.as_str(), text.as_str()),
            ("a stop here and on", "a stop here and on")
        );
        // Multi-byte stop strings and characters split across tokens.
        let accents = json!({"prompt": "x", "stop": ["é!"]});
        let (streamed, text, finish) = run(accents, "café!");
        assert_eq!((streamed.as_str(), text.as_str()), ("caf", "caf"));
        assert_eq!(finish.as_deref(), Some("stop"));
    }
}
