//! Step 1 (SFT predict): job YAML → one generate item per sample → fleet → metrics → files.

use std::path::{Path, PathBuf};

use super::FleetSetup;

/// Runs step 1 of the job in `yaml`; returns the files written.
pub async fn run_step1(yaml: &Path, _setup: &FleetSetup) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::bail!("{}: step 1 is not wired yet", yaml.display())
}
