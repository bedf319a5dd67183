//! [`SpmSlowTokenizer`]: a transformers *slow* tokenizer over a SentencePiece model, as
//! BaichuanTokenizer and LlamaTokenizer(legacy=True) behave in transformers 4.x.
//!
//! `tokenize(text)` first splits the text on the added tokens (the special tokens `<s>`, `</s>`,
//! `<unk>`, ... and any other added token; leftmost, longest first), then each remaining chunk
//! goes through `sp.encode(chunk, out_type=str)` on its own; pieces map to ids through the added
//! tokens first, then the model. An added token's `lstrip` / `rstrip` / `single_word` flags (from
//! the AddedToken dicts of tokenizer_config.json; all false otherwise, as these tokenizers create
//! their special tokens) act on its neighbours as transformers' `tokenize` does: `single_word`
//! (Baichuan2 sets it on `<s>`, `</s>`, `<unk>`) glues a match that touches text without a space
//! on that side to that text, which is then encoded as plain text.

use std::collections::HashMap;
use std::sync::Arc;

use super::{PieceType, SpmModel};
use crate::error::{Error, Result};

/// One added token (transformers' `added_tokens_decoder` entry).
#[derive(Debug, Clone)]
struct Added {
    content: String,
    id: u32,
    special: bool,
    flags: TokenFlags,
}

/// An AddedToken's flags that change how text around it is split (all false by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenFlags {
    /// Eats the whitespace on its left.
    pub lstrip: bool,
    /// Eats the whitespace on its right.
    pub rstrip: bool,
    /// Only a whole word: a match with non-space text right before (or else right after) it is
    /// glued to that text.
    pub single_word: bool,
}

/// A SentencePiece model plus added tokens, with slow-tokenizer encode/decode.
#[derive(Debug, Clone)]
pub struct SpmSlowTokenizer {
    model: Arc<SpmModel>,
    added: Vec<Added>,
    by_content: HashMap<String, usize>,
    by_id: HashMap<u32, usize>,
    /// Ids past the model's vocabulary handed to added tokens so far.
    next_id: u32,
}

impl SpmSlowTokenizer {
    /// A tokenizer with no added tokens yet.
    pub fn new(model: SpmModel) -> Self {
        let next_id = u32::try_from(model.vocab_size()).unwrap_or(u32::MAX);
        SpmSlowTokenizer {
            model: Arc::new(model),
            added: Vec::new(),
            by_content: HashMap::new(),
            by_id: HashMap::new(),
            next_id,
        }
    }

    /// The SentencePiece model.
    pub fn model(&self) -> &SpmModel {
        &self.model
    }

    /// Registers an added token (recognised whole in text from now on) and returns its id: its
    /// piece id when the model has that piece, else the next id past the vocabulary. Adding a
    /// token again only updates whether it is special.
    pub fn add_token(&mut self, content: &str, special: bool) -> Result<u32> {
        if content.is_empty() {
            return Err(Error::Tokenizer("cannot add an empty token".into()));
        }
        if let Some(&i) = self.by_content.get(content) {
            self.added[i].special |= special;
            return Ok(self.added[i].id);
        }
        let id = match self.model.piece_id(content) {
            Some(id) => id,
            None => {
                let id = self.next_id;
                self.next_id = id.checked_add(1).ok_or_else(|| {
                    Error::Tokenizer(format!("no id left for added token {content:?}"))
                })?;
                id
            }
        };
        self.by_content
            .insert(content.to_string(), self.added.len());
        self.by_id.insert(id, self.added.len());
        self.added.push(Added {
            content: content.to_string(),
            id,
            special,
            flags: TokenFlags::default(),
        });
        Ok(id)
    }

    /// Sets the flags of the added token `content`; false when no such token is registered.
    pub fn set_flags(&mut self, content: &str, flags: TokenFlags) -> bool {
        match self.by_content.get(content) {
            Some(&i) => {
                self.added[i].flags = flags;
                true
            }
            None => false,
        }
    }

    /// `tokenizer.encode(text, add_special_tokens=False)`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for part in self.apply_flags(self.split_on_added(text)) {
            // As in transformers, a part is an added token when its text is one (by string).
            match self.by_content.get(part.as_str()) {
                Some(&i) => ids.push(self.added[i].id),
                None => {
                    for (piece, id) in self.model.encode_pieces(&part) {
                        let added = self.by_content.get(&piece).map(|&i| self.added[i].id);
                        ids.push(added.unwrap_or(id));
                    }
                }
            }
        }
        ids
    }

    /// transformers' pass over the split text (`PreTrainedTokenizer.tokenize`): each added
    /// token, left to right, strips or absorbs its neighbours by its flags; `left` and `right`
    /// are the neighbours before this token's own strips. Empty parts are dropped.
    fn apply_flags(&self, chunks: Vec<Chunk<'_>>) -> Vec<String> {
        let mut parts: Vec<String> = chunks
            .into_iter()
            .map(|c| match c {
                Chunk::Added(i) => self.added[i].content.clone(),
                Chunk::Text(t) => t.to_string(),
            })
            .collect();
        for i in 0..parts.len() {
            let Some(&k) = self.by_content.get(parts[i].as_str()) else {
                continue;
            };
            let flags = self.added[k].flags;
            if flags == TokenFlags::default() {
                continue;
            }
            let left = (i > 0).then(|| parts[i - 1].clone());
            let right = parts.get(i + 1).cloned();
            let left = left.filter(|l| !l.is_empty());
            let right = right.filter(|r| !r.is_empty());
            if flags.rstrip && right.is_some() {
                parts[i + 1] = parts[i + 1].trim_start().to_string();
            }
            if flags.lstrip && left.is_some() {
                parts[i - 1] = parts[i - 1].trim_end().to_string();
            }
            if flags.single_word && left.as_ref().is_some_and(|l| !l.ends_with(' ')) {
                let token = std::mem::take(&mut parts[i]);
                parts[i - 1].push_str(&token);
            } else if flags.single_word && right.as_ref().is_some_and(|r| !r.starts_with(' ')) {
                let token = std::mem::take(&mut parts[i]);
                parts[i + 1].insert_str(0, &token);
            }
        }
        parts.retain(|p| !p.is_empty());
        parts
    }

    /// The text split into added tokens and the (non-empty) text between them, leftmost match
    /// first, the longest token at a position winning.
    fn split_on_added<'t>(&self, text: &'t str) -> Vec<Chunk<'t>> {
        let mut out = Vec::new();
        if self.added.is_empty() {
            if !text.is_empty() {
                out.push(Chunk::Text(text));
            }
            return out;
        }
        let mut plain_start = 0;
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            let hit = self
                .added
                .iter()
                .enumerate()
                .filter(|(_, a)| rest.starts_with(a.content.as_str()))
                .max_by_key(|(_, a)| a.content.len());
            match hit {
                Some((i, a)) => {
                    if plain_start < pos {
                        out.push(Chunk::Text(&text[plain_start..pos]));
                    }
                    out.push(Chunk::Added(i));
                    pos += a.content.len();
                    plain_start = pos;
                }
                None => pos += rest.chars().next().map_or(1, char::len_utf8),
            }
        }
        if plain_start < text.len() {
            out.push(Chunk::Text(&text[plain_start..]));
        }
        out
    }

    /// `tokenizer.decode(ids, skip_special_tokens)` of BaichuanTokenizer (transformers 4.x):
    /// pieces decoded by sentencepiece; special tokens of the vocabulary written as their text
    /// (with a space before one that follows ordinary text); other added tokens written as
    /// they are, the parts joined with spaces (`spaces_between_special_tokens=True`).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let mut parts: Vec<String> = Vec::new();
        let mut current: Vec<&str> = Vec::new();
        for &id in ids {
            let added = self.by_id.get(&id).map(|&i| &self.added[i]);
            if skip_special_tokens && added.is_some_and(|a| a.special) {
                continue;
            }
            match added {
                // transformers' "legacy added tokens": written as they are, between spaces.
                Some(a) if !a.special || a.id as usize >= self.model.vocab_size() => {
                    if !current.is_empty() {
                        let s = self.pieces_to_string(&current);
                        if !s.is_empty() {
                            parts.push(s);
                        }
                        current.clear();
                    }
                    parts.push(a.content.clone());
                }
                Some(a) => current.push(&a.content),
                None => current.push(self.model.id_to_piece(id).ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "{}: id {id} is outside the vocabulary of {}",
                        self.model.source().display(),
                        self.vocab_size()
                    ))
                })?),
            }
        }
        if !current.is_empty() {
            parts.push(self.pieces_to_string(&current));
        }
        Ok(parts.join(" "))
    }

    /// BaichuanTokenizer's `convert_tokens_to_string`.
    fn pieces_to_string(&self, pieces: &[&str]) -> String {
        let mut out = String::new();
        let mut sub: Vec<&str> = Vec::new();
        let mut prev_special = false;
        for (i, &p) in pieces.iter().enumerate() {
            if self
                .by_content
                .get(p)
                .is_some_and(|&k| self.added[k].special)
            {
                if !prev_special && i > 0 {
                    out.push(' ');
                }
                out.push_str(&self.model.decode_pieces(&sub));
                out.push_str(p);
                sub.clear();
                prev_special = true;
            } else {
                sub.push(p);
                prev_special = false;
            }
        }
        out.push_str(&self.model.decode_pieces(&sub));
        out
    }

    /// Id of a token: an added token, else a piece of the model.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match self.by_content.get(token) {
            Some(&i) => Some(self.added[i].id),
            None => self.model.piece_id(token),
        }
    }

    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match self.by_id.get(&id) {
            Some(&i) => Some(self.added[i].content.clone()),
            None => self.model.id_to_piece(id).map(str::to_string),
        }
    }

    /// Vocabulary size including added tokens past the model's pieces.
    pub fn vocab_size(&self) -> usize {
        self.next_id as usize
    }

    /// Whether `id` is a control piece or a special added token.
    pub fn is_special(&self, id: u32) -> bool {
        self.by_id.get(&id).is_some_and(|&i| self.added[i].special)
            || self.model.piece_type(id) == Some(PieceType::Control)
    }
}

enum Chunk<'t> {
    Added(usize),
    Text(&'t str),
}
