//! The fleet of one `evalfleet run` (or step, or sweep) command, for the whole job: the port is
//! bound, the local workers started and the fleet port's health set `SERVING` once, when the
//! first step's fleet attaches (after the job's input was read and checked: bad input fails
//! before any worker starts), and the workers are told to exit once, when the job ends.
//! (`--health-listen` answers from the command's very start: [`crate::rpc::health`].)
//!
//! It is the hub of `evalfleet serve` with a single job: every step's driver attaches its fleet
//! through [`FleetHost`] (as a submitted job's steps do), so the workers go from one step to the
//! next without leaving, external workers (`--listen`, the Kubernetes layouts) serve every step of
//! a multi-step job, and probes on the port see a live coordinator while it scores, writes files
//! or plans the next step (docs/ARCHITECTURE.md, "One fleet per job").
//!
//! Local workers are supervised ([`LocalWorkers`]): one that dies is started again; when every
//! one of them is down for good (each died more often than `--max-worker-restarts` allows) and
//! no external worker may join, the running step fails with their last words
//! ([`RunError::AllWorkersDied`]).

use std::sync::Arc;
use std::time::Duration;

use evalfleet_proto::v1::fleet_server::FleetServer;
use futures::future::BoxFuture;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use super::hub::{Hub, HubService};
use super::metrics::Metrics;
use crate::local::{self, LocalWorkers, SpawnOptions};
use crate::rpc::{
    BearerAuth, Fleet, Listener, MAX_STREAMS_PER_CONNECTION, MAX_WORKER_MESSAGE_BYTES, RateOnly,
};
use crate::run::fleet::{bind_listeners, spawn_workers};
use crate::run::{FleetHost, FleetSetup, RunError};

/// The job's fleet (see the module docs). Share it as `FleetSetup::host`.
pub struct JobFleet {
    /// What to start (the command line merged with the job's fleet keys).
    setup: FleetSetup,
    job: String,
    metrics: Arc<Metrics>,
    /// Started by the first attach.
    started: tokio::sync::Mutex<Option<Started>>,
    /// The started fleet's hub (for detaching without the lock).
    hub: std::sync::OnceLock<Arc<Hub>>,
    died: watch::Sender<Option<String>>,
}

/// The fleet once started.
struct Started {
    hub: Arc<Hub>,
    health: HealthReporter,
    servers: Vec<JoinHandle<()>>,
    workers: Option<Supervisor>,
}

impl std::fmt::Debug for JobFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobFleet").field("job", &self.job).finish()
    }
}

/// The task that owns the local workers: reports when all have exited, shuts them down on
/// request.
struct Supervisor {
    stop: oneshot::Sender<Duration>,
    task: JoinHandle<()>,
    /// Turns restarts off before the workers are told to exit.
    restarts: local::RestartSwitch,
}

impl JobFleet {
    /// The fleet `setup` describes (`workers`, `tensor_parallel_size`, already merged with the
    /// job's YAML), started when the first step attaches. `metrics` receives the worker traffic
    /// (`--metrics-listen`).
    pub fn new(setup: &FleetSetup, job: &str, metrics: Option<Arc<Metrics>>) -> Arc<JobFleet> {
        Arc::new(JobFleet {
            setup: setup.clone(),
            job: job.to_string(),
            metrics: metrics.unwrap_or_default(),
            started: tokio::sync::Mutex::new(None),
            hub: std::sync::OnceLock::new(),
            died: watch::Sender::new(None),
        })
    }

    /// The hub, starting the fleet if this is the first call: binds `setup.listen` (else a
    /// loopback port), serves the fleet and health there and starts the local workers.
    async fn started_hub(&self) -> Result<Arc<Hub>, RunError> {
        let mut started = self.started.lock().await;
        if let Some(s) = started.as_ref() {
            return Ok(s.hub.clone());
        }
        let setup = &self.setup;
        let token = match setup.listen {
            Some(_) => local::read_token(setup.token_file.as_deref())?,
            None => local::random_token()?,
        };
        let tp = setup.tensor_parallel_size.unwrap_or(1);
        let devices = SpawnOptions::devices_for_groups(setup.workers, setup.cpu_only, tp)?;
        if devices.is_empty() && setup.listen.is_none() {
            return Err(RunError::NoWorkers);
        }
        let mut options = setup.options.clone();
        if options.job_id.is_empty() {
            options.job_id = format!("{}-{}", self.job, std::process::id());
        }
        let hub = Hub::new(options, self.metrics.clone());
        let (listeners, url) = bind_listeners(setup).await?;
        let (health, mut servers) = serve_hub(listeners, &token, &hub)?;
        servers.push(tokio::spawn(hub.clone().reap_expired_leases()));
        let workers = if devices.is_empty() {
            None
        } else {
            match spawn_workers(setup, devices, &url, token) {
                Ok(w) => Some(supervise(w, self.died.clone(), setup.listen.is_some())),
                Err(e) => {
                    servers.iter().for_each(JoinHandle::abort);
                    return Err(e);
                }
            }
        };
        let _ = self.hub.set(hub.clone());
        *started = Some(Started {
            hub: hub.clone(),
            health,
            servers,
            workers,
        });
        Ok(hub)
    }

    /// Ends the job's fleet, if it started: tells every worker to exit (`ok`: the job
    /// finished), waits for the local ones (10 s, then they are killed) and for the streams to
    /// close, and closes the port.
    pub async fn stop(&self, ok: bool) {
        let Some(started) = self.started.lock().await.take() else {
            return;
        };
        crate::rpc::report_stopping(
            &started.health,
            <FleetServer<HubService> as tonic::server::NamedService>::NAME,
        )
        .await;
        if let Some(w) = &started.workers {
            w.restarts.off();
        }
        started
            .hub
            .shutdown_workers(if ok { "job finished" } else { "job failed" });
        if let Some(Supervisor { stop, task, .. }) = started.workers {
            // The supervisor may be waiting already (every worker had exited).
            let _ = stop.send(Duration::from_secs(10));
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        started.hub.wait_disconnected(Duration::from_secs(6)).await;
        started.servers.iter().for_each(JoinHandle::abort);
    }
}

impl FleetHost for JobFleet {
    fn attach<'a>(
        &'a self,
        fleet: &'a Fleet,
        label: &'a str,
    ) -> BoxFuture<'a, Result<u64, RunError>> {
        Box::pin(async move { Ok(self.started_hub().await?.attach(&self.job, 0, fleet, label)) })
    }

    fn detach(&self, attachment: u64) {
        // Only an attached fleet detaches, so the hub exists.
        if let Some(hub) = self.hub.get() {
            hub.detach(attachment);
        }
    }

    fn ended(&self) -> BoxFuture<'static, RunError> {
        let mut died = self.died.subscribe();
        Box::pin(async move {
            // The report is copied out in its own statement: the watch guard is not `Send`.
            let report = died
                .wait_for(Option::is_some)
                .await
                .ok()
                .map(|r| r.clone().unwrap_or_default());
            match report {
                Some(report) => RunError::AllWorkersDied(report),
                // The sender lives as long as the fleet.
                None => std::future::pending().await,
            }
        })
    }
}

/// Owns `workers`: publishes their last words in `died` once all have exited (unless external
/// workers may still come: `external`), and shuts them down when told.
fn supervise(
    mut workers: LocalWorkers,
    died: watch::Sender<Option<String>>,
    external: bool,
) -> Supervisor {
    let (stop, stopped) = oneshot::channel::<Duration>();
    let restarts = workers.restart_switch();
    let task = tokio::spawn(async move {
        tokio::select! {
            grace = stopped => {
                workers.shutdown(grace.unwrap_or(Duration::from_secs(10))).await;
            }
            report = workers.all_exited() => {
                if external {
                    warn!("every local worker exited; waiting for external workers: {report}");
                } else {
                    died.send_replace(Some(report));
                }
            }
        }
    });
    Supervisor {
        stop,
        task,
        restarts,
    }
}

/// Serves the hub's `Fleet` service (token required) and health (no token; `SERVING` from the
/// first accepted connection) on every listener, each with its own TLS setting.
fn serve_hub(
    listeners: Vec<Listener>,
    token: &str,
    hub: &Arc<Hub>,
) -> Result<(HealthReporter, Vec<JoinHandle<()>>), RunError> {
    if listeners.iter().any(|l| l.tls.is_some()) {
        crate::rpc::tls::install_crypto_provider();
    }
    let gate = hub.gate().clone();
    let service = FleetServer::new(HubService { hub: hub.clone() })
        .max_decoding_message_size(MAX_WORKER_MESSAGE_BYTES);
    let service = InterceptedService::new(service, BearerAuth::new(token).with_gate(gate.clone()));
    let (reporter, health) = tonic_health::server::health_reporter();
    let health = InterceptedService::new(health, RateOnly(gate.clone()));
    let mut tasks = Vec::new();
    for Listener { socket, tls } in listeners {
        let addr = socket.local_addr().ok();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            builder = builder
                .tls_config(tls.config())
                .map_err(|e| RunError::Scoring(format!("TLS setup: {e}")))?;
        }
        let router = builder
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .add_service(health.clone())
            .add_service(service.clone());
        let incoming = gate.incoming(socket);
        let reporter = reporter.clone();
        tasks.push(tokio::spawn(async move {
            // Set before the first connection is accepted, so no probe sees it unknown.
            reporter.set_serving::<FleetServer<HubService>>().await;
            if let Err(e) = router.serve_with_incoming(incoming).await {
                warn!("gRPC server on {addr:?} stopped: {e}");
            }
        }));
    }
    info!("the job's fleet is up; workers stay until the job ends");
    Ok((reporter, tasks))
}
