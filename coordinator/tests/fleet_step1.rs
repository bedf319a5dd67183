//! End to end: the `evalfleet` binary runs step 1 from a YAML with the seed's step1.yaml keys,
//! spawning real `evalfleet-worker` processes that run a real (tiny, random-weight, f32) llama
//! checkpoint on the repo's demo data; every output file is checked for its keys and format, and
//! predictions must be byte-identical whatever the number of workers and the batch size (greedy
//! and seeded sampling). Also: external workers joining a `--listen` coordinator, and one with a
//! wrong token being refused.

mod fleet_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fleet_common::{evalfleet_bin, listening_url, repo, wait, wait_ok, worker_bin};

/// Samples per demo dataset (two datasets).
const SAMPLES: usize = 4;
use serde_json::Value;

/// A step-1 YAML with the seed's keys (no adapter: the tiny model has none), for the tiny model
/// built under `dir`. Its 64 positions bound the prompt (`cutoff_len`) plus the new tokens.
fn write_yaml(dir: &Path, out: &Path, sampling: bool) -> PathBuf {
    let model = dir.join("tiny-llama-chat");
    if !model.is_dir() {
        fleet_common::tiny_chat_model(dir);
    }
    let yaml = format!(
        "### model\nmodel_name_or_path: {model}\n\n### method\nstage: sft\ndo_predict: true\nfinetuning_type: lora\n\n\
         ### dataset\ndataset_dir: {data}\ndataset: demo_alpaca,demo_sharegpt\ntemplate: default\ncutoff_len: 40\n\
         max_samples: {samples}\noverwrite_cache: True\npreprocessing_num_workers: 16\n\n\
         ### output\noutput_dir: {out}\noverwrite_output_dir: True\n\n\
         ### eval\nper_device_eval_batch_size: 1\npredict_with_generate: True\n\n\
         max_new_tokens: 8\ndo_sample: {sampling}\n",
        model = model.display(),
        samples = SAMPLES,
        data = repo().join("yamls/demo").display(),
        out = out.display(),
    );
    let path = dir.join(format!("step1-{sampling}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn evalfleet(args: &[&str]) -> Command {
    let mut cmd = Command::new(evalfleet_bin());
    cmd.args(args)
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env_remove("EVALFLEET_TEST_CRASH_ONCE");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run_step1(yaml: &Path, workers: usize, batch: usize) -> Output {
    let (w, b) = (workers.to_string(), batch.to_string());
    let child = evalfleet(&[
        "step1",
        yaml.to_str().unwrap(),
        "--workers",
        &w,
        "--batch-size",
        &b,
    ])
    .spawn()
    .unwrap();
    wait_ok(child, Duration::from_secs(1200), "evalfleet step1")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const METRIC_KEYS: [&str; 10] = [
    "predict_bleu-4",
    "predict_rouge-1",
    "predict_rouge-1-precision",
    "predict_rouge-1-recall",
    "predict_rouge-2",
    "predict_rouge-2-precision",
    "predict_rouge-2-recall",
    "predict_rouge-l",
    "predict_rouge-l-precision",
    "predict_rouge-l-recall",
];
const SPEED_KEYS: [&str; 3] = [
    "predict_runtime",
    "predict_samples_per_second",
    "predict_steps_per_second",
];

/// A predict_results.json-style file: indent 4, sorted keys, no trailing newline, the given keys.
fn check_metrics_file(path: &Path, keys: &[&str]) -> serde_json::Map<String, Value> {
    let text = read(path);
    assert!(
        text.starts_with("{\n    \"predict_") && text.ends_with("\n}"),
        "{}: layout\n{text}",
        path.display()
    );
    let map: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    let got: Vec<&str> = map.keys().map(String::as_str).collect();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(
        got,
        want,
        "{}: keys (in file order, which must be sorted)",
        path.display()
    );
    for (k, v) in &map {
        let x = v.as_f64().unwrap_or_else(|| panic!("{k} is not a number"));
        assert!(x.is_finite() && x >= 0.0, "{k} = {x}");
        if k.contains("rouge") || k.contains("bleu") {
            assert!(x <= 100.0, "{k} = {x}");
        }
    }
    map
}

#[test]
fn step1_with_two_workers_writes_every_file_in_the_original_format() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let yaml = write_yaml(dir.path(), &out, false);
    let run = run_step1(&yaml, 2, 1);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("generated_predictions.jsonl"), "{stdout}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("overwrite_cache"),
        "ignored keys are not logged:\n{stderr}"
    );

    // generated_predictions.jsonl: one compact object per sample, "label" then "predict",
    // joined by "\n" without a trailing newline; labels are the datasets' responses.
    let jsonl = read(&out.join("generated_predictions.jsonl"));
    assert!(!jsonl.ends_with('\n'));
    let lines: Vec<&str> = jsonl.split('\n').collect();
    assert_eq!(
        lines.len(),
        2 * SAMPLES,
        "{SAMPLES} samples from each of the 2 demo datasets:\n{jsonl}"
    );
    for line in &lines {
        assert!(
            line.starts_with("{\"label\": \"") && line.contains("\", \"predict\": \""),
            "{line}"
        );
        let row: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        assert_eq!(row.keys().collect::<Vec<_>>(), ["label", "predict"]);
        assert!(row["label"].as_str().is_some_and(|l| !l.is_empty()) && row["predict"].is_string());
    }
    let all_keys: Vec<&str> = METRIC_KEYS.iter().chain(&SPEED_KEYS).copied().collect();
    let predict = check_metrics_file(&out.join("predict_results.json"), &all_keys);
    let all = check_metrics_file(&out.join("all_results.json"), &all_keys);
    assert_eq!(predict, all);

    // `score text` recomputes the metrics from the saved strings, without a model.
    let scored = dir.path().join("scored.json");
    let jsonl_path = out.join("generated_predictions.jsonl");
    let child = evalfleet(&[
        "score",
        "text",
        jsonl_path.to_str().unwrap(),
        "--write",
        scored.to_str().unwrap(),
    ])
    .spawn()
    .unwrap();
    let score = wait_ok(
        child,
        Duration::from_secs(300),
        "evalfleet score text --write",
    );
    let printed: serde_json::Map<String, Value> = serde_json::from_slice(&score.stdout).unwrap();
    let written = check_metrics_file(&scored, &METRIC_KEYS);
    assert_eq!(printed, written);
    for key in METRIC_KEYS {
        let (a, b) = (
            written[key].as_f64().unwrap(),
            predict[key].as_f64().unwrap(),
        );
        // Equal unless the tokenizer's clean-up changed a saved prediction's spacing.
        assert!((a - b).abs() < 5.0, "{key}: score text {a} vs step1 {b}");
    }
}

/// One worker with batch size 1 vs three workers and/or batch size 8: neither the fleet nor the
/// batching may change a prediction, greedy or seeded sampling. The model is f32, where batched
/// and single-row arithmetic agree exactly, so the files must be byte-identical.
#[test]
fn predictions_do_not_depend_on_workers_or_batch_size() {
    for sampling in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let run = |workers: usize, batch: usize| {
            let out = dir.path().join(format!("w{workers}-b{batch}"));
            run_step1(&write_yaml(dir.path(), &out, sampling), workers, batch);
            read(&out.join("generated_predictions.jsonl"))
        };
        let base = run(1, 1);
        assert_eq!(base.lines().count(), 2 * SAMPLES);
        for (workers, batch) in [(3, 1), (1, 8), (3, 8)] {
            assert_eq!(
                run(workers, batch),
                base,
                "do_sample={sampling}: {workers} workers with batch {batch} vs 1 worker with batch 1"
            );
        }
    }
}

/// Starts `evalfleet step1 --listen 127.0.0.1:0 --workers 0` and returns it with its URL.
fn listening_coordinator(yaml: &Path, token: &str) -> (Child, String) {
    let child = evalfleet(&[
        "step1",
        yaml.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "0",
    ])
    .env("EVALFLEET_TOKEN", token)
    .spawn()
    .unwrap();
    listening_url(child)
}

fn external_worker(url: &str, token: &str) -> Command {
    let mut cmd = Command::new(worker_bin());
    cmd.args(["--coordinator", url])
        .env("EVALFLEET_TOKEN", token);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn external_workers_join_a_listening_coordinator_and_a_wrong_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let yaml = write_yaml(dir.path(), &out, false);
    // The job's batch size reaches external workers with each lease (they have no YAML).
    let mut text = read(&yaml);
    text.push_str("batch_size: 3\n");
    std::fs::write(&yaml, text).unwrap();
    let (coordinator, url) = listening_coordinator(&yaml, "right-token-for-step1");

    let intruder = wait(
        external_worker(&url, "wrong-token-for-step1")
            .spawn()
            .unwrap(),
        Duration::from_secs(120),
    );
    let said = String::from_utf8_lossy(&intruder.stderr);
    assert!(!intruder.status.success());
    assert!(
        said.contains("refused") && said.contains("Unauthenticated"),
        "{said}"
    );

    let worker = wait_ok(
        external_worker(&url, "right-token-for-step1")
            .spawn()
            .unwrap(),
        Duration::from_secs(300),
        "the external worker",
    );
    // 8 items in leases of the YAML's 3 (the worker's own default would take all 8 at once).
    let log = String::from_utf8_lossy(&worker.stderr);
    let sizes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lease done"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("items=")))
        .collect();
    assert_eq!(sizes, ["items=3", "items=3", "items=2"], "{log}");
    wait_ok(
        coordinator,
        Duration::from_secs(300),
        "the listening coordinator",
    );
    let jsonl = read(&out.join("generated_predictions.jsonl"));
    assert_eq!(jsonl.lines().count(), 2 * SAMPLES);
}

#[test]
fn listen_without_a_token_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = write_yaml(dir.path(), &dir.path().join("out"), false);
    let child = evalfleet(&[
        "step1",
        yaml.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "0",
    ])
    .env_remove("EVALFLEET_TOKEN")
    .spawn()
    .unwrap();
    let out = wait(child, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no bearer token"));
}

/// `score text` on the original tool's own three rows (with step 2's extra `score` key) gives the
/// means it stored in its predict_results.json, to the last digit.
#[test]
fn score_text_reproduces_the_seed_means() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("generated_predictions.jsonl");
    let rows = [
        r#"{"label": "我工作一年。你看我现在有工作吗？", "predict": "我工作一年。你看我现在有工作吗？", "score": 0.9999998807907104}"#,
        r#"{"label": "那现在我上哪去找工作嘞？公司都没有了。", "predict": "我被公司开除了。", "score": 0.5538597702980042}"#,
        r#"{"label": "我自己在想办法解决。你是做什么的？你们是哪个公司啊？", "predict": "我自己在想办法解决。你是做什么的？你们是哪个公司啊？", "score": 1.0}"#,
    ];
    std::fs::write(&jsonl, rows.join("\n")).unwrap();
    let child = evalfleet(&["score", "text", jsonl.to_str().unwrap()])
        .spawn()
        .unwrap();
    let out = wait_ok(child, Duration::from_secs(300), "evalfleet score text");
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "\"predict_bleu-4\": 68.05863333333333,",
        "\"predict_rouge-1\": 79.36506666666666,",
        "\"predict_rouge-2\": 70.17543333333333,",
        "\"predict_rouge-l\": 79.36506666666666,",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}
