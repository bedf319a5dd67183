//! `evalfleet score text`: the step-1 metrics of an existing generated_predictions.jsonl.

use std::path::Path;

/// Scores `predictions`; returns the metrics as JSON text (and writes them to `write` if given).
pub fn score_text(predictions: &Path, _write: Option<&Path>) -> anyhow::Result<String> {
    anyhow::bail!("{}: scoring is not wired yet", predictions.display())
}
