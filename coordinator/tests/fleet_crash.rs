//! A local worker dying in the middle of a lease (the worker's EVALFLEET_TEST_CRASH_ONCE test
//! hook makes exactly one worker exit at its result for item 7): the other workers finish the job
//! and the predictions equal those of one worker that never crashed.
//!
//! The hook is an environment variable, which the spawned workers inherit from this process; so
//! this is the only test in its binary, and it sets the variable before any other thread exists.

mod fleet_common;

use evalfleet::run::run_fleet;
use fleet_common::{predictions, reference, setup, task};

#[test]
fn worker_dying_mid_lease_is_replaced_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let model = fleet_common::tiny_chat_model(dir.path());
    let marker = dir.path().join("crashed");
    fleet_common::require_test_hooks();
    // SAFETY: the only test of this binary, and no other thread has been started yet.
    unsafe {
        std::env::set_var(
            "EVALFLEET_TEST_CRASH_ONCE",
            format!("{}:7", marker.display()),
        )
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let run = run_fleet(vec![task(&model, 20)], &setup(3, &[]), "test")
            .await
            .unwrap();
        assert!(
            marker.exists(),
            "no worker crashed, so the test proved nothing"
        );
        // The marker now exists, so the reference worker runs without crashing.
        let want = reference(&model, 20).await;
        assert_eq!(predictions(&run.outcomes[0]), want);
    });
}
