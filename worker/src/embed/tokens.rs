//! Texts to token ids as sentence-transformers' Transformer module does: Python `str.strip()`,
//! `str.lower()` when `do_lower_case`, then `tokenizer.json` with its special tokens, truncated
//! (longest first) to `max_seq_length` tokens including the special tokens. Padding is done by the
//! batcher, not the tokenizer.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::{Error, Result};

/// The tokenizer of a sentence-transformers Transformer module.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    do_lower_case: bool,
}

impl TextEncoder {
    /// Loads `dir/tokenizer.json` and sets truncation to `max_seq_length` (the file's own
    /// truncation and padding settings are replaced, as `tokenizer(..., max_length=...)` does).
    pub fn load(dir: &Path, max_seq_length: usize, do_lower_case: bool) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::bad_file(
                dir,
                "no tokenizer.json (only fast tokenizers saved as tokenizer.json are supported)",
            ));
        }
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| Error::bad_file(&path, format!("cannot load tokenizer: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| {
                Error::Tokenizer(format!("{}: cannot set truncation: {e}", path.display()))
            })?;
        tokenizer.with_padding(None);
        Ok(Self {
            tokenizer,
            do_lower_case,
        })
    }

    /// Token ids of each text, special tokens included, truncated.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let prepared: Vec<String> = texts.iter().map(|t| self.prepare(t)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(prepared, true)
            .map_err(|e| Error::Tokenizer(format!("cannot encode: {e}")))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    fn prepare(&self, text: &str) -> String {
        let text = py_strip(text);
        if self.do_lower_case {
            text.to_lowercase()
        } else {
            text.to_owned()
        }
    }
}

/// Python's `str.isspace()` for one character: Unicode White_Space plus the ASCII information
/// separators U+001C..U+001F, which Python counts and Rust's `char::is_whitespace` does not.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no arguments.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_matches_python() {
        assert_eq!(py_strip("\u{1c} a b\u{3000}\u{85}\n"), "a b");
        assert_eq!(py_strip("\u{200b}x"), "\u{200b}x"); // zero-width space is not whitespace
        assert_eq!(py_strip(""), "");
    }
}
