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
/// Jobs in a status reply when the request sets no limit, and the most it may ask for.
pub const STATUS_PAGE: usize = 200;
pub const MAX_STATUS_PAGE: usize = 1000;
/// A status reply stops adding jobs (and workers) before passing this many bytes, well under
/// the 4 MiB gRPC message limit.
pub const STATUS_REPLY_BUDGET: usize = 3 << 20;

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
        JobError::Outside(_) => Status::permission_denied(e.to_string()),
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
        let req = req.into_inner();
        let id = req.job_id;
        let jobs = self
            .jobs
            .status((!id.is_empty()).then_some(id.as_str()), req.after_seq)
            .map_err(status_of)?;
        let workers = if req.after_seq == 0 {
            self.workers()
        } else {
            Vec::new()
        };
        let limit = match req.limit as usize {
            0 => STATUS_PAGE,
            n => n.min(MAX_STATUS_PAGE),
        };
        Ok(Response::new(page(jobs, workers, limit)))
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

/// One status reply: the workers while they take at most half of [`STATUS_REPLY_BUDGET`], then
/// up to `limit` jobs while the reply stays within it; `next_after_seq` says where to go on.
fn page(jobs: Vec<pb::JobStatus>, workers: Vec<pb::WorkerStatus>, limit: usize) -> pb::StatusReply {
    use prost::Message as _;
    let mut reply = pb::StatusReply::default();
    // Each repeated entry costs its length plus a tag and a length prefix.
    let mut size = 0;
    let cost = |len: usize| len + 1 + prost::length_delimiter_len(len);
    for w in workers {
        let len = cost(w.encoded_len());
        if size + len > STATUS_REPLY_BUDGET / 2 {
            reply.workers_omitted += 1;
            continue;
        }
        size += len;
        reply.workers.push(w);
    }
    for j in jobs {
        let len = cost(j.encoded_len());
        // One job always fits: its error and file list are capped.
        if let Some(last) = reply.jobs.last()
            && (reply.jobs.len() >= limit || size + len > STATUS_REPLY_BUDGET)
        {
            reply.next_after_seq = last.submitted_seq;
            break;
        }
        size += len;
        reply.jobs.push(j);
    }
    reply
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

/// The status of job `id`, or of the jobs submitted after `after` (a submission seq; 0: from
/// the first), page by page, at most `limit` of them (`None`: all); `next_after_seq` is set
/// when `limit` left some out.
pub async fn status(
    to: &Target,
    id: Option<&str>,
    after: u64,
    limit: Option<usize>,
) -> Result<pb::StatusReply, ClientError> {
    let mut client = connect(to).await?;
    let mut all = pb::StatusReply::default();
    let mut after_seq = after;
    loop {
        let want = limit.map_or(0, |l| l.saturating_sub(all.jobs.len()));
        let reply = client
            .status(pb::StatusRequest {
                job_id: id.unwrap_or_default().to_string(),
                limit: u32::try_from(want.min(MAX_STATUS_PAGE)).unwrap_or(0),
                after_seq,
            })
            .await?
            .into_inner();
        if after_seq == after {
            all.workers = reply.workers;
            all.workers_omitted = reply.workers_omitted;
        }
        all.jobs.extend(reply.jobs);
        all.next_after_seq = reply.next_after_seq;
        let full = limit.is_some_and(|l| all.jobs.len() >= l);
        if reply.next_after_seq == 0 || full {
            return Ok(all);
        }
        after_seq = reply.next_after_seq;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn job(seq: u64, error_bytes: usize) -> pb::JobStatus {
        pb::JobStatus {
            job_id: format!("job-{seq}"),
            submitted_seq: seq,
            error: "e".repeat(error_bytes),
            ..Default::default()
        }
    }

    #[test]
    fn status_pages_stay_under_the_message_limit_and_say_where_to_go_on() {
        // 200 jobs with 60 KiB errors: 12 MB in all, far over one 4 MiB reply.
        let jobs: Vec<_> = (1..=200).map(|s| job(s, 60 << 10)).collect();
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let rest: Vec<_> = jobs
                .iter()
                .filter(|j| j.submitted_seq > after)
                .cloned()
                .collect();
            let reply = page(rest, Vec::new(), STATUS_PAGE);
            assert!(
                reply.encoded_len() <= STATUS_REPLY_BUDGET,
                "{}",
                reply.encoded_len()
            );
            assert!(!reply.jobs.is_empty());
            seen.extend(reply.jobs.iter().map(|j| j.submitted_seq));
            if reply.next_after_seq == 0 {
                break;
            }
            assert_eq!(reply.next_after_seq, *seen.last().unwrap());
            after = reply.next_after_seq;
        }
        assert_eq!(
            seen,
            (1..=200).collect::<Vec<_>>(),
            "every job once, in order"
        );

        // Small jobs: the limit decides.
        let small: Vec<_> = (1..=5).map(|s| job(s, 10)).collect();
        let reply = page(small.clone(), Vec::new(), 2);
        assert_eq!(reply.jobs.len(), 2);
        assert_eq!(reply.next_after_seq, 2);
        let reply = page(small, Vec::new(), 5);
        assert_eq!((reply.jobs.len(), reply.next_after_seq), (5, 0));

        // Workers past half the budget are left out, and counted.
        let worker = pb::WorkerStatus {
            models_held: vec!["m".repeat(4096); 64],
            ..Default::default()
        };
        let reply = page(Vec::new(), vec![worker; 20], 1);
        assert!(reply.workers_omitted > 0 && !reply.workers.is_empty());
        assert!(reply.encoded_len() <= STATUS_REPLY_BUDGET / 2 + 16);
    }
}
