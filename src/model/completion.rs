//! OpenAI's completions request, read and answered as text: the body of
//! `POST /v1/completions` parsed and checked against the model ([`CompletionRequest`]),
//! and one choice's text assembled from its tokens ([`Output`]): UTF-8 across tokens, stop
//! strings found even when split across tokens, streamed text held back while it could
//! still begin one. `walsh serve` (the binary's `cli::api`) puts these on HTTP; here they
//! are plain functions, which the fuzz test runs over mutated bodies.

use serde_json::Value;
use thiserror::Error;

use super::batch::Finish;
use super::generate::{Utf8Stream, encode_text};
use crate::ops::sample::SamplingParams;

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

/// A parsed `/v1/completions` body.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    /// One prompt per choice, as tokens.
    pub prompts: Vec<Vec<u32>>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Up to four non-empty stop strings.
    pub stop: Vec<String>,
    pub stream: bool,
    pub echo: bool,
}

impl CompletionRequest {
    /// Reads a body against a model of `context` positions: every field OpenAI's
    /// completions take that walsh supports, unknown fields refused by name.
    pub fn parse(body: &Value, context: usize) -> Result<Self, RequestError> {
        let Some(fields) = body.as_object() else {
            return Err(RequestError::new("the body must be a JSON object"));
        };
        const KNOWN: [&str; 13] = [
            "model",
            "prompt",
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "seed",
            "stop",
            "stream",
            "echo",
            "n",
            "user",
            "logprobs",
        ];
        if let Some(k) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(RequestError::new(format!(
                "`{k}` is not supported (walsh takes {})",
                KNOWN.join(", ")
            )));
        }
        let strings = |v: &Value, what: &str| -> Result<Vec<String>, RequestError> {
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
        };
        let prompts = strings(fields.get("prompt").unwrap_or(&Value::Null), "prompt")?;
        let number = |key: &str| fields.get(key).filter(|v| !v.is_null());
        let uint = |key: &str, default: u64| -> Result<u64, RequestError> {
            number(key).map_or(Ok(default), |v| {
                v.as_u64()
                    .ok_or_else(|| RequestError::new(format!("`{key}` must be a whole number")))
            })
        };
        let float = |key: &str, default: f64| -> Result<f32, RequestError> {
            number(key)
                .map_or(Some(default), Value::as_f64)
                .map(|v| v as f32)
                .ok_or_else(|| RequestError::new(format!("`{key}` must be a number")))
        };
        let flag = |key: &str| -> Result<bool, RequestError> {
            number(key).map_or(Ok(false), |v| {
                v.as_bool()
                    .ok_or_else(|| RequestError::new(format!("`{key}` must be true or false")))
            })
        };
        if uint("n", 1)? != 1 {
            return Err(RequestError::new(
                "`n` must be 1 (give a list of prompts instead)",
            ));
        }
        if number("logprobs").is_some() {
            return Err(RequestError::new("`logprobs` is not supported"));
        }
        // Past usize (a 32-bit target) is as far past the context as usize::MAX.
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let max_tokens = size(uint("max_tokens", 16)?);
        let sampling = SamplingParams {
            temperature: float("temperature", 1.0)?,
            top_k: size(uint("top_k", 0)?),
            top_p: float("top_p", 1.0)?,
            seed: uint("seed", 0)?,
        };
        sampling.validate().map_err(RequestError)?;
        let stop = match number("stop") {
            None => Vec::new(),
            Some(v) => strings(v, "stop")?,
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(RequestError::new("`stop` takes up to 4 non-empty strings"));
        }
        let prompts: Vec<Vec<u32>> = prompts.iter().map(|p| encode_text(p)).collect();
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
        if prompts.len() > 16 {
            return Err(RequestError::new("at most 16 prompts per request"));
        }
        Ok(Self {
            prompts,
            max_tokens,
            sampling,
            stop,
            stream: flag("stream")?,
            echo: flag("echo")?,
        })
    }
}

/// One choice's text as its tokens arrive: UTF-8 reassembled across tokens, stop strings
/// found (and cut) even when split across tokens; streamed text holds back what could
/// still become a stop string.
pub struct Output {
    /// The prompt, with `echo` (stop strings are not looked for in it).
    pub prefix: String,
    /// The generated text.
    pub text: String,
    /// Bytes of `text` already handed out by [`Output::push`].
    sent: usize,
    utf8: Utf8Stream,
    stop: Vec<String>,
    /// Tokens received.
    pub tokens: usize,
    /// OpenAI's finish reason (`stop`, `length`), or `error`, once known.
    pub finish: Option<String>,
    /// Why the decoder failed, with finish `error`.
    pub error: Option<String>,
}

impl Output {
    /// The output of choice `index` of `c`.
    pub fn new(c: &CompletionRequest, index: usize) -> Self {
        let prefix = if c.echo {
            let bytes: Vec<u8> = c.prompts[index].iter().map(|&t| t as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            String::new()
        };
        Self {
            prefix,
            sent: 0,
            text: String::new(),
            utf8: Utf8Stream::default(),
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
            Update::Token(t) => {
                self.tokens += 1;
                self.text.push_str(&self.utf8.push(t));
                if let Some(at) = self.stop.iter().filter_map(|s| self.text.find(s)).min() {
                    self.text.truncate(at);
                    self.finish = Some("stop".into());
                }
            }
            Update::Finished(f) => {
                self.text.push_str(&self.utf8.finish());
                self.finish = Some(
                    match f {
                        Finish::Length | Finish::Context => "length",
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
    use serde_json::json;

    use super::*;

    /// Feeds `text`'s bytes as tokens; returns the streamed pieces joined, the final text
    /// (prefix + generated) and the finish reason.
    fn run(body: Value, text: &str) -> (String, String, Option<String>) {
        let c = CompletionRequest::parse(&body, 128).unwrap();
        let mut out = Output::new(&c, 0);
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

    /// Found by the fuzz test's request target: max_tokens near u64::MAX overflowed the
    /// context check.
    #[test]
    fn huge_numbers_are_refused_not_overflowed() {
        for body in [
            json!({"prompt": "ROMEO.", "max_tokens": u64::MAX}),
            json!({"prompt": "ROMEO.", "max_tokens": 18446744073709551615u64 - 3}),
            json!({"prompt": "ROMEO.", "max_tokens": 4294967297u64}),
        ] {
            let e = CompletionRequest::parse(&body, 128).unwrap_err();
            assert!(e.0.contains("the model's context is 128"), "{e}");
        }
        let huge_k = json!({"prompt": "a", "top_k": u64::MAX});
        assert_eq!(
            CompletionRequest::parse(&huge_k, 128)
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
