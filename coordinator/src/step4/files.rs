//! Step 4's files in `output_dir`, written as the original tool writes them and read back when a
//! run starts from a later sub-step.
//!
//! The three record files are `json.dumps(records, ensure_ascii=False, indent=4)` with no
//! trailing newline; the score log is plain text with no trailing newline; the summary
//! (evalfleet's) is the same JSON style with a final newline. Each is replaced atomically.

use std::path::{Path, PathBuf};

use super::aggregate::Summary;
use super::data::read_records;
use super::{Record, Step4Error};
use crate::output::{PyJson, dumps_pretty, write_atomic};

/// `json.dumps(records, ensure_ascii=False, indent=4)`.
pub fn records_json(records: &[Record]) -> String {
    let list = PyJson::Array(records.iter().cloned().map(PyJson::Object).collect());
    dumps_pretty(&list, false, false)
}

/// Writes `records` to `output_dir/name`; returns the path.
pub fn write_records(
    output_dir: &Path,
    name: &str,
    records: &[Record],
) -> Result<PathBuf, Step4Error> {
    let path = output_dir.join(name);
    write_atomic(&path, records_json(records).as_bytes())?;
    Ok(path)
}

/// Reads the records of an earlier sub-step's file; a missing file is an error saying which
/// sub-step (`writer`, e.g. `"--stage generate"`) writes it.
pub fn read_stage_records(
    output_dir: &Path,
    name: &str,
    writer: &str,
) -> Result<Vec<Record>, Step4Error> {
    let path = output_dir.join(name);
    if !path.exists() {
        return Err(Step4Error::Missing {
            path,
            hint: format!("it is written by {writer}; run from that sub-step"),
        });
    }
    read_records(&path)
}

/// Writes the score log text to `output_dir/step4_eval_scores.jsonl`.
pub fn write_log(output_dir: &Path, text: &str) -> Result<PathBuf, Step4Error> {
    let path = output_dir.join(super::SCORES_LOG_FILE);
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Writes the summary to `output_dir/step4_eval_scores.json`.
pub fn write_summary(output_dir: &Path, summary: &Summary) -> Result<PathBuf, Step4Error> {
    let _writing = crate::stop::Writing::new();
    let path = output_dir.join(super::SCORES_JSON_FILE);
    let mut text = dumps_pretty(&summary.to_json(), false, false);
    text.push('\n');
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}
