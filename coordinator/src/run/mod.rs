//! Step drivers: turn a job into fleet tasks, run them, and turn the outcomes into result files.
//!
//! - [`fleet`]: runs tasks on local and/or external workers and waits for every outcome.
//! - [`step1`]: SFT predict: samples → generate items → metrics → the three step-1 files.
//! - [`step2`]: semantic similarity: step-1 rows → embed items → scores into the step-1 files.
//! - [`chain`]: step 1 then step 2 in one fleet, step 2 fed from step 1's results as they arrive.
//! - [`score`]: `evalfleet score text`, the metrics of an existing predictions file.
//! - [`step`]: the [`Step`] trait every step implements: its name, its finished files, and how
//!   it runs alone (`run_job` runs every step but the chain through it).
//!
//! ## `predict_runtime`
//!
//! HF's `predict_runtime` times the predict loop with the model already loaded. Here a worker
//! loads a lease's model (once; later leases reuse it) and then sends `ModelReady` before it
//! generates; the runtime runs from the first `ModelReady` of any worker to the last item's
//! result. Worker start-up, connection and the first model load are not counted (a worker that
//! loads its model later does so while another already generates, so that time does count).
//! Samples and steps per second divide by this runtime.

pub mod chain;
pub mod fleet;
pub mod score;
pub mod step;
pub mod step1;
pub mod step2;
pub mod step3;
pub mod step4;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use chain::{ChainReport, run_chain};
pub use fleet::{FleetHost, FleetRun, FleetSetup, RunningFleet, run_fleet};
pub use step::Step;
pub use step1::{Step1Report, run_step1};
pub use step2::run_step2;
pub use step3::run_step3;
pub use step4::run_step4;
use tracing::info;

use crate::config::{ConfigError, JobConfig, StepConfig};
use crate::datasets::DatasetError;
use crate::dirlock::DirLock;
use crate::local::LocalError;
use crate::output::OutputError;
use crate::sched::SchedError;

/// Runs every step of `job` in order; returns the files written. Each step records itself
/// finished in its journal, so a re-run after an interruption computes nothing again for the
/// steps done (see [`crate::journal`]); the journals are removed once the last step is written.
pub async fn run_job(job: &JobConfig, setup: &FleetSetup) -> Result<Vec<PathBuf>, RunError> {
    if !job.ignored_keys.is_empty() {
        info!(
            "{}: ignoring keys that have no effect here: {}",
            job.file.display(),
            job.ignored_keys.join(", ")
        );
    }
    // Held until the job's files are written: another process on these directories is refused.
    let _locks = DirLock::acquire_all(job.output_dirs().iter().map(PathBuf::as_path))?;
    let mut files = Vec::new();
    let mut steps = job.steps.iter().peekable();
    while let Some(step) = steps.next() {
        match step {
            // Step 2 right after step 1 on its output: one fleet for both, step 2 fed from step
            // 1's results as they arrive (see `chain`).
            StepConfig::Step1(cfg) if matches!(steps.peek(), Some(StepConfig::Step2(cfg2)) if chain::can_chain(cfg, cfg2)) =>
            {
                let Some(StepConfig::Step2(cfg2)) = steps.next() else {
                    unreachable!("peeked above")
                };
                let report = chain::run_chain(cfg, cfg2, setup).await?;
                files.extend(step1_paths(report.step1.files));
                files.extend(report.step2.paths());
            }
            // Any other step alone (a step 2 without the step 1 of its output_dir before it).
            other => files.extend(other.step().run(setup).await?),
        }
    }
    // Every step's files are written: the steps' journals, kept so far so that a re-run of an
    // interrupted job computes nothing again for the steps it finished, can go.
    crate::journal::remove_finished(job.output_dirs().iter().map(PathBuf::as_path))?;
    Ok(files)
}

/// The three step-1 files.
fn step1_paths(written: crate::output::Step1Files) -> [PathBuf; 3] {
    [
        written.predictions,
        written.predict_results,
        written.all_results,
    ]
}

/// Why a step could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Locked(#[from] crate::dirlock::LockError),
    #[error(transparent)]
    Sched(#[from] SchedError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no workers: --workers 0 needs --listen ADDR so that external workers can join")]
    NoWorkers,
    /// `evalfleet cancel` stopped the job (see [`FleetHost`]).
    #[error("the job was cancelled")]
    Cancelled,
    #[error("every local worker exited before the job was done:\n{0}")]
    AllWorkersDied(String),
    /// SIGINT/SIGTERM stopped the fleet; `resume` says what was saved and how to go on.
    #[error("stopped by {signal}: {resume}")]
    Interrupted { signal: String, resume: String },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Tls(#[from] crate::rpc::tls::TlsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("scoring: {0}")]
    Scoring(String),
    #[error(transparent)]
    Step2(#[from] crate::step2::Step2Error),
    #[error(transparent)]
    Step3(#[from] crate::step3::Step3Error),
    #[error(transparent)]
    Step4(#[from] crate::step4::Step4Error),
    #[error("{count} items failed:\n  {}", first.join("\n  "))]
    ItemsFailed { count: usize, first: Vec<String> },
}

/// Every item's result picked out of its outcome by `pick` (`None` for a result of the wrong
/// kind), in the given order; or an error naming up to five `{noun} {id}` that failed.
pub(crate) fn collect_outcomes<T>(
    noun: &str,
    outcomes: impl IntoIterator<Item = (String, crate::sched::ItemOutcome)>,
    mut pick: impl FnMut(&str, evalfleet_proto::v1::item_result::Outcome) -> Option<T>,
) -> Result<Vec<T>, RunError> {
    use crate::sched::ItemOutcome;
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for (id, outcome) in outcomes {
        match outcome {
            ItemOutcome::Done(done) => match pick(&id, done) {
                Some(result) => results.push(result),
                None => failed.push(format!("{noun} {id}: a result of the wrong kind")),
            },
            ItemOutcome::Failed { message, attempts } => failed.push(format!(
                "{noun} {id}: {message} (after {attempts} attempts)"
            )),
        }
    }
    if failed.is_empty() {
        Ok(results)
    } else {
        Err(RunError::ItemsFailed {
            count: failed.len(),
            first: failed.into_iter().take(5).collect(),
        })
    }
}

/// `path` made absolute against the current directory, so that local workers started elsewhere
/// (and the model key) do not depend on a working directory.
pub(crate) fn absolute(path: &Path) -> String {
    let abs: PathBuf = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    abs.to_string_lossy().into_owned()
}
