//! The fleet over TLS, with certificates made in the test (rcgen): a worker that trusts the CA
//! finishes a job; a plain-text client on the TLS port and a client trusting another CA are
//! refused; a refused token is logged without its value.

mod rpc_client;

use std::io::Write;
use std::sync::{Arc, Mutex};

use evalfleet::rpc::limits::Limits;
use evalfleet::rpc::tls::ServerTls;
use pb::coordinator_message::Msg as Down;
use rpc_client::{TOKEN, TestPki, hello, next, open, plain_channel, start, tls_channel, work};
use tonic::Code;

use evalfleet_proto::v1 as pb;

async fn tls_fleet(
    n: usize,
    pki: &TestPki,
) -> (evalfleet::rpc::Fleet, evalfleet::rpc::ServerHandle) {
    let dir = tempfile::tempdir().unwrap();
    let tls = ServerTls::load(&pki.files(dir.path())).unwrap();
    start(n, Some(tls), Limits::default()).await
}

/// The error and its sources, for matching a cause buried in a transport error.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[tokio::test]
async fn a_worker_over_tls_completes_a_job() {
    let pki = TestPki::new("good");
    let (fleet, server) = tls_fleet(7, &pki).await;
    let channel = tls_channel(&server, &pki.ca_pem).await.unwrap();
    let mut answered = work(channel).await;
    answered.sort_by_key(|id| id.parse::<u32>().unwrap());
    assert_eq!(answered, ["0", "1", "2", "3", "4", "5", "6"]);
    let done = fleet.wait_complete().await;
    assert_eq!((done.done, done.failed, done.total), (7, 0, 7));
    server.stop();
}

#[tokio::test]
async fn a_plain_text_client_on_the_tls_port_is_refused() {
    let pki = TestPki::new("good");
    let (fleet, server) = tls_fleet(1, &pki).await;
    let refused = match plain_channel(&server, None).await {
        Err(e) => chain(&e),
        Ok(channel) => match open(channel, Some(TOKEN), hello()).await {
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
            Ok((_tx, mut inbound)) => {
                panic!("a plain-text client got {:?}", next(&mut inbound).await)
            }
        },
    };
    assert!(!refused.is_empty());
    assert_eq!(*fleet.connected().borrow(), 0, "{refused}");
    // The TLS port still serves TLS clients afterwards.
    let channel = tls_channel(&server, &pki.ca_pem).await.unwrap();
    let (_tx, mut inbound) = open(channel, Some(TOKEN), hello()).await.unwrap();
    assert!(matches!(next(&mut inbound).await, Down::Welcome(_)));
    server.stop();
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused() {
    let pki = TestPki::new("good");
    let other = TestPki::new("other");
    let (fleet, server) = tls_fleet(1, &pki).await;
    let refused = match tls_channel(&server, &other.ca_pem).await {
        Err(e) => chain(&e),
        Ok(channel) => match open(channel, Some(TOKEN), hello()).await {
            Err(status) => format!("{status:?}"),
            Ok(_) => panic!("a client trusting another CA was served"),
        },
    };
    assert!(
        refused.to_lowercase().contains("certificate") || refused.contains("UnknownIssuer"),
        "{refused}"
    );
    assert_eq!(*fleet.connected().borrow(), 0);
    server.stop();
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Over TLS, a wrong and a missing token are refused, and the log names the peer and what was
/// wrong but never the presented (or the expected) token.
#[tokio::test]
async fn refused_tokens_are_logged_without_their_value() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // A current-thread runtime: the server's tasks log through this thread's subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let pki = TestPki::new("good");
    let (_fleet, server) = tls_fleet(1, &pki).await;
    let secret = "WRONG-secret-token-value-4711";
    for token in [Some(secret), None] {
        let channel = tls_channel(&server, &pki.ca_pem).await.unwrap();
        let err = open(channel, token, hello()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
        assert!(!err.message().contains(secret), "{}", err.message());
    }
    server.stop();
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("refused a call from 127.0.0.1")
            && text.contains("with a wrong bearer token"),
        "{text}"
    );
    assert!(text.contains("with no bearer token"), "{text}");
    assert!(
        !text.contains(secret),
        "the log shows the presented token:\n{text}"
    );
    assert!(
        !text.contains(TOKEN),
        "the log shows the expected token:\n{text}"
    );
}

/// `--listen` with `--tls-key` of another certificate: the run stops before serving, naming both
/// files.
#[tokio::test]
async fn a_fleet_with_a_mismatched_key_stops_naming_the_files() {
    use evalfleet::rpc::FleetOptions;
    use evalfleet::run::{FleetSetup, run_fleet};
    let dir = tempfile::tempdir().unwrap();
    let files = TestPki::new("a").files(dir.path());
    std::fs::write(&files.key, TestPki::new("b").key_pem).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let setup = FleetSetup {
        workers: Some(0),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        token_file: Some(token_file),
        options: FleetOptions {
            tls: Some(files),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = run_fleet(vec![rpc_client::task(1)], &setup, "tls")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.key") && err.contains("server.pem") && err.contains("does not match"),
        "{err}"
    );
}
