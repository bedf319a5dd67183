//! A tokenizer from a GGUF file's vocabulary metadata, built as an HF `tokenizer.json` (so the
//! same JSON can be written next to weights converted from the GGUF).
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE from `tokens` + `merges`, with the
//!   pre-tokenizer that llama.cpp's `tokenizer.ggml.pre` names (see [`pre_tokenizer_for`]).
//! - `tokenizer.ggml.model = "llama"`: SentencePiece-style BPE with byte fallback; merges are
//!   derived from `scores` the way transformers' GGUF converter derives them.
//!
//! Token type 3 (control) becomes an added special token, type 4 (user defined) an added normal
//! token, so both are recognised whole in text.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{Value as Json, json};
use tokenizers::Tokenizer;

use super::text::{SpecialTokenSpec, TextTokenizer};
use crate::error::{Error, Result};

const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The vocabulary part of a GGUF file's metadata.
struct GgufVocab<'a> {
    path: &'a Path,
    model: String,
    tokens: Vec<String>,
    token_types: Vec<i64>,
    meta: &'a HashMap<String, Value>,
}

impl<'a> GgufVocab<'a> {
    fn read(content: &'a Content, path: &'a Path) -> Result<Self> {
        let meta = &content.metadata;
        let model = meta_str(meta, path, "tokenizer.ggml.model")?.ok_or_else(|| {
            Error::bad_file(
                path,
                "GGUF metadata has no tokenizer.ggml.model (no vocabulary)",
            )
        })?;
        let tokens = meta_strings(meta, path, "tokenizer.ggml.tokens")?
            .ok_or_else(|| Error::bad_file(path, "GGUF metadata has no tokenizer.ggml.tokens"))?;
        let token_types = match meta.get("tokenizer.ggml.token_type") {
            Some(v) => array(v, path, "tokenizer.ggml.token_type")?
                .iter()
                .map(|t| int(t, path, "tokenizer.ggml.token_type"))
                .collect::<Result<Vec<_>>>()?,
            None => vec![1; tokens.len()],
        };
        Ok(GgufVocab {
            path,
            model: model.to_string(),
            tokens,
            token_types,
            meta,
        })
    }

    fn token_for_id_key(&self, key: &str) -> Result<Option<String>> {
        let Some(v) = self.meta.get(key) else {
            return Ok(None);
        };
        let id = int(v, self.path, key)?;
        let token = usize::try_from(id).ok().and_then(|i| self.tokens.get(i));
        match token {
            Some(t) => Ok(Some(t.clone())),
            None => Err(Error::bad_file(
                self.path,
                format!(
                    "{key} = {id} is outside the vocabulary of {}",
                    self.tokens.len()
                ),
            )),
        }
    }

    fn added_tokens_json(&self) -> Vec<Json> {
        let mut out = Vec::new();
        for (id, (tok, &ty)) in self.tokens.iter().zip(&self.token_types).enumerate() {
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                out.push(json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == TOKEN_TYPE_CONTROL,
                }));
            }
        }
        out
    }

    fn vocab_json(&self) -> Json {
        let mut vocab = serde_json::Map::new();
        for (id, tok) in self.tokens.iter().enumerate() {
            // A duplicated token keeps its first id, as the GGUF reader of llama.cpp does.
            vocab.entry(tok.clone()).or_insert(json!(id));
        }
        Json::Object(vocab)
    }
}

/// The HF `tokenizer.json` equivalent to a GGUF file's vocabulary.
pub fn tokenizer_json_from_gguf(content: &Content, path: &Path) -> Result<Json> {
    let vocab = GgufVocab::read(content, path)?;
    match vocab.model.as_str() {
        "gpt2" => gpt2_tokenizer_json(&vocab),
        "llama" => llama_tokenizer_json(&vocab),
        other => Err(Error::Unsupported(format!(
            "{}: GGUF tokenizer model {other:?} (supported: \"gpt2\", \"llama\")",
            path.display()
        ))),
    }
}

fn gpt2_tokenizer_json(vocab: &GgufVocab<'_>) -> Result<Json> {
    let merges =
        meta_strings(vocab.meta, vocab.path, "tokenizer.ggml.merges")?.ok_or_else(|| {
            Error::bad_file(
                vocab.path,
                "a \"gpt2\" GGUF vocabulary needs tokenizer.ggml.merges",
            )
        })?;
    let pre = meta_str(vocab.meta, vocab.path, "tokenizer.ggml.pre")?.unwrap_or("default");
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added_tokens_json(),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer_for(pre),
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab.vocab_json(), "merges": merges,
        },
    }))
}

/// llama.cpp's "llama-bpe" (Llama 3) regex.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's "qwen2" regex.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` name. "smollm" (and "starcoder",
/// "refact") split every digit apart before GPT-2's regex, as those models' own tokenizer.json
/// do; unknown names fall back to plain GPT-2 byte-level splitting (`ByteLevel(use_regex=true)`
/// applies GPT-2's regex).
pub fn pre_tokenizer_for(pre: &str) -> Json {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    match pre {
        "smollm" | "starcoder" | "refact" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
        }),
        "llama-bpe" | "llama3" | "smaug-bpe" => json!({
            "type": "Sequence",
            "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)],
        }),
        "qwen2" => json!({
            "type": "Sequence",
            "pretokenizers": [split(QWEN2_REGEX), byte_level(false)],
        }),
        other => {
            if other != "default" && other != "gpt-2" && other != "gpt2" {
                tracing::warn!(
                    pre = other,
                    "unknown GGUF pre-tokenizer; using GPT-2's regex"
                );
            }
            byte_level(true)
        }
    }
}

fn llama_tokenizer_json(vocab: &GgufVocab<'_>) -> Result<Json> {
    let scores: Vec<f32> = match vocab.meta.get("tokenizer.ggml.scores") {
        Some(v) => array(v, vocab.path, "tokenizer.ggml.scores")?
            .iter()
            .map(|s| s.to_f32().or_else(|_| s.to_f64().map(|f| f as f32)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::bad_file(vocab.path, format!("tokenizer.ggml.scores: {e}")))?,
        None => {
            return Err(Error::bad_file(
                vocab.path,
                "a \"llama\" GGUF vocabulary needs tokenizer.ggml.scores",
            ));
        }
    };
    if scores.len() != vocab.tokens.len() {
        return Err(Error::bad_file(
            vocab.path,
            format!("{} scores for {} tokens", scores.len(), vocab.tokens.len()),
        ));
    }
    let unk = vocab.token_for_id_key("tokenizer.ggml.unknown_token_id")?;
    let add_prefix = match vocab.meta.get("tokenizer.ggml.add_space_prefix") {
        Some(v) => v.to_bool().unwrap_or(true),
        None => true,
    };
    // transformers 5's LlamaTokenizer (legacy=False): Metaspace prepends "▁" to the first piece
    // of the text only (not after special tokens), as llama.cpp's add_space_prefix does.
    let scheme = if add_prefix { "first" } else { "never" };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added_tokens_json(),
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab.vocab_json(),
            "merges": spm_merges(&vocab.tokens, &scores),
        },
    }))
}

/// Merges for a score-ranked SentencePiece vocabulary, as transformers' `generate_merges`
/// derives them: every split of a token into two tokens of the vocabulary is a merge; the splits
/// of one token are ordered by the ids of their halves; all merges are then ranked by the merged
/// token's score, then the lengths (in characters) of the halves, highest first, ties keeping
/// that order.
fn spm_merges(tokens: &[String], scores: &[f32]) -> Vec<String> {
    let mut id_of: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut score_of: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, (t, &s)) in tokens.iter().zip(scores).enumerate() {
        // Python dicts: the last id/score of a duplicated token wins, its first position stays.
        if id_of.insert(t.as_str(), i).is_none() {
            order.push(t.as_str());
        }
        score_of.insert(t.as_str(), s);
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str, f32)> = token
            .char_indices()
            .skip(1)
            .map(|(i, _)| token.split_at(i))
            .filter(|(l, r)| id_of.contains_key(l) && id_of.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (id_of[l], id_of[r]));
        merges.extend(local);
    }
    merges.sort_by(|a, b| {
        b.2.total_cmp(&a.2)
            .then(b.0.chars().count().cmp(&a.0.chars().count()))
            .then(b.1.chars().count().cmp(&a.1.chars().count()))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| format!("{l} {r}"))
        .collect()
}

/// The special tokens, chat template and flags a GGUF file declares.
pub fn special_tokens_from_gguf(content: &Content, path: &Path) -> Result<SpecialTokenSpec> {
    let vocab = GgufVocab::read(content, path)?;
    let default_add_bos = vocab.model == "llama";
    let add_bos = match vocab.meta.get("tokenizer.ggml.add_bos_token") {
        Some(v) => v.to_bool().unwrap_or(default_add_bos),
        None => default_add_bos,
    };
    Ok(SpecialTokenSpec {
        bos: vocab.token_for_id_key("tokenizer.ggml.bos_token_id")?,
        eos: vocab.token_for_id_key("tokenizer.ggml.eos_token_id")?,
        pad: vocab.token_for_id_key("tokenizer.ggml.padding_token_id")?,
        unk: vocab.token_for_id_key("tokenizer.ggml.unknown_token_id")?,
        additional: Vec::new(),
        // GGUF has no such flag; models converted to GGUF are modern tokenizers whose configs
        // set it to false, and transformers 5 defaults to false.
        clean_up_tokenization_spaces: false,
        chat_template: meta_str(vocab.meta, path, "tokenizer.chat_template")?.map(str::to_string),
        add_bos_token: add_bos,
    })
}

impl TextTokenizer {
    /// The tokenizer described by a GGUF file's metadata.
    pub fn from_gguf_content(content: &Content, path: &Path) -> Result<Self> {
        let json = tokenizer_json_from_gguf(content, path)?;
        let inner = Tokenizer::from_bytes(json.to_string().as_bytes()).map_err(|e| {
            Error::bad_file(
                path,
                format!("cannot build a tokenizer from the GGUF vocabulary: {e}"),
            )
        })?;
        Self::from_parts(inner, special_tokens_from_gguf(content, path)?, path)
    }

    /// Reads a GGUF file's metadata and builds its tokenizer.
    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = Content::read(&mut file)
            .map_err(|e| Error::bad_file(path, format!("not a readable GGUF file: {e}")))?;
        Self::from_gguf_content(&content, path)
    }
}

/// Writes `tokenizer.json`, `tokenizer_config.json` and (when the GGUF has one)
/// `chat_template.jinja` (the template is in the config too) into `out_dir`, so that a folder converted from a GGUF file loads with
/// [`TextTokenizer::from_hf_dir`] (and transformers) to the same tokenizer.
pub fn write_hf_tokenizer_files(content: &Content, gguf_path: &Path, out_dir: &Path) -> Result<()> {
    let json = tokenizer_json_from_gguf(content, gguf_path)?;
    let spec = special_tokens_from_gguf(content, gguf_path)?;
    let added_decoder: serde_json::Map<String, Json> = json["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let mut entry = t.clone();
            // tokenizer_config.json keys entries by id; the entry itself has no "id" field.
            if let Some(o) = entry.as_object_mut() {
                o.remove("id");
            }
            (t["id"].to_string(), entry)
        })
        .collect();
    let mut config = json!({
        "added_tokens_decoder": added_decoder,
        "bos_token": spec.bos,
        "eos_token": spec.eos,
        "pad_token": spec.pad,
        "unk_token": spec.unk,
        "add_bos_token": spec.add_bos_token,
        "clean_up_tokenization_spaces": spec.clean_up_tokenization_spaces,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let (Some(template), Some(o)) = (&spec.chat_template, config.as_object_mut()) {
        // Also in the config: transformers before 4.43 does not read chat_template.jinja.
        o.insert("chat_template".into(), Json::String(template.clone()));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    write_json(&out_dir.join("tokenizer.json"), &json)?;
    write_json(&out_dir.join("tokenizer_config.json"), &config)?;
    if let Some(template) = spec.chat_template {
        let p = out_dir.join("chat_template.jinja");
        std::fs::write(&p, template).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &Json) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::bad_file(path, format!("cannot serialise: {e}")))?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn meta_str<'m>(
    meta: &'m HashMap<String, Value>,
    path: &Path,
    key: &str,
) -> Result<Option<&'m str>> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(Error::bad_file(
            path,
            format!("{key}: expected a string, found {other:?}"),
        )),
    }
}

fn meta_strings(
    meta: &HashMap<String, Value>,
    path: &Path,
    key: &str,
) -> Result<Option<Vec<String>>> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    array(v, path, key)?
        .iter()
        .map(|s| match s {
            Value::String(s) => Ok(s.clone()),
            other => Err(Error::bad_file(
                path,
                format!("{key}: expected strings, found {other:?}"),
            )),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn array<'v>(v: &'v Value, path: &Path, key: &str) -> Result<&'v Vec<Value>> {
    v.to_vec()
        .map_err(|_| Error::bad_file(path, format!("{key}: expected an array")))
}

fn int(v: &Value, path: &Path, key: &str) -> Result<i64> {
    let n = match v {
        Value::U8(x) => i64::from(*x),
        Value::I8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::U64(x) => i64::try_from(*x).unwrap_or(i64::MAX),
        Value::I64(x) => *x,
        other => {
            return Err(Error::bad_file(
                path,
                format!("{key}: expected an integer, found {other:?}"),
            ));
        }
    };
    Ok(n)
}
