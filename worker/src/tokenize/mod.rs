//! Text to token ids and back: tokenizer.json or a GGUF vocabulary, the model's own chat template,
//! and LLaMA-Factory's named templates with their encoding and `cutoff_len` truncation.
//!
//! - [`text`]: [`TextTokenizer`] (transformers fast-tokenizer semantics).
//! - [`config`]: tokenizer_config.json / special_tokens_map.json / chat_template.jinja, read into
//!   a [`text::SpecialTokenSpec`].
//! - [`gguf`]: tokenizer.json built from GGUF metadata; [`write_hf_tokenizer_files`].
//! - [`chat_template`]: HF chat templates rendered as transformers renders them.
//! - [`lf_template`]: LLaMA-Factory v0.7.1 templates and their encoding; `lf_registry`: the
//!   named templates, looked up by [`get_template`].
//! - [`prompt`]: [`PromptBuilder`] / [`build_prompt`], used by the task runner.
//! - [`spm`]: SentencePiece `tokenizer.model` files (no tokenizer.json needed).

pub mod chat_template;
pub mod config;
pub mod gguf;
mod lf_registry;
pub mod lf_template;
pub mod prompt;
mod pyjson;
pub mod spm;
mod strftime;
pub mod text;

pub use chat_template::{ChatTemplate, TemplateTokens};
pub use gguf::write_hf_tokenizer_files;
pub use lf_registry::{get_template, known_template_names};
pub use lf_template::Template;
pub use prompt::{Prompt, PromptBuilder, PromptStyle, build_prompt};
pub use text::{TextTokenizer, clean_up_tokenization, generation_config_eos_ids};

/// One chat turn: role ("system", "user", "assistant", ...) and text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}
