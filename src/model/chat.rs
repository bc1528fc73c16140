//! Chat templates: a conversation (OpenAI's `messages`) rendered into a prompt by the
//! Jinja template the model's tokenizer carries (`tokenizer_config.json`'s
//! `chat_template`, GGUF's `tokenizer.chat_template`), as Hugging Face's
//! `apply_chat_template(messages, add_generation_prompt=True)` does: the template sees
//! `messages`, `add_generation_prompt`, `bos_token` and `eos_token`, and may call
//! `raise_exception`. Rendered with minijinja (with Python's string methods from
//! minijinja-contrib's pycompat, which the published templates use).

use minijinja::{Environment, Error, ErrorKind, context};
use serde_json::Value;

use super::completion::RequestError;
use crate::tokenizer::Tokenizer;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Most messages in one conversation.
pub const MAX_MESSAGES: usize = 256;

/// Reads OpenAI's `messages`: a non-empty list of `{"role", "content"}` objects, content a
/// string or a list of `{"type": "text", "text"}` parts (joined).
pub fn messages(value: &Value) -> Result<Vec<Message>, RequestError> {
    let Some(list) = value.as_array().filter(|l| !l.is_empty()) else {
        return Err(RequestError(
            "`messages` must be a non-empty list of {\"role\", \"content\"} objects".into(),
        ));
    };
    if list.len() > MAX_MESSAGES {
        return Err(RequestError(format!(
            "at most {MAX_MESSAGES} messages per request"
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let bad = |what: &str| RequestError(format!("`messages[{i}]`: {what}"));
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("needs a string `role`"))?;
            if !matches!(role, "system" | "user" | "assistant" | "developer") {
                return Err(bad("`role` must be system, developer, user or assistant"));
            }
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type"), p.get("text")) {
                        (Some(Value::String(t)), Some(Value::String(text))) if t == "text" => {
                            Ok(text.as_str())
                        }
                        _ => Err(bad("content parts must be {\"type\": \"text\", \"text\"}")),
                    })
                    .collect::<Result<String, _>>()?,
                _ => return Err(bad("needs `content`, a string or a list of text parts")),
            };
            if let Some(extra) = m.as_object().and_then(|o| {
                o.keys()
                    .find(|k| !matches!(k.as_str(), "role" | "content" | "name"))
            }) {
                return Err(bad(&format!("`{extra}` is not supported")));
            }
            Ok(Message {
                role: role.to_string(),
                content,
            })
        })
        .collect()
}

/// The prompt for `messages` (OpenAI's JSON) by the tokenizer's chat template.
pub fn render(tokenizer: &Tokenizer, messages_json: &Value) -> Result<String, RequestError> {
    let Some(template) = tokenizer.chat_template() else {
        return Err(RequestError(
            "this model has no chat template (its tokenizer carries none): use \
             /v1/completions with a prompt"
                .into(),
        ));
    };
    let messages = messages(messages_json)?;
    let token_text = |id: Option<u32>| {
        id.and_then(|id| tokenizer.token(id))
            .map_or(String::new(), |(text, _)| text.to_string())
    };
    apply(
        template,
        &messages,
        &token_text(tokenizer.bos()),
        &token_text(tokenizer.eos()),
    )
}

/// Renders `template` for `messages` with a generation prompt.
pub fn apply(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
) -> Result<String, RequestError> {
    let mut env = Environment::new();
    // As transformers renders them: ImmutableSandboxedEnvironment(trim_blocks=True,
    // lstrip_blocks=True).
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    let fail = |e: Error| {
        let mut message = e.to_string();
        if let Some(detail) = e.detail() {
            message = format!("{message}: {detail}");
        }
        RequestError(format!("the model's chat template: {message}"))
    };
    env.add_template("chat", template).map_err(fail)?;
    env.get_template("chat")
        .map_err(fail)?
        .render(context! {
            messages => messages
                .iter()
                .map(|m| context! { role => m.role.clone(), content => m.content.clone() })
                .collect::<Vec<_>>(),
            add_generation_prompt => true,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A ChatML template as Qwen2 and SmolLM2 ship it (their tokenizer_config.json).
    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// Llama 3's, abridged: bos, headers, `.strip()` (a Python method), `raise_exception`.
    const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{% if loop.index0 == 0 and message['role'] == 'assistant' %}{{ raise_exception('the first message must not be the assistant') }}{% endif %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    fn msgs(v: Value) -> Vec<Message> {
        messages(&v).unwrap()
    }

    #[test]
    fn templates_render_as_hugging_face_renders_them() {
        let m = msgs(json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
        ]));
        // The strings Jinja2 gives for these templates with transformers' settings
        // (ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)), Jinja2
        // 3.1 run by hand.
        assert_eq!(
            apply(CHATML, &m, "", "<|im_end|>").unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            apply(LLAMA3, &m, "<|begin_of_text|>", "<|eot_id|>").unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        // Blocks on their own lines leave no whitespace (trim_blocks, lstrip_blocks).
        let blocks = "{% for m in messages %}\n    {% if m['role'] == 'user' %}\n[{{ m['content'] }}]\n    {% endif %}\n{% endfor %}";
        let m3 = msgs(json!([
            {"role": "user", "content": "a"},
            {"role": "system", "content": "b"},
            {"role": "user", "content": "c"},
        ]));
        assert_eq!(apply(blocks, &m3, "", "").unwrap(), "[a]\n[c]\n");
        // Python's string methods through pycompat.
        let upper = "{{ messages[0]['content'].strip().upper() }}";
        let m = msgs(json!([{"role": "user", "content": "  hi  "}]));
        assert_eq!(apply(upper, &m, "", "").unwrap(), "HI");
    }

    #[test]
    fn bad_conversations_and_templates_say_what_is_wrong() {
        let first_assistant = msgs(json!([{"role": "assistant", "content": "x"}]));
        let e = apply(LLAMA3, &first_assistant, "", "").unwrap_err();
        assert!(
            e.0.contains("the first message must not be the assistant"),
            "{e}"
        );
        let e = apply("{% for %}", &first_assistant, "", "").unwrap_err();
        assert!(e.0.starts_with("the model's chat template: "), "{e}");
        for (bad, says) in [
            (json!([]), "non-empty list"),
            (json!("hi"), "non-empty list"),
            (
                json!([{"content": "x"}]),
                "`messages[0]`: needs a string `role`",
            ),
            (json!([{"role": "robot", "content": "x"}]), "`role` must be"),
            (json!([{"role": "user"}]), "needs `content`"),
            (
                json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                "content parts must be",
            ),
            (
                json!([{"role": "user", "content": "x", "tool_calls": []}]),
                "`tool_calls`",
            ),
        ] {
            let e = messages(&bad).unwrap_err();
            assert!(e.0.contains(says), "{bad}: {e}");
        }
        let none = render(
            &Tokenizer::byte_level(),
            &json!([{"role": "user", "content": "x"}]),
        );
        assert!(none.unwrap_err().0.contains("no chat template"));
    }
}
