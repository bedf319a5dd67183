//! The job queue of `evalfleet serve`: submitted jobs wait in submission order and run, up to
//! `max_running` at a time, through the same driver as `evalfleet run` ([`crate::run::run_job`];
//! a sweep YAML, one with `checkpoints`, through `evalfleet sweep`'s),
//! whose fleets attach to the [`Hub`] instead of serving a port of their own. So each job writes
//! exactly the files `evalfleet run` writes, with its journal: a job that is cancelled or stopped
//! resumes when it is submitted again.
//!
//! Two jobs never run on the same output directory at once (their files and journals would
//! mix): a job whose output directory a running job uses (by any path: canonical paths are
//! compared), or holds or lies in, waits until that one ends. Each running job also locks its
//! directories against other processes ([`crate::dirlock`]).
//!
//! With a state directory ([`super::state`]) every job's record is saved at each change, and a
//! coordinator started again on it queues the jobs that were queued or running once more (they
//! resume from their journals).
//!
//! States: queued → running → finished | failed | cancelled. Cancelling a running job detaches its
//! fleets from the hub at once (its leases are returned: results still coming for them are
//! dropped) and tells its driver, which stops, flushes its journal and returns; the job is
//! `cancelling` until then.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use evalfleet_proto::v1 as pb;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::hub::Hub;
use super::roots::{AllowedRoots, OutsideRoots};
use super::state::{JobRecord, StateDir, StateError};
use crate::config::{ConfigError, JobConfig};
use crate::dirlock::{canonical_path, overlaps};
use crate::rpc::FleetOptions;
use crate::run::{FleetHost, FleetSetup, RunError};
use crate::sched::Progress;
use crate::sweep::{SweepConfig, SweepError};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    /// Cancel requested while running; its driver is stopping.
    Cancelling,
    Finished,
    Failed,
    Cancelled,
}

impl JobState {
    /// The name shown by `evalfleet status`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Cancelling => "cancelling",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The job has ended (finished, failed or cancelled).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed | JobState::Cancelled
        )
    }

    fn is_active(self) -> bool {
        matches!(self, JobState::Running | JobState::Cancelling)
    }

    /// The state named `name` ([`JobState::as_str`]).
    pub fn parse(name: &str) -> Option<JobState> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Cancelling,
            JobState::Finished,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// The longest job error shown by status (a report of every local worker's last lines fits).
const MAX_ERROR_CHARS: usize = 64 << 10;

/// Why a job was not accepted or found.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no job {0:?} (evalfleet status lists the jobs)")]
    NotFound(String),
    #[error(transparent)]
    Outside(#[from] OutsideRoots),
}

/// What a running job's driver and the queue share.
struct Shared {
    cancel: watch::Sender<bool>,
    /// The steps whose fleets completed, in order.
    steps_done: Mutex<Vec<String>>,
    /// The last fleet that detached and its progress (status of an ended job).
    last: Mutex<Option<(String, Progress)>>,
}

struct Job {
    id: String,
    name: String,
    seq: u64,
    /// The submitted text (saved in the state directory).
    yaml: String,
    state: JobState,
    /// Taken when the job starts.
    config: Option<Spec>,
    output_dirs: Vec<PathBuf>,
    restart: bool,
    shared: Arc<Shared>,
    error: String,
    files: Vec<String>,
    ended_seq: u64,
    /// When it ended (seconds since the Unix epoch; 0: before records kept it).
    ended_at: u64,
}

/// How many ended jobs the queue keeps (in memory, in status and in `--state-dir`):
/// `--keep-jobs`, `--keep-job-days`. Queued and running jobs are always kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// The most recently ended this many.
    pub max_ended: usize,
    /// None ended longer ago than this.
    pub max_age: Duration,
}

/// Default of `--keep-jobs`.
pub const DEFAULT_KEEP_JOBS: usize = 1000;
/// Default of `--keep-job-days`.
pub const DEFAULT_KEEP_DAYS: u64 = 30;

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_ended: DEFAULT_KEEP_JOBS,
            max_age: Duration::from_secs(DEFAULT_KEEP_DAYS * 86400),
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Default)]
struct State {
    jobs: Vec<Job>,
    next_seq: u64,
    next_end: u64,
}

/// The queue (see the module docs).
pub struct Jobs {
    hub: Arc<Hub>,
    options: FleetOptions,
    max_running: usize,
    state: Mutex<State>,
    wake: Notify,
    /// Set when the coordinator stops: queued jobs stay queued.
    closed: AtomicBool,
    /// Where job records are saved, if anywhere.
    state_dir: Option<StateDir>,
    /// The folders jobs may read and write ([`super::roots`]).
    roots: AllowedRoots,
    retention: Retention,
}

impl Jobs {
    /// A queue running at most `max_running` jobs at once on `hub`'s workers; their fleets use
    /// `options` (lease TTL, attempts, ...). With `state_dir`, the jobs saved there are listed
    /// again, those that had not ended queued again (see the module docs), and the ended ones
    /// beyond `retention` removed. Only the records that changed are written again, so a long
    /// history costs no rewrite before the port binds.
    pub fn new(
        hub: Arc<Hub>,
        options: FleetOptions,
        max_running: usize,
        state_dir: Option<StateDir>,
        roots: AllowedRoots,
        retention: Retention,
    ) -> Result<Arc<Self>, StateError> {
        let mut state = State::default();
        let mut changed = Vec::new();
        if let Some(dir) = &state_dir {
            for record in dir.load()? {
                state.next_seq = state.next_seq.max(record.seq);
                state.next_end = state.next_end.max(record.ended_seq);
                let (saved_state, saved_restart) = (record.state.clone(), record.restart);
                let job = restore(record);
                if job.state.as_str() != saved_state || job.restart != saved_restart {
                    changed.push(job.id.clone());
                }
                state.jobs.push(job);
            }
        }
        let jobs = Arc::new(Jobs {
            hub,
            options,
            max_running: max_running.max(1),
            state: Mutex::new(state),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            state_dir,
            roots,
            retention,
        });
        {
            let mut st = jobs.lock();
            jobs.prune(&mut st);
            for job in st.jobs.iter().filter(|j| changed.contains(&j.id)) {
                jobs.persist(job);
            }
        }
        Ok(jobs)
    }

    /// Forgets the ended jobs beyond the retention (their records too): all but the
    /// `max_ended` that ended last, and any that ended more than `max_age` ago.
    fn prune(&self, st: &mut State) {
        let now = unix_now();
        let max_age = self.retention.max_age.as_secs();
        let mut ended: Vec<&Job> = st.jobs.iter().filter(|j| j.state.is_final()).collect();
        ended.sort_by_key(|j| std::cmp::Reverse((j.ended_seq, j.seq)));
        let doomed: Vec<String> = ended
            .iter()
            .enumerate()
            .filter(|(i, j)| {
                *i >= self.retention.max_ended
                    || (j.ended_at > 0 && now.saturating_sub(j.ended_at) > max_age)
            })
            .map(|(_, j)| j.id.clone())
            .collect();
        if doomed.is_empty() {
            return;
        }
        st.jobs.retain(|j| !doomed.contains(&j.id));
        if let Some(dir) = &self.state_dir {
            for id in &doomed {
                if let Err(e) = dir.remove(id) {
                    warn!("job {id}: cannot remove its record: {e}");
                }
            }
        }
        info!(
            "forgot {} ended job(s) beyond the retention ({} jobs, {} days)",
            doomed.len(),
            self.retention.max_ended,
            max_age / 86400
        );
    }

    /// Saves `job`'s record (a failure is logged: it costs the record after a restart, not the
    /// job).
    fn persist(&self, job: &Job) {
        let Some(dir) = &self.state_dir else {
            return;
        };
        let record = JobRecord {
            id: job.id.clone(),
            name: job.name.clone(),
            seq: job.seq,
            yaml: job.yaml.clone(),
            restart: job.restart,
            state: job.state.as_str().to_string(),
            error: job.error.clone(),
            files: job.files.clone(),
            steps_done: lock(&job.shared.steps_done).clone(),
            ended_seq: job.ended_seq,
            ended_at: job.ended_at,
        };
        if let Err(e) = dir.save(&record) {
            warn!("job {}: cannot save its record: {e}", job.id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the job YAML `text` (`name`: the file it came from, for messages). Its paths are
    /// resolved here, against the coordinator's working directory, and must lie in the allowed
    /// roots. Returns the job id.
    pub fn submit(&self, text: &str, name: &str, restart: bool) -> Result<String, JobError> {
        let name = crate::rpc::printable(name, 256);
        let file = if name.is_empty() { "job.yaml" } else { &name };
        let config = Spec::parse(Path::new(file), text)?;
        config.check_roots(&self.roots, file)?;
        let mut st = self.lock();
        st.next_seq += 1;
        let seq = st.next_seq;
        let id = format!("job-{seq}");
        let job = Job {
            id: id.clone(),
            name: file.to_string(),
            seq,
            yaml: text.to_string(),
            state: JobState::Queued,
            output_dirs: config.output_dirs(),
            config: Some(config),
            restart,
            shared: Shared::new(Vec::new()),
            error: String::new(),
            files: Vec::new(),
            ended_seq: 0,
            ended_at: 0,
        };
        self.persist(&job);
        st.jobs.push(job);
        drop(st);
        info!("job {id} ({file}) queued");
        self.wake.notify_one();
        Ok(id)
    }

    /// Cancels job `id`; returns its state afterwards (`cancelling` while a running job's driver
    /// stops; a job that already ended keeps its state).
    pub fn cancel(&self, id: &str) -> Result<JobState, JobError> {
        let mut st = self.lock();
        let end = st.next_end + 1;
        let job = st
            .jobs
            .iter_mut()
            .find(|j| j.id == id)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        let before = job.state;
        match before {
            JobState::Queued => {
                job.state = JobState::Cancelled;
                job.ended_seq = end;
                job.ended_at = unix_now();
                job.config = None;
            }
            JobState::Running => {
                job.state = JobState::Cancelling;
                job.shared.cancel.send_replace(true);
            }
            _ => {}
        }
        if before != job.state {
            self.persist(job);
        }
        let (state, shared) = (job.state, job.shared.clone());
        if before == JobState::Queued {
            st.next_end = end;
            info!("job {id} cancelled before it started");
            self.prune(&mut st);
        }
        drop(st);
        if before == JobState::Running {
            // Its leases are returned now, not when the driver gets round to stopping.
            if let Some(last) = self.hub.detach_job(id).pop() {
                *lock(&shared.last) = Some(last);
            }
            info!("job {id}: cancelling");
        }
        Ok(state)
    }

    /// Starts queued jobs while fewer than `max_running` run; waits for a change, and again.
    pub async fn dispatch(self: Arc<Self>) {
        loop {
            self.start_ready();
            // `notify_one` keeps a permit when nobody waits: no change is missed.
            self.wake.notified().await;
        }
    }

    /// Starts no more jobs, then waits until none runs (their drivers stop on the signal that
    /// stops the coordinator).
    pub async fn wait_idle(&self) {
        self.closed.store(true, Ordering::SeqCst);
        while self.lock().jobs.iter().any(|j| j.state.is_active()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts every queued job that may start now.
    fn start_ready(self: &Arc<Self>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut st = self.lock();
        loop {
            let active: Vec<&Job> = st.jobs.iter().filter(|j| j.state.is_active()).collect();
            if active.len() >= self.max_running {
                return;
            }
            let busy: Vec<PathBuf> = active
                .iter()
                .flat_map(|j| j.output_dirs.iter().cloned())
                .collect();
            // Same directory, or one inside the other (a sweep's folder and a checkpoint's).
            let clashes = |d: &PathBuf| busy.iter().any(|b| overlaps(b, d));
            let Some(index) = st
                .jobs
                .iter()
                .position(|j| j.state == JobState::Queued && !j.output_dirs.iter().any(clashes))
            else {
                return;
            };
            let end = st.next_end + 1;
            let job = &mut st.jobs[index];
            let Some(config) = job.config.take() else {
                return;
            };
            // Again at the start: the folders may have changed while it waited (a symlink), and
            // a job restored from the state directory was accepted under the roots of then.
            if let Err(e) = config.check_roots(&self.roots, &job.name) {
                job.state = JobState::Failed;
                job.error = e.to_string();
                job.ended_seq = end;
                job.ended_at = unix_now();
                warn!("job {} refused at its start: {}", job.id, job.error);
                self.persist(job);
                st.next_end = end;
                continue;
            }
            job.state = JobState::Running;
            self.persist(job);
            let host: Arc<dyn FleetHost> = Arc::new(JobHost {
                hub: self.hub.clone(),
                job: job.id.clone(),
                seq: job.seq,
                shared: job.shared.clone(),
            });
            let setup = FleetSetup {
                options: self.options.clone(),
                restart: job.restart,
                host: Some(host),
                ..Default::default()
            };
            let (jobs, id) = (self.clone(), job.id.clone());
            info!("job {id} ({}) started", job.name);
            let name = job.name.clone();
            tokio::spawn(async move {
                // The driver on a task of its own: if it panics, the job fails (saying so)
                // instead of staying `running` forever.
                let driver = tokio::spawn(async move {
                    panic_hook(&name);
                    config.run(&setup).await
                });
                let ended = match driver.await {
                    Ok(ended) => ended,
                    Err(e) => {
                        let why = if e.is_panic() {
                            let payload = e.into_panic();
                            let text = payload
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| payload.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "no message".into());
                            format!("the job's driver panicked (a bug in evalfleet): {text}")
                        } else {
                            format!("the job's driver was stopped: {e}")
                        };
                        Ended::Failed(why)
                    }
                };
                jobs.finish(&id, ended);
            });
        }
    }

    /// Records how job `id`'s driver ended.
    fn finish(&self, id: &str, ended: Ended) {
        let mut st = self.lock();
        let end = st.next_end + 1;
        let Some(job) = st.jobs.iter_mut().find(|j| j.id == id) else {
            return;
        };
        match ended {
            Ended::Files(files) => {
                job.state = JobState::Finished;
                job.files = files.iter().map(|p| p.display().to_string()).collect();
                info!("job {id} finished: {} files written", job.files.len());
            }
            // The coordinator is stopping: the job has not ended, and its record says so, so
            // that the next start on the state directory runs it again (from its journal).
            Ended::Interrupted if job.state == JobState::Running => {
                job.state = JobState::Queued;
                job.restart = false;
                info!("job {id} interrupted; it runs again when the coordinator starts again");
            }
            Ended::Cancelled | Ended::Interrupted | Ended::Failed(_)
                if job.state == JobState::Cancelling =>
            {
                job.state = JobState::Cancelled;
                info!("job {id} cancelled");
            }
            Ended::Cancelled => {
                job.state = JobState::Cancelled;
                info!("job {id} cancelled");
            }
            Ended::Interrupted | Ended::Failed(_) => {
                job.state = JobState::Failed;
                job.error = match ended {
                    Ended::Failed(why) => why,
                    _ => "stopped by a signal".to_string(),
                };
                warn!("job {id} failed: {}", job.error);
            }
        }
        let ended = job.state.is_final();
        if ended {
            job.ended_seq = end;
            job.ended_at = unix_now();
        }
        self.persist(job);
        if ended {
            st.next_end = end;
            self.prune(&mut st);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// The status of job `id`, or of every job (`None`) submitted after `after_seq`, in
    /// submission order.
    pub fn status(&self, id: Option<&str>, after_seq: u64) -> Result<Vec<pb::JobStatus>, JobError> {
        let st = self.lock();
        let jobs: Vec<&Job> = st
            .jobs
            .iter()
            .filter(|j| id.map_or(j.seq > after_seq, |id| j.id == id))
            .collect();
        if let (Some(id), true) = (id, jobs.is_empty()) {
            return Err(JobError::NotFound(id.to_string()));
        }
        Ok(jobs.into_iter().map(|j| self.job_status(j)).collect())
    }

    fn job_status(&self, job: &Job) -> pb::JobStatus {
        let mut status = pb::JobStatus {
            job_id: job.id.clone(),
            name: job.name.clone(),
            state: job.state.as_str().to_string(),
            steps_done: lock(&job.shared.steps_done).clone(),
            // Worker texts may be in it (their last stderr lines): no terminal escapes, bounded.
            error: crate::rpc::printable_lines(&job.error, MAX_ERROR_CHARS),
            files: job.files.clone(),
            submitted_seq: job.seq,
            ended_seq: job.ended_seq,
            eta_seconds: -1.0,
            ..Default::default()
        };
        let fleets = if job.state.is_active() {
            self.hub.job_progress(&job.id)
        } else {
            Vec::new()
        };
        if fleets.is_empty() {
            if let Some((label, p)) = lock(&job.shared.last).clone() {
                status.step = if job.state.is_final() {
                    String::new()
                } else {
                    label
                };
                (status.done, status.total, status.failed) =
                    (p.done as u64, p.total as u64, p.failed as u64);
            }
            return status;
        }
        let labels: Vec<&str> = fleets.iter().map(|f| f.label.as_str()).collect();
        status.step = labels.join(", ");
        for f in &fleets {
            status.done += f.progress.done as u64;
            status.total += f.progress.total as u64;
            status.failed += f.progress.failed as u64;
            status.leases_outstanding += f.leases as u32;
            status.items_per_second += f.items_per_second;
        }
        if status.items_per_second > 0.0 {
            status.eta_seconds =
                status.total.saturating_sub(status.done) as f64 / status.items_per_second;
        }
        status
    }
}

impl Shared {
    fn new(steps_done: Vec<String>) -> Arc<Self> {
        Arc::new(Shared {
            cancel: watch::Sender::new(false),
            steps_done: Mutex::new(steps_done),
            last: Mutex::new(None),
        })
    }
}

/// A saved job as the queue holds it: one that had not ended is queued again (resuming from
/// its journal, so never with `restart`); one whose YAML no longer parses fails, saying why.
fn restore(record: JobRecord) -> Job {
    let saved = JobState::parse(&record.state).unwrap_or(JobState::Failed);
    let mut job = Job {
        id: record.id,
        name: record.name,
        seq: record.seq,
        state: saved,
        config: None,
        output_dirs: Vec::new(),
        restart: record.restart && saved == JobState::Queued,
        shared: Shared::new(record.steps_done),
        error: record.error,
        files: record.files,
        ended_seq: record.ended_seq,
        ended_at: record.ended_at,
        yaml: record.yaml,
    };
    match saved {
        JobState::Queued | JobState::Running => {
            match Spec::parse(Path::new(&job.name), &job.yaml) {
                Ok(config) => {
                    job.output_dirs = config.output_dirs();
                    job.config = Some(config);
                    job.state = JobState::Queued;
                    info!("job {} ({}) queued again", job.id, job.name);
                }
                Err(e) => {
                    job.state = JobState::Failed;
                    job.error = format!("queued again after a restart, but: {e}");
                }
            }
        }
        JobState::Cancelling => job.state = JobState::Cancelled,
        _ => {}
    }
    job
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Test hook for the panicking-driver test (`tests/fleet_serve.rs`): a job whose name ends with
/// this variable's value panics in its driver. Compiled only with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
const TEST_PANIC_JOB_ENV: &str = "EVALFLEET_TEST_PANIC_JOB";

#[cfg_attr(not(feature = "test-hooks"), allow(unused_variables))]
fn panic_hook(name: &str) {
    #[cfg(feature = "test-hooks")]
    if std::env::var(TEST_PANIC_JOB_ENV).is_ok_and(|v| !v.is_empty() && name.ends_with(&v)) {
        panic!("test hook {TEST_PANIC_JOB_ENV}");
    }
}

/// What a job runs: a run file (`evalfleet run`) or a sweep (`evalfleet sweep`).
enum Spec {
    Run(JobConfig),
    Sweep(SweepConfig),
}

/// How a job's driver ended.
enum Ended {
    /// The files it wrote.
    Files(Vec<PathBuf>),
    Cancelled,
    /// The coordinator is stopping (SIGINT/SIGTERM).
    Interrupted,
    Failed(String),
}

impl From<RunError> for Ended {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Cancelled => Ended::Cancelled,
            RunError::Interrupted { .. } => Ended::Interrupted,
            e => Ended::Failed(evalfleet_console::error_text(&e)),
        }
    }
}

impl Spec {
    /// A sweep YAML (one with `checkpoints`) or a run file, as `evalfleet sweep` / `run` read them.
    fn parse(file: &Path, text: &str) -> Result<Spec, ConfigError> {
        let is_sweep = serde_yaml::from_str::<serde_yaml::Mapping>(text)
            .is_ok_and(|top| top.contains_key("checkpoints"));
        Ok(if is_sweep {
            Spec::Sweep(crate::sweep::parse_sweep(file, text)?)
        } else {
            Spec::Run(crate::config::parse_job(file, text)?)
        })
    }

    /// The output directories it writes (its steps' `output_dir` / `save_dir`, a sweep's folder).
    fn output_dirs(&self) -> Vec<PathBuf> {
        let dirs = match self {
            Spec::Sweep(cfg) => vec![cfg.output_dir.clone()],
            Spec::Run(cfg) => cfg.output_dirs(),
        };
        // Canonical, so that `D`, `D/x/..` and a symlink to `D` are one directory.
        dirs.iter().map(|d| canonical_path(d)).collect()
    }

    /// Whether every path it names lies in `roots` (`file`: its name, for the message).
    fn check_roots(&self, roots: &AllowedRoots, file: &str) -> Result<(), OutsideRoots> {
        match self {
            Spec::Run(cfg) => roots.check_job(file, cfg),
            Spec::Sweep(cfg) => roots.check_sweep(file, cfg),
        }
    }

    /// Runs it through its driver on `setup`'s fleet.
    async fn run(&self, setup: &FleetSetup) -> Ended {
        match self {
            Spec::Run(cfg) => match crate::run::run_job(cfg, setup).await {
                Ok(files) => Ended::Files(files),
                Err(e) => e.into(),
            },
            Spec::Sweep(cfg) => match crate::sweep::run_sweep(cfg, setup).await {
                Ok(report) => {
                    let r = report.report;
                    Ended::Files(vec![r.summary_md, r.summary_csv, r.report_html])
                }
                Err(SweepError::Run(e)) => e.into(),
                Err(e) => Ended::Failed(evalfleet_console::error_text(&e)),
            },
        }
    }
}

/// A running job's side of the hub: what its driver's fleets attach through.
struct JobHost {
    hub: Arc<Hub>,
    job: String,
    seq: u64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for JobHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobHost({})", self.job)
    }
}

impl FleetHost for JobHost {
    fn attach<'a>(
        &'a self,
        fleet: &'a crate::rpc::Fleet,
        label: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<u64, RunError>> {
        let cancelled = *self.shared.cancel.borrow();
        Box::pin(async move {
            if cancelled {
                return Err(RunError::Cancelled);
            }
            Ok(self.hub.attach(&self.job, self.seq, fleet, label))
        })
    }

    fn detach(&self, attachment: u64) {
        if let Some((label, progress)) = self.hub.detach(attachment) {
            if progress.is_complete() {
                lock(&self.shared.steps_done).push(label.clone());
            }
            *lock(&self.shared.last) = Some((label, progress));
        }
    }

    fn ended(&self) -> futures::future::BoxFuture<'static, RunError> {
        let mut rx = self.shared.cancel.subscribe();
        Box::pin(async move {
            // The sender lives as long as the job; if it went, nobody can cancel any more.
            if rx.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
            RunError::Cancelled
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: &str, yaml: &str) -> JobRecord {
        JobRecord {
            id: "job-4".into(),
            name: "a.yaml".into(),
            seq: 4,
            yaml: yaml.into(),
            restart: true,
            state: state.into(),
            error: String::new(),
            files: Vec::new(),
            steps_done: vec!["step1".into()],
            ended_seq: 0,
            ended_at: 0,
        }
    }

    #[test]
    fn a_restart_queues_unfinished_jobs_again_without_restart_and_ends_the_others() {
        let yaml = "steps: [step1]\nmodel_name_or_path: m\ndataset: d\noutput_dir: out\n";
        let running = restore(record("running", yaml));
        assert_eq!(running.state, JobState::Queued);
        assert!(
            running.config.is_some() && !running.restart,
            "resumes its journal"
        );
        assert_eq!(
            running.output_dirs,
            [PathBuf::from(crate::run::absolute(Path::new("out")))]
        );
        assert!(
            restore(record("queued", yaml)).restart,
            "not started: --restart kept"
        );
        assert_eq!(
            restore(record("cancelling", yaml)).state,
            JobState::Cancelled
        );
        let finished = restore(record("finished", yaml));
        assert_eq!(finished.state, JobState::Finished);
        assert!(finished.config.is_none());
        let broken = restore(record("running", "steps: [step9]\n"));
        assert_eq!(broken.state, JobState::Failed);
        assert!(broken.error.contains("a.yaml"), "{}", broken.error);
    }

    #[test]
    fn states_are_named_and_ordered() {
        for state in [
            "queued",
            "running",
            "cancelling",
            "finished",
            "failed",
            "cancelled",
        ] {
            assert_eq!(JobState::parse(state).unwrap().as_str(), state);
        }
        assert_eq!(JobState::Cancelling.as_str(), "cancelling");
        assert!(JobState::Cancelled.is_final() && !JobState::Cancelling.is_final());
        assert!(JobState::Cancelling.is_active() && !JobState::Queued.is_active());
    }
}
