//! Which checkpoints of a sweep are finished, so that re-running a sweep (to resume it, or after
//! adding checkpoints) evaluates only the others.
//!
//! A checkpoint is finished when its folder holds the marker [`MARKER`] written after its last
//! step, the marker's settings digest equals that of the checkpoint's run file now (a sweep
//! whose settings changed evaluates again rather than keep numbers of other settings), every
//! output file its steps write is there, and no result journal is left (a journal means a step
//! did not finish). Anything short of that is evaluated, resuming from the journals.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::JobConfig;
use crate::journal::JOURNAL_DIR;
use crate::output::OutputError;

/// The marker of a finished checkpoint, in its output folder.
pub const MARKER: &str = ".evalfleet-sweep.json";

/// Where a checkpoint stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Finished with these settings: skipped.
    Done,
    /// Never finished (no marker).
    New,
    /// Finished with other settings: evaluated again.
    SettingsChanged,
    /// Marked finished but these outputs are missing (or a journal is left): evaluated again.
    Incomplete(Vec<PathBuf>),
}

/// The settings digest of a checkpoint's run file (its YAML text).
pub fn digest(yaml: &str) -> String {
    let hash = Sha256::digest(yaml.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the checkpoint whose outputs go to `dir`, run as `job` with settings `digest`, stands.
pub fn status(dir: &Path, job: &JobConfig, digest: &str) -> Status {
    let Some(marked) = read_marker(dir) else {
        return Status::New;
    };
    if marked != digest {
        return Status::SettingsChanged;
    }
    let missing: Vec<PathBuf> = expected_outputs(job)
        .into_iter()
        .filter(|p| !p.is_file())
        .chain(journals(job))
        .collect();
    if missing.is_empty() {
        Status::Done
    } else {
        Status::Incomplete(missing)
    }
}

/// Writes the marker of a finished checkpoint (atomically, after all its files).
pub fn mark_done(dir: &Path, checkpoint: &Path, digest: &str) -> Result<(), OutputError> {
    let marker = serde_json::json!({
        "checkpoint": checkpoint.to_string_lossy(),
        "settings_sha256": digest,
    });
    let text = format!("{marker:#}\n");
    crate::output::write_atomic(&dir.join(MARKER), text.as_bytes())
}

/// Removes the marker before a checkpoint is evaluated again, so that a run stopped midway
/// never leaves a finished-looking folder with half-replaced files.
pub fn unmark(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(MARKER)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_marker(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value
        .get("settings_sha256")
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// The files the steps of `job` write (the ones a report reads, and the step's last ones).
pub fn expected_outputs(job: &JobConfig) -> Vec<PathBuf> {
    job.steps
        .iter()
        .flat_map(|s| s.step().expected_outputs())
        .collect()
}

/// Journal folders left in the output folders of `job` (a step that did not finish).
fn journals(job: &JobConfig) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = job
        .output_dirs()
        .iter()
        .map(|d| d.join(JOURNAL_DIR))
        .collect();
    dirs.dedup();
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{ALL_RESULTS, GENERATED_PREDICTIONS, PREDICT_RESULTS};

    fn job(dir: &Path) -> JobConfig {
        let yaml = format!(
            "steps: [step1]\nmodel_name_or_path: m\ndataset: d\noutput_dir: {}\n",
            dir.display()
        );
        crate::config::parse_job(Path::new("s.yaml"), &yaml).expect("job")
    }

    #[test]
    fn a_checkpoint_is_done_only_with_its_marker_its_files_and_no_journal() {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path();
        let job = job(dir);
        assert_eq!(status(dir, &job, "d1"), Status::New);
        mark_done(dir, Path::new("ckpt"), "d1").expect("mark");
        let Status::Incomplete(missing) = status(dir, &job, "d1") else {
            panic!("files are missing")
        };
        assert_eq!(missing.len(), 3);
        for f in [GENERATED_PREDICTIONS, PREDICT_RESULTS, ALL_RESULTS] {
            std::fs::write(dir.join(f), "{}").expect("write");
        }
        assert_eq!(status(dir, &job, "d1"), Status::Done);
        assert_eq!(status(dir, &job, "d2"), Status::SettingsChanged);
        std::fs::create_dir(dir.join(JOURNAL_DIR)).expect("mkdir");
        assert_eq!(
            status(dir, &job, "d1"),
            Status::Incomplete(vec![dir.join(JOURNAL_DIR)])
        );
        unmark(dir).expect("unmark");
        assert_eq!(status(dir, &job, "d1"), Status::New);
        assert_ne!(digest("a"), digest("b"));
    }
}
