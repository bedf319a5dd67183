//! Real coordinator + real `evalfleet-worker` processes on loopback, running the tiny random-weight
//! llama (milliseconds per token): sharding over several workers in item order, all workers dying
//! (each restarted up to its limit first).
//! A worker dying mid-lease is in fleet_crash.rs (it needs its own process environment).

mod fleet_common;

use evalfleet::run::{RunError, run_fleet};
use fleet_common::{labels, predictions, reference, setup, task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_complete_every_item_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = fleet_common::tiny_chat_model(dir.path());
    let run = run_fleet(vec![task(&model, 20)], &setup(2, &[]), "test")
        .await
        .unwrap();
    assert_eq!(run.outcomes.len(), 1);
    let got = predictions(&run.outcomes[0]);
    let got_labels: Vec<String> = got
        .iter()
        .map(|p| p.split('|').nth(1).unwrap().into())
        .collect();
    assert_eq!(got_labels, labels(20), "outcomes in item order");
    assert_eq!(got, reference(&model, 20).await, "2 workers vs 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_workers_dying_fails_with_their_last_words() {
    // Both workers fail at start (their token file does not exist), so nothing can finish.
    let bad = ["--token-file", "/nonexistent-dir/token"];
    let dir = tempfile::tempdir().unwrap();
    let model = fleet_common::tiny_chat_model(dir.path());
    // Each is started again twice (after 1 s, then 2 s), then given up.
    let mut fleet = setup(2, &bad);
    fleet.options.restarts.max_restarts = 2;
    let err = run_fleet(vec![task(&model, 4)], &fleet, "test")
        .await
        .unwrap_err();
    let RunError::AllWorkersDied(report) = &err else {
        panic!("unexpected error {err}")
    };
    assert!(
        report.contains("worker 0") && report.contains("worker 1"),
        "{report}"
    );
    assert!(report.contains("/nonexistent-dir/token"), "{report}");
    assert_eq!(
        report.matches("restarted 2 times, died 3 times").count(),
        2,
        "{report}"
    );
}
