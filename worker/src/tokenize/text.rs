//! [`TextTokenizer`]: text ↔ token ids with the semantics of a transformers fast tokenizer.
//!
//! `encode` is `tokenizer.encode(text, add_special_tokens=False)` with special-token strings in
//! the text recognised (transformers' `split_special_tokens=False`); `decode` is
//! `tokenizer.decode(ids, skip_special_tokens, clean_up_tokenization_spaces)`. The special tokens
//! (bos/eos/pad/unk, additional special tokens) and the chat template come from
//! `tokenizer_config.json` (HF folders) or from GGUF metadata (see [`super::gguf`]).
//! A folder with `tokenizer.model` but no tokenizer.json (Baichuan) gets the slow tokenizer's
//! semantics instead (see [`super::spm::SpmSlowTokenizer`]).

use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, Tokenizer};

pub use super::config::SpecialTokenSpec;
use super::config::{HfTokenizerConfig, read_json_file};
use super::spm::{SpmModel, SpmSlowTokenizer};
use crate::error::{Error, Result};

/// One of the named special tokens: its text and its id in the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub content: String,
    pub id: u32,
}

/// What encodes and decodes: a `tokenizers` tokenizer (tokenizer.json, GGUF) or a SentencePiece
/// model with transformers slow-tokenizer semantics (folders with only tokenizer.model).
#[derive(Clone)]
enum Backend {
    Hf(Box<Tokenizer>),
    Spm(SpmSlowTokenizer),
}

/// A tokenizer plus the special-token and chat-template settings that go with it.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Backend,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    pad: Option<SpecialToken>,
    unk: Option<SpecialToken>,
    additional_special: Vec<SpecialToken>,
    clean_up_tokenization_spaces: bool,
    chat_template: Option<String>,
    add_bos_token: bool,
    source: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("unk", &self.unk)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` + `tokenizer_config.json` (+ `special_tokens_map.json`,
    /// `chat_template.jinja`) from an HF model folder.
    /// Without tokenizer.json, a `tokenizer.model` (SentencePiece) is used as the slow tokenizer
    /// (BaichuanTokenizer, LlamaTokenizer) would use it.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            if dir.join("tokenizer.model").is_file() {
                return Self::from_spm_dir(dir);
            }
            return Err(Error::bad_file(
                &tok_path,
                "missing: an HF model folder needs tokenizer.json or a SentencePiece tokenizer.model",
            ));
        }
        let inner = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::bad_file(&tok_path, format!("cannot parse tokenizer.json: {e}")))?;
        let config = HfTokenizerConfig::read_dir(dir)?;
        let mut tok = Self::from_parts(inner, config.spec, dir)?;
        tok.add_config_tokens(config.added_tokens)?;
        Ok(tok)
    }

    /// Loads `tokenizer.model` + tokenizer_config.json (+ special_tokens_map.json) from a folder
    /// without tokenizer.json. Special tokens the config does not name default to the model's
    /// own `<unk>`/`<s>`/`</s>` pieces (the slow tokenizers' defaults).
    pub fn from_spm_dir(dir: &Path) -> Result<Self> {
        let model = SpmModel::from_file(&dir.join("tokenizer.model"))?;
        let mut config = HfTokenizerConfig::read_dir(dir)?;
        let spec = &mut config.spec;
        let piece = |id: Option<u32>| id.and_then(|i| model.id_to_piece(i)).map(str::to_string);
        spec.unk = spec.unk.take().or_else(|| piece(Some(model.unk_id())));
        spec.bos = spec.bos.take().or_else(|| piece(model.bos_id()));
        spec.eos = spec.eos.take().or_else(|| piece(model.eos_id()));
        let backend = Backend::Spm(SpmSlowTokenizer::new(model));
        let mut tok = Self::from_backend(backend, config.spec, dir)?;
        tok.add_config_tokens(config.added_tokens)?;
        if let Backend::Spm(spm) = &mut tok.inner {
            for (content, flags) in &config.token_flags {
                spm.set_flags(content, *flags);
            }
        }
        Ok(tok)
    }

    /// Tokens listed in tokenizer_config.json's added_tokens_decoder are added the way
    /// transformers adds them at load time: a fast tokenizer only adds the missing ones, a slow
    /// one registers them all (so text is split on them even when they are vocabulary pieces).
    fn add_config_tokens(&mut self, added_tokens: Vec<(String, bool)>) -> Result<()> {
        let slow = matches!(self.inner, Backend::Spm(_));
        for (content, special) in added_tokens {
            if slow || self.token_to_id(&content).is_none() {
                self.add_token(&content, special)?;
            }
        }
        Ok(())
    }

    /// The tokenizer of a model given as a GGUF file, an HF folder (tokenizer.json), or a
    /// folder holding exactly one `.gguf` file.
    pub fn from_model_path(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::from_gguf_file(path);
        }
        if path.join("tokenizer.json").is_file() || path.join("tokenizer.model").is_file() {
            return Self::from_hf_dir(path);
        }
        let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
        let ggufs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        match ggufs.as_slice() {
            [one] => Self::from_gguf_file(one),
            [] => Err(Error::bad_file(
                path,
                "no tokenizer.json and no .gguf file in this folder",
            )),
            many => Err(Error::bad_file(
                path,
                format!(
                    "no tokenizer.json and {} .gguf files; name the file",
                    many.len()
                ),
            )),
        }
    }

    /// Builds a tokenizer from a `tokenizers::Tokenizer` and its special-token settings.
    /// Special tokens missing from the vocabulary are appended to it as added special tokens
    /// (transformers does the same when it loads such a folder).
    pub fn from_parts(inner: Tokenizer, spec: SpecialTokenSpec, source: &Path) -> Result<Self> {
        Self::from_backend(Backend::Hf(Box::new(inner)), spec, source)
    }

    fn from_backend(inner: Backend, spec: SpecialTokenSpec, source: &Path) -> Result<Self> {
        let mut tok = TextTokenizer {
            inner,
            bos: None,
            eos: None,
            pad: None,
            unk: None,
            additional_special: Vec::new(),
            clean_up_tokenization_spaces: spec.clean_up_tokenization_spaces,
            chat_template: spec.chat_template,
            add_bos_token: spec.add_bos_token,
            source: source.to_path_buf(),
        };
        tok.bos = tok.resolve_special(spec.bos)?;
        tok.eos = tok.resolve_special(spec.eos)?;
        tok.pad = tok.resolve_special(spec.pad)?;
        tok.unk = tok.resolve_special(spec.unk)?;
        for content in spec.additional {
            if let Some(t) = tok.resolve_special(Some(content))? {
                tok.additional_special.push(t);
            }
        }
        Ok(tok)
    }

    /// Looks up (adding when missing) a special token. Like transformers, a special token is
    /// always registered as an added special token, so that even a plain vocabulary entry is
    /// then split out of text whole and skipped by `decode(.., skip_special_tokens=true)`.
    fn resolve_special(&mut self, content: Option<String>) -> Result<Option<SpecialToken>> {
        let Some(content) = content else {
            return Ok(None);
        };
        let id = self.add_token(&content, true)?;
        Ok(Some(SpecialToken { content, id }))
    }

    /// Adds `content` to the vocabulary (recognised whole in text from now on) and returns its id.
    pub fn add_token(&mut self, content: &str, special: bool) -> Result<u32> {
        let inner = match &mut self.inner {
            Backend::Hf(t) => t,
            Backend::Spm(t) => return t.add_token(content, special),
        };
        let token = AddedToken::from(content.to_string(), special);
        let added = if special {
            inner.add_special_tokens([token])
        } else {
            inner.add_tokens([token])
        };
        added.map_err(|e| Error::Tokenizer(format!("cannot add token {content:?}: {e}")))?;
        inner
            .token_to_id(content)
            .ok_or_else(|| Error::Tokenizer(format!("token {content:?} was added but has no id")))
    }

    /// Token ids of `text`, without bos/eos added; special-token strings in the text become
    /// their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let inner = match &self.inner {
            Backend::Hf(t) => t,
            Backend::Spm(t) => return Ok(t.encode(text)),
        };
        let enc = inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(format!("cannot encode {:?}: {e}", preview(text))))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `clean_up_tokenization_spaces` = `None` uses the tokenizer's own setting.
    pub fn decode(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
        clean_up_tokenization_spaces: Option<bool>,
    ) -> Result<String> {
        let text = match &self.inner {
            Backend::Hf(t) => t
                .decode(ids, skip_special_tokens)
                .map_err(|e| Error::Tokenizer(format!("cannot decode {} ids: {e}", ids.len())))?,
            Backend::Spm(t) => t.decode(ids, skip_special_tokens)?,
        };
        if clean_up_tokenization_spaces.unwrap_or(self.clean_up_tokenization_spaces) {
            Ok(clean_up_tokenization(&text))
        } else {
            Ok(text)
        }
    }

    /// Id of a token string (vocabulary or added tokens).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Backend::Hf(t) => t.token_to_id(token),
            Backend::Spm(t) => t.token_to_id(token),
        }
    }

    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.inner {
            Backend::Hf(t) => t.id_to_token(id),
            Backend::Spm(t) => t.id_to_token(id),
        }
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Backend::Hf(t) => t.get_vocab_size(true),
            Backend::Spm(t) => t.vocab_size(),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|t| t.id)
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.pad.as_ref().map(|t| t.id)
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.unk.as_ref().map(|t| t.id)
    }
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|t| t.content.as_str())
    }
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|t| t.content.as_str())
    }
    pub fn pad_token(&self) -> Option<&str> {
        self.pad.as_ref().map(|t| t.content.as_str())
    }
    pub fn unk_token(&self) -> Option<&str> {
        self.unk.as_ref().map(|t| t.content.as_str())
    }

    /// Ids of `additional_special_tokens`, in their configured order.
    pub fn additional_special_token_ids(&self) -> Vec<u32> {
        self.additional_special.iter().map(|t| t.id).collect()
    }

    /// Strings of `additional_special_tokens`, in their configured order.
    pub fn additional_special_tokens(&self) -> Vec<&str> {
        self.additional_special
            .iter()
            .map(|t| t.content.as_str())
            .collect()
    }

    /// The model's own chat template (Jinja source), if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Whether the model's tokenizer prepends bos when asked to add special tokens (GGUF
    /// `tokenizer.ggml.add_bos_token`, tokenizer_config `add_bos_token`). Informational: `encode`
    /// never adds it.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// The tokenizer's default for `clean_up_tokenization_spaces`.
    pub fn clean_up_tokenization_spaces(&self) -> bool {
        self.clean_up_tokenization_spaces
    }

    /// Sets eos to `content` (added as a special token when missing), like transformers'
    /// `add_special_tokens({"eos_token": ...})`. Returns the new id.
    pub fn set_eos_token(&mut self, content: &str) -> Result<u32> {
        self.eos = self.resolve_special(Some(content.to_string()))?;
        Ok(self.eos.as_ref().map_or(0, |t| t.id))
    }

    /// Sets pad to `content` (added as a special token when missing).
    pub fn set_pad_token(&mut self, content: &str) -> Result<u32> {
        self.pad = self.resolve_special(Some(content.to_string()))?;
        Ok(self.pad.as_ref().map_or(0, |t| t.id))
    }

    /// Appends additional special tokens that are not already listed, like transformers'
    /// `add_special_tokens({"additional_special_tokens": ..}, replace_additional_special_tokens=False)`.
    pub fn extend_additional_special_tokens(&mut self, tokens: &[&str]) -> Result<()> {
        for &content in tokens {
            if self.additional_special.iter().any(|t| t.content == content) {
                continue;
            }
            if let Some(t) = self.resolve_special(Some(content.to_string()))? {
                // An existing non-special token becomes special (skipped by decode), as in HF.
                match &mut self.inner {
                    Backend::Hf(t) => {
                        let _ = t.add_special_tokens([AddedToken::from(content.to_string(), true)]);
                    }
                    Backend::Spm(t) => {
                        t.add_token(content, true)?;
                    }
                }
                self.additional_special.push(t);
            }
        }
        Ok(())
    }

    /// The underlying `tokenizers` tokenizer; `None` for a SentencePiece `tokenizer.model`.
    pub fn inner(&self) -> Option<&Tokenizer> {
        match &self.inner {
            Backend::Hf(t) => Some(t),
            Backend::Spm(_) => None,
        }
    }

    /// The SentencePiece slow tokenizer, for folders loaded from `tokenizer.model`.
    pub fn spm(&self) -> Option<&SpmSlowTokenizer> {
        match &self.inner {
            Backend::Hf(_) => None,
            Backend::Spm(t) => Some(t),
        }
    }

    /// Where this tokenizer was loaded from (folder or GGUF file).
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// transformers' `clean_up_tokenization`: removes the space before some punctuation and
/// English contractions.
pub fn clean_up_tokenization(text: &str) -> String {
    const PAIRS: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    let mut out = text.to_string();
    for (from, to) in PAIRS {
        if out.contains(from) {
            out = out.replace(from, to);
        }
    }
    out
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

/// eos token ids from a folder's `generation_config.json` (`eos_token_id`, an int or a list);
/// empty when the file or key is absent.
pub fn generation_config_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let value = read_json_file(&path)?;
    let ids = match value.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_u64()).collect(),
        Some(v) => v.as_u64().into_iter().collect(),
    };
    ids.into_iter()
        .map(|id| {
            u32::try_from(id)
                .map_err(|_| Error::bad_file(&path, format!("eos_token_id {id} is out of range")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TextTokenizer>();
        assert_send_sync::<crate::tokenize::PromptBuilder>();
    }

    #[test]
    fn clean_up_matches_transformers_rules() {
        assert_eq!(
            clean_up_tokenization("Hi , you . I do n't"),
            "Hi, you. I don't"
        );
        assert_eq!(clean_up_tokenization("it 's ok ' fine"), "it's ok'fine");
    }
}
