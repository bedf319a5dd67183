//! The sweep's `checkpoints` key: a path or glob, or a list of them, resolved to checkpoints in
//! evaluation order.
//!
//! A glob's matches are ordered by the step number in their names (`checkpoint-500` before
//! `checkpoint-1000`, which a lexical sort gets wrong), then by name; a list keeps its order
//! (each of its globs expanded in place). Wildcards (`*`, `?`) may only appear in the last path
//! component, the common `runs/x/checkpoint-*` shape; that keeps matching a plain directory
//! listing, with no glob crate. Each match must be a LoRA adapter folder (`adapter_config.json`)
//! or a model (an HF folder with `config.json`, or a `.gguf` file); anything else is an error
//! naming it, as is a glob that matches nothing or two checkpoints with the same name (their
//! output folders would collide).

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use crate::config::{ConfigError, describe};

const KEY: &str = "checkpoints";

/// What a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// A PEFT LoRA folder (`adapter_config.json`), evaluated over the base.
    Adapter,
    /// A model of its own: an HF folder (`config.json`) or a `.gguf` file.
    FullModel,
}

/// One checkpoint of the sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its folder (or file) name: the name of its output folder and of its report row.
    pub name: String,
    /// Where it is (as listed or globbed, relative to the current directory like other paths).
    pub path: PathBuf,
    pub kind: CheckpointKind,
}

/// The checkpoints `value` names, in evaluation order.
pub fn resolve(file: &Path, value: &Value) -> Result<Vec<Checkpoint>, ConfigError> {
    let patterns: Vec<String> = match value {
        Value::String(s) => vec![s.trim().to_string()],
        Value::Sequence(items) => items
            .iter()
            .map(|v| v.as_str().map(|s| s.trim().to_string()))
            .collect::<Option<_>>()
            .ok_or_else(|| wrong_type(file, value))?,
        other => return Err(wrong_type(file, other)),
    };
    let invalid = |message: String| ConfigError::Invalid {
        file: file.to_owned(),
        key: KEY.into(),
        message,
    };
    let mut found: Vec<Checkpoint> = Vec::new();
    for pattern in patterns.iter().filter(|p| !p.is_empty()) {
        for path in expand(pattern).map_err(&invalid)? {
            let checkpoint = classify(&path).map_err(&invalid)?;
            if let Some(other) = found.iter().find(|c| c.name == checkpoint.name) {
                return Err(invalid(format!(
                    "{} and {} have the same name {:?}, so their outputs would share \
                     <output_dir>/{}/ (rename one, or run two sweeps)",
                    other.path.display(),
                    path.display(),
                    checkpoint.name,
                    checkpoint.name
                )));
            }
            found.push(checkpoint);
        }
    }
    if found.is_empty() {
        return Err(invalid("lists no checkpoint".into()));
    }
    Ok(found)
}

fn wrong_type(file: &Path, value: &Value) -> ConfigError {
    ConfigError::WrongType {
        file: file.to_owned(),
        key: KEY.into(),
        expected: "a path or glob, or a list of them",
        found: describe(value),
    }
}

/// The paths `pattern` names: itself when it has no wildcard, else the matching entries of its
/// folder ordered by step number, then name.
fn expand(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(pattern);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !has_wildcard(&name) {
        if has_wildcard(pattern) {
            return Err(format!(
                "{pattern}: wildcards are only supported in the last path component (e.g. runs/x/checkpoint-*)"
            ));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if has_wildcard(&parent.to_string_lossy()) {
        return Err(format!(
            "{pattern}: wildcards are only supported in the last path component (e.g. runs/x/checkpoint-*)"
        ));
    }
    let entries =
        std::fs::read_dir(&parent).map_err(|e| format!("{pattern}: {}: {e}", parent.display()))?;
    let mut matches: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{pattern}: {}: {e}", parent.display()))?;
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        if wildcard_match(&name, &entry_name) {
            matches.push((entry_name, entry.path()));
        }
    }
    if matches.is_empty() {
        return Err(format!("{pattern} matches nothing"));
    }
    matches.sort_by_key(|(name, _)| order_key(name));
    Ok(matches.into_iter().map(|(_, p)| p).collect())
}

/// Glob order: names with a step number first, by number; then by name.
fn order_key(name: &str) -> (bool, Option<u64>, String) {
    let step = step_number(name);
    (step.is_none(), step, name.to_string())
}

/// The step number of a checkpoint name: its last run of digits (`checkpoint-1500` → 1500,
/// `step_200_lora` → 200).
pub fn step_number(name: &str) -> Option<u64> {
    let end = name.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = name[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    name[start..end].parse().ok()
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` any one.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with backtracking to the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// What `path` is, or what was expected instead.
fn classify(path: &Path) -> Result<Checkpoint, String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{}: not a folder or file name", path.display()))?;
    let gguf = path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let kind = if path.join("adapter_config.json").is_file() {
        CheckpointKind::Adapter
    } else if path.join("config.json").is_file() || gguf {
        CheckpointKind::FullModel
    } else if !path.exists() {
        return Err(format!("{}: no such folder", path.display()));
    } else {
        return Err(format!(
            "{}: expected a LoRA adapter folder (adapter_config.json) or a model folder \
             (config.json) or a .gguf file",
            path.display()
        ));
    };
    Ok(Checkpoint {
        name,
        path: path.to_path_buf(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard_match("checkpoint-*", "checkpoint-500"));
        assert!(wildcard_match("checkpoint-*", "checkpoint-"));
        assert!(!wildcard_match("checkpoint-*", "ckpt-500"));
        assert!(wildcard_match("c*-?00", "checkpoint-500"));
        assert!(!wildcard_match("c*-?00", "checkpoint-1500"));
        assert!(wildcard_match("*a*b*", "xxaxxbxx"));
        assert!(!wildcard_match("*a*b", "xxaxxbxx"));
    }

    #[test]
    fn step_numbers_are_the_last_digits() {
        assert_eq!(step_number("checkpoint-1500"), Some(1500));
        assert_eq!(step_number("step_200_lora"), Some(200));
        assert_eq!(step_number("final"), None);
    }

    fn mkdir_with(root: &Path, name: &str, file: &str) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(file), "{}").expect("write");
        d
    }

    #[test]
    fn a_glob_is_ordered_by_step_and_a_list_keeps_its_order() {
        let root = tempfile::tempdir().expect("tmp");
        for n in ["checkpoint-1000", "checkpoint-500", "checkpoint-50"] {
            mkdir_with(root.path(), n, "adapter_config.json");
        }
        mkdir_with(root.path(), "full", "config.json");
        let glob = format!("{}/checkpoint-*", root.path().display());
        let got = resolve(Path::new("s.yaml"), &Value::String(glob.clone())).expect("glob");
        let names: Vec<&str> = got.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["checkpoint-50", "checkpoint-500", "checkpoint-1000"]
        );
        assert!(got.iter().all(|c| c.kind == CheckpointKind::Adapter));
        let full = root.path().join("full").display().to_string();
        let list = Value::Sequence(vec![Value::String(full), Value::String(glob)]);
        let got = resolve(Path::new("s.yaml"), &list).expect("list");
        assert_eq!(got[0].kind, CheckpointKind::FullModel);
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn bad_checkpoints_are_named() {
        let root = tempfile::tempdir().expect("tmp");
        mkdir_with(root.path(), "empty-1", "README.md");
        let file = Path::new("s.yaml");
        let err = |v: Value| resolve(file, &v).expect_err("refused").to_string();
        let empty = root.path().join("empty-1").display().to_string();
        let e = err(Value::String(empty));
        assert!(e.contains("expected a LoRA adapter folder"), "{e}");
        assert!(e.contains("s.yaml: key `checkpoints`"), "{e}");
        let none = format!("{}/checkpoint-*", root.path().display());
        assert!(err(Value::String(none)).contains("matches nothing"));
        let deep = format!("{}/*/adapter", root.path().display());
        assert!(err(Value::String(deep)).contains("last path component"));
        assert!(err(Value::Bool(true)).contains("expected a path or glob"));
        let a = mkdir_with(&root.path().join("a"), "ckpt", "adapter_config.json");
        let b = mkdir_with(&root.path().join("b"), "ckpt", "adapter_config.json");
        let twice = Value::Sequence(vec![
            Value::String(a.display().to_string()),
            Value::String(b.display().to_string()),
        ]);
        assert!(err(twice).contains("the same name"));
    }
}
