//! The worker's end of the fleet stream: dial the coordinator (retrying while it starts), say
//! Hello, send heartbeats from a timer, ask for a lease whenever idle, run it on a blocking thread
//! while streaming each item's result back as it is produced, report LeaseDone, repeat; exit when
//! told to shut down.
//!
//! On SIGTERM/SIGINT ([`run_until`]) the worker gives its running lease back (`LeaseDone` with
//! `stopping`: the coordinator requeues the unfinished items at once and acknowledges with
//! `Shutdown`) and exits, so a preempted worker costs no lease deadline.
//!
//! What a lease *does* is behind [`LeaseRunner`], so this module knows nothing about models; the
//! binary plugs in the real executor.
//!
//! Before running a lease the worker prepares it (loads its model if needed) and then sends
//! `ModelReady`, so the coordinator can time generation apart from model loading.
//!
//! TLS: an `https://` coordinator URL is dialed over TLS (rustls), verifying the coordinator's
//! certificate against `--tls-ca` or, without it, the system's roots. A coordinator that refuses
//! the stream with `RESOURCE_EXHAUSTED` (its per-client call limit) is asked again with backoff
//! until the connect timeout.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evalfleet_proto::PROTOCOL_VERSION;
use evalfleet_proto::v1 as pb;
use evalfleet_proto::v1::fleet_client::FleetClient;
use pb::coordinator_message::Msg as Down;
use pb::worker_message::Msg as Up;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

/// Runs leases. Synchronous: it is called on a blocking thread and must call `emit` once per item,
/// as soon as that item's result exists.
pub trait LeaseRunner: Send + 'static {
    fn run_lease(
        &mut self,
        lease: &pb::Lease,
        emit: &mut dyn FnMut(pb::ItemResult),
    ) -> crate::Result<()>;
    /// Makes the lease ready to run (loads its model if it is not loaded yet). Called before
    /// [`LeaseRunner::run_lease`]; when it returns, the worker tells the coordinator its model is
    /// ready, which is where the step's `predict_runtime` may start. The default does nothing.
    fn prepare_lease(&mut self, _lease: &pb::Lease) -> crate::Result<()> {
        Ok(())
    }
    /// Model keys currently loaded (reported in Hello).
    fn models_held(&self) -> Vec<String> {
        Vec::new()
    }
}

/// How to reach the coordinator and describe this worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `http://host:port`.
    pub coordinator: String,
    pub token: String,
    pub worker_id: String,
    /// `cpu` or `cuda:N`, as reported in Hello.
    pub device: String,
    /// The most items this worker takes per lease (`--batch-size`); 0 = no cap of its own, the
    /// job's batch size (sent with each lease) decides.
    pub batch_size: u32,
    /// Give up dialing after this long.
    pub connect_timeout: Duration,
    /// PEM CA certificate(s) to verify an `https://` coordinator with (default: the system's
    /// roots).
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("bad coordinator URL {url:?}: {message}")]
    BadUrl { url: String, message: String },
    #[error("could not reach the coordinator at {url} within {waited:?}: {source}")]
    Unreachable {
        url: String,
        waited: Duration,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("TLS CA file {}: {message}", .path.display())]
    BadCa { path: PathBuf, message: String },
    #[error("the token cannot be sent as an HTTP header (it must be printable ASCII)")]
    BadToken,
    #[error("the coordinator refused this worker ({:?}): {}", .0.code(), .0.message())]
    Refused(Status),
    #[error("the stream to the coordinator failed: {0}")]
    Stream(Status),
    #[error("the coordinator closed the stream without a Shutdown")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the lease runner panicked")]
    RunnerPanicked,
}

/// Why the worker stopped normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub reason: String,
    pub leases_run: usize,
}

/// Serves the coordinator until it says Shutdown.
pub async fn run(opts: WorkerOptions, runner: impl LeaseRunner) -> Result<Stopped, RpcError> {
    run_until(opts, runner, std::future::pending()).await
}

/// How long a stopping worker waits for the coordinator to acknowledge its returned lease.
const STOP_ACK_WAIT: Duration = Duration::from_secs(5);

/// [`run`], until `stop` resolves (the binary's SIGTERM/SIGINT; the value names it): then a
/// running lease is given back (`LeaseDone` with `stopping`, so its unfinished items are requeued
/// at once), the coordinator's acknowledgement awaited (a `Shutdown`, at most
/// [`STOP_ACK_WAIT`]) so the message is not lost at exit, and the worker returns. The lease's
/// blocking thread is not waited for: the caller exits the process.
pub async fn run_until(
    opts: WorkerOptions,
    runner: impl LeaseRunner,
    stop: impl Future<Output = String> + Send + 'static,
) -> Result<Stopped, RpcError> {
    let channel = connect(&opts).await?;
    let auth: MetadataValue<_> = format!("Bearer {}", opts.token)
        .parse()
        .map_err(|_| RpcError::BadToken)?;
    let mut client = FleetClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", auth.clone());
        Ok(req)
    });
    let hello = pb::Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_id: opts.worker_id.clone(),
        device: opts.device.clone(),
        memory_bytes: 0,
        models_held: runner.models_held(),
        hostname: hostname(),
    };
    let (tx, mut inbound) = open_stream(&mut client, &opts, hello).await?;
    let welcome = match next(&mut inbound).await? {
        Down::Welcome(w) => w,
        Down::Shutdown(s) => {
            return Ok(Stopped {
                reason: s.reason,
                leases_run: 0,
            });
        }
        other => {
            return Err(RpcError::Protocol(format!(
                "expected Welcome, got {other:?}"
            )));
        }
    };
    if welcome.protocol_version != PROTOCOL_VERSION {
        return Err(RpcError::Protocol(format!(
            "the coordinator speaks protocol version {}, this worker speaks version {PROTOCOL_VERSION}",
            welcome.protocol_version
        )));
    }
    info!(
        "connected to {} (job {:?}) as {:?}",
        opts.coordinator, welcome.job_id, opts.worker_id
    );
    let active = Arc::new(Mutex::new(Vec::new()));
    let beat = Duration::from_millis(welcome.heartbeat_interval_ms.max(100));
    tokio::spawn(heartbeats(tx.clone(), active.clone(), beat));
    Session {
        opts,
        tx,
        inbound,
        active,
        runner: Some(runner),
        leases_run: 0,
        stop: Box::pin(stop),
    }
    .serve()
    .await
}

/// Opens the fleet stream with `hello` as its first message; returns the sender for the rest of
/// the stream and the inbound half. A refusal for the coordinator's call-rate limit
/// (`RESOURCE_EXHAUSTED`) is retried with backoff until `opts.connect_timeout`; others are final.
async fn open_stream<S>(
    client: &mut FleetClient<S>,
    opts: &WorkerOptions,
    hello: pb::Hello,
) -> Result<
    (
        mpsc::Sender<pb::WorkerMessage>,
        Streaming<pb::CoordinatorMessage>,
    ),
    RpcError,
>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        let (tx, rx) = mpsc::channel(256);
        send(&tx, Up::Hello(hello.clone())).await?;
        match client.connect(ReceiverStream::new(rx)).await {
            Ok(response) => return Ok((tx, response.into_inner())),
            Err(status)
                if status.code() == tonic::Code::ResourceExhausted
                    && started.elapsed() < opts.connect_timeout =>
            {
                warn!(
                    "the coordinator is busy ({}); asking again in {pause:?}",
                    status.message()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(status) => return Err(RpcError::Refused(status)),
        }
    }
}

/// The state of one connected worker.
struct Session<R> {
    opts: WorkerOptions,
    tx: mpsc::Sender<pb::WorkerMessage>,
    inbound: Streaming<pb::CoordinatorMessage>,
    active: Arc<Mutex<Vec<u64>>>,
    /// Moved onto the blocking thread while a lease runs.
    runner: Option<R>,
    leases_run: usize,
    /// Resolves on SIGTERM/SIGINT (see [`run_until`]); polled only until it fires.
    stop: Pin<Box<dyn Future<Output = String> + Send>>,
}

impl<R: LeaseRunner> Session<R> {
    async fn serve(mut self) -> Result<Stopped, RpcError> {
        match self.serve_leases().await {
            // The coordinator ends the stream right after a Shutdown, so our next send can fail
            // before we have read that Shutdown: look for it before calling this an error.
            Err(RpcError::Closed) => self.pending_shutdown().await,
            other => other,
        }
    }

    async fn pending_shutdown(&mut self) -> Result<Stopped, RpcError> {
        loop {
            if let Down::Shutdown(s) = next(&mut self.inbound).await? {
                return Ok(self.stopped(s.reason));
            }
        }
    }

    async fn serve_leases(&mut self) -> Result<Stopped, RpcError> {
        loop {
            send(
                &self.tx,
                Up::LeaseRequest(pb::LeaseRequest {
                    max_items: self.opts.batch_size,
                }),
            )
            .await?;
            let reply = tokio::select! {
                reply = next(&mut self.inbound) => reply?,
                // A lease granted meanwhile is reclaimed when the stream closes.
                why = &mut self.stop => return Ok(self.stopped(why)),
            };
            match reply {
                Down::Lease(lease) => {
                    if let Some(reason) = self.run_lease(lease).await? {
                        return Ok(self.stopped(reason));
                    }
                }
                Down::NoWork(n) => {
                    let wait = tokio::time::sleep(Duration::from_millis(
                        n.retry_after_ms.clamp(10, 10_000),
                    ));
                    tokio::select! {
                        _ = wait => {}
                        why = &mut self.stop => return Ok(self.stopped(why)),
                        msg = next(&mut self.inbound) => match msg? {
                            Down::Shutdown(s) => return Ok(self.stopped(s.reason)),
                            other => return Err(RpcError::Protocol(format!("unexpected {other:?} while idle"))),
                        },
                    }
                }
                Down::Shutdown(s) => return Ok(self.stopped(s.reason)),
                Down::Welcome(_) => return Err(RpcError::Protocol("a second Welcome".into())),
            }
        }
    }

    /// Runs one lease; returns `Some(reason)` if a Shutdown arrived meanwhile.
    async fn run_lease(&mut self, lease: pb::Lease) -> Result<Option<String>, RpcError> {
        let lease_id = lease.lease_id;
        debug!(
            "lease {lease_id}: {} items of {}",
            lease.items.len(),
            lease.task
        );
        set_active(&self.active, Some(lease_id));
        let mut runner = self.runner.take().ok_or(RpcError::RunnerPanicked)?;
        let tx = self.tx.clone();
        let mut job = tokio::task::spawn_blocking(move || {
            run_and_stream(&mut runner, &lease, &tx);
            runner
        });
        let runner = loop {
            tokio::select! {
                joined = &mut job => break joined.map_err(|_| RpcError::RunnerPanicked)?,
                msg = next(&mut self.inbound) => match msg? {
                    // The job is over; results of this lease are no longer needed.
                    Down::Shutdown(s) => return Ok(Some(s.reason)),
                    other => warn!("ignoring unexpected {other:?} during lease {lease_id}"),
                },
                why = &mut self.stop => return self.give_back(lease_id, why).await.map(Some),
            }
        };
        self.runner = Some(runner);
        self.leases_run += 1;
        set_active(&self.active, None);
        send(
            &self.tx,
            Up::LeaseDone(pb::LeaseDone {
                lease_id,
                stopping: false,
            }),
        )
        .await?;
        Ok(None)
    }

    /// Stopping mid-lease: gives the lease back and waits (briefly) for the acknowledgement.
    async fn give_back(&mut self, lease_id: u64, why: String) -> Result<String, RpcError> {
        info!("{why}: giving lease {lease_id} back to the coordinator");
        send(
            &self.tx,
            Up::LeaseDone(pb::LeaseDone {
                lease_id,
                stopping: true,
            }),
        )
        .await?;
        let acknowledged = tokio::time::timeout(STOP_ACK_WAIT, async {
            loop {
                match next(&mut self.inbound).await {
                    Ok(Down::Shutdown(_)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if acknowledged.is_err() {
            warn!(
                "no acknowledgement of the returned lease within {STOP_ACK_WAIT:?}; exiting anyway"
            );
        }
        Ok(format!("{why}: lease {lease_id} given back"))
    }

    fn stopped(&self, reason: String) -> Stopped {
        info!("stopping: {reason}");
        Stopped {
            reason,
            leases_run: self.leases_run,
        }
    }
}

/// Runs the lease on the current (blocking) thread, sending each result as it is emitted. If the
/// runner fails as a whole, every item it did not answer gets a retryable error, so the
/// coordinator can try them elsewhere.
fn run_and_stream(
    runner: &mut impl LeaseRunner,
    lease: &pb::Lease,
    tx: &mpsc::Sender<pb::WorkerMessage>,
) {
    let mut answered = HashSet::new();
    let started = Instant::now();
    let outcome = runner.prepare_lease(lease).and_then(|()| {
        let ready = pb::ModelReady {
            lease_id: lease.lease_id,
        };
        // Sends here and below fail only if the stream is gone, in which case the coordinator
        // re-runs the lease elsewhere.
        let _ = tx.blocking_send(up(Up::ModelReady(ready)));
        runner.run_lease(lease, &mut |mut result| {
            result.lease_id = lease.lease_id;
            answered.insert(result.item_id.clone());
            let _ = tx.blocking_send(up(Up::Result(result)));
        })
    });
    if let Err(e) = outcome {
        warn!(
            "lease {} failed after {:?}: {e}",
            lease.lease_id,
            started.elapsed()
        );
        for item in lease
            .items
            .iter()
            .filter(|i| !answered.contains(&i.item_id))
        {
            let error = pb::ItemError {
                message: e.to_string(),
                retryable: true,
            };
            let result = pb::ItemResult {
                lease_id: lease.lease_id,
                item_id: item.item_id.clone(),
                outcome: Some(pb::item_result::Outcome::Error(error)),
            };
            let _ = tx.blocking_send(up(Up::Result(result)));
        }
    }
}

/// The TLS settings for `opts`: `None` for `http://`, the CA file's or the system's roots for
/// `https://`.
pub fn client_tls(opts: &WorkerOptions) -> Result<Option<ClientTlsConfig>, RpcError> {
    let https = opts.coordinator.starts_with("https://");
    match (&opts.tls_ca, https) {
        (None, false) => Ok(None),
        (Some(_), false) => Err(RpcError::BadUrl {
            url: opts.coordinator.clone(),
            message: "--tls-ca needs an https:// coordinator URL".into(),
        }),
        (None, true) => Ok(Some(ClientTlsConfig::new().with_native_roots())),
        (Some(path), true) => {
            let pem = read_ca(path)?;
            Ok(Some(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            ))
        }
    }
}

/// Reads a PEM CA file, checking it holds at least one certificate.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, RpcError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |message: String| RpcError::BadCa {
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(format!(
                "not a PEM file ({e}); expected -----BEGIN CERTIFICATE----- blocks"
            ))
        })?;
    if certs.is_empty() {
        return Err(bad(
            "no CERTIFICATE block found; expected -----BEGIN CERTIFICATE----- blocks".into(),
        ));
    }
    Ok(pem)
}

async fn connect(opts: &WorkerOptions) -> Result<Channel, RpcError> {
    let bad_url = |message: String| RpcError::BadUrl {
        url: opts.coordinator.clone(),
        message,
    };
    let mut endpoint =
        Endpoint::from_shared(opts.coordinator.clone()).map_err(|e| bad_url(e.to_string()))?;
    if let Some(tls) = client_tls(opts)? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| bad_url(format!("TLS: {e}")))?;
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(source) if started.elapsed() >= opts.connect_timeout => {
                return Err(RpcError::Unreachable {
                    url: opts.coordinator.clone(),
                    waited: started.elapsed(),
                    source,
                });
            }
            Err(e) => {
                debug!("coordinator not reachable yet ({e}); retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn heartbeats(
    tx: mpsc::Sender<pb::WorkerMessage>,
    active: Arc<Mutex<Vec<u64>>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let active_leases = active.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if tx
            .send(up(Up::Heartbeat(pb::Heartbeat { active_leases })))
            .await
            .is_err()
        {
            return;
        }
    }
}

fn set_active(active: &Mutex<Vec<u64>>, lease: Option<u64>) {
    *active.lock().unwrap_or_else(|e| e.into_inner()) = lease.into_iter().collect();
}

async fn next(inbound: &mut Streaming<pb::CoordinatorMessage>) -> Result<Down, RpcError> {
    loop {
        match inbound.message().await {
            Ok(Some(pb::CoordinatorMessage { msg: Some(msg) })) => return Ok(msg),
            Ok(Some(_)) => continue,
            Ok(None) => return Err(RpcError::Closed),
            Err(status) => return Err(RpcError::Stream(status)),
        }
    }
}

async fn send(tx: &mpsc::Sender<pb::WorkerMessage>, msg: Up) -> Result<(), RpcError> {
    tx.send(up(msg)).await.map_err(|_| RpcError::Closed)
}

fn up(msg: Up) -> pb::WorkerMessage {
    pb::WorkerMessage { msg: Some(msg) }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str, ca: Option<PathBuf>) -> WorkerOptions {
        WorkerOptions {
            coordinator: url.into(),
            token: "t".into(),
            worker_id: "w".into(),
            device: "cpu".into(),
            batch_size: 1,
            connect_timeout: Duration::from_secs(1),
            tls_ca: ca,
        }
    }

    #[test]
    fn plain_urls_need_no_tls_and_refuse_a_ca() {
        assert!(
            client_tls(&opts("http://127.0.0.1:1", None))
                .unwrap()
                .is_none()
        );
        let err = client_tls(&opts("http://127.0.0.1:1", Some("ca.pem".into()))).unwrap_err();
        assert!(err.to_string().contains("needs an https://"), "{err}");
    }

    #[test]
    fn https_uses_the_system_roots_without_a_ca() {
        assert!(client_tls(&opts("https://h:1", None)).unwrap().is_some());
    }

    #[test]
    fn a_bad_ca_file_is_named_with_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("evalfleet-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = client_tls(&opts("https://h:1", Some(missing))).unwrap_err();
        assert!(
            err.to_string().contains("missing.pem") && err.to_string().contains("cannot read"),
            "{err}"
        );
        let text = dir.join("text.pem");
        std::fs::write(&text, "not a certificate").unwrap();
        let err = client_tls(&opts("https://h:1", Some(text))).unwrap_err();
        assert!(
            err.to_string().contains("text.pem") && err.to_string().contains("no CERTIFICATE"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
