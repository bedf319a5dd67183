//! Step 3 planning: MMLU, CMMLU and C-Eval prompts byte-identical to LLaMA-Factory v0.7.1's
//! evaluator (docs/FIDELITY.md §3), and its result files.
//!
//! - [`source`] / [`data`]: a task directory (zip or tree), `mapping.json`, the three CSV layouts.
//! - [`csvtok`] / [`pandas`]: CSV records and cell text as pandas + `datasets` produce them.
//! - [`rng`]: numpy's MT19937 → `datasets` shuffle seeds → PCG64 permutations.
//! - [`prompt`]: the en/zh eval templates and the few-shot messages.
//! - [`plan`]: per task, the items a worker scores (messages, answer) in evaluator order.
//! - [`results`]: `results.json`, `results.log`, `results_detail.jsonl`, per-subject accuracies.

pub mod csvtok;
pub mod data;
pub mod pandas;
pub mod plan;
pub mod prompt;
pub mod results;
pub mod rng;
pub mod source;

use std::path::PathBuf;

pub use data::{Example, Layout, Split, Subject};
pub use plan::{FewShotOrder, PlanOptions, Step3Item, SubjectPlan, TaskPlan, plan_task};
pub use prompt::{CHOICES, EvalTemplate, Message};
pub use results::{ItemResult, TaskResults};

/// LF's `SUBJECTS`: the accuracy categories, `Average` first (every example).
pub const CATEGORIES: [&str; 5] = ["Average", "STEM", "Social Sciences", "Humanities", "Other"];

/// Errors of step 3 planning and writing; each names the file (and row) concerned.
#[derive(Debug, thiserror::Error)]
pub enum Step3Error {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The task's zip archive is unreadable or lacks an entry.
    #[error("{}: {message}", path.display())]
    Zip { path: PathBuf, message: String },
    /// `mapping.json` is not an object of `{"name": str, "category": str}`.
    #[error("{}: {message}", path.display())]
    Mapping { path: PathBuf, message: String },
    /// A subject's CSV file (or a split) does not exist.
    #[error("{file}: {message}")]
    MissingFile { file: String, message: String },
    /// A CSV row is malformed: wrong number of fields, missing column, bad answer.
    #[error("{file}: line {line}: {message}")]
    Csv {
        file: String,
        line: usize,
        message: String,
    },
    /// A job setting is invalid (unknown language or split, bad n_shot).
    #[error("{0}")]
    Config(String),
    /// Writing a result file failed.
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
}

#[cfg(test)]
mod tests;
