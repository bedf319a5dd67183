//! `evalfleet report`: one table and a few plots for an output directory or a sweep of them
//! (issue 7, point 3).
//!
//! - [`discover`]: is the directory one output (the original layout) or a sweep holding one output
//!   directory per checkpoint, and in which order.
//! - [`read`]: each checkpoint's files, tolerant of missing steps, strict about malformed ones.
//! - [`table`]: the seed README's Result table plus CharacterEval columns, as Markdown and CSV.
//! - [`chart`]: line and grouped-bar charts as inline SVG (no plotting crate, no script).
//! - [`html`]: the self-contained `report.html` page.
//!
//! Every file is written next to the inputs with [`crate::output::write_atomic`].

pub mod chart;
pub mod discover;
pub mod html;
pub mod read;
pub mod stats;
pub mod table;

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
        "{}: no results found: expected an output directory (predict_results.json, all_results.json, generated_predictions.jsonl, mmlu|cmmlu|ceval/results.log, CharacterEval/step4_eval_scores.jsonl) or a sweep directory with one such folder per checkpoint",
        path.display()
    )]
    NoResults { path: PathBuf },
    /// Writing a report file failed.
    #[error(transparent)]
    Output(#[from] OutputError),
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
}

/// Reads the output directory or sweep directory `dir` and writes `summary.md`, `summary.csv`
/// and `report.html` into it.
///
/// Everything is read and rendered before the first file is written, so a malformed input
/// leaves earlier reports untouched.
pub fn build_report(dir: &Path) -> Result<ReportFiles, ReportError> {
    let checkpoints = discover::checkpoint_dirs(dir)?
        .into_iter()
        .map(|(name, path)| read::read_checkpoint(name, &path))
        .collect::<Result<Vec<_>, _>>()?;
    let table = Table::new(&checkpoints);
    let page = html::render(dir, &checkpoints, &table);

    let summary_md = dir.join(SUMMARY_MD);
    let summary_csv = dir.join(SUMMARY_CSV);
    let report_html = dir.join(REPORT_HTML);
    write_atomic(&summary_md, table.to_markdown().as_bytes())?;
    write_atomic(&summary_csv, table.to_csv().as_bytes())?;
    write_atomic(&report_html, page.html.as_bytes())?;
    Ok(ReportFiles {
        summary_md,
        summary_csv,
        report_html,
        checkpoints: checkpoints.into_iter().map(|c| c.name).collect(),
        charts: page.charts,
    })
}
