//! Local mode: everything needed to run a fleet on this machine without any setup — a fresh bearer
//! token per run, finding the `evalfleet-worker` binary, counting GPUs, spawning one worker process
//! per device, and supervising them: their stderr is forwarded and its last lines kept; a worker
//! that dies (an OOM kill, a GPU fault) is started again after a backoff while its leases go to
//! the others, unless it died more often than the [`RestartPolicy`] allows, and the error
//! message once every worker is down carries their last lines.
//!
//! With tensor parallelism of size k ([`SpawnOptions::tensor_parallel`]), a worker is a group: on
//! GPUs, k processes on k consecutive visible GPUs (`--tp-size k --tp-rank r --tp-init-file F`,
//! F fresh for each group under a temporary folder), of which rank 0 alone talks to the
//! coordinator; on the CPU, one process with k ranks as threads (`--tp-threads k`). Either way
//! the group is one worker to the coordinator.
//!
//! The token reaches workers through the `EVALFLEET_TOKEN` environment variable, never the command
//! line, which other users of the machine can read in the process list.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStderr, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Environment variable carrying the bearer token (both binaries read it).
pub const TOKEN_ENV: &str = "EVALFLEET_TOKEN";
/// `evalfleet serve`'s token for workers (default of `--worker-token-file`).
pub const WORKER_TOKEN_ENV: &str = "EVALFLEET_WORKER_TOKEN";
/// `evalfleet serve`'s token for job control, and the one `submit` / `status` / `cancel` send
/// (default of their `--control-token-file` / `--token-file`).
pub const CONTROL_TOKEN_ENV: &str = "EVALFLEET_CONTROL_TOKEN";
/// The shortest token `evalfleet serve` and a listening `evalfleet run` accept (a random one
/// is far longer: README).
pub const MIN_TOKEN_LEN: usize = 16;
/// Environment variable overriding where the worker binary is.
pub const WORKER_BIN_ENV: &str = "EVALFLEET_WORKER_BIN";
/// How many stderr lines of each worker are kept for error messages.
const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no bearer token: pass {flag} FILE or set {env}")]
    NoToken {
        flag: &'static str,
        env: &'static str,
    },
    #[error(
        "the {what} is {len} characters long; at least {MIN_TOKEN_LEN} are needed (for example \
         `head -c 32 /dev/urandom | base64`)"
    )]
    ShortToken { what: &'static str, len: usize },
    #[error(
        "the worker token and the control token are the same: any worker host could then submit \
         and cancel jobs; give each its own token"
    )]
    SameTokens,
    #[error("token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {0} is empty")]
    EmptyTokenFile(PathBuf),
    #[error("reading random bytes for the bearer token: {0}")]
    Random(std::io::Error),
    #[error(
        "worker binary not found at {0}: build it with `cargo build -p evalfleet-worker` (same profile as evalfleet), or set {WORKER_BIN_ENV}"
    )]
    WorkerBinary(PathBuf),
    #[error("starting worker {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "tensor_parallel_size {tp} does not divide the {gpus} visible GPUs (CUDA_VISIBLE_DEVICES \
         or nvidia-smi): each group takes {tp} GPUs of its own; set CUDA_VISIBLE_DEVICES to a \
         multiple of {tp} GPUs or choose a size that divides {gpus}"
    )]
    TensorParallelGpus { tp: usize, gpus: usize },
    #[error(
        "{workers} tensor-parallel groups of {tp} GPUs need {need} GPUs, but {gpus} are visible"
    )]
    TooFewGpus {
        workers: usize,
        tp: usize,
        need: usize,
        gpus: usize,
    },
    #[error("tensor_parallel_size must be at least 1, got 0")]
    ZeroTensorParallel,
    #[error("creating the folder for the tensor-parallel groups' init files: {0}")]
    InitDir(std::io::Error),
}

/// A new random token: 32 bytes from the OS, hex-encoded.
pub fn random_token() -> Result<String, LocalError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(LocalError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token for an external fleet (`--listen`): the first line of `file`, else
/// `$EVALFLEET_TOKEN`; at least [`MIN_TOKEN_LEN`] characters, as for `evalfleet serve`.
pub fn read_token(file: Option<&Path>) -> Result<String, LocalError> {
    let token = read_token_from(file, "--token-file", TOKEN_ENV)?;
    let len = token.chars().count();
    if len < MIN_TOKEN_LEN {
        return Err(LocalError::ShortToken {
            what: "bearer token",
            len,
        });
    }
    Ok(token)
}

/// A token from the first line of `file` (the option `flag`), else from the environment
/// variable `env`.
pub fn read_token_from(
    file: Option<&Path>,
    flag: &'static str,
    env: &'static str,
) -> Result<String, LocalError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| LocalError::TokenFile {
            path: path.to_path_buf(),
            source,
        })?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(LocalError::EmptyTokenFile(path.to_path_buf()));
        }
        return Ok(token.to_string());
    }
    match std::env::var(env) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => Err(LocalError::NoToken { flag, env }),
    }
}

/// `evalfleet serve`'s two tokens, checked: each at least [`MIN_TOKEN_LEN`] characters, and
/// different (a worker token must not open job control, nor a control token the worker port).
pub fn check_serve_tokens(worker: &str, control: &str) -> Result<(), LocalError> {
    for (what, token) in [("worker token", worker), ("control token", control)] {
        let len = token.chars().count();
        if len < MIN_TOKEN_LEN {
            return Err(LocalError::ShortToken { what, len });
        }
    }
    if worker == control {
        return Err(LocalError::SameTokens);
    }
    Ok(())
}

/// `$EVALFLEET_WORKER_BIN`, else `evalfleet-worker` next to the running executable.
pub fn worker_binary() -> Result<PathBuf, LocalError> {
    let path = match std::env::var_os(WORKER_BIN_ENV) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().unwrap_or_default();
            exe.with_file_name(format!("evalfleet-worker{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(LocalError::WorkerBinary(path))
    }
}

/// GPUs this process may use: the entries of `CUDA_VISIBLE_DEVICES` if set, else what
/// `nvidia-smi -L` lists, else 0.
pub fn visible_gpus() -> usize {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return count_visible_devices(&v);
    }
    match std::process::Command::new("nvidia-smi")
        .arg("-L")
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("GPU "))
            .count(),
        _ => 0,
    }
}

/// Counts the devices named by a `CUDA_VISIBLE_DEVICES` value ("" and "-1" hide every GPU).
pub fn count_visible_devices(value: &str) -> usize {
    let value = value.trim();
    if value.is_empty() || value.starts_with('-') {
        return 0;
    }
    value
        .split(',')
        .take_while(|d| !d.trim().starts_with('-'))
        .filter(|d| !d.trim().is_empty())
        .count()
}

/// How to start the local workers.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    pub bin: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub coordinator_url: String,
    pub token: String,
    /// One `--device` per worker (`cpu`, `cuda:0`, ...).
    pub devices: Vec<String>,
    /// Passed as `--batch-size` (the workers' cap on a lease's batch) when set; without it the
    /// job's batch size, which every lease carries, decides.
    pub batch_size: Option<u32>,
    /// Appended to every worker's arguments.
    pub extra_args: Vec<String>,
    /// Ranks per worker (1 = no tensor parallelism). A worker on `cuda:N` then runs on
    /// `cuda:N..cuda:N+k` ([`SpawnOptions::devices_for_groups`] leaves room); one on `cpu` runs
    /// its ranks as threads.
    pub tensor_parallel: usize,
    /// When a worker that dies is started again.
    pub restarts: RestartPolicy,
}

impl SpawnOptions {
    /// `count` workers, or (for `None`) one per visible GPU, else one CPU worker.
    pub fn devices_for(count: Option<usize>, force_cpu: bool) -> Vec<String> {
        let gpus = if force_cpu { 0 } else { visible_gpus() };
        let n = count.unwrap_or(gpus.max(1));
        (0..n)
            .map(|i| {
                if gpus > 0 {
                    format!("cuda:{}", i % gpus)
                } else {
                    "cpu".to_string()
                }
            })
            .collect()
    }
}

impl SpawnOptions {
    /// One device per worker, as [`SpawnOptions::devices_for`], for workers that are
    /// tensor-parallel groups of `tp` ranks: on GPUs, each worker's device is the first of its
    /// `tp` consecutive GPUs; by default one group per `tp` visible GPUs, which `tp` must divide.
    pub fn devices_for_groups(
        count: Option<usize>,
        force_cpu: bool,
        tp: usize,
    ) -> Result<Vec<String>, LocalError> {
        let gpus = if force_cpu { 0 } else { visible_gpus() };
        group_devices(count, gpus, tp)
    }
}

/// [`SpawnOptions::devices_for_groups`] for `gpus` visible GPUs.
pub fn group_devices(
    count: Option<usize>,
    gpus: usize,
    tp: usize,
) -> Result<Vec<String>, LocalError> {
    if tp == 0 {
        return Err(LocalError::ZeroTensorParallel);
    }
    if gpus == 0 {
        return Ok(vec!["cpu".to_string(); count.unwrap_or(1)]);
    }
    if !gpus.is_multiple_of(tp) {
        return Err(LocalError::TensorParallelGpus { tp, gpus });
    }
    let groups = gpus / tp;
    let n = count.unwrap_or(groups);
    if n > groups && tp > 1 {
        // Two ranks on one GPU cannot share an NCCL group ("Duplicate GPU detected").
        return Err(LocalError::TooFewGpus {
            workers: n,
            tp,
            need: n * tp,
            gpus,
        });
    }
    Ok((0..n)
        .map(|i| format!("cuda:{}", (i % groups) * tp))
        .collect())
}

/// The processes of one worker: `(device, extra arguments)` for each, rank 0 first.
fn worker_processes(
    device: &str,
    tp: usize,
    init_dir: Option<&Path>,
    worker: usize,
) -> Vec<(String, Vec<String>)> {
    if tp <= 1 {
        return vec![(device.to_string(), Vec::new())];
    }
    let first_gpu = device
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<usize>().ok());
    let (Some(first), Some(dir)) = (first_gpu, init_dir) else {
        return vec![(
            device.to_string(),
            vec!["--tp-threads".into(), tp.to_string()],
        )];
    };
    let init = dir.join(format!("group-{worker}.id"));
    (0..tp)
        .map(|rank| {
            let args = vec![
                "--tp-size".into(),
                tp.to_string(),
                "--tp-rank".into(),
                rank.to_string(),
                "--tp-init-file".into(),
                init.display().to_string(),
            ];
            (format!("cuda:{}", first + rank), args)
        })
        .collect()
}

/// How local workers that die are started again (`--max-worker-restarts`,
/// `--worker-restart-window`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// Restarts of one worker allowed within [`RestartPolicy::window`]; a worker that dies once
    /// more within it stays down (and the job fails once every local worker is down).
    pub max_restarts: u32,
    /// The window in which restarts are counted.
    pub window: Duration,
    /// The wait before the first restart; it doubles with each restart within the window, up
    /// to [`RestartPolicy::max_backoff`].
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// Restarts of one local worker allowed within [`DEFAULT_RESTART_WINDOW`].
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// The window in which a local worker's restarts are counted.
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(600);

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: DEFAULT_MAX_RESTARTS,
            window: DEFAULT_RESTART_WINDOW,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RestartPolicy {
    /// After a death at `now`, with the earlier deaths `deaths` (pruned here to the window):
    /// the wait before the restart, or `None` when the worker has died too often.
    fn after_death(&self, deaths: &mut VecDeque<Instant>, now: Instant) -> Option<Duration> {
        while deaths
            .front()
            .is_some_and(|&t| now.duration_since(t) > self.window)
        {
            deaths.pop_front();
        }
        deaths.push_back(now);
        let restarts = deaths.len() as u32;
        if restarts > self.max_restarts {
            return None;
        }
        let doubled = self.backoff.saturating_mul(1u32 << (restarts - 1).min(16));
        Some(doubled.min(self.max_backoff))
    }
}

/// The supervised local workers: each one is started again when it dies (after a backoff;
/// its leases go back to the fleet when its stream closes), until it dies more often than
/// [`RestartPolicy`] allows.
pub struct LocalWorkers {
    workers: Vec<Supervised>,
    /// Each worker's final report (it was given up, or it stopped), sent once.
    exits: mpsc::UnboundedReceiver<(usize, String)>,
    reports: Vec<Option<String>>,
    /// What the workers' supervisors are told: run, stop restarting, or kill.
    state: watch::Sender<Phase>,
    /// Where tensor-parallel groups meet (removed with the workers).
    _init_dir: Option<tempfile::TempDir>,
}

/// Turns the restarts of some [`LocalWorkers`] off ([`LocalWorkers::restart_switch`]).
#[derive(Clone)]
pub struct RestartSwitch(watch::Sender<Phase>);

impl RestartSwitch {
    pub fn off(&self) {
        self.0.send_if_modified(|phase| {
            let run = *phase == Phase::Run;
            if run {
                *phase = Phase::Stopping;
            }
            run
        });
    }
}

/// What the supervisors of [`LocalWorkers`] are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Restart workers that die.
    Run,
    /// A deliberate shutdown: exits are not failures, nothing is restarted.
    Stopping,
    /// Kill what is still running.
    Kill,
}

struct Supervised {
    /// The last stderr lines of the worker's processes (across its restarts).
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// How to start one worker (a group of processes for a tensor-parallel worker on GPUs).
struct WorkerSpec {
    /// The worker's index (`local-{index}`).
    index: usize,
    bin: PathBuf,
    /// `(device, arguments, worker id, stderr label)` of each process, rank 0 first.
    processes: Vec<(String, Vec<String>, String, String)>,
    /// Common arguments and environment.
    common: Vec<String>,
    env: Vec<(String, String)>,
    /// The group's init file, removed before the group starts again.
    init_file: Option<PathBuf>,
}

impl WorkerSpec {
    /// Starts every process of the worker, their stderr forwarded into `tail`.
    fn start(&self, tail: &Arc<Mutex<VecDeque<String>>>) -> Result<Vec<Running>, LocalError> {
        if let Some(init) = &self.init_file {
            let _ = std::fs::remove_file(init);
        }
        let mut started = Vec::new();
        for (device, args, worker_id, label) in &self.processes {
            let mut cmd = Command::new(&self.bin);
            cmd.args(&self.common[..2])
                .arg("--device")
                .arg(device)
                .arg("--worker-id")
                .arg(worker_id)
                .args(args)
                .args(&self.common[2..]);
            cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd.spawn().map_err(|source| LocalError::Spawn {
                path: self.bin.clone(),
                source,
            })?;
            let stderr = child
                .stderr
                .take()
                .map(|err| tokio::spawn(forward_stderr(label.clone(), err, tail.clone())));
            started.push(Running { child, stderr });
        }
        Ok(started)
    }
}

/// A started process of a worker.
struct Running {
    child: tokio::process::Child,
    stderr: Option<JoinHandle<()>>,
}

/// Kills every process of `group` (harmless for those already gone) and reaps them.
async fn end_group(group: &mut [Running]) {
    for p in group.iter_mut() {
        let _ = p.child.start_kill();
    }
    for p in group.iter_mut() {
        let _ = p.child.wait().await;
        if let Some(h) = p.stderr.take() {
            let _ = h.await;
        }
    }
}

/// Waits for the first process of `group` to exit; `None` if `state` says kill first.
async fn first_exit(
    group: &mut [Running],
    state: &mut watch::Receiver<Phase>,
) -> Option<std::io::Result<ExitStatus>> {
    let exits = group.iter_mut().map(|p| Box::pin(p.child.wait()));
    tokio::select! {
        (status, _, _) = futures::future::select_all(exits) => Some(status),
        _ = state.wait_for(|p| *p == Phase::Kill) => None,
    }
}

/// Runs worker `spec` until it is given up or told to stop: restarts it (after the policy's
/// backoff) whenever it dies while the fleet runs. Returns the report of its end.
async fn supervise_worker(
    spec: WorkerSpec,
    mut group: Vec<Running>,
    tail: Arc<Mutex<VecDeque<String>>>,
    policy: RestartPolicy,
    mut state: watch::Receiver<Phase>,
) -> String {
    let i = spec.index;
    let mut deaths = VecDeque::new();
    let mut restarts = 0u32;
    loop {
        let status = first_exit(&mut group, &mut state).await;
        // A group is one worker: when one rank goes, the others cannot go on.
        end_group(&mut group).await;
        let how = status
            .as_ref()
            .map_or_else(|| "killed".into(), describe_exit);
        if *state.borrow() != Phase::Run {
            return how;
        }
        let Some(wait) = policy.after_death(&mut deaths, Instant::now()) else {
            warn!(
                "worker {i} exited ({how}) for the {} time within {:?}: not restarting it\n{}",
                ordinal(deaths.len()),
                policy.window,
                tail_text(&tail)
            );
            return format!(
                "{how}; restarted {restarts} times, died {} times within {:?}",
                deaths.len(),
                policy.window
            );
        };
        warn!(
            "worker {i} exited unexpectedly ({how}); its leases go to the other workers; \
             restarting it in {wait:?}\n{}",
            tail_text(&tail)
        );
        let stopped = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = state.wait_for(|p| *p != Phase::Run) => true,
        };
        if stopped {
            return how;
        }
        match spec.start(&tail) {
            Ok(started) => {
                restarts += 1;
                info!("worker {i} restarted (restart {restarts})");
                group = started;
            }
            Err(e) => {
                push_tail(&tail, format!("(restart failed: {e})"));
                warn!("worker {i} could not be restarted: {e}");
                // Counted as a death at once: the policy decides whether to try again.
                group = Vec::new();
            }
        }
    }
}

/// "1st", "2nd", ... for log lines.
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

impl LocalWorkers {
    /// Starts one worker per entry of `opts.devices` (a group of processes for a
    /// tensor-parallel worker on GPUs: one worker, started and restarted as a whole), each
    /// supervised under `opts.restarts`.
    pub fn spawn(opts: &SpawnOptions) -> Result<Self, LocalError> {
        let (exit_tx, exits) = mpsc::unbounded_channel();
        let (state, _) = watch::channel(Phase::Run);
        let cpu_workers = opts.devices.iter().filter(|d| *d == "cpu").count();
        let tp = opts.tensor_parallel.max(1);
        let init_dir = if tp > 1 && opts.devices.iter().any(|d| d.starts_with("cuda:")) {
            Some(
                tempfile::Builder::new()
                    .prefix("evalfleet-tp-")
                    .tempdir()
                    .map_err(LocalError::InitDir)?,
            )
        } else {
            None
        };
        let mut common = vec!["--coordinator".to_string(), opts.coordinator_url.clone()];
        if let Some(bs) = opts.batch_size {
            common.extend(["--batch-size".to_string(), bs.to_string()]);
        }
        common.extend(opts.extra_args.iter().cloned());
        let mut specs = Vec::new();
        for (i, device) in opts.devices.iter().enumerate() {
            let dir = init_dir.as_ref().map(|d| d.path());
            let processes: Vec<_> = worker_processes(device, tp, dir, i)
                .into_iter()
                .enumerate()
                .map(|(rank, (device, args))| {
                    let (id, label) = match rank {
                        0 => (format!("local-{i}"), i.to_string()),
                        r => (format!("local-{i}-rank{r}"), format!("{i}.{r}")),
                    };
                    (device, args, id, label)
                })
                .collect();
            let init_file = (processes.len() > 1)
                .then(|| dir.map(|d| d.join(format!("group-{i}.id"))))
                .flatten();
            let mut env = vec![(TOKEN_ENV.to_string(), opts.token.clone())];
            // Several CPU workers on one machine would each start a thread per core.
            if cpu_workers > 1 && device == "cpu" && std::env::var_os("RAYON_NUM_THREADS").is_none()
            {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                env.push((
                    "RAYON_NUM_THREADS".into(),
                    (cores / cpu_workers).max(1).to_string(),
                ));
            }
            specs.push(WorkerSpec {
                index: i,
                bin: opts.bin.clone(),
                processes,
                common: common.clone(),
                env,
                init_file,
            });
        }
        let mut workers = Vec::new();
        for spec in specs {
            let tail = Arc::new(Mutex::new(VecDeque::new()));
            // The first start's failure is the command's error (the binary cannot run).
            let group = spec.start(&tail)?;
            let (exit_tx, policy, rx) = (exit_tx.clone(), opts.restarts, state.subscribe());
            let tail2 = tail.clone();
            tokio::spawn(async move {
                let i = spec.index;
                let report = supervise_worker(spec, group, tail2, policy, rx).await;
                let _ = exit_tx.send((i, report));
            });
            workers.push(Supervised { tail });
        }
        let reports = vec![None; workers.len()];
        Ok(LocalWorkers {
            workers,
            exits,
            reports,
            state,
            _init_dir: init_dir,
        })
    }

    /// Number of workers started (a tensor-parallel group counts once).
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Resolves once every worker is down for good (given up after dying too often, or
    /// stopped); returns a report (how each ended and its last stderr lines) for the error
    /// message. Pending forever if there are no workers.
    pub async fn all_exited(&mut self) -> String {
        if self.workers.is_empty() {
            return std::future::pending().await;
        }
        while self.reports.iter().any(Option::is_none) {
            match self.exits.recv().await {
                Some((i, report)) => self.reports[i] = Some(report),
                None => break,
            }
        }
        let mut report = String::new();
        for (i, (w, end)) in self.workers.iter().zip(&self.reports).enumerate() {
            let end = end.as_deref().unwrap_or("unknown");
            report.push_str(&format!(
                "worker {i} ({end}), last stderr lines:\n{}\n",
                tail_text(&w.tail)
            ));
        }
        report
    }

    /// From now on, workers that exit are not started again (call it before telling them to
    /// shut down, so that their exits are not taken for deaths).
    pub fn stop_restarting(&self) {
        self.state.send_if_modified(|phase| {
            let run = *phase == Phase::Run;
            if run {
                *phase = Phase::Stopping;
            }
            run
        });
    }

    /// A handle that does [`LocalWorkers::stop_restarting`] for whoever does not own them.
    pub fn restart_switch(&self) -> RestartSwitch {
        RestartSwitch(self.state.clone())
    }

    /// Waits up to `grace` for the workers to exit on their own (after the coordinator sent
    /// `Shutdown`), restarting none, then kills the rest.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop_restarting();
        if tokio::time::timeout(grace, self.all_exited())
            .await
            .is_err()
        {
            warn!("some workers did not exit within {grace:?}; killing them");
            self.state.send_replace(Phase::Kill);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.all_exited()).await;
        }
    }
}

fn push_tail(tail: &Mutex<VecDeque<String>>, line: String) {
    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line);
}

async fn forward_stderr(i: String, stderr: ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        evalfleet_console::eprintln_line(&format!("[worker {i}] {line}"));
        let line = match i.split_once('.') {
            Some((_, rank)) => format!("[rank {rank}] {line}"),
            None => line,
        };
        push_tail(&tail, line);
    }
}

fn tail_text(tail: &Mutex<VecDeque<String>>) -> String {
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    if tail.is_empty() {
        return "    (nothing on stderr)".to_string();
    }
    tail.iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe_exit(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_64_hex_digits_and_differ() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn cuda_visible_devices_counting() {
        assert_eq!(count_visible_devices(""), 0);
        assert_eq!(count_visible_devices("-1"), 0);
        assert_eq!(count_visible_devices("0"), 1);
        assert_eq!(count_visible_devices("2,3"), 2);
        // CUDA stops at the first invalid entry.
        assert_eq!(count_visible_devices("0,-1,2"), 1);
    }

    #[test]
    fn tensor_parallel_groups_take_consecutive_gpus() {
        assert_eq!(group_devices(None, 4, 2).unwrap(), vec!["cuda:0", "cuda:2"]);
        assert_eq!(group_devices(Some(1), 8, 4).unwrap(), vec!["cuda:0"]);
        assert_eq!(group_devices(None, 3, 1).unwrap().len(), 3);
        // CPU: the ranks are threads of each worker process.
        assert_eq!(group_devices(Some(2), 0, 4).unwrap(), vec!["cpu", "cpu"]);
        let e = group_devices(None, 3, 2).unwrap_err().to_string();
        assert!(
            e.contains("tensor_parallel_size 2 does not divide the 3 visible GPUs"),
            "{e}"
        );
        let e = group_devices(Some(3), 4, 2).unwrap_err().to_string();
        assert!(
            e.contains("3 tensor-parallel groups of 2 GPUs need 6 GPUs"),
            "{e}"
        );
        assert!(group_devices(None, 2, 0).is_err());
    }

    #[test]
    fn a_gpu_group_is_one_process_per_rank_and_a_cpu_group_one_process() {
        let dir = Path::new("/tmp/g");
        let procs = worker_processes("cuda:2", 2, Some(dir), 1);
        assert_eq!(procs.len(), 2);
        assert_eq!(procs[1].0, "cuda:3");
        assert_eq!(
            procs[1].1.join(" "),
            "--tp-size 2 --tp-rank 1 --tp-init-file /tmp/g/group-1.id"
        );
        let cpu = worker_processes("cpu", 4, None, 0);
        assert_eq!(
            cpu,
            vec![(
                "cpu".to_string(),
                vec!["--tp-threads".to_string(), "4".into()]
            )]
        );
        assert_eq!(worker_processes("cuda:0", 1, Some(dir), 0)[0].1.len(), 0);
    }

    #[test]
    fn restarts_back_off_and_stop_beyond_the_limit_within_the_window() {
        let policy = RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(60),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3),
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut deaths = VecDeque::new();
        let waits: Vec<_> = [0, 1, 2]
            .into_iter()
            .map(|s| policy.after_death(&mut deaths, at(s)))
            .collect();
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(waits, vec![secs(1), secs(2), secs(3)], "doubling, capped");
        // A fourth death within the minute: given up.
        assert_eq!(policy.after_death(&mut deaths, at(3)), None);
        // Deaths spread out further than the window are each a first one.
        let mut deaths = VecDeque::new();
        for minute in 0..10 {
            let wait = policy.after_death(&mut deaths, at(61 * minute));
            assert_eq!(wait, secs(1), "death in minute {minute}");
        }
        let never = RestartPolicy {
            max_restarts: 0,
            ..policy
        };
        assert_eq!(never.after_death(&mut VecDeque::new(), t0), None);
    }

    #[test]
    fn token_file_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret-0123456789 \nignored\n").unwrap();
        assert_eq!(read_token(Some(&path)).unwrap(), "s3cret-0123456789");
        std::fs::write(&path, "s3cret\n").unwrap();
        let short = read_token(Some(&path)).unwrap_err().to_string();
        assert!(
            short.contains("the bearer token is 6 characters long; at least 16 are needed"),
            "{short}"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_token(Some(&path)),
            Err(LocalError::EmptyTokenFile(_))
        ));
    }
}
