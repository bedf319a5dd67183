//! SFT test sets, loaded as LLaMA-Factory v0.7.1 loads them for `do_predict`
//! (docs/FIDELITY.md §1.2).
//!
//! `dataset_dir/dataset_info.json` maps each name of the comma-separated `dataset` key to a file
//! (or a folder of files), a format (alpaca or sharegpt) and column/tag names ([`info`]). Files
//! are `.json` (an array, or JSON lines) or `.jsonl` ([`reader`]). `max_samples` keeps the first
//! N rows of each dataset, before conversion. Rows become conversations exactly as LF's
//! `convert_alpaca` / `convert_sharegpt` make them ([`convert`]), datasets are concatenated in
//! the order named, and then LF's `preprocess_unsupervised_dataset` rules apply: a row whose
//! prompt has an even number of turns is skipped, and a row whose response is not exactly one
//! turn gets an empty assistant turn instead.
//!
//! Checked against LF itself: `tests/datasets_lf_golden.rs` (goldens by
//! `scripts/goldens/datasets_lf.py`). Where LF crashed, this reports an error naming the file and
//! line instead (a non-string text value, an empty sharegpt conversation, a bad role tag); and
//! where LF's behaviour was accidental it is made repeatable: a column mapped in
//! `dataset_info.json` that no row has reads as empty (LF: `KeyError`), a folder's files are read
//! in name order (LF: directory order), and a null system value is `""` (LF: `None`, which its
//! templates treat the same).
//!
//! The result is one [`Sample`] per item, `messages` = prompt turns + the response turn last,
//! ready to send to workers (the worker's template renders everything but the last turn as the
//! prompt, and the last turn's content is the label).

pub mod convert;
pub mod info;
pub mod reader;

use std::path::{Path, PathBuf};

pub use info::{DATASET_INFO, DatasetAttr, Formatting};

use crate::config::DataConfig;

/// Who speaks a turn (LF's `Role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The person asking.
    User,
    /// The model.
    Assistant,
    /// A system prompt turn.
    System,
    /// A function call by the model (sharegpt `function_call`).
    Function,
    /// A tool's answer (sharegpt `observation`).
    Observation,
}

impl Role {
    /// LF's role string: `user`, `assistant`, `system`, `function`, `observation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Function => "function",
            Role::Observation => "observation",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

/// Where a sample came from, for messages and stable item ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The dataset name in `dataset_info.json`.
    pub dataset: String,
    /// The data file.
    pub path: PathBuf,
    /// 1-based line where the row starts in that file.
    pub line: usize,
}

/// One item of the test set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// 0-based position in the test set: the order of `generated_predictions.jsonl`.
    pub index: usize,
    /// Prompt turns (odd count, the last one a user turn) and then the response turn.
    pub messages: Vec<ChatMessage>,
    /// The system prompt (`""` when none; templates then use their default system).
    pub system: String,
    /// Tool descriptions (sharegpt `tools` column; `""` otherwise).
    pub tools: String,
    /// Where the row came from.
    pub origin: Origin,
}

impl Sample {
    /// The reference answer: the last turn's content (`""` for LF's empty assistant turn).
    pub fn label(&self) -> &str {
        self.messages.last().map_or("", |m| m.content.as_str())
    }

    /// The prompt turns (all but the response).
    pub fn prompt(&self) -> &[ChatMessage] {
        &self.messages[..self.messages.len().saturating_sub(1)]
    }
}

/// Why a dataset cannot be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is not valid JSON.
    #[error("{}: line {line}, column {column}: invalid JSON: {}", path.display(), strip_position(message))]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A row does not have the shape its format needs.
    #[error("{}: line {line}: {message}", path.display())]
    Row {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A `dataset` name is not in `dataset_info.json`.
    #[error("{}: no dataset named {name:?}; it defines: {}", path.display(), known.join(", "))]
    UnknownDataset {
        path: PathBuf,
        name: String,
        known: Vec<String>,
    },
    /// A `dataset_info.json` entry cannot be used.
    #[error("{}: dataset {name:?}: {message}", path.display())]
    BadInfo {
        path: PathBuf,
        name: String,
        message: String,
    },
    /// A data file of a kind that is not read here, or that does not exist.
    #[error("{}: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },
    /// Nothing left to predict (LF: "Cannot find valid samples"): a dataset whose files have
    /// no rows, or datasets whose every row was dropped; `why` names the file or the rule.
    #[error("no usable samples in dataset(s) {}: {why}", names.join(", "))]
    NoSamples { names: Vec<String>, why: String },
}

/// serde_json's messages end in " at line L column C", which the error already says.
fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |i| &message[..i])
}

/// Loads the test set a step-1 config names.
pub fn load_for(data: &DataConfig) -> Result<Vec<Sample>, DatasetError> {
    load_samples(&data.dataset_dir, &data.dataset, data.max_samples)
}

/// Loads and concatenates `names` from `dataset_dir`, keeping the first `max_samples` rows of
/// each, and applies LF's conversion and predict-time row rules.
pub fn load_samples(
    dataset_dir: &Path,
    names: &[String],
    max_samples: Option<usize>,
) -> Result<Vec<Sample>, DatasetError> {
    let mut samples = Vec::new();
    for attr in info::dataset_attrs(dataset_dir, names)? {
        for (origin, aligned) in load_aligned(dataset_dir, &attr, max_samples)? {
            // preprocess_unsupervised_dataset: the prompt must end on a user turn.
            if aligned.prompt.len() % 2 != 1 {
                continue;
            }
            let mut messages = aligned.prompt;
            if aligned.response.len() == 1 {
                messages.extend(aligned.response);
            } else {
                messages.push(ChatMessage {
                    role: Role::Assistant,
                    content: String::new(),
                });
            }
            samples.push(Sample {
                index: samples.len(),
                messages,
                system: aligned.system,
                tools: aligned.tools,
                origin,
            });
        }
    }
    if samples.is_empty() {
        return Err(DatasetError::NoSamples {
            names: names.to_vec(),
            why: "every row was dropped (LLaMA-Factory keeps a row only when its prompt ends on \
                  a user turn)"
                .into(),
        });
    }
    Ok(samples)
}

/// One dataset's rows, first `max_samples` only, converted (rows LF drops are left out).
fn load_aligned(
    dataset_dir: &Path,
    attr: &DatasetAttr,
    max_samples: Option<usize>,
) -> Result<Vec<(Origin, convert::Aligned)>, DatasetError> {
    let mut rows = Vec::new();
    for path in data_files(&info::data_path(dataset_dir, attr))? {
        let text = std::fs::read_to_string(&path).map_err(|source| DatasetError::Read {
            path: path.clone(),
            source,
        })?;
        rows.extend(
            reader::parse_rows(&path, &text)?
                .into_iter()
                .map(|r| (path.clone(), r)),
        );
    }
    // A named dataset without a single row is a mistake (a truncated export, a wrong file),
    // even when other datasets have rows: say which file instead of running without it.
    if rows.is_empty() {
        return Err(DatasetError::NoSamples {
            names: vec![attr.name.clone()],
            why: format!(
                "{} has no rows (expected a JSON array of objects, or one JSON object per line)",
                info::data_path(dataset_dir, attr).display()
            ),
        });
    }
    rows.truncate(max_samples.unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(rows.len());
    for (path, row) in rows {
        let aligned = match attr.formatting {
            Formatting::Alpaca => Some(convert::alpaca(&path, attr, &row)?),
            Formatting::ShareGpt => convert::sharegpt(&path, attr, &row)?,
        };
        if let Some(aligned) = aligned {
            let origin = Origin {
                dataset: attr.name.clone(),
                path,
                line: row.line,
            };
            out.push((origin, aligned));
        }
    }
    Ok(out)
}

/// The files of a dataset: the file itself, or every file of a folder in name order (LF lists
/// a folder in directory order, which is arbitrary; name order makes runs repeatable).
fn data_files(path: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let files = if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|source| DatasetError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| DatasetError::Read {
                path: path.to_owned(),
                source,
            })?;
            files.push(entry.path());
        }
        files.sort();
        files
    } else if path.is_file() {
        vec![path.to_owned()]
    } else {
        return Err(DatasetError::Unsupported {
            path: path.to_owned(),
            message: "file not found".to_owned(),
        });
    };
    for file in &files {
        let ext = file
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        if !matches!(ext, "json" | "jsonl") {
            return Err(DatasetError::Unsupported {
                path: file.clone(),
                message: format!("unsupported data file type {ext:?}; use .json or .jsonl"),
            });
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests;
