//! A prompt in a model's context. (Whether a model's buffers fit an adapter is
//! [`super::sizes`].)

/// What a model of `context` positions sees of `prompt`: its last `context` tokens (all of
/// it when it fits). Generation slides the same way once the context fills, so a long
/// prompt behaves as if the text before it had scrolled out. Returns the kept tokens and
/// how many were dropped from the front.
pub fn fit_prompt(prompt: &[u32], context: usize) -> (&[u32], usize) {
    let dropped = prompt.len().saturating_sub(context);
    (&prompt[dropped..], dropped)
}

/// The one-line notice for a prompt [`fit_prompt`] shortened (prompts are bytes).
pub fn prompt_notice(bytes: usize, context: usize) -> String {
    format!(
        "the prompt is {bytes} bytes, more than the model's context of {context}: \
         generating from its last {context} bytes"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_prompt_keeps_its_last_tokens() {
        let prompt: Vec<u32> = (0..10).collect();
        assert_eq!(fit_prompt(&prompt, 16), (&prompt[..], 0));
        assert_eq!(fit_prompt(&prompt, 10), (&prompt[..], 0));
        assert_eq!(fit_prompt(&prompt, 4), (&prompt[6..], 6));
        assert_eq!(fit_prompt(&[], 4), (&[][..], 0));
    }
}
