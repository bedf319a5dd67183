//! A hand-written fleet client for the TLS and limits tests: certificates made with rcgen, a
//! coordinator serving a small generate task, and a well-behaved worker loop speaking the real
//! protocol (Hello, lease requests, one result per item, LeaseDone) until told to shut down.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use evalfleet::rpc::limits::Limits;
use evalfleet::rpc::tls::{ServerTls, TlsFiles};
use evalfleet::rpc::{Fleet, FleetOptions, Listener, ServerHandle};
use evalfleet::sched::{SchedConfig, Scheduler, TaskSpec};
use evalfleet_proto::PROTOCOL_VERSION;
use evalfleet_proto::v1 as pb;
use evalfleet_proto::v1::fleet_client::FleetClient;
use pb::coordinator_message::Msg as Down;
use pb::worker_message::Msg as Up;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub const TOKEN: &str = "test-token-0123456789";

/// A CA and a server certificate it signed (for `localhost` and `127.0.0.1`), as PEM.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestPki {
    pub fn new(name: &str) -> TestPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        TestPki {
            ca_pem,
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the certificate and key into `dir` and loads them as the server would.
    pub fn files(&self, dir: &std::path::Path) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.cert, &self.cert_pem).unwrap();
        std::fs::write(&files.key, &self.key_pem).unwrap();
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).unwrap();
        files
    }
}

pub fn task(n: usize) -> TaskSpec {
    let item = |i: usize| pb::WorkItem {
        item_id: i.to_string(),
        payload: Some(pb::work_item::Payload::Generate(pb::GenerateItem {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: format!("q{i}"),
            }],
            system: String::new(),
        })),
    };
    TaskSpec {
        name: "step1".into(),
        template: pb::Lease::default(),
        items: (0..n).map(item).collect(),
    }
}

/// A fleet of `n` items served on 127.0.0.1 (TLS if given) with `limits`.
pub async fn start(n: usize, tls: Option<ServerTls>, limits: Limits) -> (Fleet, ServerHandle) {
    start_task(task(n), tls, limits).await
}

/// A fleet of `task` served on 127.0.0.1 (TLS if given) with `limits`.
pub async fn start_task(
    task: TaskSpec,
    tls: Option<ServerTls>,
    limits: Limits,
) -> (Fleet, ServerHandle) {
    start_with(task, tls, limits, SchedConfig::default()).await
}

/// [`start_task`] with the scheduler settings `sched`.
pub async fn start_with(
    task: TaskSpec,
    tls: Option<ServerTls>,
    limits: Limits,
    sched: SchedConfig,
) -> (Fleet, ServerHandle) {
    let opts = FleetOptions {
        job_id: "test".into(),
        limits,
        sched: sched.clone(),
        ..Default::default()
    };
    let mut sched = Scheduler::new(sched);
    sched.add_task(task).unwrap();
    let fleet = Fleet::new(opts, sched);
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = fleet
        .serve_on(vec![Listener { socket, tls }], TOKEN)
        .unwrap();
    (fleet, server)
}

/// A plain channel to `server`, from `from` (a loopback address other than 127.0.0.1 makes
/// another client address).
pub async fn plain_channel(
    server: &ServerHandle,
    from: Option<IpAddr>,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .local_address(from)
        .connect()
        .await
}

/// A TLS channel to `server` trusting `ca_pem`.
pub async fn tls_channel(
    server: &ServerHandle,
    ca_pem: &str,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

pub fn msg(m: Up) -> pb::WorkerMessage {
    pb::WorkerMessage { msg: Some(m) }
}

pub fn hello() -> pb::WorkerMessage {
    hello_speaking(PROTOCOL_VERSION)
}

/// A `Hello` claiming protocol `version`.
pub fn hello_speaking(version: u32) -> pb::WorkerMessage {
    msg(Up::Hello(pb::Hello {
        protocol_version: version,
        worker_id: "t".into(),
        ..Default::default()
    }))
}

pub type Opened = (
    mpsc::Sender<pb::WorkerMessage>,
    Streaming<pb::CoordinatorMessage>,
);

/// Opens a fleet stream on `channel` with `token` (None: no authorization header), sending
/// `first`.
pub async fn open(
    channel: Channel,
    token: Option<&str>,
    first: pb::WorkerMessage,
) -> Result<Opened, tonic::Status> {
    let header = token.map(|t| {
        format!("Bearer {t}")
            .parse::<tonic::metadata::MetadataValue<_>>()
            .unwrap()
    });
    let mut client = FleetClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    });
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

pub async fn next(inbound: &mut Streaming<pb::CoordinatorMessage>) -> Down {
    let m = tokio::time::timeout(Duration::from_secs(30), inbound.message())
        .await
        .expect("no reply in 30 s");
    m.unwrap().expect("stream ended").msg.unwrap()
}

/// A well-behaved worker on `channel`: leases until Shutdown; returns the item ids it answered.
pub async fn work(channel: Channel) -> Vec<String> {
    let (tx, mut inbound) = open(channel, Some(TOKEN), hello()).await.unwrap();
    let Down::Welcome(_) = next(&mut inbound).await else {
        panic!("expected Welcome")
    };
    let mut answered = Vec::new();
    loop {
        tx.send(msg(Up::LeaseRequest(pb::LeaseRequest { max_items: 4 })))
            .await
            .unwrap();
        match next(&mut inbound).await {
            Down::Lease(lease) => {
                for item in &lease.items {
                    answered.push(item.item_id.clone());
                    let result = pb::ItemResult {
                        lease_id: lease.lease_id,
                        item_id: item.item_id.clone(),
                        outcome: Some(pb::item_result::Outcome::Generate(pb::GenerateResult {
                            predict: format!("p{}", item.item_id),
                            ..Default::default()
                        })),
                    };
                    tx.send(msg(Up::Result(result))).await.unwrap();
                }
                tx.send(msg(Up::LeaseDone(pb::LeaseDone {
                    lease_id: lease.lease_id,
                    stopping: false,
                })))
                .await
                .unwrap();
            }
            Down::NoWork(n) => {
                tokio::time::sleep(Duration::from_millis(n.retry_after_ms)).await;
            }
            Down::Shutdown(_) => return answered,
            other => panic!("unexpected {other:?}"),
        }
    }
}
