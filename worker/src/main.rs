//! `evalfleet-worker`: connects to a coordinator, loads the models its leases name (once each) and
//! runs their items, streaming results back. Started by `evalfleet` in local mode, or by hand /
//! Kubernetes for an external fleet.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use evalfleet_proto::v1 as pb;
use evalfleet_worker::device::parse_device;
use evalfleet_worker::rpc::{self, EchoRunner, LeaseRunner, WorkerOptions};
use evalfleet_worker::tasks::{Executor, ExecutorOptions};

/// Environment variable carrying the bearer token (the coordinator sets it for local workers).
const TOKEN_ENV: &str = "EVALFLEET_TOKEN";

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
    /// Testing aid for the fleet itself: answer every item without a model (`echo` predicts the
    /// prompt's last user message).
    #[arg(long, env = "EVALFLEET_FAKE_EXECUTOR", hide = true)]
    fake_executor: Option<FakeExecutor>,
    /// Testing aid: `MARKER:ITEM` makes the first worker (of all sharing MARKER) that reaches item
    /// ITEM exit abruptly in the middle of its lease, to test that the fleet recovers.
    #[arg(long, hide = true, value_name = "MARKER:ITEM")]
    fake_crash_once: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FakeExecutor {
    Echo,
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
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let stopped = match args.fake_executor {
        Some(FakeExecutor::Echo) => match &args.fake_crash_once {
            Some(spec) => runtime.block_on(rpc::run(opts, CrashOnce::new(EchoRunner, spec)?))?,
            None => runtime.block_on(rpc::run(opts, EchoRunner))?,
        },
        None => {
            let executor = Executor::new(ExecutorOptions {
                device,
                max_batch: args.batch_size.max(1) as usize,
                ..Default::default()
            });
            runtime.block_on(rpc::run(opts, executor))?
        }
    };
    tracing::info!(
        "done after {} leases ({})",
        stopped.leases_run,
        stopped.reason
    );
    Ok(())
}

/// Wraps a runner; exits the process at the first result for `item` if it can create `marker`.
struct CrashOnce<R> {
    inner: R,
    marker: PathBuf,
    item: String,
}

impl<R> CrashOnce<R> {
    fn new(inner: R, spec: &str) -> anyhow::Result<Self> {
        let (marker, item) = spec
            .rsplit_once(':')
            .context("--fake-crash-once expects MARKER:ITEM")?;
        Ok(CrashOnce {
            inner,
            marker: marker.into(),
            item: item.into(),
        })
    }
}

impl<R: LeaseRunner> LeaseRunner for CrashOnce<R> {
    fn run_lease(
        &mut self,
        lease: &pb::Lease,
        emit: &mut dyn FnMut(pb::ItemResult),
    ) -> evalfleet_worker::Result<()> {
        let (marker, item) = (&self.marker, &self.item);
        self.inner.run_lease(lease, &mut |result| {
            if &result.item_id == item
                && std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(marker)
                    .is_ok()
            {
                eprintln!("fake crash at item {item}");
                std::process::exit(3);
            }
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
