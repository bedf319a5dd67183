//! Output that cannot be written (README "Bad input"): an output directory that cannot be
//! created, and a disk that fills up while the result files are written (simulated with the
//! `EVALFLEET_TEST_DISK_FULL` hook of `output::write_atomic`: the named file gets half its bytes,
//! then ENOSPC). Both must fail naming the path, leave earlier outputs byte-identical with no
//! partial file, and, for the full disk, keep the journal so that the next run resumes.

mod bad_input_common;
mod fleet_common;

use bad_input_common::{Snapshot, Step1, Step3, assert_clean_failure};

#[test]
fn output_directory_that_cannot_be_created_fails_before_any_work() {
    let mut job = Step1::new();
    // Permission bits do not stop root (CI runs as root): a path under a regular file cannot
    // be a directory for anyone.
    let file = job.dir.path().join("a-file");
    std::fs::write(&file, "not a directory\n").unwrap();
    let out = file.join("out");
    job.set("output_dir", &format!("output_dir: {}", out.display()));
    let stderr = job.fails_with(&[
        &format!("{}: the output directory is not writable", out.display()),
        "(expected a directory this user can create files in)",
    ]);
    // Checked before the fleet: no worker was started.
    assert!(!stderr.contains("starting 1 local worker"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory\n");
}

#[test]
fn disk_full_while_writing_leaves_no_partial_file_and_the_run_resumes() {
    let job = Step1::new();
    let before = Snapshot::of(&job.out);
    let yaml = job.dir.path().join("job.yaml");
    std::fs::write(&yaml, &job.yaml).unwrap();
    let mut cmd =
        bad_input_common::evalfleet(&["step1", yaml.to_str().unwrap(), "--workers", "1", "--cpu"]);
    fleet_common::require_test_hooks();
    cmd.env("EVALFLEET_TEST_DISK_FULL", "predict_results.json");
    let out = bad_input_common::run(cmd);
    let target = job.out.join("predict_results.json");
    assert_clean_failure(
        &out,
        &[
            &format!("{}: cannot write", target.display()),
            "(os error 28)",
        ],
    );
    before.assert_unchanged(&job.out);
    // The results are in the journal: the same command, disk freed, computes nothing again.
    let (_, rerun) = job.run(&[]);
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(rerun.status.success(), "{stderr}");
    assert!(
        stderr.contains("0 results computed in this run, 4 taken from the journal"),
        "{stderr}"
    );
    assert!(
        std::fs::read_to_string(&target)
            .unwrap()
            .starts_with("{\n    \"predict_")
    );
}

#[test]
fn step3_keeps_the_earlier_results_when_its_model_fails() {
    let job = Step3::new();
    // Every item fails on the worker: the step fails after its fleet ran, with the earlier
    // results/ files of <save_dir>/mmlu still there, unchanged.
    let config = job.dir.path().join("tiny-llama-chat/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json.as_object_mut().unwrap().remove("architectures");
    std::fs::write(&config, json.to_string()).unwrap();
    let stderr = job.fails_with(&["3 items failed:", "missing `architectures`"]);
    assert!(stderr.contains("starting 1 local worker"), "{stderr}");
}
