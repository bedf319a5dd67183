//! A real coordinator server and real gRPC clients over loopback: authentication, the version
//! handshake, the token-free health service, and one worker's full lease cycle.

use std::time::Duration;

use evalfleet::rpc::limits::Limits;
use evalfleet::rpc::{Fleet, ServerHandle};
use evalfleet::sched::ItemOutcome;
use evalfleet_proto::PROTOCOL_VERSION;
use evalfleet_proto::v1 as pb;
use pb::coordinator_message::Msg as Down;
use pb::worker_message::Msg as Up;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

mod rpc_client;
use rpc_client::{TOKEN, hello_speaking as hello, msg, next};

/// A fleet of `n` items served on 127.0.0.1 with the default limits.
async fn start(n: usize) -> (Fleet, ServerHandle) {
    rpc_client::start(n, None, Limits::default()).await
}

async fn channel(server: &ServerHandle) -> Channel {
    rpc_client::plain_channel(server, None).await.unwrap()
}

/// Opens a stream to `server` with `token` (None: no authorization header) and sends `first`.
async fn open(
    server: &ServerHandle,
    token: Option<&str>,
    first: pb::WorkerMessage,
) -> Result<rpc_client::Opened, tonic::Status> {
    rpc_client::open(channel(server).await, token, first).await
}

#[tokio::test]
async fn wrong_token_is_refused() {
    let (_fleet, server) = start(1).await;
    let err = open(&server, Some("not-the-token"), hello(PROTOCOL_VERSION))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // A token that merely starts like the right one is wrong too.
    let err = open(&server, Some(&TOKEN[..10]), hello(PROTOCOL_VERSION))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    server.stop();
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_the_server_keeps_serving() {
    let (_fleet, server) = start(1).await;
    let huge = msg(Up::Hello(pb::Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_id: "x".repeat(evalfleet::rpc::MAX_WORKER_MESSAGE_BYTES + 1),
        ..Default::default()
    }));
    let err = open(&server, Some(TOKEN), huge).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    let (_tx, mut inbound) = open(&server, Some(TOKEN), hello(PROTOCOL_VERSION))
        .await
        .unwrap();
    assert!(matches!(next(&mut inbound).await, Down::Welcome(_)));
    server.stop();
}

#[tokio::test]
async fn missing_token_is_refused() {
    let (_fleet, server) = start(1).await;
    let err = open(&server, None, hello(PROTOCOL_VERSION))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    server.stop();
}

/// Kubernetes' gRPC probes send no token: the health service answers them, the Fleet service
/// still refuses a caller without one.
#[tokio::test]
async fn health_check_needs_no_token_but_fleet_still_does() {
    let (_fleet, server) = start(1).await;
    let mut health = HealthClient::new(channel(&server).await);
    for service in ["", "evalfleet.v1.Fleet"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health check of {service:?} without a token: {e}"))
            .into_inner();
        assert_eq!(
            reply.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
    let err = open(&server, None, hello(PROTOCOL_VERSION))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    server.stop();
}

/// Once the stop begins (workers told to shut down), the overall status turns NOT_SERVING.
#[tokio::test]
async fn health_turns_not_serving_when_the_stop_begins() {
    let (fleet, server) = start(1).await;
    let mut health = HealthClient::new(channel(&server).await);
    let mut updates = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = updates.message().await.unwrap().expect("watch ended");
    assert_eq!(first.status(), ServingStatus::Serving);
    fleet.shutdown_workers("test over");
    let next = tokio::time::timeout(Duration::from_secs(10), updates.message())
        .await
        .expect("no health update in 10 s")
        .unwrap()
        .expect("watch ended");
    assert_eq!(next.status(), ServingStatus::NotServing);
    server.stop();
}

#[tokio::test]
async fn protocol_version_mismatch_is_refused_naming_both_versions() {
    let (_fleet, server) = start(1).await;
    let theirs = PROTOCOL_VERSION + 1;
    let err = open(&server, Some(TOKEN), hello(theirs)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains(&format!("version {theirs}")),
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains(&format!("version {PROTOCOL_VERSION}")),
        "{}",
        err.message()
    );
    server.stop();
}

#[tokio::test]
async fn first_message_must_be_hello() {
    let (_fleet, server) = start(1).await;
    let first = msg(Up::LeaseRequest(pb::LeaseRequest { max_items: 1 }));
    let err = open(&server, Some(TOKEN), first).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    server.stop();
}

#[tokio::test]
async fn one_worker_runs_every_lease_then_is_told_to_stop() {
    let (fleet, server) = start(5).await;
    let (tx, mut inbound) = open(&server, Some(TOKEN), hello(PROTOCOL_VERSION))
        .await
        .unwrap();
    let Down::Welcome(welcome) = next(&mut inbound).await else {
        panic!("expected Welcome")
    };
    assert_eq!(
        (welcome.protocol_version, welcome.job_id.as_str()),
        (PROTOCOL_VERSION, "test")
    );
    let mut leased = Vec::new();
    // When the worker said its model was loaded for each lease (just before saying it).
    let mut ready_sent = Vec::new();
    loop {
        tx.send(msg(Up::LeaseRequest(pb::LeaseRequest { max_items: 2 })))
            .await
            .unwrap();
        match next(&mut inbound).await {
            Down::Lease(lease) => {
                assert!(lease.items.len() <= 2);
                if ready_sent.is_empty() {
                    assert_eq!(fleet.model_ready_at(), None, "no ModelReady yet");
                }
                ready_sent.push(std::time::Instant::now());
                tx.send(msg(Up::ModelReady(pb::ModelReady {
                    lease_id: lease.lease_id,
                })))
                .await
                .unwrap();
                for item in &lease.items {
                    leased.push(item.item_id.clone());
                    let result = pb::GenerateResult {
                        predict: format!("p{}", item.item_id),
                        ..Default::default()
                    };
                    let result = pb::ItemResult {
                        lease_id: lease.lease_id,
                        item_id: item.item_id.clone(),
                        outcome: Some(pb::item_result::Outcome::Generate(result)),
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
            Down::Shutdown(s) => {
                assert_eq!(s.reason, "all work is done");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(leased, ["0", "1", "2", "3", "4"]);
    // predict_runtime starts at the first ModelReady (after the first lease), and later ones do
    // not move it (the stream is handled in order, so each was seen before the next lease left).
    let ready = fleet.model_ready_at().expect("ModelReady recorded");
    assert!(ready >= ready_sent[0] && ready >= fleet.first_lease_at().unwrap());
    assert!(ready < ready_sent[1], "{} leases", ready_sent.len());
    let done = fleet.wait_complete().await;
    assert_eq!((done.done, done.failed, done.total), (5, 0, 5));
    let predicts: Vec<String> = fleet.with_sched(|s| {
        s.outcomes(0)
            .iter()
            .map(|o| match o {
                Some(ItemOutcome::Done(pb::item_result::Outcome::Generate(g))) => g.predict.clone(),
                other => panic!("unexpected outcome {other:?}"),
            })
            .collect()
    });
    assert_eq!(predicts, ["p0", "p1", "p2", "p3", "p4"]);
    server.stop();
}

#[tokio::test]
async fn disconnecting_worker_returns_its_lease_to_the_queue() {
    let (fleet, server) = start(3).await;
    let (tx, mut inbound) = open(&server, Some(TOKEN), hello(PROTOCOL_VERSION))
        .await
        .unwrap();
    let Down::Welcome(_) = next(&mut inbound).await else {
        panic!("expected Welcome")
    };
    tx.send(msg(Up::LeaseRequest(pb::LeaseRequest { max_items: 3 })))
        .await
        .unwrap();
    let Down::Lease(lease) = next(&mut inbound).await else {
        panic!("expected a lease")
    };
    assert_eq!(lease.items.len(), 3);
    assert_eq!(fleet.with_sched(|s| s.active_leases()), 1);
    // The worker dies without a word.
    drop(tx);
    drop(inbound);
    let mut connected = fleet.connected();
    tokio::time::timeout(Duration::from_secs(10), connected.wait_for(|&n| n == 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fleet.with_sched(|s| s.active_leases()), 0);
    // A second worker gets the same items.
    let (tx, mut inbound) = open(&server, Some(TOKEN), hello(PROTOCOL_VERSION))
        .await
        .unwrap();
    let Down::Welcome(_) = next(&mut inbound).await else {
        panic!("expected Welcome")
    };
    tx.send(msg(Up::LeaseRequest(pb::LeaseRequest { max_items: 8 })))
        .await
        .unwrap();
    let Down::Lease(again) = next(&mut inbound).await else {
        panic!("expected a lease")
    };
    let ids: Vec<_> = again.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(ids, ["0", "1", "2"]);
    server.stop();
}
