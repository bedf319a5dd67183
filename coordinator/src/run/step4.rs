//! Step 4 (CharacterEval, PROTOCOL 4): being written.

use std::path::PathBuf;

use super::{FleetSetup, RunError};
use crate::config::{Step4Config, Step4Stage};

/// Runs step 4 from `stage` (else the YAML's `stage`) on; returns the files written.
pub async fn run_step4(
    cfg: &Step4Config,
    setup: &FleetSetup,
    stage: Option<Step4Stage>,
) -> Result<Vec<PathBuf>, RunError> {
    let _ = (cfg, setup, stage);
    Ok(Vec::new())
}
