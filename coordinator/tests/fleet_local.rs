//! Real coordinator + real `evalfleet-worker` processes on loopback, with the workers' model-free
//! echo executor: sharding over several workers, a worker dying mid-lease, all workers dying.

mod fleet_common;

use evalfleet::run::{FleetSetup, RunError, run_fleet};
use evalfleet::sched::{ItemOutcome, TaskSpec};
use evalfleet_proto::v1 as pb;

fn task(n: usize) -> TaskSpec {
    let item = |i: usize| pb::WorkItem {
        item_id: i.to_string(),
        payload: Some(pb::work_item::Payload::Generate(pb::GenerateItem {
            messages: vec![
                pb::ChatMessage {
                    role: "user".into(),
                    content: format!("question {i}"),
                },
                pb::ChatMessage {
                    role: "assistant".into(),
                    content: format!("answer {i}"),
                },
            ],
            system: String::new(),
        })),
    };
    TaskSpec {
        name: "step1".into(),
        template: pb::Lease::default(),
        items: (0..n).map(item).collect(),
    }
}

fn setup(workers: usize, extra: &[&str]) -> FleetSetup {
    let mut args = vec!["--fake-executor".to_string(), "echo".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    FleetSetup {
        workers: Some(workers),
        batch_size: Some(3),
        cpu_only: true,
        worker_bin: Some(fleet_common::worker_bin()),
        worker_args: args,
        ..Default::default()
    }
}

fn predictions(outcomes: &[ItemOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            ItemOutcome::Done(pb::item_result::Outcome::Generate(g)) => {
                format!("{}|{}", g.predict, g.label)
            }
            other => panic!("unexpected outcome {other:?}"),
        })
        .collect()
}

fn expected(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("question {i}|answer {i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_complete_every_item_in_order() {
    let run = run_fleet(vec![task(20)], &setup(2, &[]), "test")
        .await
        .unwrap();
    assert_eq!(run.outcomes.len(), 1);
    assert_eq!(predictions(&run.outcomes[0]), expected(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_dying_mid_lease_is_replaced_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("crashed");
    let crash = format!("{}:7", marker.display());
    let run = run_fleet(
        vec![task(20)],
        &setup(3, &["--fake-crash-once", &crash]),
        "test",
    )
    .await
    .unwrap();
    assert!(
        marker.exists(),
        "no worker crashed, so the test proved nothing"
    );
    assert_eq!(predictions(&run.outcomes[0]), expected(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_workers_dying_fails_with_their_last_words() {
    // Both workers fail at start (their token file does not exist), so nothing can finish.
    let bad = ["--token-file", "/nonexistent-dir/token"];
    let err = run_fleet(vec![task(4)], &setup(2, &bad), "test")
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
}
