//! Step 2 (docs/FIDELITY.md §2, the original tool's `semsim_eval.py`): the semantic similarity of
//! every step-1 prediction to its label, written into the step-1 files, plus the score
//! distribution.
//!
//! The embedding and the cosine run on workers (`evalfleet_worker::embed`); this module reads
//! the step-1 rows and, given one float32 score per row, writes:
//!
//! - `generated_predictions.jsonl` rewritten with a `score` per line ([`files`]);
//! - `avg_sem_sim_score`, the float32 mean, appended to `predict_results.json`
//!   (`all_results.json` is left alone, as the original tool left it);
//! - `sem_sim_distribution.json`, `sem_sim_histogram.svg` and `sem_sim_histogram.png`
//!   ([`distribution`], [`svg`], [`raster`]), and a one-line summary for the terminal.
//!
//! [`plan`] orders the rows for queueing (longest first) and puts the workers' scores back in
//! row order.
//!
//! Every file is replaced atomically, so an interrupted step 2 leaves each file either as step 1
//! wrote it or complete.

pub mod distribution;
pub mod files;
pub mod plan;
pub mod raster;
pub mod svg;

use std::path::{Path, PathBuf};

use crate::output::{self, GENERATED_PREDICTIONS, OutputError, PREDICT_RESULTS, PredictionRow};
pub use distribution::Distribution;

/// The key step 2 adds to `predict_results.json`.
pub const AVG_KEY: &str = "avg_sem_sim_score";
/// The distribution file written next to the step-1 files.
pub const DISTRIBUTION_JSON: &str = "sem_sim_distribution.json";
/// The histogram plot written next to the step-1 files.
pub const HISTOGRAM_SVG: &str = "sem_sim_histogram.svg";
/// The same plot as a PNG raster (no text).
pub const HISTOGRAM_PNG: &str = "sem_sim_histogram.png";

/// Why step 2's files cannot be read or written; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum Step2Error {
    /// Reading or writing a file failed, or it holds something unexpected.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// Step 1 has not written its files in `output_dir`.
    #[error("{}: missing: run step 1 first (step 2 scores its predictions)", path.display())]
    MissingStep1 { path: PathBuf },
    /// The number of scores differs from the number of rows.
    #[error("{}: {rows} rows but {scores} scores", path.display())]
    ScoreCount {
        path: PathBuf,
        rows: usize,
        scores: usize,
    },
    /// The workers' results do not give exactly one score per row.
    #[error("{}: {message}", path.display())]
    Results { path: PathBuf, message: String },
}

/// What [`write_step2`] wrote, and the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Step2Outputs {
    pub predictions: PathBuf,
    pub predict_results: PathBuf,
    pub distribution_json: PathBuf,
    pub histogram_svg: PathBuf,
    pub histogram_png: PathBuf,
    pub distribution: Distribution,
    /// The one-line terminal summary.
    pub summary: String,
}

impl Step2Outputs {
    /// The files written, in a fixed order.
    pub fn paths(&self) -> Vec<PathBuf> {
        vec![
            self.predictions.clone(),
            self.predict_results.clone(),
            self.distribution_json.clone(),
            self.histogram_svg.clone(),
            self.histogram_png.clone(),
        ]
    }
}

/// The step-1 rows of `<output_dir>/generated_predictions.jsonl` (a `score` already there from
/// an earlier step 2 is ignored; it is recomputed).
pub fn read_step1_rows(output_dir: &Path) -> Result<Vec<PredictionRow>, Step2Error> {
    let path = output_dir.join(GENERATED_PREDICTIONS);
    if !path.exists() {
        return Err(Step2Error::MissingStep1 { path });
    }
    Ok(output::read_generated_predictions(&path)?)
}

/// Reads and checks the step-1 files step 2 needs before any worker starts: the rows of
/// `generated_predictions.jsonl` (as [`read_step1_rows`]) and `predict_results.json`, which must
/// exist and hold a JSON object (step 2 appends to it), so that a missing or broken file fails
/// at once, not after the embedding work. [`write_step2`] reads `predict_results.json` again.
pub fn read_step1_inputs(output_dir: &Path) -> Result<Vec<PredictionRow>, Step2Error> {
    let rows = read_step1_rows(output_dir)?;
    read_predict_results(output_dir)?;
    Ok(rows)
}

/// The text of `<output_dir>/predict_results.json`, checked to be a JSON object.
fn read_predict_results(output_dir: &Path) -> Result<String, Step2Error> {
    let path = output_dir.join(PREDICT_RESULTS);
    let text = output::read_if_exists(&path).map_err(|source| OutputError::Read {
        path: path.clone(),
        source,
    })?;
    let Some(text) = text else {
        return Err(Step2Error::MissingStep1 { path });
    };
    output::loads_object(&path, &text)?;
    Ok(text)
}

/// Writes step 2's results into `output_dir` for `rows` (in file order) and their `scores`.
///
/// `predict_results.json` is read and checked before anything is written, so a missing or
/// broken file changes nothing.
pub fn write_step2(
    output_dir: &Path,
    rows: &[PredictionRow],
    scores: &[f32],
) -> Result<Step2Outputs, Step2Error> {
    let predictions = output_dir.join(GENERATED_PREDICTIONS);
    if rows.len() != scores.len() {
        return Err(Step2Error::ScoreCount {
            path: predictions,
            rows: rows.len(),
            scores: scores.len(),
        });
    }
    let predict_results = output_dir.join(PREDICT_RESULTS);
    let old = read_predict_results(output_dir)?;
    let distribution = Distribution::new(scores);
    let new_results = files::add_metric(&predict_results, &old, AVG_KEY, distribution.mean)?;

    // A stop waits for every file: never scored predictions next to old results.
    let _writing = crate::stop::Writing::new();
    output::write_atomic(
        &predictions,
        files::scored_predictions_jsonl(rows, scores).as_bytes(),
    )?;
    output::write_atomic(&predict_results, new_results.as_bytes())?;
    let distribution_json = output_dir.join(DISTRIBUTION_JSON);
    let json = output::dumps_pretty(&distribution.to_json(), false, false);
    output::write_atomic(&distribution_json, json.as_bytes())?;
    let histogram_svg = output_dir.join(HISTOGRAM_SVG);
    output::write_atomic(&histogram_svg, svg::histogram_svg(&distribution).as_bytes())?;
    let histogram_png = output_dir.join(HISTOGRAM_PNG);
    let png_bytes = raster::histogram_png(&distribution).map_err(|e| OutputError::Write {
        path: histogram_png.clone(),
        source: std::io::Error::other(e),
    })?;
    output::write_atomic(&histogram_png, &png_bytes)?;
    let summary = distribution.summary_line();
    Ok(Step2Outputs {
        predictions,
        predict_results,
        distribution_json,
        histogram_svg,
        histogram_png,
        distribution,
        summary,
    })
}
