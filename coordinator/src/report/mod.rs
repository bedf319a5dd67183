//! `evalfleet report`: one table and a few plots for an output directory or a sweep of them
//! (issue 7, point 3).
//!
//! - [`discover`]: is the directory one output (the original layout) or a sweep holding one output
//!   directory per checkpoint, and in which order.
//! - [`read`]: each checkpoint's files, tolerant of missing steps, strict about malformed ones.
//! - [`table`]: the original tool's README Result table plus CharacterEval columns, as Markdown and
//!   CSV.
//! - [`chart`]: line and grouped-bar charts as inline SVG (no plotting crate, no script).
//! - [`html`]: the self-contained `report.html` page; [`escape`]: text escaped for HTML and SVG.
//! - [`samples`], [`stats`], [`change`], [`marks`]: is each checkpoint's change against the
//!   previous one larger than noise (issue 7, point 5), and how that is shown.
//! - [`training`], [`xychart`]: reward-model training curves from `metrics.jsonl` (issue 10,
//!   point 3).
//!
//! Every file is written next to the inputs with [`crate::output::write_atomic`].

pub mod change;
pub mod chart;
pub mod discover;
pub mod escape;
pub mod html;
pub mod marks;
pub mod read;
pub mod samples;
pub mod stats;
pub mod table;
pub mod training;
pub mod xychart;

use std::path::{Path, PathBuf};

use crate::output::{JsonSyntax, OutputError, write_atomic};
pub use read::{Checkpoint, Number};
pub use table::Table;

/// The Markdown table written into the report directory.
pub const SUMMARY_MD: &str = "summary.md";
/// The CSV table written into the report directory.
pub const SUMMARY_CSV: &str = "summary.csv";
/// The HTML page written into the report directory.
pub const REPORT_HTML: &str = "report.html";

/// Why a report cannot be built; each names the file and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory exists but cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{}: {syntax}", path.display())]
    Json { path: PathBuf, syntax: JsonSyntax },
    /// A file parses but holds something other than what was expected.
    #[error("{}: {message}", path.display())]
    Shape { path: PathBuf, message: String },
    /// A line of a line-oriented file is malformed.
    #[error("{}: line {line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The directory holds neither result files nor checkpoint folders with result files.
    #[error(
        "{}: no results found: expected an output directory (predict_results.json, all_results.json, generated_predictions.jsonl, mmlu|cmmlu|ceval/results.log, CharacterEval/step4_eval_scores.jsonl) or a sweep directory with one such folder per checkpoint, or a reward-model training run (metrics.jsonl)",
        path.display()
    )]
    NoResults { path: PathBuf },
    /// Writing a report file failed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// Step 4's per-row file cannot be read (the error names the file).
    #[error(transparent)]
    Step4(#[from] crate::step4::Step4Error),
}

/// What [`build_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    /// `<dir>/summary.md`.
    pub summary_md: PathBuf,
    /// `<dir>/summary.csv`.
    pub summary_csv: PathBuf,
    /// `<dir>/report.html`.
    pub report_html: PathBuf,
    /// The checkpoint names, one per table row, in row order.
    pub checkpoints: Vec<String>,
    /// The number of charts (inline SVGs) in the page.
    pub charts: usize,
    /// The `metrics.jsonl` files of reward-model training runs drawn in the page.
    pub training_runs: Vec<PathBuf>,
}

/// Reads the output directory or sweep directory `dir` and writes `summary.md`, `summary.csv`
/// and `report.html` into it.
///
/// Everything is read and rendered before the first file is written, so a malformed input
/// leaves earlier reports untouched.
pub fn build_report(dir: &Path) -> Result<ReportFiles, ReportError> {
    build_report_ordered(dir, &[])
}

/// [`build_report`] with the rows of a sweep in a given order: the checkpoint folders named in
/// `order` first, in that order (a sweep listing its checkpoints), then any other result
/// folders in the default order (step number, then name). Names without a result folder are
/// skipped. Each row's changes are against the row before it.
pub fn build_report_ordered(dir: &Path, order: &[String]) -> Result<ReportFiles, ReportError> {
    let training = training::find_runs(dir)?;
    let dirs = match discover::checkpoint_dirs(dir) {
        Ok(dirs) => dirs,
        // A training run's folder alone is worth a report (its curves).
        Err(ReportError::NoResults { .. }) if !training.is_empty() => Vec::new(),
        Err(e) => return Err(e),
    };
    let checkpoints = discover::in_order(dirs, order)
        .into_iter()
        .map(|(name, path)| read::read_checkpoint(name, &path))
        .collect::<Result<Vec<_>, _>>()?;
    let table = Table::new(&checkpoints);
    let changes = change::compare(&checkpoints, &table)?;
    let page = html::render(
        dir,
        html::Content {
            checkpoints: &checkpoints,
            table: &table,
            changes: &changes,
            training: &training,
        },
    );
    let models: Vec<String> = checkpoints.iter().map(|c| c.name.clone()).collect();
    let mut markdown = if checkpoints.is_empty() {
        String::new()
    } else {
        table.to_markdown() + &marks::markdown(&changes, &models)
    };
    for run in &training {
        let rel = run.path.strip_prefix(dir).unwrap_or(&run.path);
        if !markdown.is_empty() {
            markdown.push('\n');
        }
        markdown.push_str(&training::markdown(run, &rel.display().to_string()));
    }
    let csv = table.to_csv_with(&marks::csv_header(&changes), |row| {
        marks::csv_cells(&changes, row)
    });

    let summary_md = dir.join(SUMMARY_MD);
    let summary_csv = dir.join(SUMMARY_CSV);
    let report_html = dir.join(REPORT_HTML);
    write_atomic(&summary_md, markdown.as_bytes())?;
    write_atomic(&summary_csv, csv.as_bytes())?;
    write_atomic(&report_html, page.html.as_bytes())?;
    Ok(ReportFiles {
        summary_md,
        summary_csv,
        report_html,
        checkpoints: models,
        charts: page.charts,
        training_runs: training.into_iter().map(|r| r.path).collect(),
    })
}
