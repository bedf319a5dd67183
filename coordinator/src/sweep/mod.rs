//! `evalfleet sweep`: one training run's checkpoints (LoRA adapters over one base, or full
//! models) evaluated on the same steps, each into its own folder with the original layout, in
//! one fleet, then one report for all of them (issue 7, point 1).
//!
//! - [`config`]: the sweep YAML (a run file plus `checkpoints`), each checkpoint's run file.
//! - [`checkpoints`]: the `checkpoints` key: lists and globs, step-number order, what each is.
//! - [`state`]: which checkpoints are finished (skipped on a re-run, so a sweep can grow).
//! - [`run`]: the driver: one scheduler and fleet for every unfinished checkpoint, journals per
//!   checkpoint and step, files written as each checkpoint completes, then the report.
//!
//! Workers load the base once and apply each adapter to it (`evalfleet_worker`'s base cache),
//! so a sweep of N adapters costs one model load per worker plus N merges.

pub mod checkpoints;
pub mod config;
pub mod run;
pub mod state;

pub use config::{Checkpoint, CheckpointKind, SweepConfig, load_sweep, parse_sweep};
pub use run::{SweepReport, run_sweep};

/// Why a sweep could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
}

#[cfg(test)]
mod tests;
