//! The `Control` gRPC service of `evalfleet serve` (Submit, Status, Cancel), behind the control
//! token (never the workers' token); and its client, used by `evalfleet submit`, `status` and
//! `cancel`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use evalfleet_proto::v1 as pb;
use pb::control_client::ControlClient;
use pb::control_server::Control;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use super::hub::Hub;
use super::jobs::{JobError, Jobs};
use super::metrics::Metrics;

/// The largest job YAML accepted (a job file is a few KiB).
pub const MAX_JOB_YAML_BYTES: usize = 1 << 20;

/// The service: the job queue, and the hub and metrics for the workers' part of the status.
pub struct ControlService {
    pub jobs: Arc<Jobs>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
}

fn status_of(e: JobError) -> Status {
    match e {
        JobError::NotFound(_) => Status::not_found(e.to_string()),
        JobError::Config(_) => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let req = req.into_inner();
        if req.yaml.len() > MAX_JOB_YAML_BYTES {
            return Err(Status::invalid_argument(format!(
                "{}: a job YAML of {} bytes is over the limit of {MAX_JOB_YAML_BYTES}",
                req.name,
                req.yaml.len()
            )));
        }
        let job_id = self
            .jobs
            .submit(&req.yaml, &req.name, req.restart)
            .map_err(status_of)?;
        Ok(Response::new(pb::SubmitReply { job_id }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let id = req.into_inner().job_id;
        let jobs = self
            .jobs
            .status((!id.is_empty()).then_some(id.as_str()))
            .map_err(status_of)?;
        Ok(Response::new(pb::StatusReply {
            jobs,
            workers: self.workers(),
        }))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelReply>, Status> {
        let state = self
            .jobs
            .cancel(&req.into_inner().job_id)
            .map_err(status_of)?;
        Ok(Response::new(pb::CancelReply {
            state: state.as_str().to_string(),
        }))
    }
}

impl ControlService {
    /// The connected workers: the hub's view (models, leases) with the metrics' counters.
    fn workers(&self) -> Vec<pb::WorkerStatus> {
        let stats = self.metrics.workers();
        self.hub
            .workers()
            .into_iter()
            .map(|w| {
                let (device, items, rate, loads) = stats
                    .iter()
                    .find(|(name, _, _)| *name == w.name)
                    .map(|(_, s, rate)| {
                        (
                            s.device.clone(),
                            s.items,
                            *rate,
                            s.loads.values().sum::<u64>(),
                        )
                    })
                    .unwrap_or_default();
                pb::WorkerStatus {
                    worker_id: w.name,
                    device,
                    models_held: w.models,
                    items_done: items,
                    items_per_second: rate,
                    leases_outstanding: w.leases as u32,
                    model_loads: loads as u32,
                    lease_jobs: w.lease_jobs,
                }
            })
            .collect()
    }
}

/// Why a control call failed on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the coordinator at {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("the token is not valid in an HTTP header (printable ASCII only)")]
    BadToken,
    #[error("the coordinator refused: {}", .0.message())]
    Rpc(#[from] Status),
    #[error("--tls-ca needs an https:// coordinator URL, and an https:// URL needs --tls-ca")]
    TlsMismatch,
    #[error("{0}: not a PEM certificate")]
    BadCa(PathBuf),
}

/// Where a control client goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`, or `https://...` with `tls_ca`.
    pub url: String,
    pub token: String,
    /// The PEM CA certificate(s) that signed the coordinator's certificate.
    pub tls_ca: Option<PathBuf>,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Auth(MetadataValue<Ascii>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A control client of the coordinator `to`.
pub async fn connect(
    to: &Target,
) -> Result<ControlClient<InterceptedService<Channel, Auth>>, ClientError> {
    let header: MetadataValue<Ascii> = format!("Bearer {}", to.token)
        .parse()
        .map_err(|_| ClientError::BadToken)?;
    let connect_err = |source| ClientError::Connect {
        url: to.url.clone(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(to.url.clone()).map_err(connect_err)?;
    match (&to.tls_ca, to.url.starts_with("https://")) {
        (None, false) => {}
        (Some(ca), true) => {
            let pem = std::fs::read(ca).map_err(|source| ClientError::Read {
                path: ca.clone(),
                source,
            })?;
            crate::rpc::tls::parse_certificates(&pem, ca)
                .map_err(|_| ClientError::BadCa(ca.clone()))?;
            crate::rpc::tls::install_crypto_provider();
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint = endpoint.tls_config(tls).map_err(connect_err)?;
        }
        _ => return Err(ClientError::TlsMismatch),
    }
    let channel = endpoint.connect().await.map_err(connect_err)?;
    Ok(ControlClient::with_interceptor(channel, Auth(header)))
}

/// Submits the job YAML at `path`; returns its id.
pub async fn submit(to: &Target, path: &Path, restart: bool) -> Result<String, ClientError> {
    let yaml = std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let reply = connect(to)
        .await?
        .submit(pb::SubmitRequest {
            yaml,
            name: path.display().to_string(),
            restart,
        })
        .await?;
    Ok(reply.into_inner().job_id)
}

/// The status of job `id`, or of every job.
pub async fn status(to: &Target, id: Option<&str>) -> Result<pb::StatusReply, ClientError> {
    let reply = connect(to)
        .await?
        .status(pb::StatusRequest {
            job_id: id.unwrap_or_default().to_string(),
        })
        .await?;
    Ok(reply.into_inner())
}

/// Cancels job `id`; returns its state afterwards.
pub async fn cancel(to: &Target, id: &str) -> Result<String, ClientError> {
    let reply = connect(to)
        .await?
        .cancel(pb::CancelRequest {
            job_id: id.to_string(),
        })
        .await?;
    Ok(reply.into_inner().state)
}
