//! Prompt building for the task runner: a conversation → (prompt ids, label ids, stop ids), with
//! either a LLaMA-Factory template (docs/FIDELITY.md §1.3, §1.4) or the model's own chat template.

use super::ChatMessage;
use super::chat_template::{ChatTemplate, TemplateTokens};
use super::lf_template::Template;
use super::text::TextTokenizer;
use crate::error::{Error, Result};

/// How prompts are made.
#[derive(Debug, Clone)]
pub enum PromptStyle {
    /// A LLaMA-Factory template by name (see [`super::get_template`]).
    LlamaFactory(Template),
    /// The chat template shipped with the model (tokenizer_config.json, chat_template.jinja or
    /// GGUF `tokenizer.chat_template`).
    ModelChatTemplate,
}

/// One encoded item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// What the model is fed.
    pub prompt_ids: Vec<u32>,
    /// The reference answer's ids (decoded for metrics); may be empty.
    pub label_ids: Vec<u32>,
    /// Ids that end generation (eos first, then the other stop tokens).
    pub stop_ids: Vec<u32>,
}

/// A prompt builder prepared once per model: it owns the tokenizer as the style needs it (for
/// LLaMA-Factory templates, fixed as `get_template_and_fix_tokenizer` fixes it) and the compiled
/// chat template. Decode predictions and labels with [`PromptBuilder::tokenizer`].
#[derive(Debug)]
pub struct PromptBuilder {
    style: PromptStyle,
    tokenizer: TextTokenizer,
    chat: Option<(ChatTemplate, TemplateTokens)>,
    stop_ids: Vec<u32>,
}

/// Where a model's chat template was read from, for errors: `chat_template.jinja` when the
/// folder has one (transformers prefers it), else `tokenizer_config.json`'s key, else the GGUF's
/// metadata.
fn template_origin(source: &std::path::Path) -> String {
    let jinja = source.join("chat_template.jinja");
    if jinja.is_file() {
        jinja.display().to_string()
    } else if source.is_dir() {
        format!(
            "{}, key `chat_template`",
            source.join("tokenizer_config.json").display()
        )
    } else {
        format!("{}, metadata `tokenizer.chat_template`", source.display())
    }
}

impl PromptBuilder {
    /// Prepares `style` for `tokenizer` (cloned, then fixed for LLaMA-Factory templates).
    /// `ModelChatTemplate` without a template in the tokenizer is an error.
    pub fn new(style: PromptStyle, tokenizer: &TextTokenizer) -> Result<Self> {
        let mut tokenizer = tokenizer.clone();
        let (chat, stop_ids) = match &style {
            PromptStyle::LlamaFactory(template) => {
                template.fix_tokenizer(&mut tokenizer)?;
                (None, template.stop_token_ids(&tokenizer))
            }
            PromptStyle::ModelChatTemplate => {
                let source = tokenizer.chat_template().ok_or_else(|| {
                    Error::Template(format!(
                        "{}: the model has no chat template; set `template` to a LLaMA-Factory template name",
                        tokenizer.source().display()
                    ))
                })?;
                let compiled = ChatTemplate::new(source).map_err(|e| match e {
                    Error::Template(why) => {
                        Error::Template(format!("{}: {why}", template_origin(tokenizer.source())))
                    }
                    other => other,
                })?;
                let mut stop: Vec<u32> = tokenizer.eos_id().into_iter().collect();
                for id in tokenizer.additional_special_token_ids() {
                    if !stop.contains(&id) {
                        stop.push(id);
                    }
                }
                (
                    Some((compiled, TemplateTokens::from_tokenizer(&tokenizer))),
                    stop,
                )
            }
        };
        Ok(PromptBuilder {
            style,
            tokenizer,
            chat,
            stop_ids,
        })
    }

    /// The tokenizer prompts are encoded with (and outputs should be decoded with).
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The style this builder was made for.
    pub fn style(&self) -> &PromptStyle {
        &self.style
    }

    /// `apply_chat_template(messages, add_generation_prompt, tokenize=False)` with the model's
    /// own template, messages passed as they are (no label split; CharacterEval's prompts end
    /// with an assistant turn followed by the generation prompt). Errors for LLaMA-Factory styles.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        match &self.chat {
            Some((chat, tokens)) => chat.render(messages, add_generation_prompt, tokens),
            None => Err(Error::Template(
                "render_chat needs PromptStyle::ModelChatTemplate".to_string(),
            )),
        }
    }

    /// [`PromptBuilder::render_chat`] then `encode` (what transformers'
    /// `apply_chat_template(tokenize=True)` gives: no special tokens added beyond the template's).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(&self.render_chat(messages, add_generation_prompt)?)
    }

    /// The stop ids every prompt of this builder gets.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Encodes one conversation. `messages` alternate user/assistant (a leading "system" message
    /// is used as the system prompt when `system` is empty) and end with the assistant answer
    /// (the label) or with a user turn (empty label).
    ///
    /// - LLaMA-Factory: LF's unsupervised preprocessing exactly: an empty assistant turn is
    ///   appended when the answer is missing, `encode_oneturn` with `cutoff_len` /
    ///   `reserved_label_len` truncation (docs/FIDELITY.md §1.4), then eos appended to the label
    ///   for `efficient_eos` templates.
    /// - Model chat template: the prompt is `messages[..last]` rendered with
    ///   `add_generation_prompt=true` (system, when given, becomes a leading system message);
    ///   the label is the answer's tokens + eos. `cutoff_len` bounds the prompt only: when it is
    ///   longer, its LAST `cutoff_len` tokens are kept (the start of the conversation is lost,
    ///   the generation prompt is kept); the label is not truncated.
    pub fn build(
        &self,
        messages: &[ChatMessage],
        system: &str,
        cutoff_len: usize,
        reserved_label_len: usize,
    ) -> Result<Prompt> {
        let (system, messages) = split_system(messages, system);
        let (prompt_ids, label_ids) = match (&self.style, &self.chat) {
            (PromptStyle::LlamaFactory(template), _) => {
                let mut conv = messages.to_vec();
                if conv.len() % 2 == 1 {
                    conv.push(ChatMessage::new("assistant", ""));
                }
                let (prompt, mut label) = template.encode_oneturn(
                    &self.tokenizer,
                    &conv,
                    &system,
                    cutoff_len,
                    reserved_label_len,
                )?;
                if template.efficient_eos {
                    label.extend(self.tokenizer.eos_id());
                }
                (prompt, label)
            }
            (PromptStyle::ModelChatTemplate, Some((chat, tokens))) => {
                self.chat_prompt(chat, tokens, messages, &system, cutoff_len)?
            }
            (PromptStyle::ModelChatTemplate, None) => {
                return Err(Error::Template("chat template was not prepared".into()));
            }
        };
        Ok(Prompt {
            prompt_ids,
            label_ids,
            stop_ids: self.stop_ids.clone(),
        })
    }

    /// Where each of the first `pairs` (user, assistant) pairs of `messages` ends in
    /// `prompt_ids` (token offsets, increasing), where `prompt_ids` is what
    /// [`PromptBuilder::build`] gave for the same `messages` and `system` without truncation.
    /// `None` when the pairs encoded alone are not token prefixes of the prompt (a chat template
    /// that renders earlier turns differently once more follow, or a tokenizer merge across a
    /// boundary): then nothing may be shared.
    ///
    /// LLaMA-Factory templates encode every element on its own and concatenate, so a pair
    /// boundary is always a token boundary; with a model chat template, the first j pairs are
    /// rendered alone (without the generation prompt), encoded, and compared with the prompt.
    pub fn pair_prefix_ends(
        &self,
        messages: &[ChatMessage],
        system: &str,
        pairs: usize,
        prompt_ids: &[u32],
    ) -> Result<Option<Vec<usize>>> {
        let (system, messages) = split_system(messages, system);
        let Some(head) = messages.get(..2 * pairs) else {
            return Err(Error::Template(format!(
                "{pairs} (user, assistant) pairs asked for, but the conversation has {} messages",
                messages.len()
            )));
        };
        let mut ends = Vec::with_capacity(pairs);
        match (&self.style, &self.chat) {
            (PromptStyle::LlamaFactory(template), _) => {
                let encoded =
                    template.encode_multiturn(&self.tokenizer, head, &system, usize::MAX / 2, 1)?;
                let mut end = 0;
                for (src, tgt) in &encoded {
                    let next = end + src.len() + tgt.len();
                    let same = prompt_ids
                        .get(end..next)
                        .is_some_and(|p| p.iter().eq(src.iter().chain(tgt)));
                    if !same || next == end {
                        return Ok(None);
                    }
                    end = next;
                    ends.push(end);
                }
            }
            (PromptStyle::ModelChatTemplate, Some((chat, tokens))) => {
                let mut conv = Vec::with_capacity(head.len() + 1);
                if !system.is_empty() {
                    conv.push(ChatMessage::new("system", &system));
                }
                for pair in head.chunks_exact(2) {
                    conv.extend_from_slice(pair);
                    let ids = self.tokenizer.encode(&chat.render(&conv, false, tokens)?)?;
                    let longer = ids.len() > ends.last().copied().unwrap_or(0);
                    if !longer || !prompt_ids.starts_with(&ids) {
                        return Ok(None);
                    }
                    ends.push(ids.len());
                }
            }
            (PromptStyle::ModelChatTemplate, None) => {
                return Err(Error::Template("chat template was not prepared".into()));
            }
        }
        Ok(Some(ends))
    }

    fn chat_prompt(
        &self,
        chat: &ChatTemplate,
        tokens: &TemplateTokens,
        messages: &[ChatMessage],
        system: &str,
        cutoff_len: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let (context, answer) = match messages.split_last() {
            Some((last, rest)) if last.role == "assistant" => (rest, Some(last)),
            _ => (messages, None),
        };
        let mut conv = Vec::with_capacity(context.len() + 1);
        if !system.is_empty() {
            conv.push(ChatMessage::new("system", system));
        }
        conv.extend_from_slice(context);
        let text = chat.render(&conv, true, tokens)?;
        let mut prompt = self.tokenizer.encode(&text)?;
        if prompt.len() > cutoff_len {
            prompt.drain(..prompt.len() - cutoff_len);
        }
        let mut label = Vec::new();
        if let Some(answer) = answer {
            label = self.tokenizer.encode(&answer.content)?;
            label.extend(self.tokenizer.eos_id());
        }
        Ok((prompt, label))
    }
}

/// A leading system message becomes the system prompt when none is given.
fn split_system<'m>(messages: &'m [ChatMessage], system: &str) -> (String, &'m [ChatMessage]) {
    match messages.split_first() {
        Some((first, rest)) if first.role == "system" => {
            let sys = if system.is_empty() {
                first.content.clone()
            } else {
                system.to_string()
            };
            (sys, rest)
        }
        _ => (system.to_string(), messages),
    }
}

/// One-off [`PromptBuilder::new`] + [`PromptBuilder::build`]. It clones (and for LLaMA-Factory
/// templates fixes) the tokenizer on every call: build a [`PromptBuilder`] once for many items.
pub fn build_prompt(
    style: &PromptStyle,
    tokenizer: &TextTokenizer,
    messages: &[ChatMessage],
    system: &str,
    cutoff_len: usize,
    reserved_label_len: usize,
) -> Result<Prompt> {
    PromptBuilder::new(style.clone(), tokenizer)?.build(
        messages,
        system,
        cutoff_len,
        reserved_label_len,
    )
}
