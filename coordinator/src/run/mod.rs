//! Step drivers: turn a job into fleet tasks, run them, and turn the outcomes into result files.
//!
//! - [`fleet`]: runs tasks on local and/or external workers and waits for every outcome.
//! - [`step1`]: SFT predict: samples → generate items → metrics → the three step-1 files.
//! - [`score`]: `evalfleet score text`, the metrics of an existing predictions file.

pub mod fleet;
pub mod score;
pub mod step1;

use std::net::SocketAddr;

pub use fleet::{FleetRun, FleetSetup, run_fleet};

use crate::local::LocalError;
use crate::sched::SchedError;

/// Why a step could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Sched(#[from] SchedError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no workers: --workers 0 needs --listen ADDR so that external workers can join")]
    NoWorkers,
    #[error("every local worker exited before the job was done:\n{0}")]
    AllWorkersDied(String),
    #[error("interrupted")]
    Interrupted,
}
