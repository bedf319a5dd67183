//! End to end: the `evalfleet` binary runs step 2 from a YAML with the seed's step2.yaml keys on
//! a copy of the seed's step-1 output (three rows), spawning real `evalfleet-worker` processes
//! that load all-MiniLM-L6-v2 (`$EVALFLEET_MODELS/all-minilm-l6-v2`, from
//! scripts/fetch-models.sh). Checks the files docs/FIDELITY.md §2 describes, and that 2 workers
//! give exactly the scores of 1 worker; that a worker dying mid-run is replaced and the files come
//! out complete and as an uninterrupted run writes them; that stopping the coordinator (SIGTERM,
//! SIGKILL) during step 2 leaves the step-1 files untouched; that a broken predict_results.json
//! fails before any worker starts.

mod fleet_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use evalfleet::output::PredictionRow;
use fleet_common::{evalfleet_bin, listening_url, minilm, wait, wait_ok, worker_bin};

/// A guard against hangs only.
const LIMIT: Duration = Duration::from_secs(600);
use serde_json::Value;

/// A copy of the seed's step-1 output under `dir/name`.
fn seed_step1_copy(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_step1");
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for file in [
        "generated_predictions.jsonl",
        "predict_results.json",
        "all_results.json",
    ] {
        std::fs::copy(src.join(file), out.join(file)).unwrap();
    }
    out
}

/// Runs `evalfleet step2` on `out` with `workers` CPU workers and one pair per lease (so that
/// both workers get work, and every lease batches the same texts whatever the worker count).
fn run_step2(dir: &Path, out: &Path, workers: usize) -> String {
    let yaml = dir.join(format!("step2-{workers}.yaml"));
    std::fs::write(
        &yaml,
        format!(
            "model_path: {}\noutput_dir: {}\n",
            minilm().display(),
            out.display()
        ),
    )
    .unwrap();
    let output = Command::new(evalfleet_bin())
        .arg("step2")
        .arg(&yaml)
        .args([
            "--workers",
            &workers.to_string(),
            "--batch-size",
            "1",
            "--cpu",
        ])
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "evalfleet step2 failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The scores of `out`'s generated_predictions.jsonl, checking each line's keys and range.
fn scores(out: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(out.join("generated_predictions.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let row: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
            let keys: Vec<&str> = row.keys().map(String::as_str).collect();
            assert_eq!(keys, ["label", "predict", "score"], "{line}");
            let score = row["score"].as_f64().unwrap();
            // float32 cosine of identical texts may round a hair above 1.
            assert!((-1.0 - 1e-6..=1.0 + 1e-6).contains(&score), "{line}");
            score
        })
        .collect()
}

#[test]
fn step2_scores_seed_rows_on_two_workers_like_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let out2 = seed_step1_copy(dir.path(), "two");
    let all_before = std::fs::read(out2.join("all_results.json")).unwrap();
    let stdout = run_step2(dir.path(), &out2, 2);
    assert!(stdout.contains("wrote "), "{stdout}");

    let two = scores(&out2);
    assert_eq!(two.len(), 3);
    // Rows 0 and 2 predict their label word for word; row 1 does not.
    assert!(two[0] > 0.999 && two[2] > 0.999, "{two:?}");
    assert!(two[1] < 0.999, "{two:?}");

    let text = std::fs::read_to_string(out2.join("predict_results.json")).unwrap();
    let results: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    let (last, avg) = results.iter().next_back().unwrap();
    assert_eq!(last, "avg_sem_sim_score", "{text}");
    let mean = two.iter().sum::<f64>() / 3.0;
    assert!(
        (avg.as_f64().unwrap() - mean).abs() < 1e-6,
        "{avg} vs {mean}"
    );
    assert_eq!(
        std::fs::read(out2.join("all_results.json")).unwrap(),
        all_before,
        "all_results.json must be left as step 1 wrote it"
    );
    let dist: Value = serde_json::from_str(
        &std::fs::read_to_string(out2.join("sem_sim_distribution.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dist["count"], 3, "{dist}");
    let png = std::fs::read(out2.join("sem_sim_histogram.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG file");
    let svg = std::fs::read_to_string(out2.join("sem_sim_histogram.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{svg}");

    let out1 = seed_step1_copy(dir.path(), "one");
    run_step2(dir.path(), &out1, 1);
    assert_eq!(scores(&out1), two, "1 worker and 2 workers differ");
    assert_eq!(
        std::fs::read(out1.join("generated_predictions.jsonl")).unwrap(),
        std::fs::read(out2.join("generated_predictions.jsonl")).unwrap()
    );
}

/// A step-1 output under `dir/name` with `n` rows (the seed's three, cycled and numbered so that
/// lengths and texts vary) and the seed's predict_results.json and all_results.json.
fn step1_copy_with_rows(dir: &Path, name: &str, n: usize) -> PathBuf {
    let out = seed_step1_copy(dir, name);
    let path = out.join("generated_predictions.jsonl");
    let seed = evalfleet::output::read_generated_predictions(&path).unwrap();
    let rows: Vec<PredictionRow> = (0..n)
        .map(|i| {
            let r = &seed[i % seed.len()];
            PredictionRow {
                label: format!("{} {}", r.label, "第".repeat(i % 5)),
                predict: format!("{} ({i})", r.predict),
            }
        })
        .collect();
    std::fs::write(&path, evalfleet::output::generated_predictions_jsonl(&rows)).unwrap();
    out
}

/// The item id that `queue_order` puts at `position` for the rows of `out`.
fn item_at(out: &Path, position: usize) -> String {
    let rows =
        evalfleet::output::read_generated_predictions(&out.join("generated_predictions.jsonl"))
            .unwrap();
    evalfleet::step2::plan::queue_order(&rows)[position].to_string()
}

/// `evalfleet step2` on `out` with a YAML written under `dir`, one pair per lease, as a command
/// to spawn (stdout and stderr piped).
fn step2_command(dir: &Path, out: &Path, args: &[&str]) -> Command {
    let yaml = dir.join(format!(
        "step2-{}.yaml",
        out.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &yaml,
        format!(
            "model_path: {}\noutput_dir: {}\n",
            minilm().display(),
            out.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(evalfleet_bin());
    cmd.arg("step2")
        .arg(&yaml)
        .args(["--batch-size", "1", "--cpu"])
        .args(args)
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env_remove("EVALFLEET_TEST_CRASH_ONCE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The bytes of the files step 2 writes or must leave alone, by name.
fn snapshot(out: &Path) -> Vec<(&'static str, Option<Vec<u8>>)> {
    [
        "generated_predictions.jsonl",
        "predict_results.json",
        "all_results.json",
        "sem_sim_distribution.json",
        "sem_sim_histogram.svg",
        "sem_sim_histogram.png",
    ]
    .into_iter()
    .map(|name| (name, std::fs::read(out.join(name)).ok()))
    .collect()
}

const ROWS: usize = 12;

#[test]
fn step2_worker_dying_mid_run_is_replaced_and_the_files_are_complete() {
    let dir = tempfile::tempdir().unwrap();
    let reference = step1_copy_with_rows(dir.path(), "reference", ROWS);
    let out = wait_ok(
        step2_command(dir.path(), &reference, &["--workers", "1"])
            .spawn()
            .unwrap(),
        LIMIT,
        "evalfleet step2 (reference)",
    );
    assert!(out.status.success());

    // Two local workers; the first to produce the result of the 6th item in queue order exits
    // abruptly in the middle of its lease (the worker's crash test hook), after earlier leases'
    // results were recorded. The other worker takes over its items.
    let crashed = step1_copy_with_rows(dir.path(), "crashed", ROWS);
    let marker = dir.path().join("crash-marker");
    fleet_common::require_test_hooks();
    let crash_at = item_at(&crashed, 5);
    let out = wait_ok(
        step2_command(dir.path(), &crashed, &["--workers", "2"])
            .env(
                "EVALFLEET_TEST_CRASH_ONCE",
                format!("{}:{crash_at}", marker.display()),
            )
            .spawn()
            .unwrap(),
        LIMIT,
        "evalfleet step2 (a worker crashes)",
    );
    assert!(
        marker.exists(),
        "no worker crashed: the test proved nothing"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exited unexpectedly"), "{stderr}");
    assert_eq!(scores(&crashed).len(), ROWS);
    for ((name, got), (_, want)) in snapshot(&crashed).into_iter().zip(snapshot(&reference)) {
        assert!(got.is_some(), "{name} missing");
        assert!(got == want, "{name} differs from the uninterrupted run");
    }
}

#[test]
fn coordinator_stopped_during_step2_leaves_the_step1_files_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let token = "step2-stop-test-token";
    for signal in ["TERM", "KILL"] {
        let out = step1_copy_with_rows(dir.path(), &format!("stopped-{signal}"), ROWS);
        let before = snapshot(&out);
        // The coordinator waits for external workers; the only one that joins scores the first
        // three items in queue order, then dies at the fourth (crash test hook): step 2 is
        // certainly in progress, with results recorded, when the coordinator is stopped.
        let coordinator = step2_command(dir.path(), &out, &["--workers", "0"])
            .args(["--listen", "127.0.0.1:0"])
            .env("EVALFLEET_TOKEN", token)
            .spawn()
            .unwrap();
        let (coordinator, url) = listening_url(coordinator);
        let marker = dir.path().join(format!("marker-{signal}"));
        fleet_common::require_test_hooks();
        let worker = Command::new(worker_bin())
            .args(["--coordinator", &url, "--batch-size", "1"])
            .env("EVALFLEET_TOKEN", token)
            .env(
                "EVALFLEET_TEST_CRASH_ONCE",
                format!("{}:{}", marker.display(), item_at(&out, 3)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let worker = wait(worker, LIMIT);
        assert_eq!(
            worker.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&worker.stderr)
        );
        assert!(marker.exists());
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &coordinator.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let stopped = wait(coordinator, LIMIT);
        assert!(!stopped.status.success(), "{signal}: {stopped:?}");
        assert!(
            snapshot(&out) == before,
            "SIG{signal}: the step-1 files changed"
        );
        // A new run completes the file.
        wait_ok(
            step2_command(dir.path(), &out, &["--workers", "1"])
                .spawn()
                .unwrap(),
            LIMIT,
            "evalfleet step2 after the stop",
        );
        assert_eq!(scores(&out).len(), ROWS);
    }
}

#[test]
fn a_broken_predict_results_json_fails_before_any_worker_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = seed_step1_copy(dir.path(), "broken");
    std::fs::write(out.join("predict_results.json"), "{\"predict_bleu-4\": ").unwrap();
    let before = snapshot(&out);
    // No worker binary at all: had the check come after the fleet, the error would be that.
    let output = step2_command(dir.path(), &out, &["--workers", "1"])
        .env("EVALFLEET_WORKER_BIN", dir.path().join("no-such-worker"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("predict_results.json: line 1"), "{stderr}");
    assert!(!stderr.contains("no-such-worker"), "{stderr}");
    std::fs::remove_file(out.join("predict_results.json")).unwrap();
    let output = step2_command(dir.path(), &out, &["--workers", "1"])
        .env("EVALFLEET_WORKER_BIN", dir.path().join("no-such-worker"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run step 1 first"), "{stderr}");
    assert!(snapshot(&out)[0] == before[0]);
}
