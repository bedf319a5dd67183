//! `evalfleet serve`: a long-lived coordinator that workers join and that accepts jobs
//! (`evalfleet submit`, `status`, `cancel`), plus the Prometheus metrics endpoint it shares with
//! `evalfleet run --listen`.
//!
//! - [`hub`]: the workers' streams, routed to the fleets of the running jobs (model preference).
//! - [`jobs`]: the job queue; each job runs through the `evalfleet run` driver.
//! - [`control`]: the `Control` gRPC service and its client.
//! - [`view`]: the status table and JSON.
//! - [`metrics`], [`http`]: the metrics registry and the HTTP/1 responder that serves it.
//! - [`state`]: job records in `--state-dir`, so that a restarted coordinator resumes its queue.
//! - [`cli`]: the `serve`, `submit`, `status` and `cancel` subcommands.
//!
//! One port serves the workers' `Fleet` service (behind the worker token), the `Control` service
//! (behind the control token, which must differ) and the gRPC health service (no token, for
//! probes): a worker host cannot submit or cancel jobs, and a control client cannot join as a
//! worker. A first SIGINT/SIGTERM stops the
//! running jobs as `evalfleet run` stops (journals flushed: submitting them again resumes), tells
//! the workers to exit and returns; a second exits at once.

pub mod cli;
pub mod control;
pub mod http;
pub mod hub;
pub mod job_fleet;
pub mod jobs;
pub mod metrics;
pub mod roots;
pub mod state;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use evalfleet_proto::v1::control_server::ControlServer;
use evalfleet_proto::v1::fleet_server::FleetServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};

use crate::local::{self, LocalError, LocalWorkers, SpawnOptions};
use crate::rpc::limits::ClientGate;
use crate::rpc::tls::{ServerTls, TlsFiles};
use crate::rpc::{
    BearerAuth, FleetOptions, MAX_STREAMS_PER_CONNECTION, MAX_WORKER_MESSAGE_BYTES, RateOnly,
};
use tonic_health::server::HealthReporter;

/// How `evalfleet serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where workers and control clients connect.
    pub listen: SocketAddr,
    /// The workers' bearer token's file (else `$EVALFLEET_WORKER_TOKEN`).
    pub worker_token_file: Option<PathBuf>,
    /// The control clients' bearer token's file (else `$EVALFLEET_CONTROL_TOKEN`).
    pub control_token_file: Option<PathBuf>,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// Jobs running at once.
    pub max_jobs: usize,
    /// Keep job records here (see [`state`]).
    pub state_dir: Option<PathBuf>,
    /// Local worker processes to start (0: only external workers).
    pub workers: usize,
    /// Start the local workers on the CPU even when GPUs are visible.
    pub cpu_only: bool,
    /// `--batch-size` of the local workers: a cap on each job's batch size.
    pub batch_size: Option<u32>,
    /// The worker binary (default: `$EVALFLEET_WORKER_BIN`, else next to this executable).
    pub worker_bin: Option<PathBuf>,
    /// Heartbeats, lease TTL, attempts: for the hub and every job's fleet.
    pub fleet: FleetOptions,
    /// Serve over TLS with this certificate and key (no local workers then).
    pub tls: Option<TlsFiles>,
    /// The folders submitted jobs may write (`--allow-output-root`).
    pub output_roots: Vec<PathBuf>,
    /// The folders submitted jobs may read (`--allow-input-root`; output roots too).
    pub input_roots: Vec<PathBuf>,
    /// `--allow-any-path`: no roots at all.
    pub any_path: bool,
    /// How many ended jobs are kept (`--keep-jobs`, `--keep-job-days`).
    pub retention: jobs::Retention,
}

/// How long a stopping coordinator waits for its jobs to flush, its local workers to exit and
/// its external workers to hang up: 25 s in all, inside a 30 s termination grace period.
const STOP_WAITS: [Duration; 3] = [
    Duration::from_secs(18),
    Duration::from_secs(5),
    Duration::from_secs(2),
];

/// Why `evalfleet serve` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Roots(#[from] roots::RootsError),
    #[error(transparent)]
    Tls(#[from] crate::rpc::tls::TlsError),
    #[error(
        "--workers starts local workers, which dial plain gRPC: with --tls-cert, start them as \
         external workers (evalfleet-worker --coordinator https://... --tls-ca ...)"
    )]
    TlsWithLocalWorkers,
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the coordinator until SIGINT/SIGTERM (see the module docs).
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let tokens = Tokens {
        worker: local::read_token_from(
            opts.worker_token_file.as_deref(),
            "--worker-token-file",
            local::WORKER_TOKEN_ENV,
        )?,
        control: local::read_token_from(
            opts.control_token_file.as_deref(),
            "--control-token-file",
            local::CONTROL_TOKEN_ENV,
        )?,
    };
    local::check_serve_tokens(&tokens.worker, &tokens.control)?;
    let mut roots = roots::AllowedRoots::new(&opts.output_roots, &opts.input_roots, opts.any_path)?;
    if let Some(dir) = &opts.state_dir {
        roots = roots.reserve(dir);
    }
    if opts.tls.is_some() && opts.workers > 0 {
        return Err(ServeError::TlsWithLocalWorkers);
    }
    // Checked before anything binds: a bad certificate is reported at once, naming the file.
    let tls = opts.tls.as_ref().map(ServerTls::load).transpose()?;
    let metrics = metrics::Metrics::new();
    let hub = hub::Hub::new(opts.fleet.clone(), metrics.clone());
    let state_dir = opts
        .state_dir
        .as_deref()
        .map(state::StateDir::open)
        .transpose()?;
    let jobs = jobs::Jobs::new(
        hub.clone(),
        opts.fleet.clone(),
        opts.max_jobs,
        state_dir,
        roots,
        opts.retention,
    )?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })
    };
    let listener = bind(opts.listen).await?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    let metrics_server = match opts.metrics_listen {
        Some(at) => {
            let server = http::MetricsServer::start(bind(at).await?, metrics.clone())
                .map_err(|source| ServeError::Bind { addr: at, source })?;
            Some(server)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let gate = hub.gate().clone();
    let (health, grpc) = serve_grpc(listener, tls, gate, &tokens, &hub, &jobs, &metrics)?;
    health.set_serving::<FleetServer<hub::HubService>>().await;
    let grpc = tokio::spawn(grpc);
    // On stdout, for scripts and tests that start workers or scrape.
    println!("listening on {scheme}://{addr}");
    if let Some(m) = &metrics_server {
        println!("metrics on http://{}/metrics", m.addr);
    }
    let background = [
        tokio::spawn(hub.clone().reap_expired_leases()),
        tokio::spawn(jobs.clone().dispatch()),
    ];
    let workers = start_local_workers(&opts, addr, tokens.worker)?;
    // While serving, the first signal is a graceful stop (crate::stop).
    let graceful = crate::stop::Graceful::new();
    let signal = crate::stop::requested().await;
    crate::rpc::report_stopping(
        &health,
        <FleetServer<hub::HubService> as tonic::server::NamedService>::NAME,
    )
    .await;
    info!(
        "{signal}: stopping the running jobs (their journals are flushed; submit them again to resume)"
    );
    // Every driver waiting on its fleet saw the same signal and stops on its own. The waits
    // below add up to STOP_BUDGET, within Kubernetes' default 30 s grace period.
    let [jobs_wait, workers_wait, disconnect_wait] = STOP_WAITS;
    let stopped = tokio::time::timeout(jobs_wait, jobs.wait_idle()).await;
    if stopped.is_err() {
        warn!("jobs still running after {jobs_wait:?}; stopping anyway");
    }
    if let Some(w) = &workers {
        w.stop_restarting();
    }
    hub.shutdown_workers("the coordinator is stopping");
    if let Some(w) = workers {
        w.shutdown(workers_wait).await;
    }
    hub.wait_disconnected(disconnect_wait).await;
    drop(graceful);
    grpc.abort();
    for task in background {
        task.abort();
    }
    Ok(())
}

/// `evalfleet serve`'s bearer tokens.
struct Tokens {
    /// Opens the `Fleet` service (workers).
    worker: String,
    /// Opens the `Control` service (submit, status, cancel).
    control: String,
}

/// The gRPC server: the hub's `Fleet` service (worker token) and `Control` (control token),
/// health (none);
/// every call and connection goes through `gate`'s per-client limits, as `evalfleet run`'s do.
/// Returns the health reporter (nothing reported yet) and the server to spawn.
fn serve_grpc(
    listener: TcpListener,
    tls: Option<ServerTls>,
    gate: ClientGate,
    tokens: &Tokens,
    hub: &Arc<hub::Hub>,
    jobs: &Arc<jobs::Jobs>,
    metrics: &Arc<metrics::Metrics>,
) -> Result<
    (
        HealthReporter,
        impl std::future::Future<Output = ()> + Send + 'static,
    ),
    ServeError,
> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        crate::rpc::tls::install_crypto_provider();
        builder = builder
            .tls_config(tls.config())
            .map_err(|e| ServeError::TlsSetup(e.to_string()))?;
    }
    let fleet = FleetServer::new(hub::HubService { hub: hub.clone() })
        .max_decoding_message_size(MAX_WORKER_MESSAGE_BYTES);
    let fleet = InterceptedService::new(
        fleet,
        BearerAuth::new(&tokens.worker).with_gate(gate.clone()),
    );
    let control = ControlServer::new(control::ControlService {
        jobs: jobs.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
    });
    let control = InterceptedService::new(
        control,
        BearerAuth::new(&tokens.control).with_gate(gate.clone()),
    );
    let (reporter, health) = tonic_health::server::health_reporter();
    let health = InterceptedService::new(health, RateOnly(gate.clone()));
    Ok((reporter, async move {
        let result = builder
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .add_service(health)
            .add_service(fleet)
            .add_service(control)
            .serve_with_incoming(gate.incoming(listener))
            .await;
        if let Err(e) = result {
            warn!("gRPC server stopped: {e}");
        }
    }))
}

/// Starts `opts.workers` local workers dialling this coordinator (loopback when it listens on
/// every interface).
fn start_local_workers(
    opts: &ServeOptions,
    addr: SocketAddr,
    token: String,
) -> Result<Option<LocalWorkers>, ServeError> {
    if opts.workers == 0 {
        return Ok(None);
    }
    let mut dial = addr;
    if dial.ip().is_unspecified() {
        dial.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let bin = match &opts.worker_bin {
        Some(bin) => bin.clone(),
        None => local::worker_binary()?,
    };
    let spawn = SpawnOptions {
        bin,
        coordinator_url: format!("http://{dial}"),
        token,
        devices: SpawnOptions::devices_for(Some(opts.workers), opts.cpu_only),
        batch_size: opts.batch_size,
        extra_args: Vec::new(),
        // A job's tensor_parallel_size cannot reshape workers that outlive it.
        tensor_parallel: 1,
        restarts: opts.fleet.restarts,
    };
    info!("starting {} local worker(s)", opts.workers);
    Ok(Some(LocalWorkers::spawn(&spawn)?))
}
