//! Reading an HF folder's `tokenizer_config.json`, `special_tokens_map.json` and
//! `chat_template.jinja` into a [`SpecialTokenSpec`].

use std::path::Path;

use serde_json::Value;

use super::spm::slow::TokenFlags;
use crate::error::{Error, Result};

/// The special-token strings and flags a tokenizer is built with, before ids are resolved.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokenSpec {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
    pub additional: Vec<String>,
    pub clean_up_tokenization_spaces: bool,
    pub chat_template: Option<String>,
    pub add_bos_token: bool,
}

/// What an HF folder says about its tokenizer beyond tokenizer.json.
#[derive(Debug, Clone, Default)]
pub struct HfTokenizerConfig {
    pub spec: SpecialTokenSpec,
    /// `added_tokens_decoder` entries, in id order: (content, special).
    pub added_tokens: Vec<(String, bool)>,
    /// The lstrip / rstrip / single_word flags of every token given as an AddedToken dict (the
    /// special-token keys, then added_tokens_decoder, whose entries win as in transformers).
    pub token_flags: Vec<(String, TokenFlags)>,
}

/// Reads and parses a JSON file, naming the file in errors.
pub fn read_json_file(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))
}

impl HfTokenizerConfig {
    /// Reads the tokenizer settings of folder `dir`; every file is optional.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_json_file(&config_path)?
        } else {
            Value::Object(Default::default())
        };
        let map_path = dir.join("special_tokens_map.json");
        let map = if map_path.is_file() {
            Some(read_json_file(&map_path)?)
        } else {
            None
        };
        let mut out = Self::from_values(&config, map.as_ref(), &config_path)?;
        let jinja_path = dir.join("chat_template.jinja");
        if jinja_path.is_file() {
            // transformers prefers the standalone file over the config key.
            let text =
                std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?;
            out.spec.chat_template = Some(text);
        }
        Ok(out)
    }

    /// Parses an already-read tokenizer_config.json (+ optional special_tokens_map.json);
    /// `path` names the config in errors.
    pub fn from_values(config: &Value, map: Option<&Value>, path: &Path) -> Result<Self> {
        let token = |key: &str| -> Result<Option<String>> {
            match token_content(config.get(key), path, key)? {
                Some(t) => Ok(Some(t)),
                None => token_content(map.and_then(|m| m.get(key)), path, key),
            }
        };
        let mut spec = SpecialTokenSpec {
            bos: token("bos_token")?,
            eos: token("eos_token")?,
            pad: token("pad_token")?,
            unk: token("unk_token")?,
            additional: Vec::new(),
            // transformers 4.x defaults the flag to True when the config is silent.
            clean_up_tokenization_spaces: config
                .get("clean_up_tokenization_spaces")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            chat_template: chat_template(config.get("chat_template"), path)?,
            add_bos_token: config
                .get("add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let additional = config
            .get("additional_special_tokens")
            .or_else(|| map.and_then(|m| m.get("additional_special_tokens")));
        if let Some(Value::Array(items)) = additional {
            for item in items {
                if let Some(t) = token_content(Some(item), path, "additional_special_tokens")? {
                    spec.additional.push(t);
                }
            }
        }
        Ok(HfTokenizerConfig {
            spec,
            added_tokens: added_tokens(config, path)?,
            token_flags: token_flags(config, map),
        })
    }
}

/// A token given as a string or as an AddedToken dict (`{"content": ..}`); null is absent.
fn token_content(value: Option<&Value>, path: &Path, key: &str) -> Result<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::bad_file(
                path,
                format!("{key}: a token dict needs a string \"content\""),
            )),
        },
        Some(other) => Err(Error::bad_file(
            path,
            format!("{key}: expected a string or a token dict, found {other}"),
        )),
    }
}

/// The flags of the AddedToken dicts among the special-token keys (config first, then
/// special_tokens_map.json for a key the config lacks) and added_tokens_decoder, in that order.
fn token_flags(config: &Value, map: Option<&Value>) -> Vec<(String, TokenFlags)> {
    let mut dicts: Vec<&Value> = Vec::new();
    for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        let found = config
            .get(key)
            .filter(|v| !v.is_null())
            .or_else(|| map.and_then(|m| m.get(key)));
        dicts.extend(found);
    }
    let additional = config
        .get("additional_special_tokens")
        .or_else(|| map.and_then(|m| m.get("additional_special_tokens")));
    if let Some(Value::Array(items)) = additional {
        dicts.extend(items);
    }
    if let Some(Value::Object(decoder)) = config.get("added_tokens_decoder") {
        dicts.extend(decoder.values());
    }
    let flag = |o: &serde_json::Map<String, Value>, k: &str| {
        o.get(k).and_then(Value::as_bool).unwrap_or(false)
    };
    dicts
        .into_iter()
        .filter_map(|v| {
            let o = v.as_object()?;
            let content = o.get("content")?.as_str()?.to_string();
            let flags = TokenFlags {
                lstrip: flag(o, "lstrip"),
                rstrip: flag(o, "rstrip"),
                single_word: flag(o, "single_word"),
            };
            Some((content, flags))
        })
        .collect()
}

/// `chat_template` as a string, or a list of `{name, template}` of which "default" is used.
fn chat_template(value: Option<&Value>, path: &Path) -> Result<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                let name = item.get("name").and_then(Value::as_str).unwrap_or("");
                if name == "default" {
                    let t = item
                        .get("template")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            Error::bad_file(
                                path,
                                "chat_template \"default\" has no string \"template\"",
                            )
                        })?;
                    return Ok(Some(t.to_string()));
                }
                names.push(name.to_string());
            }
            Err(Error::bad_file(
                path,
                format!("chat_template lists {names:?} but none is named \"default\""),
            ))
        }
        Some(other) => Err(Error::bad_file(
            path,
            format!("chat_template: expected a string or a list of named templates, found {other}"),
        )),
    }
}

/// `added_tokens_decoder` (`{"id": {"content": .., "special": ..}}`) sorted by id.
fn added_tokens(config: &Value, path: &Path) -> Result<Vec<(String, bool)>> {
    let Some(Value::Object(map)) = config.get("added_tokens_decoder") else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::with_capacity(map.len());
    for (id, tok) in map {
        let id: u64 = id.parse().map_err(|_| {
            Error::bad_file(
                path,
                format!("added_tokens_decoder: key {id:?} is not a token id"),
            )
        })?;
        let content = token_content(Some(tok), path, "added_tokens_decoder")?.unwrap_or_default();
        let special = tok.get("special").and_then(Value::as_bool).unwrap_or(false);
        entries.push((id, content, special));
    }
    entries.sort_by_key(|e| e.0);
    Ok(entries.into_iter().map(|(_, c, s)| (c, s)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_token_forms_and_named_templates() {
        let config = json!({
            "bos_token": {"content": "<s>", "lstrip": false, "__type": "AddedToken"},
            "eos_token": "</s>",
            "pad_token": null,
            "clean_up_tokenization_spaces": false,
            "additional_special_tokens": ["<a>", {"content": "<b>"}],
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
            "added_tokens_decoder": {"5": {"content": "<x>", "special": true}, "2": {"content": "<y>"}}
        });
        let c = HfTokenizerConfig::from_values(&config, None, Path::new("cfg.json")).unwrap();
        assert_eq!(c.spec.bos.as_deref(), Some("<s>"));
        assert_eq!(c.spec.eos.as_deref(), Some("</s>"));
        assert_eq!(c.spec.pad, None);
        assert!(!c.spec.clean_up_tokenization_spaces);
        assert_eq!(
            c.spec.additional,
            vec!["<a>".to_string(), "<b>".to_string()]
        );
        assert_eq!(c.spec.chat_template.as_deref(), Some("D"));
        assert_eq!(
            c.added_tokens,
            vec![("<y>".into(), false), ("<x>".into(), true)]
        );
    }

    #[test]
    fn reads_the_flags_of_token_dicts() {
        let config = json!({
            "bos_token": {"content": "<s>", "single_word": true, "lstrip": false},
            "eos_token": "</s>",
            "unk_token": {"content": "<unk>", "lstrip": true, "rstrip": true},
            "added_tokens_decoder": {"7": {"content": "<s>", "single_word": false}}
        });
        let c = HfTokenizerConfig::from_values(&config, None, Path::new("cfg.json")).unwrap();
        let word = TokenFlags {
            single_word: true,
            ..TokenFlags::default()
        };
        let strip = TokenFlags {
            lstrip: true,
            rstrip: true,
            single_word: false,
        };
        // Plain strings carry no flags; added_tokens_decoder comes last, so it wins when applied
        // in order.
        assert_eq!(
            c.token_flags,
            vec![
                ("<s>".into(), word),
                ("<unk>".into(), strip),
                ("<s>".into(), TokenFlags::default())
            ]
        );
    }

    #[test]
    fn named_templates_without_default_is_an_error() {
        let config = json!({"chat_template": [{"name": "rag", "template": "R"}]});
        let err = HfTokenizerConfig::from_values(&config, None, Path::new("cfg.json")).unwrap_err();
        assert!(err.to_string().contains("rag"), "{err}");
    }
}
