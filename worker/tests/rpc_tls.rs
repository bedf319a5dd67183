//! The worker's own fleet client over TLS against a real coordinator server: with `--tls-ca`
//! naming the CA that signed the coordinator's certificate (made here with rcgen) it finishes the
//! job; trusting another CA, it is refused with a certificate error.

use std::time::Duration;

use evalfleet::rpc::tls::{ServerTls, TlsFiles};
use evalfleet::rpc::{Fleet, FleetOptions, Listener, ServerHandle};
use evalfleet::sched::{SchedConfig, Scheduler, TaskSpec};
use evalfleet_proto::v1 as pb;
use evalfleet_worker::rpc::{self, LeaseRunner, RpcError, WorkerOptions};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

const TOKEN: &str = "tls-test-token";

/// Answers every generate item with "p<id>".
struct Echo;

impl LeaseRunner for Echo {
    fn run_lease(
        &mut self,
        lease: &pb::Lease,
        emit: &mut dyn FnMut(pb::ItemResult),
    ) -> evalfleet_worker::Result<()> {
        for item in &lease.items {
            emit(pb::ItemResult {
                lease_id: lease.lease_id,
                item_id: item.item_id.clone(),
                outcome: Some(pb::item_result::Outcome::Generate(pb::GenerateResult {
                    predict: format!("p{}", item.item_id),
                    ..Default::default()
                })),
            });
        }
        Ok(())
    }
}

/// Writes a CA (`ca.pem`) and a server certificate and key it signed into `dir`.
fn make_pki(dir: &std::path::Path) -> TlsFiles {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

async fn tls_fleet(n: usize, files: &TlsFiles) -> (Fleet, ServerHandle) {
    let items = (0..n)
        .map(|i| pb::WorkItem {
            item_id: i.to_string(),
            payload: Some(pb::work_item::Payload::Generate(pb::GenerateItem::default())),
        })
        .collect();
    let mut sched = Scheduler::new(SchedConfig::default());
    sched
        .add_task(TaskSpec {
            name: "step1".into(),
            template: pb::Lease::default(),
            items,
        })
        .unwrap();
    let fleet = Fleet::new(FleetOptions::default(), sched);
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = Some(ServerTls::load(files).unwrap());
    let server = fleet
        .serve_on(vec![Listener { socket, tls }], TOKEN)
        .unwrap();
    (fleet, server)
}

fn worker(server: &ServerHandle, ca: std::path::PathBuf) -> WorkerOptions {
    WorkerOptions {
        coordinator: format!("https://{}", server.addr),
        token: TOKEN.into(),
        worker_id: "tls-worker".into(),
        device: "cpu".into(),
        batch_size: 3,
        connect_timeout: Duration::from_secs(5),
        tls_ca: Some(ca),
    }
}

#[tokio::test]
async fn the_worker_finishes_a_job_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let files = make_pki(dir.path());
    let (fleet, server) = tls_fleet(8, &files).await;
    let stopped = rpc::run(worker(&server, dir.path().join("ca.pem")), Echo)
        .await
        .unwrap();
    assert_eq!(stopped.reason, "all work is done");
    let done = fleet.wait_complete().await;
    assert_eq!((done.done, done.failed, done.total), (8, 0, 8));
    server.stop();
}

#[tokio::test]
async fn the_worker_refuses_a_coordinator_its_ca_did_not_sign() {
    let dir = tempfile::tempdir().unwrap();
    let files = make_pki(dir.path());
    let other = tempfile::tempdir().unwrap();
    make_pki(other.path());
    let (fleet, server) = tls_fleet(1, &files).await;
    let mut opts = worker(&server, other.path().join("ca.pem"));
    opts.connect_timeout = Duration::ZERO;
    let err = rpc::run(opts, Echo).await.unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err}");
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert_eq!(fleet.with_sched(|s| s.progress()).done, 0);
    server.stop();
}
