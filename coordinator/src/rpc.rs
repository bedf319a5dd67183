//! The coordinator's gRPC side: the `Fleet.Connect` stream, bearer-token auth, the protocol-version
//! handshake. Handlers stay thin: each worker message becomes one call on the [`Scheduler`], whose
//! answer goes back down the stream.
//!
//! One [`Fleet`] is shared by every connection; the job driver holds a clone to watch progress,
//! collect outcomes and finally tell the workers to shut down.
//!
//! The same port serves the standard gRPC health service (`grpc.health.v1.Health`) without the
//! bearer token, because Kubernetes' gRPC probes cannot send one; it reveals only a serving status.
//!
//! Exposure: [`tls`] (rustls, certificate and key from PEM files), [`limits`] (calls, connections
//! and messages per client; [`limit_args`]: their command-line options), plus the message-size
//! and stream caps below. A fleet may serve on several sockets at once ([`Fleet::serve_on`]):
//! with `--listen` and TLS, local workers use a plain loopback socket next to the public TLS one.

pub mod health;
pub mod limit_args;
pub mod limits;
pub mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use evalfleet_proto::PROTOCOL_VERSION;
use evalfleet_proto::v1 as pb;
use evalfleet_proto::v1::fleet_server::{Fleet as FleetRpc, FleetServer};
use futures::Stream;
use pb::coordinator_message::Msg as Down;
use pb::worker_message::Msg as Up;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{debug, info, warn};

use crate::sched::{Assignment, Expired, Progress, Recorded, SchedConfig, Scheduler, WorkerKey};
use limits::{ClientGate, LimitStats, Limits, TokenBucket};
use tls::{ServerTls, TlsFiles};

/// How the coordinator talks to its workers.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Reported to workers in `Welcome`.
    pub job_id: String,
    /// How often workers send heartbeats (must be well under the lease TTL).
    pub heartbeat_interval: Duration,
    /// What `NoWork` tells an idle worker to wait before asking again.
    pub no_work_retry: Duration,
    /// A worker must send `Hello` within this time after connecting.
    pub hello_timeout: Duration,
    pub sched: SchedConfig,
    /// Per-client limits (see [`limits`]).
    pub limits: Limits,
    /// Serve the public (`--listen`) socket over TLS with these files; loaded and checked by the
    /// driver before it binds ([`ServerTls::load`]).
    pub tls: Option<TlsFiles>,
    /// When a local worker that died is started again ([`crate::local::RestartPolicy`]).
    pub restarts: crate::local::RestartPolicy,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            job_id: String::new(),
            heartbeat_interval: Duration::from_secs(2),
            no_work_retry: Duration::from_millis(250),
            hello_timeout: Duration::from_secs(30),
            sched: SchedConfig::default(),
            limits: Limits::default(),
            tls: None,
            restarts: Default::default(),
        }
    }
}

/// The largest message a worker may send (a result is a few KiB; one long generation at most a
/// few hundred). Larger ones end that stream with `OUT_OF_RANGE` before they are buffered whole,
/// so a bad client cannot make the coordinator hold gigabytes.
pub const MAX_WORKER_MESSAGE_BYTES: usize = 4 << 20;
/// HTTP/2 streams one connection may open at once (a worker needs one; probes open their own
/// connections): a client cannot multiply its streams on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 8;

/// Shared state of a running fleet: the scheduler plus the signals the driver watches.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Shared>,
}

struct Shared {
    opts: FleetOptions,
    sched: Mutex<Scheduler>,
    progress: watch::Sender<Progress>,
    /// `Some(reason)` once the workers should stop.
    shutdown: watch::Sender<Option<String>>,
    /// Number of open worker streams.
    connected: watch::Sender<usize>,
    next_worker: AtomicU64,
    /// When the first lease was handed out.
    first_lease: OnceLock<Instant>,
    /// When a worker first reported a lease's model loaded: the start of the generation phase.
    first_ready: OnceLock<Instant>,
    /// Workers expected to connect (the local ones spawned); leases are sized to share the queue
    /// among at least this many, so the first to connect does not take everything.
    expected_workers: AtomicUsize,
    /// Receives every accepted result (see [`Fleet::set_result_sink`]).
    result_sink: OnceLock<ResultSink>,
    /// Watches worker traffic (see [`Fleet::set_observer`]).
    observer: OnceLock<Arc<dyn FleetObserver>>,
    /// What the limits refused or delayed.
    gate: ClientGate,
}

/// One socket to serve on, with or without TLS.
pub struct Listener {
    pub socket: TcpListener,
    pub tls: Option<ServerTls>,
}

/// Watches a fleet's worker traffic (the Prometheus metrics of `evalfleet run --listen` and
/// `evalfleet serve`). Called on the gRPC task that received the message: must not block.
pub trait FleetObserver: Send + Sync {
    /// Worker `worker` connected and said `hello`.
    fn joined(&self, worker: WorkerKey, hello: &pb::Hello);
    /// Its stream closed.
    fn left(&self, worker: WorkerKey);
    /// It sent `up`; `reply` went back down (a lease, `NoWork`, ...), if anything did.
    fn message(&self, worker: WorkerKey, up: &Up, reply: Option<&Down>);
    /// `fleet` starts serving the step `label` (a job may run several fleets, one after the
    /// other): where gauges such as outstanding leases are read from.
    fn serving(&self, _fleet: &Fleet, _label: &str) {}
}

/// Receives `(task name, result)` for every result the scheduler accepted (the first result of
/// each item, never an error or a duplicate), on the gRPC thread that received it: it must not
/// block (the journal hands it to its writer thread through a channel).
pub type ResultSink = Box<dyn Fn(String, pb::ItemResult) + Send + Sync>;

impl Fleet {
    /// A fleet around `sched` (tasks may be added before or after serving starts).
    pub fn new(opts: FleetOptions, sched: Scheduler) -> Self {
        let progress = watch::Sender::new(sched.progress());
        let gate = ClientGate::new(&opts.limits);
        Fleet {
            inner: Arc::new(Shared {
                opts,
                sched: Mutex::new(sched),
                progress,
                shutdown: watch::Sender::new(None),
                connected: watch::Sender::new(0),
                next_worker: AtomicU64::new(1),
                first_lease: OnceLock::new(),
                first_ready: OnceLock::new(),
                expected_workers: AtomicUsize::new(0),
                result_sink: OnceLock::new(),
                observer: OnceLock::new(),
                gate,
            }),
        }
    }

    /// Runs `f` on the scheduler, then publishes the progress if it changed (heartbeats and
    /// lease requests, most calls, change nothing and need not wake the watchers).
    pub fn with_sched<R>(&self, f: impl FnOnce(&mut Scheduler) -> R) -> R {
        let mut sched = self.inner.lock();
        let out = f(&mut sched);
        let now = sched.progress();
        self.inner.progress.send_if_modified(|p| {
            let changed = *p != now;
            *p = now;
            changed
        });
        out
    }

    /// Progress updates (one per recorded result).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.inner.progress.subscribe()
    }

    /// Number of connected workers, updated as they come and go.
    pub fn connected(&self) -> watch::Receiver<usize> {
        self.inner.connected.subscribe()
    }

    /// Resolves once every item of every task has an outcome.
    pub async fn wait_complete(&self) -> Progress {
        let mut rx = self.progress();
        match rx.wait_for(Progress::is_complete).await {
            Ok(p) => *p,
            // The sender lives in `self`, so it cannot be dropped while we wait.
            Err(_) => unreachable!("progress sender dropped while the fleet is alive"),
        }
    }

    /// When the first lease was handed out (`None` before that): after worker start-up and
    /// connection, but before the model is loaded (see [`Fleet::model_ready_at`]).
    pub fn first_lease_at(&self) -> Option<Instant> {
        self.inner.first_lease.get().copied()
    }

    /// When a worker first said its model was loaded and generation starts (`ModelReady`);
    /// `None` before that, or with workers that never send it.
    pub fn model_ready_at(&self) -> Option<Instant> {
        self.inner.first_ready.get().copied()
    }

    /// Declares how many workers are expected to join (the local ones spawned): lease sizes
    /// share the queue among `max(connected, expected)` workers.
    pub fn expect_workers(&self, n: usize) {
        self.inner.expected_workers.store(n, Ordering::Relaxed);
    }

    /// Workers to share the queue among: connected now, or expected if more.
    fn sharing_workers(&self) -> usize {
        let connected = *self.inner.connected.borrow();
        connected.max(self.inner.expected_workers.load(Ordering::Relaxed))
    }

    /// Hands every accepted result to `sink` from now on (the journal). Only one sink per fleet:
    /// returns `false`, keeping the first, if one was already set.
    pub fn set_result_sink(&self, sink: ResultSink) -> bool {
        self.inner.result_sink.set(sink).is_ok()
    }

    /// Reports worker traffic to `observer` from now on. Only one per fleet: returns `false`,
    /// keeping the first, if one was already set.
    pub fn set_observer(&self, observer: Arc<dyn FleetObserver>) -> bool {
        self.inner.observer.set(observer).is_ok()
    }

    /// Handles one message of worker `key` (named `name` in logs) as its stream would, and
    /// returns the reply to send down. For a front end that owns the worker streams itself
    /// (`evalfleet serve` routes each worker's messages to the job fleet they concern).
    pub fn handle_message(&self, key: WorkerKey, name: &str, msg: Up) -> Option<Down> {
        handle_observed(self, key, name, msg)
    }

    /// What the per-client limits have refused or delayed so far.
    pub fn limit_stats(&self) -> LimitStats {
        self.inner.gate.stats()
    }

    /// Tells every connected worker (and any that connects later) to exit.
    pub fn shutdown_workers(&self, reason: &str) {
        self.inner.shutdown.send_replace(Some(reason.to_string()));
    }

    /// After [`Fleet::shutdown_workers`]: waits until every stream has closed, or `timeout`.
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected();
        tokio::time::timeout(timeout, rx.wait_for(|&n| n == 0))
            .await
            .is_ok()
    }

    /// The tonic service with the call-rate limit and bearer-token checking in front, refusing
    /// any worker message over [`MAX_WORKER_MESSAGE_BYTES`].
    pub fn service(
        &self,
        token: &str,
    ) -> InterceptedService<FleetServer<FleetService>, BearerAuth> {
        let server = FleetServer::new(FleetService {
            fleet: self.clone(),
        })
        .max_decoding_message_size(MAX_WORKER_MESSAGE_BYTES);
        let auth = BearerAuth::new(token).with_gate(self.inner.gate.clone());
        InterceptedService::new(server, auth)
    }

    /// Serves the fleet (token required) and the gRPC health service (no token) on `listener`
    /// (plain gRPC) until the returned handle is stopped; see [`Fleet::serve_on`].
    pub fn serve(&self, listener: TcpListener, token: &str) -> std::io::Result<ServerHandle> {
        self.serve_on(
            vec![Listener {
                socket: listener,
                tls: None,
            }],
            token,
        )
    }

    /// Serves the fleet (token required) and the gRPC health service (no token, but rate
    /// limited) on every listener, each with its own TLS setting, until the returned handle is
    /// stopped, and reclaims expired leases in the background.
    ///
    /// Health: the overall status (service `""`) and `evalfleet.v1.Fleet` are `SERVING` from the
    /// start and turn `NOT_SERVING` once [`Fleet::shutdown_workers`] begins the stop, so a
    /// readiness probe stops routing new workers to a coordinator that would only dismiss them.
    pub fn serve_on(&self, listeners: Vec<Listener>, token: &str) -> std::io::Result<ServerHandle> {
        if listeners.iter().any(|l| l.tls.is_some()) {
            tls::install_crypto_provider();
        }
        let (reporter, health) = tonic_health::server::health_reporter();
        let health = InterceptedService::new(health, RateOnly(self.inner.gate.clone()));
        let service = self.service(token);
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for Listener { socket, tls } in listeners {
            addrs.push(socket.local_addr()?);
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = &tls {
                builder = builder
                    .tls_config(tls.config())
                    .map_err(std::io::Error::other)?;
            }
            let router = builder
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .add_service(health.clone())
                .add_service(service.clone());
            let incoming = self.inner.gate.incoming(socket);
            let reporter = reporter.clone();
            tasks.push(tokio::spawn(async move {
                // Set before the first connection is accepted, so no probe sees it unknown.
                reporter.set_serving::<FleetServer<FleetService>>().await;
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    warn!("gRPC server stopped: {e}");
                }
            }));
        }
        let fleet = self.clone();
        tasks.push(tokio::spawn(
            async move { fleet.reap_expired_leases().await },
        ));
        let fleet = self.clone();
        tasks.push(tokio::spawn(async move {
            fleet.not_serving_on_stop(reporter).await
        }));
        Ok(ServerHandle {
            addr: addrs[0],
            addrs,
            tasks,
        })
    }

    /// Waits for [`Fleet::shutdown_workers`], then reports the server and the Fleet service as
    /// `NOT_SERVING`.
    async fn not_serving_on_stop(self, reporter: HealthReporter) {
        let mut shutdown = self.inner.shutdown.subscribe();
        // The sender lives in `self`, so the wait ends only when the stop begins.
        if shutdown.wait_for(Option::is_some).await.is_ok() {
            report_stopping(
                &reporter,
                <FleetServer<FleetService> as tonic::server::NamedService>::NAME,
            )
            .await;
        }
    }

    async fn reap_expired_leases(self) {
        let period = (self.inner.opts.sched.lease_ttl / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let expired = self.with_sched(|s| s.expire(Instant::now()));
            log_expired("", &expired);
        }
    }
}

/// Logs what [`Scheduler::expire`] reclaimed (`job`: `"job J: "` in serve, else empty).
pub(crate) fn log_expired(job: &str, expired: &Expired) {
    if !expired.silent.is_empty() {
        warn!(
            "{job}leases {:?} expired without heartbeats; their items go back to the queue",
            expired.silent
        );
    }
    if !expired.stalled.is_empty() {
        warn!(
            "{job}leases {:?} made no progress within the progress deadline; their items go back \
             to the queue and their workers are told to stop",
            expired.stalled
        );
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        // A panic while holding the lock leaves the scheduler as consistent as any single call left
        // it; keep serving rather than poisoning every later call.
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running server; dropping it does not stop it, [`ServerHandle::stop`] does.
pub struct ServerHandle {
    /// The first listener's bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Every listener's bound address, in the order given.
    pub addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// Stops serving and closes every connection.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Checks `authorization: Bearer <token>` on every call, in constant time, after the call-rate
/// limit (if any).
#[derive(Clone)]
pub struct BearerAuth {
    /// SHA-256 of the expected header value: comparing digests (fixed length) in constant time
    /// reveals neither the token's bytes nor its length through timing.
    expected: [u8; 32],
    gate: Option<ClientGate>,
}

impl BearerAuth {
    pub fn new(token: &str) -> Self {
        BearerAuth {
            expected: header_digest(format!("Bearer {token}").as_bytes()),
            gate: None,
        }
    }

    /// Checks `gate`'s call limit before the token.
    pub fn with_gate(self, gate: ClientGate) -> Self {
        BearerAuth {
            gate: Some(gate),
            ..self
        }
    }
}

/// Only the call-rate limit (the health service, which needs no token).
#[derive(Clone)]
pub struct RateOnly(pub ClientGate);

impl Interceptor for RateOnly {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.0.check_call(&req)?;
        Ok(req)
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(gate) = &self.gate {
            gate.check_call(&req)?;
        }
        let given = req.metadata().get("authorization").map(|v| v.as_bytes());
        match given {
            Some(given) if constant_time_eq(&header_digest(given), &self.expected) => Ok(req),
            // Never log the presented value: a near-miss token is still a secret.
            _ => {
                let peer = req
                    .remote_addr()
                    .map_or_else(|| "an unknown peer".to_string(), |a| a.to_string());
                let what = if given.is_some() { "a wrong" } else { "no" };
                warn!("refused a call from {peer} with {what} bearer token");
                Err(Status::unauthenticated("missing or invalid bearer token"))
            }
        }
    }
}

fn header_digest(value: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(value).into()
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The generated service trait's implementation.
pub struct FleetService {
    fleet: Fleet,
}

/// What a worker stream sends down.
pub(crate) type DownStream =
    Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;
/// Where a stream's session puts what goes down.
pub(crate) type DownSender = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// The first message of a worker stream: its `Hello`, within `timeout`, of this protocol version.
pub(crate) async fn read_hello(
    inbound: &mut Streaming<pb::WorkerMessage>,
    timeout: Duration,
) -> Result<pb::Hello, Status> {
    let first = tokio::time::timeout(timeout, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Hello within the handshake timeout"))??;
    let Some(Up::Hello(hello)) = first.and_then(|m| m.msg) else {
        return Err(Status::invalid_argument(
            "the first message on a stream must be Hello",
        ));
    };
    check_version(hello.protocol_version)?;
    let mut hello = hello;
    // Shown in logs, `evalfleet status` and metrics labels: no terminal escapes, bounded.
    for text in [&mut hello.worker_id, &mut hello.device, &mut hello.hostname] {
        *text = printable(text, MAX_WORKER_NAME_CHARS);
    }
    hello.models_held.truncate(MAX_MODELS_HELD);
    for model in &mut hello.models_held {
        *model = printable(model, MAX_WORKER_TEXT_CHARS);
    }
    Ok(hello)
}

/// The most models a worker's Hello may list (more are ignored: the worker loads them again).
const MAX_MODELS_HELD: usize = 64;
/// The longest worker name, device or host name kept (longer ones are cut).
const MAX_WORKER_NAME_CHARS: usize = 128;
/// The longest other worker text kept in logs (an item's error message, a model key).
const MAX_WORKER_TEXT_CHARS: usize = 4096;

/// [`printable`] for a multi-line text: its line breaks kept, every other control character
/// escaped.
pub fn printable_lines(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut left = max;
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let n = line.chars().count();
        out.push_str(&printable(line, left));
        if n >= left {
            break;
        }
        left -= n;
    }
    out
}

/// `text` from a worker made safe to print: control characters (terminal escape sequences, line
/// breaks) written as `\u{..}` escapes, and at most `max` characters (then `...`).
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A new stream's way down, its `Welcome` (job id, heartbeat interval) already queued.
pub(crate) fn welcome(job_id: &str, heartbeat: Duration) -> (DownSender, DownStream) {
    let (tx, rx) = mpsc::channel(64);
    let welcome = pb::Welcome {
        protocol_version: PROTOCOL_VERSION,
        job_id: job_id.to_string(),
        heartbeat_interval_ms: heartbeat.as_millis() as u64,
    };
    // The channel is empty, so this cannot fail or wait.
    let _ = tx.try_send(Ok(down(Down::Welcome(welcome))));
    (tx, Box::pin(ReceiverStream::new(rx)))
}

#[tonic::async_trait]
impl FleetRpc for FleetService {
    type ConnectStream = DownStream;

    async fn connect(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<DownStream>, Status> {
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let shared = &self.fleet.inner;
        let hello = read_hello(&mut inbound, shared.opts.hello_timeout).await?;
        let key = shared.next_worker.fetch_add(1, Ordering::Relaxed);
        if let Some(observer) = shared.observer.get() {
            observer.joined(key, &hello);
        }
        let from = peer.map_or_else(|| "?".into(), |a| a.to_string());
        info!(
            "worker {:?} connected from {from} (device {})",
            hello.worker_id, hello.device
        );
        let (tx, rx) = welcome(&shared.opts.job_id, shared.opts.heartbeat_interval);
        tokio::spawn(session(
            self.fleet.clone(),
            key,
            hello.worker_id,
            inbound,
            tx,
        ));
        Ok(Response::new(rx))
    }
}

/// Reports the server (the empty service name) and `service` as NOT_SERVING: the coordinator is
/// stopping, and probes should take it out of rotation.
pub(crate) async fn report_stopping(reporter: &HealthReporter, service: &str) {
    for name in ["", service] {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    info!("health status set to NOT_SERVING: the coordinator is stopping");
}

/// Refuses a worker of another protocol version, naming both.
pub fn check_version(worker: u32) -> Result<(), Status> {
    if worker == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "protocol version mismatch: the worker speaks version {worker}, this coordinator speaks version {PROTOCOL_VERSION}"
        )))
    }
}

pub(crate) fn down(msg: Down) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage { msg: Some(msg) }
}

/// How long a stream told to shut down waits for its worker to hang up.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Relays one worker stream (of `evalfleet run`'s fleet or `evalfleet serve`'s hub): each message,
/// read no faster than `gate`'s per-stream message rate, goes to `handle`, whose reply is sent
/// down. Returns when the stream closes or fails, the worker stops listening, or `shutdown` fires
/// (the worker is then told why).
pub(crate) async fn relay_worker_stream(
    name: &str,
    inbound: &mut Streaming<pb::WorkerMessage>,
    tx: &DownSender,
    mut shutdown: watch::Receiver<Option<String>>,
    gate: &ClientGate,
    mut handle: impl FnMut(Up) -> Option<Down>,
) {
    let mut rate = gate.message_bucket(Instant::now());
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(msg)) => {
                    if let Some(rate) = rate.as_mut() {
                        throttle(gate, name, rate).await;
                    }
                    let Some(reply) = msg.msg.and_then(&mut handle) else { continue };
                    if tx.send(Ok(down(reply))).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    debug!("worker {name:?}: stream error: {status}");
                    break;
                }
            },
            reason = shutdown_reason(&mut shutdown) => {
                let _ = tx.send(Ok(down(Down::Shutdown(pb::Shutdown { reason })))).await;
                // The worker hangs up once it has read it: until then the stream counts as
                // connected, so that a coordinator waiting for its workers to leave does not
                // close the connection (and exit) before the Shutdown was delivered.
                let hung_up = async { while let Ok(Some(_)) = inbound.message().await {} };
                if tokio::time::timeout(SHUTDOWN_DRAIN, hung_up).await.is_err() {
                    debug!("worker {name:?} did not hang up within {SHUTDOWN_DRAIN:?} of Shutdown");
                }
                break;
            }
        }
    }
}

/// Serves one worker stream until it closes or the fleet shuts down.
async fn session(
    fleet: Fleet,
    key: WorkerKey,
    name: String,
    mut inbound: Streaming<pb::WorkerMessage>,
    tx: DownSender,
) {
    fleet.inner.connected.send_modify(|n| *n += 1);
    relay_worker_stream(
        &name,
        &mut inbound,
        &tx,
        fleet.inner.shutdown.subscribe(),
        &fleet.inner.gate,
        |msg| handle_observed(&fleet, key, &name, msg),
    )
    .await;
    let reclaimed = fleet.with_sched(|s| s.worker_left(key));
    if reclaimed.is_empty() {
        info!("worker {name:?} disconnected");
    } else {
        warn!(
            "worker {name:?} disconnected holding leases {reclaimed:?}; their items go back to the queue"
        );
    }
    if let Some(observer) = fleet.inner.observer.get() {
        observer.left(key);
    }
    fleet.inner.connected.send_modify(|n| *n -= 1);
}

/// [`handle`], shown to the fleet's observer (if any) with its reply.
fn handle_observed(fleet: &Fleet, key: WorkerKey, name: &str, msg: Up) -> Option<Down> {
    let Some(observer) = fleet.inner.observer.get() else {
        return handle(fleet, key, name, msg);
    };
    let seen = msg.clone();
    let reply = handle(fleet, key, name, msg);
    observer.message(key, &seen, reply.as_ref());
    reply
}

/// Takes one message's token from the stream's bucket; over the rate, waits until the debt is
/// paid. Meanwhile nothing more is read from the stream, so HTTP/2 flow control slows the sender.
async fn throttle(gate: &ClientGate, name: &str, rate: &mut TokenBucket) {
    let wait = rate.take_or_wait(Instant::now());
    if wait.is_zero() {
        return;
    }
    let n = gate.message_delayed();
    if n.is_power_of_two() {
        warn!(
            "worker {name:?} sends messages faster than the limit; reading them more slowly ({n} delayed so far)"
        );
    }
    tokio::time::sleep(wait).await;
}

/// Waits for the shutdown signal. Returns an owned reason, so no watch guard (not `Send`) is held
/// across later awaits.
pub(crate) async fn shutdown_reason(rx: &mut watch::Receiver<Option<String>>) -> String {
    rx.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|r| r.clone())
        .unwrap_or_default()
}

/// One worker message → scheduler call → optional reply.
fn handle(fleet: &Fleet, key: WorkerKey, name: &str, msg: Up) -> Option<Down> {
    let now = Instant::now();
    match msg {
        Up::Hello(_) => {
            warn!("worker {name:?} sent a second Hello; ignored");
            None
        }
        Up::Heartbeat(hb) => {
            let stalled = fleet.with_sched(|s| {
                s.heartbeat(key, &hb.active_leases, now);
                s.stalled_lease(key, &hb.active_leases)
            });
            // Its runner is stuck (heartbeats come from a timer): it cannot drop the lease
            // itself, so it is told to stop; a supervisor restarts it afresh.
            stalled.map(|lease| {
                warn!(
                    "worker {name:?} still holds lease {lease}, taken back for lack of progress; \
                     telling it to stop"
                );
                Down::Shutdown(pb::Shutdown {
                    reason: format!(
                        "lease {lease} made no progress within the coordinator's progress \
                         deadline and was taken back"
                    ),
                })
            })
        }
        Up::LeaseRequest(req) => {
            let workers = fleet.sharing_workers();
            match fleet.with_sched(|s| s.request_lease(key, req.max_items, workers, now)) {
                Assignment::Lease(lease) => {
                    fleet.inner.first_lease.get_or_init(|| now);
                    debug!(
                        "lease {} ({} items of {}) → worker {name:?}",
                        lease.lease_id,
                        lease.items.len(),
                        lease.task
                    );
                    Some(Down::Lease(*lease))
                }
                Assignment::NoWork => Some(Down::NoWork(pb::NoWork {
                    retry_after_ms: fleet.inner.opts.no_work_retry.as_millis() as u64,
                })),
                Assignment::Finished => Some(Down::Shutdown(pb::Shutdown {
                    reason: "all work is done".into(),
                })),
                Assignment::Refused { reason } => Some(Down::Shutdown(pb::Shutdown { reason })),
            }
        }
        Up::Result(mut result) => {
            let item = printable(&result.item_id, MAX_WORKER_NAME_CHARS);
            let error = match &mut result.outcome {
                // Kept as the item's failure message, which the final report prints.
                Some(pb::item_result::Outcome::Error(e)) => {
                    e.message = printable(&e.message, MAX_WORKER_TEXT_CHARS);
                    e.message.clone()
                }
                _ => String::new(),
            };
            let sink = fleet.inner.result_sink.get();
            // Copied only when someone keeps results (the journal).
            let kept = sink.map(|_| result.clone());
            let recorded = fleet.with_sched(|s| {
                let task = s.lease_task_name(result.lease_id).map(str::to_string);
                let recorded = s.record(key, result, now);
                // Kept before the progress this result makes is published: a driver that sees
                // its step complete and closes the journal must find every result in it.
                if let (Recorded::Accepted, Some(sink), Some(kept), Some(task)) =
                    (&recorded, sink, kept, task)
                {
                    sink(task, kept);
                }
                recorded
            });
            match recorded {
                Recorded::Accepted => {}
                Recorded::Retrying { attempt } => warn!(
                    "item {item} failed on worker {name:?} (attempt {attempt}), will retry: {error}"
                ),
                Recorded::Failed => {
                    warn!("item {item} failed on worker {name:?} for good: {error}")
                }
                Recorded::Refused {
                    why,
                    worker_stopped,
                } => {
                    warn!("refused a result from worker {name:?} (connection {key}): {why}");
                    if worker_stopped {
                        warn!(
                            "worker {name:?} (connection {key}) sent {} refused results: it gets \
                             no more leases",
                            fleet.inner.opts.sched.max_invalid_results
                        );
                    }
                }
                other => debug!("result for item {item} from worker {name:?}: {other:?}"),
            }
            None
        }
        Up::ModelReady(ready) => {
            fleet.with_sched(|s| s.progressed(key, ready.lease_id, now));
            fleet.inner.first_ready.get_or_init(|| now);
            debug!("worker {name:?}: model ready for lease {}", ready.lease_id);
            None
        }
        Up::LeaseDone(done) if done.stopping => {
            let requeued = fleet.with_sched(|s| s.lease_returned(key, done.lease_id));
            info!(
                "worker {name:?} is stopping and returned lease {}: {requeued} items go back to the queue",
                done.lease_id
            );
            // The acknowledgement the stopping worker waits for before it exits.
            Some(Down::Shutdown(pb::Shutdown {
                reason: "lease returned".into(),
            }))
        }
        Up::LeaseDone(done) => {
            let missing = fleet.with_sched(|s| s.lease_done(key, done.lease_id));
            if missing > 0 {
                warn!(
                    "worker {name:?} finished lease {} without results for {missing} items",
                    done.lease_id
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_text_is_printed_without_control_characters_and_cut() {
        assert_eq!(printable("gpu-0", 10), "gpu-0");
        assert_eq!(printable("a\x1b[2Jb\nc", 100), "a\\u{1b}[2Jb\\u{a}c");
        assert_eq!(printable("abcdef", 3), "abc...");
    }

    #[test]
    fn constant_time_eq_compares_bytes_and_lengths() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let err = check_version(PROTOCOL_VERSION + 7).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.message()
                .contains(&format!("version {}", PROTOCOL_VERSION + 7)),
            "{}",
            err.message()
        );
        assert!(
            err.message()
                .contains(&format!("version {PROTOCOL_VERSION}")),
            "{}",
            err.message()
        );
        assert!(check_version(PROTOCOL_VERSION).is_ok());
    }
}
