//! `evalfleet score text`: the step-1 metrics of an existing generated_predictions.jsonl, without
//! a model. The `label` and `predict` strings are scored exactly as saved in the file.

use std::path::Path;

use super::RunError;
use super::step1::score_pairs;
use crate::output::{self, PyJson};

/// Scores `predictions` and returns the metrics as predict_results.json-style JSON text
/// (`predict_` keys, indent 4, sorted); also writes that text to `write` when given.
pub fn score_text(predictions: &Path, write: Option<&Path>) -> Result<String, RunError> {
    let rows = output::read_generated_predictions(predictions)?;
    let pairs: Vec<(String, String)> = rows.into_iter().map(|r| (r.predict, r.label)).collect();
    let summary = score_pairs(&pairs)?;
    let metrics: Vec<(String, PyJson)> = summary
        .metric_pairs()
        .into_iter()
        .map(|(k, v)| (format!("predict_{k}"), PyJson::Float(v)))
        .collect();
    let json = output::dumps_pretty_sorted(&PyJson::Object(metrics));
    if let Some(path) = write {
        output::write_atomic(path, json.as_bytes())?;
    }
    Ok(json)
}
