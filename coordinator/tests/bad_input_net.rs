//! Bad fleet setups (README "Bad input"): the coordinator's port in use, a worker that cannot
//! reach its coordinator, a worker with the wrong token, a client speaking another protocol
//! version. Real `evalfleet` / `evalfleet-worker` processes on loopback; each test checks the
//! exit code or the refusal, that the message names the address, token source or both versions,
//! that nothing panicked, and that no output file was written.

mod bad_input_common;
mod fleet_common;

use std::process::{Child, Output};

use bad_input_common::{Snapshot, Step1, assert_clean_failure, evalfleet, free_port, run, worker};
use evalfleet_proto::PROTOCOL_VERSION;
use evalfleet_proto::v1 as pb;
use evalfleet_proto::v1::fleet_client::FleetClient;
use fleet_common::{listening_url, wait};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

const TOKEN: &str = "bad-input-token-5f2c";

/// Starts `evalfleet step1 --listen 127.0.0.1:<port> --workers 0` on `job` with [`TOKEN`].
fn listening(job: &Step1, port: u16) -> std::process::Command {
    let yaml = job.dir.path().join("job.yaml");
    std::fs::write(&yaml, &job.yaml).unwrap();
    let token = job.dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let addr = format!("127.0.0.1:{port}");
    evalfleet(&[
        "step1",
        yaml.to_str().unwrap(),
        "--listen",
        &addr,
        "--workers",
        "0",
        "--token-file",
        token.to_str().unwrap(),
    ])
}

/// Kills a coordinator that is still waiting for workers and returns its output.
fn stop(mut coordinator: Child) -> Output {
    let _ = coordinator.kill();
    wait(coordinator, bad_input_common::LIMIT)
}

#[test]
fn port_in_use_names_the_address() {
    let job = Step1::new();
    let before = Snapshot::of(&job.out);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = run(listening(&job, port));
    assert_clean_failure(&out, &[&format!("cannot listen on 127.0.0.1:{port}")]);
    before.assert_unchanged(&job.out);
}

#[test]
fn unreachable_coordinator_names_the_url_after_the_connect_timeout() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let out = run(worker(&[
        "--coordinator",
        &url,
        "--token-file",
        token.to_str().unwrap(),
        "--connect-timeout-s",
        "1",
    ]));
    assert_clean_failure(
        &out,
        &[&format!("could not reach the coordinator at {url}")],
    );
}

#[test]
fn wrong_token_is_refused_and_its_value_never_logged() {
    let job = Step1::new();
    let before = Snapshot::of(&job.out);
    let (coordinator, url) = listening_url(listening(&job, 0).spawn().unwrap());
    let wrong = job.dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token-91c7\n").unwrap();
    let out = run(worker(&[
        "--coordinator",
        &url,
        "--token-file",
        wrong.to_str().unwrap(),
        "--connect-timeout-s",
        "10",
    ]));
    assert_clean_failure(
        &out,
        &["refused this worker (Unauthenticated): missing or invalid bearer token"],
    );
    let coordinator = stop(coordinator);
    let log = String::from_utf8_lossy(&coordinator.stderr);
    assert!(log.contains("wrong bearer token"), "{log}");
    assert!(
        !log.contains("not-the-token-91c7"),
        "the token leaked:\n{log}"
    );
    assert!(!log.contains("panicked at"), "{log}");
    before.assert_unchanged(&job.out);
}

#[tokio::test]
async fn other_protocol_version_is_refused_naming_both_versions() {
    let job = Step1::new();
    let before = Snapshot::of(&job.out);
    let (coordinator, url) = listening_url(listening(&job, 0).spawn().unwrap());
    let theirs = PROTOCOL_VERSION + 40;
    let status = hello(&url, theirs).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    for version in [theirs, PROTOCOL_VERSION] {
        assert!(
            status.message().contains(&format!("version {version}")),
            "{}",
            status.message()
        );
    }
    let coordinator = stop(coordinator);
    let log = String::from_utf8_lossy(&coordinator.stderr);
    assert!(!log.contains("panicked at"), "{log}");
    before.assert_unchanged(&job.out);
}

/// Opens a worker stream with the right token and a Hello claiming `version`.
async fn hello(url: &str, version: u32) -> Result<(), tonic::Status> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    let mut client = FleetClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", header.clone());
        Ok(req)
    });
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = pb::Hello {
        protocol_version: version,
        worker_id: "bad-input".into(),
        ..Default::default()
    };
    tx.send(pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?;
    Ok(())
}
