//! LLaMA-Factory v0.7.1 templates (`data/template.py`, `data/formatter.py`), reimplemented:
//! formatting of messages into elements, per-element tokenization, `_make_pairs` truncation,
//! `encode_oneturn`/`encode_multiturn`, and `get_template_and_fix_tokenizer`'s tokenizer fixes.
//! docs/FIDELITY.md §1.3 and §1.4 describe the semantics reproduced here.

use super::ChatMessage;
use super::text::TextTokenizer;
use crate::error::{Error, Result};

/// One slot of a formatter: text (with `{{content}}`/`{{idx}}` placeholders), the bos or eos
/// token (LF's `{"bos_token"}` / `{"eos_token"}` sets), or a named token (LF's `{"token": ..}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Text(String),
    Bos,
    Eos,
    Token(String),
}

/// LF's String/Empty formatter: a list of slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formatter {
    slots: Vec<Slot>,
}

impl Formatter {
    pub fn new(slots: Vec<Slot>) -> Self {
        Formatter { slots }
    }

    /// LF's `StringFormatter.apply(**kwargs)`: in each text slot, for each (name, value) in order,
    /// the first `{{name}}` is replaced by value (so a value may itself be substituted into by a
    /// later name, as in LF).
    pub fn apply(&self, kwargs: &[(&str, &str)]) -> Vec<Slot> {
        self.slots
            .iter()
            .map(|slot| match slot {
                Slot::Text(s) => {
                    let mut s = s.clone();
                    for (name, value) in kwargs {
                        s = s.replacen(&format!("{{{{{name}}}}}"), value, 1);
                    }
                    Slot::Text(s)
                }
                other => other.clone(),
            })
            .collect()
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
}

/// A LLaMA-Factory template (LF `Template` / `Llama2Template`).
#[derive(Debug, Clone)]
pub struct Template {
    pub name: &'static str,
    pub format_user: Formatter,
    pub format_assistant: Formatter,
    pub format_system: Formatter,
    pub format_observation: Formatter,
    pub format_separator: Formatter,
    pub default_system: String,
    pub stop_words: Vec<String>,
    pub efficient_eos: bool,
    pub replace_eos: bool,
    pub force_system: bool,
    /// `Llama2Template`: the system text goes inside the first user turn.
    pub llama2_style: bool,
}

impl Template {
    /// LF `get_template_and_fix_tokenizer`: with `replace_eos`, eos becomes the first stop word;
    /// a missing eos becomes `<|endoftext|>`; a missing pad becomes eos; the other stop words are
    /// appended to the additional special tokens. Tokens missing from the vocabulary are added
    /// (with ids past the model's embedding, as in LF without `resize_vocab`).
    pub fn fix_tokenizer(&self, tokenizer: &mut TextTokenizer) -> Result<()> {
        let mut stop_words: &[String] = &self.stop_words;
        if self.replace_eos {
            let Some((first, rest)) = self.stop_words.split_first() else {
                return Err(Error::Template(format!(
                    "template {}: stop words are required to replace the EOS token",
                    self.name
                )));
            };
            tokenizer.set_eos_token(first)?;
            stop_words = rest;
        }
        if tokenizer.eos_id().is_none() {
            tokenizer.set_eos_token("<|endoftext|>")?;
        }
        if tokenizer.pad_id().is_none() {
            let eos = tokenizer.eos_token().unwrap_or("<|endoftext|>").to_string();
            tokenizer.set_pad_token(&eos)?;
        }
        let words: Vec<&str> = stop_words.iter().map(String::as_str).collect();
        tokenizer.extend_additional_special_tokens(&words)
    }

    /// Token ids generation stops at, for a tokenizer fixed by [`Template::fix_tokenizer`]:
    /// eos followed by the additional special tokens (which include the remaining stop words),
    /// without repeats — LF's `[eos_token_id] + additional_special_tokens_ids`.
    pub fn stop_token_ids(&self, tokenizer: &TextTokenizer) -> Vec<u32> {
        let mut ids: Vec<u32> = tokenizer.eos_id().into_iter().collect();
        for id in tokenizer.additional_special_token_ids() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// LF `encode_oneturn`: (prompt ids, label ids) for `messages` (user/assistant alternating,
    /// ending with the assistant turn whose tokens are the label).
    pub fn encode_oneturn(
        &self,
        tokenizer: &TextTokenizer,
        messages: &[ChatMessage],
        system: &str,
        cutoff_len: usize,
        reserved_label_len: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let pairs =
            self.encode_multiturn(tokenizer, messages, system, cutoff_len, reserved_label_len)?;
        let Some(((last_src, last_tgt), history)) = pairs.split_last() else {
            // Python would fail on `encoded_pairs[-1]`; say why instead.
            return Err(Error::Template(format!(
                "template {}: nothing left to encode (cutoff_len {cutoff_len}, {} messages)",
                self.name,
                messages.len()
            )));
        };
        let mut prompt = Vec::new();
        for (src, tgt) in history {
            prompt.extend_from_slice(src);
            prompt.extend_from_slice(tgt);
        }
        prompt.extend_from_slice(last_src);
        Ok((prompt, last_tgt.clone()))
    }

    /// LF `encode_multiturn`: the (source, target) id pairs after `cutoff_len` truncation.
    pub fn encode_multiturn(
        &self,
        tokenizer: &TextTokenizer,
        messages: &[ChatMessage],
        system: &str,
        cutoff_len: usize,
        reserved_label_len: usize,
    ) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        if !messages.len().is_multiple_of(2) {
            return Err(Error::Template(format!(
                "template {}: messages must alternate user/assistant and end with an assistant turn, got {}",
                self.name,
                messages.len()
            )));
        }
        let encoded = messages
            .iter()
            .enumerate()
            .map(|(i, m)| self.message_ids(tokenizer, i, m, system))
            .collect::<Result<Vec<_>>>()?;
        Ok(make_pairs(&encoded, cutoff_len, reserved_label_len))
    }

    /// The elements of message `i` (LF `_encode` / `Llama2Template._encode`), as ids.
    fn message_ids(
        &self,
        tokenizer: &TextTokenizer,
        i: usize,
        message: &ChatMessage,
        system: &str,
    ) -> Result<Vec<u32>> {
        let system = if system.is_empty() {
            self.default_system.as_str()
        } else {
            system
        };
        let with_system = i == 0 && (!system.is_empty() || self.force_system);
        let mut elements = Vec::new();
        let mut system_text = String::new();
        if with_system {
            let formatted = self.format_system.apply(&[("content", system)]);
            if self.llama2_style {
                // Llama2Template takes element [0] as text and puts it inside the user turn.
                if let Some(Slot::Text(s)) = formatted.first() {
                    system_text = s.clone();
                }
            } else {
                elements.extend(formatted);
            }
        } else if i > 0 && i.is_multiple_of(2) {
            elements.extend(self.format_separator.apply(&[]));
        }
        match message.role.as_str() {
            "user" if self.llama2_style => {
                let content = format!("{system_text}{}", message.content);
                elements.extend(self.format_user.apply(&[("content", &content)]));
            }
            "user" => {
                let idx = (i / 2).to_string();
                elements.extend(
                    self.format_user
                        .apply(&[("content", &message.content), ("idx", &idx)]),
                );
            }
            "assistant" => elements.extend(
                self.format_assistant
                    .apply(&[("content", &message.content)]),
            ),
            "observation" => elements.extend(
                self.format_observation
                    .apply(&[("content", &message.content)]),
            ),
            other => {
                return Err(Error::Template(format!(
                    "template {}: unexpected role {other:?} (expected user, assistant or observation)",
                    self.name
                )));
            }
        }
        elements_to_ids(tokenizer, &elements)
    }
}

/// LF `_convert_elements_to_ids`: each non-empty text is encoded on its own.
fn elements_to_ids(tokenizer: &TextTokenizer, elements: &[Slot]) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for element in elements {
        match element {
            Slot::Text(s) if s.is_empty() => {}
            Slot::Text(s) => ids.extend(tokenizer.encode(s)?),
            Slot::Bos => ids.extend(tokenizer.bos_id()),
            Slot::Eos => ids.extend(tokenizer.eos_id()),
            Slot::Token(t) => {
                // transformers' convert_tokens_to_ids: unknown tokens map to unk.
                let id = tokenizer
                    .token_to_id(t)
                    .or(tokenizer.unk_id())
                    .ok_or_else(|| {
                        Error::Template(format!(
                            "token {t:?} is not in the vocabulary and there is no unk token"
                        ))
                    })?;
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// LF `infer_max_len`: the source and target budgets of a pair given what is left. The source
/// budget can be negative when `reserved_label_len` exceeds what is left; Python then slices
/// from the end (see [`py_prefix`]).
pub fn infer_max_len(
    source_len: usize,
    target_len: usize,
    max_len: usize,
    reserved_label_len: usize,
) -> (i64, usize) {
    let total = source_len + target_len;
    // Python: int(max_len * (target_len / (source_len + target_len))), float math, toward zero.
    // A pair of two empty messages divides by zero in Python; treat it as a zero share.
    let share = if total == 0 {
        0.0
    } else {
        target_len as f64 / total as f64
    };
    let max_target = ((max_len as f64) * share).trunc() as usize;
    let max_target = max_target.max(reserved_label_len);
    let max_source = i64::try_from(max_len).unwrap_or(i64::MAX) - max_target.min(target_len) as i64;
    (max_source, max_target)
}

/// Python's `ids[:n]` for a possibly negative `n`.
fn py_prefix(ids: &[u32], n: i64) -> Vec<u32> {
    let len = ids.len() as i64;
    let end = if n < 0 { (len + n).max(0) } else { n.min(len) };
    ids[..end as usize].to_vec()
}

/// LF `_make_pairs`: pairs (message 2k, message 2k+1) left to right; once `cutoff_len` tokens
/// are used the remaining pairs are dropped; each pair keeps prefixes of its budgets.
pub fn make_pairs(
    encoded: &[Vec<u32>],
    cutoff_len: usize,
    reserved_label_len: usize,
) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut pairs = Vec::new();
    let mut total = 0usize;
    for chunk in encoded.chunks_exact(2) {
        if total >= cutoff_len {
            break;
        }
        let (src, tgt) = (&chunk[0], &chunk[1]);
        let (max_src, max_tgt) =
            infer_max_len(src.len(), tgt.len(), cutoff_len - total, reserved_label_len);
        let src = py_prefix(src, max_src);
        let tgt = py_prefix(tgt, max_tgt as i64);
        total += src.len() + tgt.len();
        pairs.push((src, tgt));
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infer_max_len_matches_python_float_math() {
        // int(16 * (5 / 12)) = int(6.666..) = 6; source gets 16 - min(6, 5) = 11.
        assert_eq!(infer_max_len(7, 5, 16, 1), (11, 6));
        // Target share rounds to 0 → reserved_label_len.
        assert_eq!(infer_max_len(100, 1, 10, 1), (9, 1));
        assert_eq!(infer_max_len(3, 0, 10, 1), (10, 1));
        // reserved_label_len above the budget: negative source budget, Python slices from the end.
        assert_eq!(infer_max_len(5, 5, 2, 4), (-2, 4));
        assert_eq!(py_prefix(&[1, 2, 3, 4, 5], -2), vec![1, 2, 3]);
    }

    #[test]
    fn make_pairs_drops_pairs_after_cutoff() {
        let enc = vec![vec![1; 10], vec![2; 10], vec![3; 4], vec![4; 4]];
        let pairs = make_pairs(&enc, 12, 1);
        assert_eq!(pairs.len(), 1);
        assert_eq!((pairs[0].0.len(), pairs[0].1.len()), (6, 6));
    }

    #[test]
    fn apply_replaces_first_placeholder_in_order() {
        let f = Formatter::new(vec![
            Slot::Text("[{{idx}}] {{content}} {{content}}".into()),
            Slot::Eos,
        ]);
        let out = f.apply(&[("content", "x {{idx}}"), ("idx", "3")]);
        // LF quirk: content goes in first; then the first "{{idx}}" (the slot's own) is replaced.
        assert_eq!(
            out,
            vec![Slot::Text("[3] x {{idx}} {{content}}".into()), Slot::Eos]
        );
    }
}
