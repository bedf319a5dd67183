//! The job records of `evalfleet serve --state-dir DIR`: one JSON file per job
//! (`DIR/jobs/<id>.json`, replaced atomically at every change of state), so that a coordinator
//! that restarts (a Kubernetes pod replaced) knows its queue again. Jobs that were queued or
//! running are queued again and resume from their journals; ended jobs stay listed by status.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One job as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub name: String,
    pub seq: u64,
    /// The submitted YAML text (parsed again on restart).
    pub yaml: String,
    pub restart: bool,
    /// A [`super::jobs::JobState`] name.
    pub state: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub steps_done: Vec<String>,
    #[serde(default)]
    pub ended_seq: u64,
    /// When it ended, in seconds since the Unix epoch (0: not ended, or an older record).
    #[serde(default)]
    pub ended_at: u64,
}

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a job record: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::output::OutputError),
    #[error("--state-dir {0}")]
    Locked(#[from] crate::dirlock::LockError),
}

/// The folder of job records.
#[derive(Debug, Clone)]
pub struct StateDir {
    jobs: PathBuf,
    /// Held while serving: a second `evalfleet serve` on the folder is refused.
    _lock: Option<std::sync::Arc<crate::dirlock::DirLock>>,
}

impl StateDir {
    /// Uses (creating it if needed) `dir/jobs`.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let lock = crate::dirlock::DirLock::acquire(dir)?.map(std::sync::Arc::new);
        let jobs = dir.join("jobs");
        std::fs::create_dir_all(&jobs).map_err(|source| StateError::Io {
            path: jobs.clone(),
            source,
        })?;
        Ok(StateDir { jobs, _lock: lock })
    }

    /// Saves `record`, replacing its earlier version atomically.
    pub fn save(&self, record: &JobRecord) -> Result<(), StateError> {
        let path = self.jobs.join(format!("{}.json", record.id));
        let text = serde_json::to_vec_pretty(record).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        crate::output::write_atomic(&path, &text)?;
        Ok(())
    }

    /// Removes job `id`'s record (gone already is fine).
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let path = self.jobs.join(format!("{id}.json"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Every saved record, in submission order.
    pub fn load(&self) -> Result<Vec<JobRecord>, StateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&self.jobs).map_err(io(&self.jobs))? {
            let path = entry.map_err(io(&self.jobs))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read(&path).map_err(io(&path))?;
            let record: JobRecord = serde_json::from_slice(&text)
                .map_err(|source| StateError::Parse { path, source })?;
            records.push(record);
        }
        records.sort_by_key(|r| r.seq);
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_submission_order_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let record = |seq: u64| JobRecord {
            id: format!("job-{seq}"),
            name: "a.yaml".into(),
            seq,
            yaml: "steps: [step1]\n".into(),
            restart: false,
            state: "queued".into(),
            error: String::new(),
            files: Vec::new(),
            steps_done: Vec::new(),
            ended_seq: 0,
            ended_at: 0,
        };
        for seq in [10, 2, 1] {
            state.save(&record(seq)).unwrap();
        }
        let mut second = record(2);
        second.state = "finished".into();
        state.save(&second).unwrap();
        let loaded = state.load().unwrap();
        assert_eq!(loaded, vec![record(1), second, record(10)]);

        std::fs::write(dir.path().join("jobs/job-3.json"), "{").unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(
            err.contains("job-3.json") && err.contains("not a job record"),
            "{err}"
        );
    }
}
