//! The CharacterEval data folder (`task_dir`, docs/FIDELITY.md §4.1): `test_data.jsonl` (a JSON
//! array of `{id, role, novel_name, context}` despite the name), `character_profiles.json` (role →
//! profile object) and `id2metric.jsonl` (a JSON object: dialogue id → `[[metric_en, metric_zh],
//! ...]`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::pyrepr::py_str;
use super::{Record, Step4Error, get};
use crate::output::{OutputError, PyJson, loads};

/// The dialogues file.
pub const TEST_DATA: &str = "test_data.jsonl";
/// The role profiles file.
pub const PROFILES: &str = "character_profiles.json";
/// The dialogue → metrics file.
pub const ID2METRIC: &str = "id2metric.jsonl";

/// One `[metric_en, metric_zh]` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub en: String,
    pub zh: String,
}

/// The role profiles, with each one's `str(profile)` computed once.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    texts: HashMap<String, String>,
    path: PathBuf,
}

impl Profiles {
    /// Builds the profiles from `character_profiles.json`'s object; `path` is for messages.
    pub fn from_json(path: &Path, value: &PyJson) -> Result<Self, Step4Error> {
        let PyJson::Object(entries) = value else {
            return Err(invalid(path, "expected a JSON object of role → profile"));
        };
        let texts = entries
            .iter()
            .map(|(role, profile)| (role.clone(), py_str(profile)))
            .collect();
        Ok(Profiles {
            texts,
            path: path.to_owned(),
        })
    }

    /// `str(profile[role])`, or an error naming the role and the record.
    pub fn text(&self, role: &str, record_no: usize) -> Result<&str, Step4Error> {
        self.texts.get(role).map(String::as_str).ok_or_else(|| {
            invalid(
                &self.path,
                format!("no profile for role {role:?} (record {record_no})"),
            )
        })
    }
}

/// The task folder's three files.
#[derive(Debug, Clone)]
pub struct TaskData {
    /// Dialogues in file order (the first `max_samples` when set).
    pub records: Vec<Record>,
    pub profiles: Profiles,
    /// `str(id)` → metrics, in file order.
    pub id2metric: HashMap<String, Vec<Metric>>,
}

impl TaskData {
    /// Reads `task_dir`, keeping the first `max_samples` dialogues.
    pub fn read(task_dir: &Path, max_samples: Option<usize>) -> Result<Self, Step4Error> {
        let mut records = read_records(&task_dir.join(TEST_DATA))?;
        if let Some(n) = max_samples {
            records.truncate(n);
        }
        Ok(TaskData {
            records,
            profiles: read_profiles(task_dir)?,
            id2metric: read_id2metric(&task_dir.join(ID2METRIC))?,
        })
    }
}

/// Reads `character_profiles.json` from `task_dir`.
pub fn read_profiles(task_dir: &Path) -> Result<Profiles, Step4Error> {
    let path = task_dir.join(PROFILES);
    Profiles::from_json(&path, &read_json(&path)?)
}

/// Reads a JSON array of objects (the test data and every step-4 output but the log).
pub fn read_records(path: &Path) -> Result<Vec<Record>, Step4Error> {
    let PyJson::Array(items) = read_json(path)? else {
        return Err(invalid(path, "expected a JSON array of records"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            PyJson::Object(entries) => Ok(entries),
            _ => Err(invalid(path, format!("record {i}: expected a JSON object"))),
        })
        .collect()
}

/// Reads `id2metric.jsonl`.
pub fn read_id2metric(path: &Path) -> Result<HashMap<String, Vec<Metric>>, Step4Error> {
    let PyJson::Object(entries) = read_json(path)? else {
        return Err(invalid(path, "expected a JSON object of id → metrics"));
    };
    entries
        .into_iter()
        .map(|(id, pairs)| {
            let metrics = metric_pairs(&pairs)
                .ok_or_else(|| invalid(path, format!("id {id}: expected [[en, zh], ...]")))?;
            Ok((id, metrics))
        })
        .collect()
}

fn metric_pairs(value: &PyJson) -> Option<Vec<Metric>> {
    let PyJson::Array(pairs) = value else {
        return None;
    };
    pairs
        .iter()
        .map(|pair| match pair {
            PyJson::Array(two) => match two.as_slice() {
                [PyJson::Str(en), PyJson::Str(zh)] => Some(Metric {
                    en: en.clone(),
                    zh: zh.clone(),
                }),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// `str(record["id"])`, the key of `id2metric.jsonl`.
pub fn id_key(record: &Record) -> Option<String> {
    get(record, "id").map(py_str)
}

/// Reads and parses a JSON file (Python's `json.load`).
pub fn read_json(path: &Path) -> Result<PyJson, Step4Error> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Step4Error::Missing {
                path: path.to_owned(),
                hint: "no such file".into(),
            }
        } else {
            OutputError::Read {
                path: path.to_owned(),
                source,
            }
            .into()
        }
    })?;
    loads(&text).map_err(|syntax| {
        OutputError::Parse {
            path: path.to_owned(),
            syntax,
        }
        .into()
    })
}

pub(super) fn invalid(path: &Path, message: impl Into<String>) -> Step4Error {
    Step4Error::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}
