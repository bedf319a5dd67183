//! Typed reads of a job YAML's keys with errors that name the file, the key and what was
//! expected.
//!
//! The original tool loaded YAMLs with PyYAML (YAML 1.1); serde_yaml reads YAML 1.2. For the
//! value types step keys use, the differences are YAML 1.1's extra booleans (`yes`, `no`, `on`,
//! `off`), which are accepted here where a boolean is expected. A `null` value (`key:` with
//! nothing after it) means "not set": the default applies, as a Python `None` does in
//! LLaMA-Factory's argument classes.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::ConfigError;

/// One key of the YAML with the name to show in messages (`step1.cutoff_len` when it came from
/// a `step1:` mapping).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub shown: String,
    pub value: Value,
}

/// The keys of one step, consumed one by one by the step's parser.
#[derive(Debug)]
pub(crate) struct Fields {
    file: PathBuf,
    entries: Vec<Entry>,
}

impl Fields {
    pub fn new(file: &Path, entries: Vec<Entry>) -> Self {
        Fields {
            file: file.to_owned(),
            entries,
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The raw value of `key`, `None` when absent or null.
    fn get(&self, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.key == key && !e.value.is_null())
    }

    /// The name shown for `key` in messages.
    pub fn shown(&self, key: &str) -> String {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map_or_else(|| key.to_owned(), |e| e.shown.clone())
    }

    fn wrong_type(&self, entry: &Entry, expected: &'static str) -> ConfigError {
        ConfigError::WrongType {
            file: self.file.clone(),
            key: entry.shown.clone(),
            expected,
            found: describe(&entry.value),
        }
    }

    /// An error about the value of `key`.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            key: self.shown(key),
            message: message.into(),
        }
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let Some(entry) = self.get(key) else {
            return Ok(None);
        };
        match &entry.value {
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(self.wrong_type(entry, "a string")),
        }
    }

    /// A required string; `hint` says what the key is for.
    pub fn required_string(&self, key: &str, hint: &'static str) -> Result<String, ConfigError> {
        self.string(key)?.ok_or_else(|| ConfigError::Missing {
            file: self.file.clone(),
            key: key.to_owned(),
            hint,
        })
    }

    /// A string or a list of strings (`dataset: a,b` or `dataset: [a, b]`).
    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(entry) = self.get(key) else {
            return Ok(None);
        };
        match &entry.value {
            Value::String(s) => Ok(Some(split_commas(s))),
            Value::Sequence(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.trim().to_owned()),
                    _ => {
                        Err(self.wrong_type(entry, "a comma-separated string or a list of strings"))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            _ => Err(self.wrong_type(entry, "a comma-separated string or a list of strings")),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(entry) = self.get(key) else {
            return Ok(None);
        };
        match &entry.value {
            Value::Bool(b) => Ok(Some(*b)),
            Value::String(s) => yaml11_bool(s)
                .map(Some)
                .ok_or_else(|| self.wrong_type(entry, "a boolean (true or false)")),
            _ => Err(self.wrong_type(entry, "a boolean (true or false)")),
        }
    }

    pub fn float(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        let Some(entry) = self.get(key) else {
            return Ok(None);
        };
        match &entry.value {
            Value::Number(n) => n
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(entry, "a number")),
            _ => Err(self.wrong_type(entry, "a number")),
        }
    }

    /// A non-negative integer.
    pub fn uint(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        let Some(entry) = self.get(key) else {
            return Ok(None);
        };
        match &entry.value {
            Value::Number(n) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(entry, "a non-negative integer")),
            _ => Err(self.wrong_type(entry, "a non-negative integer")),
        }
    }

    /// A non-negative integer that fits a `usize`, at least `min`.
    pub fn usize_at_least(&self, key: &str, min: usize) -> Result<Option<usize>, ConfigError> {
        let Some(v) = self.uint(key)? else {
            return Ok(None);
        };
        let v = usize::try_from(v).map_err(|_| self.invalid(key, "value too large"))?;
        if v < min {
            return Err(self.invalid(key, format!("must be at least {min}, got {v}")));
        }
        Ok(Some(v))
    }
}

/// `"a, b"` → `["a", "b"]`, as LLaMA-Factory splits `dataset` and `adapter_name_or_path`.
pub(crate) fn split_commas(s: &str) -> Vec<String> {
    s.split(',').map(|part| part.trim().to_owned()).collect()
}

/// PyYAML's YAML 1.1 booleans that YAML 1.2 reads as strings.
fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => Some(true),
        "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// A short description of a YAML value for "expected X, found Y" messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}
