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

/// A worker stream to `server` after its Welcome.
async fn joined(server: &ServerHandle) -> rpc_client::Opened {
    let (tx, mut inbound) = open(server, Some(TOKEN), hello(PROTOCOL_VERSION))
        .await
        .unwrap();
    assert!(matches!(next(&mut inbound).await, Down::Welcome(_)));
    (tx, inbound)
}

/// Asks for a lease of up to `n` items; returns the answer. Being a round trip, it also proves
/// that everything sent before it on this stream was handled.
async fn ask(opened: &mut rpc_client::Opened, n: u32) -> Down {
    opened
        .0
        .send(msg(Up::LeaseRequest(pb::LeaseRequest { max_items: n })))
        .await
        .unwrap();
    next(&mut opened.1).await
}

fn leased(down: Down) -> pb::Lease {
    match down {
        Down::Lease(lease) => lease,
        other => panic!("expected a lease, got {other:?}"),
    }
}

fn result(lease: u64, item: &str, outcome: pb::item_result::Outcome) -> pb::WorkerMessage {
    msg(Up::Result(pb::ItemResult {
        lease_id: lease,
        item_id: item.into(),
        outcome: Some(outcome),
    }))
}

fn generated(text: &str) -> pb::item_result::Outcome {
    pb::item_result::Outcome::Generate(pb::GenerateResult {
        predict: text.into(),
        ..Default::default()
    })
}

/// Every item's `predict`, in item order (panics on an unfinished or failed item).
fn predicts(fleet: &Fleet) -> Vec<String> {
    fleet.with_sched(|s| {
        s.outcomes(0)
            .iter()
            .map(|o| match o {
                Some(ItemOutcome::Done(pb::item_result::Outcome::Generate(g))) => g.predict.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    })
}

/// Results count only for an item of the lease they name, from the worker holding it: a buggy
/// worker cannot fill items it was never given, nor answer or end another worker's lease.
#[tokio::test]
async fn a_worker_cannot_answer_items_outside_its_lease_nor_end_another_workers_lease() {
    let (fleet, server) = start(4).await;
    let mut honest = joined(&server).await;
    let mut buggy = joined(&server).await;
    let a = leased(ask(&mut honest, 2).await);
    let b = leased(ask(&mut buggy, 1).await);
    // At most three of the four items are leased: at least one is free.
    let free = (0..4)
        .map(|i| i.to_string())
        .find(|i| !a.items.iter().chain(&b.items).any(|it| &it.item_id == i))
        .unwrap();
    // The buggy worker answers an item never leased, the honest worker's items, and ends the
    // honest worker's lease (which would requeue its items with an attempt counted).
    let forged = [
        result(b.lease_id, &free, generated("garbage")),
        result(a.lease_id, &a.items[0].item_id, generated("garbage")),
    ];
    for m in forged {
        buggy.0.send(m).await.unwrap();
    }
    let done = msg(Up::LeaseDone(pb::LeaseDone {
        lease_id: a.lease_id,
        stopping: false,
    }));
    buggy.0.send(done).await.unwrap();
    // A round trip: the messages above were handled. The forged ones changed nothing.
    assert!(matches!(ask(&mut buggy, 1).await, Down::Lease(_)));
    assert_eq!(fleet.with_sched(|s| s.progress().done), 0);
    assert_eq!(fleet.with_sched(|s| s.active_leases()), 3);
    for item in &a.items {
        let text = format!("p{}", item.item_id);
        honest
            .0
            .send(result(a.lease_id, &item.item_id, generated(&text)))
            .await
            .unwrap();
    }
    ask(&mut honest, 1).await;
    assert_eq!(fleet.with_sched(|s| s.progress().done), a.items.len());
    drop(buggy);
    drop(honest);
    // The rest by a well-behaved worker (the buggy worker's leases went back when it left).
    rpc_client::work(channel(&server).await).await;
    assert_eq!(predicts(&fleet), ["p0", "p1", "p2", "p3"]);
    server.stop();
}

/// A step-3 style task: `n` questions of four choices.
fn choice_task(n: usize) -> evalfleet::sched::TaskSpec {
    let item = |i: usize| pb::WorkItem {
        item_id: i.to_string(),
        payload: Some(pb::work_item::Payload::Choice(pb::ChoiceItem {
            choice_texts: ["A", "B", "C", "D"].map(String::from).to_vec(),
            ..Default::default()
        })),
    };
    evalfleet::sched::TaskSpec {
        name: "step3".into(),
        template: pb::Lease::default(),
        items: (0..n).map(item).collect(),
    }
}

fn probabilities(p: &[f32]) -> pb::item_result::Outcome {
    pb::item_result::Outcome::Choice(pb::ChoiceResult {
        probabilities: p.to_vec(),
        prompt_tokens: 1,
    })
}

/// Results that do not fit their item are refused at arrival (never handed to the journal),
/// their items leased again, and the worker that sent them stopped after too many; the job
/// finishes with good results from another worker.
#[tokio::test]
async fn invalid_results_are_refused_on_arrival_and_their_sender_stopped() {
    let (fleet, server) = rpc_client::start_task(choice_task(4), None, Limits::default()).await;
    let (kept_tx, kept) = std::sync::mpsc::channel();
    fleet.set_result_sink(Box::new(move |_task, r| {
        let _ = kept_tx.send(r);
    }));
    let mut buggy = joined(&server).await;
    let lease = leased(ask(&mut buggy, 4).await);
    assert_eq!(lease.items.len(), 4);
    let bad = [
        probabilities(&[0.5, 0.25, 0.25]),
        probabilities(&[f32::NAN, 0.0, 0.0, 1.0]),
        probabilities(&[f32::INFINITY, 0.0, 0.0, 0.0]),
        generated("a generate result for a choice item"),
    ];
    // Ten refused results (the default limit): each of the four kinds, over and over.
    for k in 0..10 {
        let item = &lease.items[k % 4].item_id;
        let m = result(lease.lease_id, item, bad[k % 4].clone());
        buggy.0.send(m).await.unwrap();
    }
    match ask(&mut buggy, 4).await {
        Down::Shutdown(s) => assert!(s.reason.contains("refused results"), "{}", s.reason),
        other => panic!("a worker past the limit got {other:?}"),
    }
    assert_eq!(fleet.with_sched(|s| s.progress().done), 0);
    assert!(
        kept.try_recv().is_err(),
        "a refused result reached the journal"
    );
    // Another worker gets every item again and its results are kept.
    let mut good = joined(&server).await;
    let mut answered = 0;
    loop {
        match ask(&mut good, 4).await {
            Down::Lease(again) => {
                for item in &again.items {
                    let p = probabilities(&[0.1, 0.2, 0.3, 0.4]);
                    good.0
                        .send(result(again.lease_id, &item.item_id, p))
                        .await
                        .unwrap();
                    answered += 1;
                }
            }
            Down::Shutdown(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(answered, 4, "every item was leased again");
    let outcomes = fleet.with_sched(|s| s.outcomes(0).to_vec());
    for o in outcomes {
        assert_eq!(
            o,
            Some(ItemOutcome::Done(probabilities(&[0.1, 0.2, 0.3, 0.4])))
        );
    }
    assert_eq!(kept.try_iter().count(), 4);
    server.stop();
}

/// A worker whose heartbeats keep coming but whose lease makes no progress loses the lease at
/// the progress deadline and is told to stop at its next heartbeat; its items are leased again.
#[tokio::test]
async fn a_lease_without_progress_is_taken_back_and_its_worker_told_to_stop() {
    let sched = evalfleet::sched::SchedConfig {
        lease_progress_timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let (fleet, server) =
        rpc_client::start_with(rpc_client::task(2), None, Limits::default(), sched).await;
    let mut stuck = joined(&server).await;
    let lease = leased(ask(&mut stuck, 2).await);
    let beat = msg(Up::Heartbeat(pb::Heartbeat {
        active_leases: vec![lease.lease_id],
    }));
    // Heartbeats only: the reply comes once the lease is taken back (polled; the limit is a
    // guard against hangs only).
    let started = std::time::Instant::now();
    let reason = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never told to stop"
        );
        stuck.0.send(beat.clone()).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_millis(100), stuck.1.message()).await;
        if let Ok(m) = reply {
            match m.unwrap().and_then(|m| m.msg) {
                Some(Down::Shutdown(s)) => break s.reason,
                other => panic!("{other:?}"),
            }
        }
    };
    assert!(reason.contains("made no progress"), "{reason}");
    assert_eq!(fleet.with_sched(|s| s.active_leases()), 0);
    drop(stuck);
    rpc_client::work(channel(&server).await).await;
    assert_eq!(predicts(&fleet), ["p0", "p1"]);
    server.stop();
}
