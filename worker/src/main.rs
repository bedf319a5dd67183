//! `evalfleet-worker`: connects to a coordinator, loads the models its leases name (once each) and
//! runs their items, streaming results back. Started by `evalfleet` in local mode, or by hand /
//! Kubernetes for an external fleet.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use evalfleet_proto::v1 as pb;
use evalfleet_worker::device::parse_device;
use evalfleet_worker::rpc::{self, LeaseRunner, WorkerOptions};
use evalfleet_worker::tasks::{Executor, ExecutorOptions};

/// Environment variable carrying the bearer token (the coordinator sets it for local workers).
const TOKEN_ENV: &str = "EVALFLEET_TOKEN";

/// Test hook (fault injection for the fleet's own tests, not a user option, so it is neither a
/// flag nor in --help): `MARKER:ITEM` makes the first worker (of all sharing the MARKER file) that
/// produces the result of item ITEM exit abruptly with status 3, in the middle of its lease, so
/// tests can check that the fleet recovers from a worker dying.
const TEST_CRASH_ENV: &str = "EVALFLEET_TEST_CRASH_ONCE";
/// Test hook, as [`TEST_CRASH_ENV`]: `MARKER:ITEM` makes the first worker that reaches the result
/// of item ITEM write its process id into MARKER and then hang (not sending that result) until
/// it is signalled or killed, so tests can stop a worker, or its coordinator, mid-lease at a
/// known point without timing.
const TEST_HOLD_ENV: &str = "EVALFLEET_TEST_HOLD_ONCE";

/// An evalfleet worker: dials the coordinator, runs the work it leases, streams one result per item.
///
/// The bearer token is read from --token-file or the EVALFLEET_TOKEN environment variable (never
/// from the command line, where other users could see it).
#[derive(Debug, Parser)]
#[command(name = "evalfleet-worker", version)]
struct Args {
    /// Coordinator URL, e.g. http://10.0.0.5:50051 (as printed by `evalfleet run --listen`).
    #[arg(long, env = "EVALFLEET_COORDINATOR")]
    coordinator: String,
    /// File whose first line is the bearer token (default: $EVALFLEET_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Device to run on: `cpu` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Items per lease, i.e. the generation batch size.
    #[arg(long, default_value_t = 8)]
    batch_size: u32,
    /// Name shown in the coordinator's logs (default: <hostname>-<pid>).
    #[arg(long)]
    worker_id: Option<String>,
    /// Keep retrying to reach the coordinator for this many seconds.
    #[arg(long, default_value_t = 60)]
    connect_timeout_s: u64,
    /// PEM CA certificate to verify an https:// coordinator with (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

fn main() {
    init_logging();
    let code = match run(Args::parse()) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    };
    // Exit without waiting for a lease still running on a blocking thread after Shutdown.
    std::process::exit(code);
}

fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let token = read_token(&args)?;
    let opts = WorkerOptions {
        coordinator: args.coordinator.clone(),
        token,
        worker_id: args.worker_id.clone().unwrap_or_else(default_worker_id),
        device: args.device.clone(),
        batch_size: args.batch_size.max(1),
        connect_timeout: Duration::from_secs(args.connect_timeout_s),
        tls_ca: args.tls_ca.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let executor = Executor::new(ExecutorOptions {
        device,
        max_batch: args.batch_size.max(1) as usize,
        ..Default::default()
    });
    let hook = |var: &str| std::env::var(var).ok().filter(|s| !s.is_empty());
    let fault = match (hook(TEST_CRASH_ENV), hook(TEST_HOLD_ENV)) {
        (Some(spec), _) => Some(Hook::new(Fault::Crash, &spec)?),
        (None, Some(spec)) => Some(Hook::new(Fault::Hold, &spec)?),
        (None, None) => None,
    };
    let stopped = runtime.block_on(async {
        let stop = stop_signal().context("listening for SIGTERM/SIGINT")?;
        anyhow::Ok(match fault {
            Some(fault) => rpc::run_until(opts, fault.wrap(executor), stop).await?,
            None => rpc::run_until(opts, executor, stop).await?,
        })
    });
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
struct Hook {
    fault: Fault,
    marker: PathBuf,
    item: String,
}

impl Hook {
    /// Reads `MARKER:ITEM`.
    fn new(fault: Fault, spec: &str) -> anyhow::Result<Hook> {
        let (marker, item) = spec
            .rsplit_once(':')
            .with_context(|| format!("a test hook expects MARKER:ITEM, got {spec:?}"))?;
        Ok(Hook {
            fault,
            marker: marker.into(),
            item: item.into(),
        })
    }

    fn wrap<R>(self, inner: R) -> FaultOnce<R> {
        FaultOnce { inner, hook: self }
    }

    /// Fires if this is the hooked item and this worker is the first to get there.
    fn maybe_fire(&self, item_id: &str) {
        if item_id != self.item {
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
struct FaultOnce<R> {
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
            hook.maybe_fire(&result.item_id);
            emit(result)
        })
    }
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
