//! Local mode: everything needed to run a fleet on this machine without any setup — a fresh bearer
//! token per run, finding the `evalfleet-worker` binary, counting GPUs, spawning one worker process
//! per device, and watching them (their stderr is forwarded and its last lines kept for the error
//! message if every worker dies).
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStderr, Command};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Environment variable carrying the bearer token (both binaries read it).
pub const TOKEN_ENV: &str = "EVALFLEET_TOKEN";
/// `evalfleet serve`'s token for workers (default of `--worker-token-file`).
pub const WORKER_TOKEN_ENV: &str = "EVALFLEET_WORKER_TOKEN";
/// `evalfleet serve`'s token for job control, and the one `submit` / `status` / `cancel` send
/// (default of their `--control-token-file` / `--token-file`).
pub const CONTROL_TOKEN_ENV: &str = "EVALFLEET_CONTROL_TOKEN";
/// The shortest token `evalfleet serve` accepts (a random one is far longer: README).
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

/// The token for an external fleet: the first line of `file`, else `$EVALFLEET_TOKEN`.
pub fn read_token(file: Option<&Path>) -> Result<String, LocalError> {
    read_token_from(file, "--token-file", TOKEN_ENV)
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

/// The spawned worker processes.
pub struct LocalWorkers {
    procs: Vec<WorkerProc>,
    exits: mpsc::UnboundedReceiver<(usize, std::io::Result<ExitStatus>)>,
    statuses: Vec<Option<String>>,
    /// Set before a deliberate shutdown, so exits are not reported as failures.
    stopping: Arc<AtomicBool>,
    /// Where tensor-parallel groups meet (removed with the workers).
    _init_dir: Option<tempfile::TempDir>,
}

struct WorkerProc {
    tail: Arc<Mutex<VecDeque<String>>>,
    kill: Option<oneshot::Sender<()>>,
}

impl LocalWorkers {
    /// Starts one worker per entry of `opts.devices` (a group of processes for a
    /// tensor-parallel worker on GPUs; each process is watched as its own).
    pub fn spawn(opts: &SpawnOptions) -> Result<Self, LocalError> {
        let (exit_tx, exits) = mpsc::unbounded_channel();
        let stopping = Arc::new(AtomicBool::new(false));
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
        let processes = opts.devices.iter().enumerate().flat_map(|(i, device)| {
            let dir = init_dir.as_ref().map(|d| d.path());
            worker_processes(device, tp, dir, i)
                .into_iter()
                .enumerate()
                .map(move |(rank, p)| (i, rank, p))
        });
        let mut procs = Vec::new();
        for (i, rank, (device, tp_args)) in processes {
            let mut cmd = Command::new(&opts.bin);
            cmd.arg("--coordinator").arg(&opts.coordinator_url);
            let worker_id = match rank {
                0 => format!("local-{i}"),
                r => format!("local-{i}-rank{r}"),
            };
            cmd.arg("--device")
                .arg(&device)
                .arg("--worker-id")
                .arg(worker_id);
            if let Some(bs) = opts.batch_size {
                cmd.arg("--batch-size").arg(bs.to_string());
            }
            cmd.args(&tp_args);
            cmd.args(&opts.extra_args);
            cmd.env(TOKEN_ENV, &opts.token);
            // Several CPU workers on one machine would each start a thread per core.
            if cpu_workers > 1 && device == "cpu" && std::env::var_os("RAYON_NUM_THREADS").is_none()
            {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                cmd.env(
                    "RAYON_NUM_THREADS",
                    (cores / cpu_workers).max(1).to_string(),
                );
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd.spawn().map_err(|source| LocalError::Spawn {
                path: opts.bin.clone(),
                source,
            })?;
            let tail = Arc::new(Mutex::new(VecDeque::new()));
            let label = match rank {
                0 => i.to_string(),
                r => format!("{i}.{r}"),
            };
            let stderr_done = child
                .stderr
                .take()
                .map(|err| tokio::spawn(forward_stderr(label, err, tail.clone())));
            let (kill, kill_rx) = oneshot::channel::<()>();
            let exit_tx = exit_tx.clone();
            let (stopping2, tail2) = (stopping.clone(), tail.clone());
            let i = procs.len();
            tokio::spawn(async move {
                let status = tokio::select! {
                    s = child.wait() => s,
                    _ = kill_rx => { let _ = child.start_kill(); child.wait().await }
                };
                if let Some(h) = stderr_done {
                    let _ = h.await;
                }
                if !stopping2.load(Ordering::SeqCst) {
                    let how = describe_exit(&status);
                    warn!(
                        "worker {i} exited unexpectedly ({how}); its leases will be re-run by the others\n{}",
                        tail_text(&tail2)
                    );
                }
                let _ = exit_tx.send((i, status));
            });
            procs.push(WorkerProc {
                tail,
                kill: Some(kill),
            });
        }
        let statuses = vec![None; procs.len()];
        Ok(LocalWorkers {
            procs,
            exits,
            statuses,
            stopping,
            _init_dir: init_dir,
        })
    }

    /// Number of worker processes started (a tensor-parallel group on GPUs counts each rank).
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Resolves once every worker has exited; returns a report (exit status and last stderr lines
    /// of each) for the error message. Pending forever if there are no workers.
    pub async fn all_exited(&mut self) -> String {
        if self.procs.is_empty() {
            return std::future::pending().await;
        }
        while self.statuses.iter().any(Option::is_none) {
            match self.exits.recv().await {
                Some((i, status)) => self.statuses[i] = Some(describe_exit(&status)),
                None => break,
            }
        }
        let mut report = String::new();
        for (i, (p, status)) in self.procs.iter().zip(&self.statuses).enumerate() {
            let status = status.as_deref().unwrap_or("unknown");
            report.push_str(&format!(
                "worker {i} ({status}), last stderr lines:\n{}\n",
                tail_text(&p.tail)
            ));
        }
        report
    }

    /// Waits up to `grace` for the workers to exit on their own (after the coordinator sent
    /// `Shutdown`), then kills the rest.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        if tokio::time::timeout(grace, self.all_exited())
            .await
            .is_err()
        {
            warn!("some workers did not exit within {grace:?}; killing them");
            for p in &mut self.procs {
                if let Some(kill) = p.kill.take() {
                    let _ = kill.send(());
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), self.all_exited()).await;
        }
    }
}

async fn forward_stderr(i: String, stderr: ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        evalfleet_console::eprintln_line(&format!("[worker {i}] {line}"));
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
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
    fn token_file_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret \nignored\n").unwrap();
        assert_eq!(read_token(Some(&path)).unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_token(Some(&path)),
            Err(LocalError::EmptyTokenFile(_))
        ));
    }
}
