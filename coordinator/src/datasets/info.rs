//! `dataset_info.json`: how each dataset name maps to a file, a format and column names
//! (LLaMA-Factory v0.7.1 `data/parser.py`).
//!
//! LF quirk kept on purpose: when an entry has a `columns` (or, for sharegpt, `tags`) object,
//! every column (tag) it does not list becomes *unset*, not the default. The original
//! `{"prompt": "instruction", "query": "input", "response": "output", "history": "history"}`
//! therefore has no system column, and a `tags` object without `user_tag` accepts no user turn.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::DatasetError;
use super::reader::kind;

/// The name of the file in `dataset_dir` that describes the datasets.
pub const DATASET_INFO: &str = "dataset_info.json";

/// The two conversation layouts LF reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatting {
    /// One instruction/input/output row, optional history pairs.
    Alpaca,
    /// A list of `{from, value}` turns.
    ShareGpt,
}

/// One dataset's description (LF `DatasetAttr`, the parts that apply to local files).
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetAttr {
    /// The name in `dataset_info.json`.
    pub name: String,
    /// `file_name`: a file or a folder of files inside `dataset_dir`.
    pub file_name: String,
    /// `formatting` (default alpaca).
    pub formatting: Formatting,
    /// Column names; `None` = not mapped.
    pub columns: Columns,
    /// Sharegpt role tags; `None` = not set (never matches).
    pub tags: Tags,
}

/// Column names of a dataset (LF defaults when `columns` is absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub system: Option<String>,
    pub prompt: Option<String>,
    pub query: Option<String>,
    pub response: Option<String>,
    pub history: Option<String>,
    pub messages: Option<String>,
    pub tools: Option<String>,
}

/// Sharegpt tag names (LF defaults when `tags` is absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Tags {
    pub role: Option<String>,
    pub content: Option<String>,
    pub user: Option<String>,
    pub assistant: Option<String>,
    pub observation: Option<String>,
    pub function: Option<String>,
    pub system: Option<String>,
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            system: None,
            prompt: some("instruction"),
            query: some("input"),
            response: some("output"),
            history: None,
            messages: some("conversations"),
            tools: None,
        }
    }
}

impl Default for Tags {
    fn default() -> Self {
        Tags {
            role: some("from"),
            content: some("value"),
            user: some("human"),
            assistant: some("gpt"),
            observation: some("observation"),
            function: some("function_call"),
            system: some("system"),
        }
    }
}

/// Reads `<dataset_dir>/dataset_info.json` and looks up `names` in it, in order.
pub fn dataset_attrs(
    dataset_dir: &Path,
    names: &[String],
) -> Result<Vec<DatasetAttr>, DatasetError> {
    let path = dataset_dir.join(DATASET_INFO);
    let text = std::fs::read_to_string(&path).map_err(|source| DatasetError::Read {
        path: path.clone(),
        source,
    })?;
    let info: Value = serde_json::from_str(&text).map_err(|e| DatasetError::Json {
        path: path.clone(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let Value::Object(info) = info else {
        return Err(bad(
            &path,
            "",
            format!("expected an object of datasets, found {}", kind(&info)),
        ));
    };
    names
        .iter()
        .map(|name| {
            let entry = info.get(name).ok_or_else(|| DatasetError::UnknownDataset {
                path: path.clone(),
                name: name.clone(),
                known: info.keys().cloned().collect(),
            })?;
            parse_entry(&path, name, entry)
        })
        .collect()
}

fn bad(path: &Path, name: &str, message: String) -> DatasetError {
    DatasetError::BadInfo {
        path: path.to_owned(),
        name: name.to_owned(),
        message,
    }
}

fn parse_entry(path: &Path, name: &str, entry: &Value) -> Result<DatasetAttr, DatasetError> {
    let Value::Object(entry) = entry else {
        return Err(bad(
            path,
            name,
            format!("expected an object, found {}", kind(entry)),
        ));
    };
    for remote in ["hf_hub_url", "ms_hub_url", "script_url"] {
        if entry.contains_key(remote) {
            return Err(bad(
                path,
                name,
                format!("`{remote}` datasets are not supported; download it and use `file_name`"),
            ));
        }
    }
    if entry.get("ranking").and_then(Value::as_bool) == Some(true) {
        // LF: "The dataset is not applicable in the current training stage."
        return Err(bad(
            path,
            name,
            "a ranking dataset cannot be used for SFT predict".to_owned(),
        ));
    }
    let file_name = string_field(path, name, entry, "file_name")?
        .ok_or_else(|| bad(path, name, "missing `file_name`".to_owned()))?;
    let formatting = match string_field(path, name, entry, "formatting")?.as_deref() {
        None | Some("alpaca") => Formatting::Alpaca,
        Some("sharegpt") => Formatting::ShareGpt,
        Some(other) => {
            return Err(bad(
                path,
                name,
                format!("`formatting` must be alpaca or sharegpt, got {other:?}"),
            ));
        }
    };
    let mut columns = Columns::default();
    if let Some(map) = object_field(path, name, entry, "columns")? {
        let get = |key: &str| string_field(path, name, map, key);
        columns.system = get("system")?;
        if formatting == Formatting::Alpaca {
            columns.prompt = get("prompt")?;
            columns.query = get("query")?;
            columns.response = get("response")?;
            columns.history = get("history")?;
        } else {
            columns.messages = get("messages")?;
            columns.tools = get("tools")?;
        }
    }
    let mut tags = Tags::default();
    let tag_map = match formatting {
        Formatting::ShareGpt => object_field(path, name, entry, "tags")?,
        Formatting::Alpaca => None,
    };
    if let Some(map) = tag_map {
        let get = |key: &str| string_field(path, name, map, key);
        tags = Tags {
            role: get("role_tag")?,
            content: get("content_tag")?,
            user: get("user_tag")?,
            assistant: get("assistant_tag")?,
            observation: get("observation_tag")?,
            function: get("function_tag")?,
            system: get("system_tag")?,
        };
    }
    Ok(DatasetAttr {
        name: name.to_owned(),
        file_name,
        formatting,
        columns,
        tags,
    })
}

/// The file or folder of a dataset.
pub(crate) fn data_path(dataset_dir: &Path, attr: &DatasetAttr) -> PathBuf {
    dataset_dir.join(&attr.file_name)
}

fn string_field(
    path: &Path,
    name: &str,
    map: &Map<String, Value>,
    key: &str,
) -> Result<Option<String>, DatasetError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad(
            path,
            name,
            format!("`{key}` must be a string, found {}", kind(other)),
        )),
    }
}

fn object_field<'a>(
    path: &Path,
    name: &str,
    map: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, DatasetError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(bad(
            path,
            name,
            format!("`{key}` must be an object, found {}", kind(other)),
        )),
    }
}
