//! Reading a sentence-transformers folder the way `SentenceTransformer(path)` does (3.x):
//! `modules.json` names the pipeline, the Transformer module's folder holds
//! `sentence_bert_config.json`, `config.json`, `tokenizer.json` and the weights, the Pooling
//! module's folder its `config.json`, and a Normalize module has no files.
//!
//! Only the pipeline Transformer → Pooling → optional Normalize is supported; anything else is an
//! error naming the module (a Dense or LSTM module would silently change the embeddings if it were
//! skipped).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::pooling::Pooling;
use crate::tokenize::config::read_json_file;
use crate::{Error, Result};

/// What `modules.json` and the module configs of a sentence-transformers folder say.
#[derive(Debug, Clone, PartialEq)]
pub struct StFolder {
    /// The Transformer module's folder (the root for most models).
    pub transformer_dir: PathBuf,
    /// Tokens per text after truncation, special tokens included.
    pub max_seq_length: usize,
    /// `do_lower_case` of `sentence_bert_config.json`: texts are lower-cased before tokenizing.
    pub do_lower_case: bool,
    /// The Pooling module's modes and output dimension.
    pub pooling: Pooling,
    /// Whether a Normalize module follows the pooling.
    pub normalize: bool,
}

/// The module kinds of `modules.json` this embedder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModuleKind {
    Transformer,
    Pooling,
    Normalize,
}

/// One `modules.json` entry.
struct Module {
    kind: ModuleKind,
    dir: PathBuf,
}

impl StFolder {
    /// Reads `dir/modules.json` and the configs of its modules. `max_position_embeddings` caps
    /// the sequence length when `sentence_bert_config.json` does not set it.
    pub fn read(
        dir: &Path,
        max_position_embeddings: impl Fn(&Path) -> Result<usize>,
    ) -> Result<Self> {
        let modules = read_modules(dir)?;
        let kinds: Vec<ModuleKind> = modules.iter().map(|m| m.kind).collect();
        let expected = [ModuleKind::Transformer, ModuleKind::Pooling];
        if kinds.len() < 2
            || kinds[..2] != expected
            || kinds[2..].iter().any(|k| *k != ModuleKind::Normalize)
            || kinds.len() > 3
        {
            return Err(Error::bad_file(
                dir.join("modules.json"),
                format!(
                    "modules {kinds:?}: only Transformer, Pooling and an optional Normalize, in that order, are supported"
                ),
            ));
        }
        let transformer_dir = modules[0].dir.clone();
        let (max_seq_length, do_lower_case) =
            read_sbert_config(&transformer_dir, &max_position_embeddings)?;
        let pooling = Pooling::read(&modules[1].dir.join("config.json"))?;
        Ok(Self {
            transformer_dir,
            max_seq_length,
            do_lower_case,
            pooling,
            normalize: kinds.len() == 3,
        })
    }
}

/// The module list of `modules.json`, in its order (the order sentence-transformers runs them).
fn read_modules(dir: &Path) -> Result<Vec<Module>> {
    let path = dir.join("modules.json");
    if !path.exists() {
        return Err(Error::bad_file(
            dir,
            "no modules.json: not a sentence-transformers folder",
        ));
    }
    let json = read_json_file(&path)?;
    let entries = json
        .as_array()
        .ok_or_else(|| Error::bad_file(&path, "expected a JSON array of modules"))?;
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let field = |key: &str| {
                entry.get(key).and_then(Value::as_str).ok_or_else(|| {
                    Error::bad_file(&path, format!("module {i}: missing string `{key}`"))
                })
            };
            let type_name = field("type")?;
            let kind = module_kind(type_name).ok_or_else(|| {
                Error::Unsupported(format!(
                    "{}: module {i} of type `{type_name}`: only sentence_transformers Transformer, Pooling and Normalize modules are supported",
                    path.display()
                ))
            })?;
            Ok(Module { kind, dir: dir.join(field("path")?) })
        })
        .collect()
}

/// `sentence_transformers.models.Pooling` (3.x) or the same class under a newer module path.
fn module_kind(type_name: &str) -> Option<ModuleKind> {
    if !type_name.starts_with("sentence_transformers.") {
        return None;
    }
    match type_name.rsplit('.').next()? {
        "Transformer" => Some(ModuleKind::Transformer),
        "Pooling" => Some(ModuleKind::Pooling),
        "Normalize" => Some(ModuleKind::Normalize),
        _ => None,
    }
}

/// `max_seq_length` and `do_lower_case` of `sentence_bert_config.json`. Without the file (or
/// the key) sentence-transformers uses `min(tokenizer model_max_length, max_position_embeddings)`.
fn read_sbert_config(
    dir: &Path,
    max_positions: &impl Fn(&Path) -> Result<usize>,
) -> Result<(usize, bool)> {
    let path = dir.join("sentence_bert_config.json");
    let json = if path.exists() {
        read_json_file(&path)?
    } else {
        Value::Object(Default::default())
    };
    let do_lower_case = match json.get("do_lower_case") {
        None | Some(Value::Null) => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| Error::bad_file(&path, "`do_lower_case` must be true or false"))?,
    };
    let max_seq_length = match json.get("max_seq_length") {
        None | Some(Value::Null) => default_max_length(dir, max_positions(dir)?)?,
        Some(v) => v.as_u64().filter(|n| *n >= 2).ok_or_else(|| {
            Error::bad_file(&path, "`max_seq_length` must be an integer of at least 2")
        })? as usize,
    };
    Ok((max_seq_length, do_lower_case))
}

/// `min(model_max_length of tokenizer_config.json, max_position_embeddings)`.
fn default_max_length(dir: &Path, max_positions: usize) -> Result<usize> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(max_positions);
    }
    let json = read_json_file(&path)?;
    // HF writes a huge sentinel (1e30) when the tokenizer has no limit; as_u64 fails on it.
    let tok_max = json
        .get("model_max_length")
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    Ok(tok_max.map_or(max_positions, |n| n.min(max_positions)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const MODULES3: &str = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
        {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#;
    const MEAN: &str = r#"{"word_embedding_dimension": 8, "pooling_mode_mean_tokens": true}"#;

    #[test]
    fn reads_a_three_module_folder() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "modules.json", MODULES3);
        write(
            dir.path(),
            "sentence_bert_config.json",
            r#"{"max_seq_length": 256, "do_lower_case": true}"#,
        );
        write(dir.path(), "1_Pooling/config.json", MEAN);
        let f = StFolder::read(dir.path(), |_| Ok(512)).unwrap();
        assert_eq!(
            (f.max_seq_length, f.do_lower_case, f.normalize),
            (256, true, true)
        );
        assert_eq!(f.transformer_dir, dir.path().join(""));
    }

    #[test]
    fn missing_sbert_config_uses_the_smaller_limit() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "modules.json", MODULES3);
        write(dir.path(), "1_Pooling/config.json", MEAN);
        write(
            dir.path(),
            "tokenizer_config.json",
            r#"{"model_max_length": 128}"#,
        );
        assert_eq!(
            StFolder::read(dir.path(), |_| Ok(512))
                .unwrap()
                .max_seq_length,
            128
        );
        write(
            dir.path(),
            "tokenizer_config.json",
            r#"{"model_max_length": 1000000000000000019884624838656}"#,
        );
        assert_eq!(
            StFolder::read(dir.path(), |_| Ok(512))
                .unwrap()
                .max_seq_length,
            512
        );
    }

    #[test]
    fn unsupported_modules_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "modules.json",
            &MODULES3.replace("models.Normalize", "models.Dense"),
        );
        write(dir.path(), "1_Pooling/config.json", MEAN);
        let err = StFolder::read(dir.path(), |_| Ok(512))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sentence_transformers.models.Dense"), "{err}");

        let err = StFolder::read(&dir.path().join("nope"), |_| Ok(512))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no modules.json"), "{err}");

        write(
            dir.path(),
            "modules.json",
            &MODULES3.replace("models.Pooling", "models.Normalize"),
        );
        let err = StFolder::read(dir.path(), |_| Ok(512))
            .unwrap_err()
            .to_string();
        assert!(err.contains("only Transformer, Pooling"), "{err}");
    }
}
