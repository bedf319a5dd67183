//! End to end: the `evalfleet` binary runs step 2 from a YAML with the seed's step2.yaml keys on
//! a copy of the seed's step-1 output (three rows), spawning real `evalfleet-worker` processes
//! that load all-MiniLM-L6-v2 (`$EVALFLEET_MODELS/all-minilm-l6-v2`, from
//! scripts/fetch-models.sh). Checks the files PROTOCOL 2 describes, and that 2 workers give
//! exactly the scores of 1 worker.

mod fleet_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_common::{evalfleet_bin, repo, worker_bin};
use serde_json::Value;

/// The all-MiniLM-L6-v2 sentence-transformers folder; fails saying how to get it.
fn minilm() -> PathBuf {
    let models = std::env::var_os("EVALFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".models"));
    let dir = models.join("all-minilm-l6-v2");
    assert!(
        dir.join("modules.json").is_file(),
        "{} is missing: run scripts/fetch-models.sh (or set EVALFLEET_MODELS)",
        dir.display()
    );
    dir
}

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
