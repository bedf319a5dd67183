//! Tensor parallelism end to end on the CPU: the `evalfleet` binary runs step 1 on the tiny f32
//! llama (4 attention heads, 2 KV heads, so a group of 2 splits them) with
//! `tensor_parallel_size: 2`, each local worker then being one process whose 2 ranks are
//! threads (`--tp-threads 2`); greedy predictions must be byte-identical to one rank's. A size
//! that does not divide the heads fails the job with the model's message instead of hanging.

mod fleet_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fleet_common::{evalfleet_bin, repo, wait, wait_ok, worker_bin};

/// A step-1 YAML for the tiny model under `dir`, greedy, with `tensor_parallel_size` if given.
fn write_yaml(dir: &Path, out: &Path, tp: Option<usize>) -> PathBuf {
    let model = dir.join("tiny-llama-chat");
    if !model.is_dir() {
        fleet_common::tiny_chat_model(dir);
    }
    let tp_line = tp.map_or(String::new(), |k| format!("tensor_parallel_size: {k}\n"));
    let yaml = format!(
        "model_name_or_path: {model}\nstage: sft\ndo_predict: true\nfinetuning_type: lora\n\
         dataset_dir: {data}\ndataset: demo_alpaca,demo_sharegpt\ntemplate: default\n\
         cutoff_len: 40\nmax_samples: 4\noutput_dir: {out}\nper_device_eval_batch_size: 1\n\
         predict_with_generate: true\nmax_new_tokens: 8\ndo_sample: false\n{tp_line}",
        model = model.display(),
        data = repo().join("yamls/demo").display(),
        out = out.display(),
    );
    let path = dir.join(format!("step1-tp{}.yaml", tp.unwrap_or(1)));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn evalfleet(args: &[&str]) -> Command {
    let mut cmd = Command::new(evalfleet_bin());
    cmd.args(args)
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env_remove("EVALFLEET_TEST_CRASH_ONCE")
        .env_remove("EVALFLEET_TEST_HOLD_ONCE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs step 1 on the CPU with `extra` arguments; returns the predictions file and the run.
fn step1(yaml: &Path, out: &Path, extra: &[&str]) -> (String, Output) {
    let mut args = vec![
        "step1",
        yaml.to_str().unwrap(),
        "--cpu",
        "--batch-size",
        "4",
    ];
    args.extend_from_slice(extra);
    let run = wait_ok(
        evalfleet(&args).spawn().unwrap(),
        Duration::from_secs(1200),
        "evalfleet step1",
    );
    let path = out.join("generated_predictions.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (text, run)
}

#[test]
fn step1_with_two_ranks_per_worker_predicts_what_one_rank_does() {
    let dir = tempfile::tempdir().unwrap();
    let (out1, out2, out3) = (
        dir.path().join("tp1"),
        dir.path().join("tp2"),
        dir.path().join("tp2-cli"),
    );
    let (one, run1) = step1(
        &write_yaml(dir.path(), &out1, None),
        &out1,
        &["--workers", "1"],
    );
    assert!(!String::from_utf8_lossy(&run1.stderr).contains("ranks as threads"));
    // The YAML key: one worker, a group of two ranks.
    let (two, run2) = step1(
        &write_yaml(dir.path(), &out2, Some(2)),
        &out2,
        &["--workers", "1"],
    );
    let stderr = String::from_utf8_lossy(&run2.stderr);
    assert!(
        stderr.contains("tensor parallelism: 2 ranks as threads"),
        "{stderr}"
    );
    assert_eq!(one.lines().count(), 8, "{one}");
    assert_eq!(two, one, "tensor parallelism changed greedy predictions");
    // The flag, over the YAML's absence: two workers, each a group of two.
    let yaml = write_yaml(dir.path(), &out3, None);
    let args = ["--workers", "2", "--tensor-parallel-size", "2"];
    let (cli, run3) = step1(&yaml, &out3, &args);
    let stderr = String::from_utf8_lossy(&run3.stderr);
    assert_eq!(stderr.matches("2 ranks as threads").count(), 2, "{stderr}");
    assert_eq!(cli, one);
}

#[test]
fn a_group_size_that_does_not_divide_the_heads_fails_the_job_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tp3");
    let yaml = write_yaml(dir.path(), &out, Some(3));
    let child = evalfleet(&["step1", yaml.to_str().unwrap(), "--cpu", "--workers", "1"])
        .spawn()
        .unwrap();
    let run = wait(child, Duration::from_secs(600));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("has 4 attention heads, which a world size of 3 does not divide"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tiny-llama-chat"),
        "the message names the model:\n{stderr}"
    );
}
