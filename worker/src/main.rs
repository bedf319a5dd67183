//! `evalfleet-worker`: connects to a coordinator, loads the models its leases name (once each) and
//! runs their items, streaming results back. Started by `evalfleet` in local mode, or by hand /
//! Kubernetes for an external fleet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use evalfleet_proto::v1 as pb;
use evalfleet_worker::convert;
use evalfleet_worker::device::parse_device;
use evalfleet_worker::rpc::{self, LeaseRunner, WorkerOptions};
use evalfleet_worker::tasks::{Executor, ExecutorOptions};
use evalfleet_worker::tp::launch::{self, Group, ProcessRole};

/// Environment variable carrying the bearer token (the coordinator sets it for local workers).
const TOKEN_ENV: &str = "EVALFLEET_TOKEN";

/// An evalfleet worker: dials the coordinator, runs the work it leases, streams one result per item.
///
/// The bearer token is read from --token-file or the EVALFLEET_TOKEN environment variable (never
/// from the command line, where other users could see it).
#[derive(Debug, Parser)]
#[command(
    name = "evalfleet-worker",
    version,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Instead of joining a fleet, run a one-off command.
    #[command(subcommand)]
    command: Option<Command>,
    /// Coordinator URL, e.g. http://10.0.0.5:50051 (as printed by `evalfleet run --listen`).
    /// Not needed by tensor-parallel followers (--tp-rank above 0), which talk only to rank 0.
    #[arg(long, env = "EVALFLEET_COORDINATOR")]
    coordinator: Option<String>,
    /// File whose first line is the bearer token (default: $EVALFLEET_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Device to run on: `cpu` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// A cap on items per lease and sequences run together. Without it the job's batch size
    /// decides (its YAML `batch_size` or the coordinator's --batch-size, default 8; it comes with
    /// each lease); use it to keep a small GPU within memory whatever the job asks.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: Option<u32>,
    /// Name shown in the coordinator's logs (default: <hostname>-<pid>).
    #[arg(long)]
    worker_id: Option<String>,
    /// Keep retrying to reach the coordinator for this many seconds.
    #[arg(long, default_value_t = 60)]
    connect_timeout_s: u64,
    /// PEM CA certificate to verify an https:// coordinator with (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Tensor parallelism in this process: K ranks as threads, all on --device (the CPU, or
    /// several ranks on one GPU). The group is one worker.
    #[arg(long, value_name = "K", conflicts_with = "tp_size")]
    tp_threads: Option<usize>,
    /// Tensor parallelism over K processes, one per GPU (NCCL: a build with `--features nccl`).
    /// Start K processes with the same --tp-size and --tp-init-file and ranks 0..K; rank 0 alone
    /// talks to the coordinator, and every rank exits when another ends.
    #[arg(long, value_name = "K", requires_all = ["tp_rank", "tp_init_file"])]
    tp_size: Option<usize>,
    /// This process's rank in 0..K (with --tp-size).
    #[arg(long, requires = "tp_size")]
    tp_rank: Option<usize>,
    /// File through which the ranks meet: rank 0 writes the NCCL id there (atomically), the
    /// others wait for it. Use a fresh path for each start of the group.
    #[arg(long, requires = "tp_size")]
    tp_init_file: Option<PathBuf>,
    /// How long ranks 1.. wait for rank 0's init file, in seconds.
    #[arg(long, default_value_t = 300)]
    tp_join_timeout_s: u64,
    /// One tensor-parallel group of K processes (e.g. one Kubernetes pod with K GPUs): starts K
    /// ranks of this program with these arguments on --device cuda:N .. cuda:N+K-1 (a fresh init
    /// file each start) and supervises them: SIGTERM goes to rank 0 (graceful stop), and when a
    /// rank fails the others are stopped and this process exits with its status. Needs NCCL.
    #[arg(long, value_name = "K", conflicts_with_all = ["tp_threads", "tp_size"])]
    tp_group: Option<usize>,
}

/// One-off commands (the worker's normal job needs none).
#[derive(Debug, Subcommand)]
enum Command {
    /// Converts a GGUF checkpoint into an f32 HF folder (model.safetensors, config.json and the
    /// tokenizer files from the GGUF vocabulary), e.g. for tools that read HF folders only.
    ConvertGguf {
        /// The GGUF file.
        #[arg(long)]
        gguf: PathBuf,
        /// The folder to write (created if needed; files of the same names are replaced).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    evalfleet_console::init_logging();
    let mut args = Args::parse();
    if let Some(command) = args.command.take() {
        let done = match command {
            Command::ConvertGguf { gguf, out } => convert_gguf(&gguf, &out),
        };
        std::process::exit(match done {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{}", evalfleet_console::error_text(e.as_ref()));
                1
            }
        });
    }
    if let Some(k) = args.tp_group.filter(|&k| k > 1) {
        std::process::exit(run_group(k, &args.device));
    }
    let code = match run(args) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{}", evalfleet_console::error_text(e.as_ref()));
            1
        }
    };
    // Exit without waiting for a lease still running on a blocking thread after Shutdown.
    std::process::exit(code);
}

/// `convert-gguf`: writes the folder and says what it converted.
fn convert_gguf(gguf: &Path, out: &Path) -> anyhow::Result<()> {
    let cfg = convert::gguf_to_hf_folder(gguf, out)
        .with_context(|| format!("converting {}", gguf.display()))?;
    tracing::info!(
        "converted {} ({}, {} layers, vocabulary {}) into {}",
        gguf.display(),
        cfg.architecture,
        cfg.layers,
        cfg.vocab,
        out.display()
    );
    Ok(())
}

/// `--tp-group K`: this process launches and supervises the group's K rank processes.
fn run_group(k: usize, device: &str) -> i32 {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let started = std::env::current_exe()
        .context("finding this program to start the ranks")
        .and_then(|program| Ok(launch::pod::run_group(&program, &argv, k, device)?));
    started.unwrap_or_else(|e| {
        tracing::error!("{}", evalfleet_console::error_text(e.as_ref()));
        1
    })
}

fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let group = match start_group(&args, &device)? {
        Some(GroupStart::Follower(follower)) => {
            follower.serve().context("tensor-parallel follower")?;
            tracing::info!("tensor-parallel follower done (rank 0 said shutdown)");
            return Ok(());
        }
        Some(GroupStart::Leader(group)) => Some(group),
        None => None,
    };
    let coordinator = args
        .coordinator
        .clone()
        .context("--coordinator URL (or EVALFLEET_COORDINATOR) is required")?;
    let token = read_token(&args)?;
    let opts = WorkerOptions {
        coordinator,
        token,
        worker_id: args.worker_id.clone().unwrap_or_else(default_worker_id),
        device: args.device.clone(),
        batch_size: args.batch_size.unwrap_or(0),
        connect_timeout: Duration::from_secs(args.connect_timeout_s),
        tls_ca: args.tls_ca.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let leader = group.as_ref().map(|g| g.leader.clone());
    let executor = GroupCheck {
        inner: Executor::new(ExecutorOptions {
            device,
            max_batch: args.batch_size.map_or(usize::MAX, |cap| cap as usize),
            tp: leader.clone(),
            ..Default::default()
        }),
        leader,
    };
    #[cfg(feature = "test-hooks")]
    let fault = test_hooks::Hook::from_env()?;
    let stopped = runtime.block_on(async {
        let stop = stop_signal().context("listening for SIGTERM/SIGINT")?;
        #[cfg(feature = "test-hooks")]
        if let Some(fault) = fault {
            return anyhow::Ok(rpc::run_until(opts, fault.wrap(executor), stop).await?);
        }
        anyhow::Ok(rpc::run_until(opts, executor, stop).await?)
    });
    if let Some(group) = &group {
        group.stop();
    }
    // Dropping the runtime would wait for a lease still running on a blocking thread (after a
    // Shutdown, a returned lease or a lost coordinator); the process exits instead.
    runtime.shutdown_background();
    let stopped = stopped?;
    tracing::info!(
        "done after {} leases ({})",
        stopped.leases_run,
        stopped.reason
    );
    Ok(())
}

/// This process's part of a tensor-parallel group, if the flags ask for one.
enum GroupStart {
    Leader(Group),
    Follower(launch::ProcessFollower),
}

fn start_group(args: &Args, device: &candle_core::Device) -> anyhow::Result<Option<GroupStart>> {
    if let Some(k) = args.tp_threads.filter(|&k| k > 1) {
        let group = launch::threads(k, device).context("starting the tensor-parallel threads")?;
        tracing::info!(
            "tensor parallelism: {k} ranks as threads on {}",
            args.device
        );
        return Ok(Some(GroupStart::Leader(group)));
    }
    let (Some(k), Some(rank), Some(init)) = (args.tp_size, args.tp_rank, &args.tp_init_file) else {
        return Ok(None);
    };
    if k == 1 {
        return Ok(None);
    }
    let timeout = Duration::from_secs(args.tp_join_timeout_s);
    let role = launch::process_rank(rank, k, device, init, timeout).with_context(|| {
        format!(
            "joining tensor-parallel group {} as rank {rank}",
            init.display()
        )
    })?;
    tracing::info!("tensor parallelism: rank {rank} of {k} on {}", args.device);
    Ok(Some(match role {
        ProcessRole::Leader(group) => GroupStart::Leader(group),
        ProcessRole::Follower(f) => GroupStart::Follower(f),
    }))
}

/// Rank 0's runner: a group whose ranks may be out of step (a forward pass failed on rank 0
/// mid-way) ends the worker at its next lease (after the failed lease's items were reported),
/// so that the coordinator re-runs the work elsewhere instead of this worker failing it all.
struct GroupCheck<R> {
    inner: R,
    leader: Option<evalfleet_worker::tp::TpLeader>,
}

impl<R> GroupCheck<R> {
    fn check(&self) {
        if let Some(why) = self.leader.as_ref().and_then(|l| l.broken()) {
            tracing::error!("exiting: the tensor-parallel group is unusable ({why})");
            std::process::exit(1);
        }
    }
}

impl<R: LeaseRunner> LeaseRunner for GroupCheck<R> {
    fn prepare_lease(&mut self, lease: &pb::Lease) -> evalfleet_worker::Result<()> {
        self.check();
        self.inner.prepare_lease(lease)
    }

    fn models_held(&self) -> Vec<String> {
        self.inner.models_held()
    }

    fn run_lease(
        &mut self,
        lease: &pb::Lease,
        emit: &mut dyn FnMut(pb::ItemResult),
    ) -> evalfleet_worker::Result<()> {
        self.inner.run_lease(lease, emit)
    }
}

/// Resolves with the signal's name at the first SIGTERM or SIGINT.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = String> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM".to_string(),
            _ = int.recv() => "SIGINT".to_string(),
        }
    })
}

fn read_token(args: &Args) -> anyhow::Result<String> {
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading token file {}", path.display()))?;
            text.lines().next().unwrap_or("").trim().to_string()
        }
        None => std::env::var(TOKEN_ENV)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    if token.is_empty() {
        bail!("no bearer token: pass --token-file FILE or set {TOKEN_ENV}");
    }
    Ok(token)
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Fault injection for the fleet's own tests (a worker crashing or hanging mid-lease at a known
/// item). Compiled only with the `test-hooks` feature (scripts/test.sh builds with it); release
/// builds have neither the code nor the variables.
#[cfg(feature = "test-hooks")]
mod test_hooks {
    use std::path::PathBuf;
    use std::time::Duration;

    use anyhow::Context;
    use evalfleet_proto::v1 as pb;
    use evalfleet_worker::rpc::LeaseRunner;

    /// Test hook (fault injection for the fleet's own tests, not a user option, so it is neither a
    /// flag nor in --help): `MARKER:ITEM` (or `MARKER:ITEM@TASK`, only in leases of task TASK)
    /// makes the first worker (of all sharing the MARKER file) that
    /// produces the result of item ITEM exit abruptly with status 3, in the middle of its lease, so
    /// tests can check that the fleet recovers from a worker dying.
    const TEST_CRASH_ENV: &str = "EVALFLEET_TEST_CRASH_ONCE";
    /// Test hook, as [`TEST_CRASH_ENV`]: `MARKER:ITEM` makes the first worker that reaches the result
    /// of item ITEM write its process id into MARKER and then hang (not sending that result) until
    /// it is signalled or killed, so tests can stop a worker, or its coordinator, mid-lease at a
    /// known point without timing.
    const TEST_HOLD_ENV: &str = "EVALFLEET_TEST_HOLD_ONCE";

    /// What a fault hook does when it fires.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        /// [`TEST_CRASH_ENV`]: exit at once with status 3.
        Crash,
        /// [`TEST_HOLD_ENV`]: write the pid into the marker and hang.
        Hold,
    }

    /// A test hook: fires at the first result for `item` if it can create `marker` (so exactly one
    /// worker of a fleet fires).
    pub(super) struct Hook {
        fault: Fault,
        marker: PathBuf,
        /// Only in leases of this task, when given.
        task: Option<String>,
        item: String,
    }

    impl Hook {
        /// The hook the environment arms, if any ([`TEST_CRASH_ENV`] wins over [`TEST_HOLD_ENV`]).
        pub(super) fn from_env() -> anyhow::Result<Option<Hook>> {
            let hook = |var: &str| std::env::var(var).ok().filter(|s| !s.is_empty());
            Ok(match (hook(TEST_CRASH_ENV), hook(TEST_HOLD_ENV)) {
                (Some(spec), _) => Some(Hook::new(Fault::Crash, &spec)?),
                (None, Some(spec)) => Some(Hook::new(Fault::Hold, &spec)?),
                (None, None) => None,
            })
        }

        /// Reads `MARKER:ITEM` or `MARKER:ITEM@TASK` (task names and item ids both may hold
        /// `/`, neither `@`).
        fn new(fault: Fault, spec: &str) -> anyhow::Result<Hook> {
            let (marker, item) = spec
                .rsplit_once(':')
                .with_context(|| format!("a test hook expects MARKER:ITEM, got {spec:?}"))?;
            let (item, task) = match item.split_once('@') {
                Some((item, task)) => (item, Some(task.to_string())),
                None => (item, None),
            };
            Ok(Hook {
                fault,
                marker: marker.into(),
                task,
                item: item.into(),
            })
        }

        pub(super) fn wrap<R>(self, inner: R) -> FaultOnce<R> {
            FaultOnce { inner, hook: self }
        }

        /// Fires if this is the hooked item and this worker is the first to get there.
        fn maybe_fire(&self, task: &str, item_id: &str) {
            if item_id != self.item || self.task.as_deref().is_some_and(|t| t != task) {
                return;
            }
            let Ok(mut marker) = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.marker)
            else {
                return;
            };
            match self.fault {
                Fault::Crash => {
                    eprintln!("fake crash at item {item_id}");
                    std::process::exit(3);
                }
                Fault::Hold => {
                    use std::io::Write;
                    let _ = write!(marker, "{}", std::process::id());
                    let _ = marker.sync_all();
                    eprintln!("holding at item {item_id}");
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
            }
        }
    }

    /// A runner with a [`Hook`] on its results.
    pub(super) struct FaultOnce<R> {
        inner: R,
        hook: Hook,
    }

    impl<R: LeaseRunner> LeaseRunner for FaultOnce<R> {
        fn prepare_lease(&mut self, lease: &pb::Lease) -> evalfleet_worker::Result<()> {
            self.inner.prepare_lease(lease)
        }

        fn models_held(&self) -> Vec<String> {
            self.inner.models_held()
        }

        fn run_lease(
            &mut self,
            lease: &pb::Lease,
            emit: &mut dyn FnMut(pb::ItemResult),
        ) -> evalfleet_worker::Result<()> {
            let hook = &self.hook;
            self.inner.run_lease(lease, &mut |result| {
                hook.maybe_fire(&lease.task, &result.item_id);
                emit(result)
            })
        }
    }
}
