//! Guards of a running job, with real `evalfleet` / `evalfleet-worker` processes and the tiny
//! model:
//!
//! - a worker whose runner is stuck (heartbeats still coming from its timer) loses its lease at
//!   the progress deadline, the job finishes with the other worker, and the stuck one exits;
//! - a second run on an output directory a run is using, by any path (the same, `D/x/..`, a
//!   symlink, a folder inside it), is refused naming the first one's pid, and runs once the
//!   first is gone (even killed with SIGKILL: the kernel drops its lock).
//!
//! The worker's EVALFLEET_TEST_HOLD_ONCE hook makes one worker hang at a known item and write its
//! pid into a marker file; the tests wait for the marker, never for a time.

mod fleet_common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use fleet_common::{repo, tiny_chat_model, wait};

/// Guard against hangs only; no assertion depends on it.
const LIMIT: Duration = Duration::from_secs(600);
/// Items of the job: 4 samples of each of the two demo data sets.
const ITEMS: usize = 8;

/// A step-1 YAML for the tiny model on the demo data, writing to `out`.
fn write_yaml(path: &Path, model: &Path, out: &Path) {
    let yaml = format!(
        "model_name_or_path: {model}\nstage: sft\ndo_predict: true\nfinetuning_type: lora\n\
         dataset_dir: {data}\ndataset: demo_alpaca,demo_sharegpt\ntemplate: default\n\
         cutoff_len: 40\nmax_samples: 4\noutput_dir: {out}\nper_device_eval_batch_size: 1\n\
         max_new_tokens: 4\ndo_sample: false\n",
        model = model.display(),
        data = repo().join("yamls/demo").display(),
        out = out.display(),
    );
    std::fs::write(path, yaml).unwrap();
}

/// `evalfleet step1 YAML --workers N --batch-size 1 --cpu EXTRA`, stderr to `log`; `hold` is the
/// worker hook's `MARKER:ITEM` (inherited by the spawned workers).
fn step1(yaml: &Path, workers: usize, extra: &[&str], log: &Path, hold: Option<&Path>) -> Child {
    let n = workers.to_string();
    let mut args = vec!["step1", yaml.to_str().unwrap(), "--workers", &n];
    args.extend(["--batch-size", "1", "--cpu"]);
    args.extend(extra);
    let hold = hold.map(|marker| format!("{}:3", marker.display()));
    fleet_common::spawn_logged(&args, log, hold)
}

/// Kills the process when dropped, so that a failing test leaves no coordinator running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Harmless once it was waited for: std then sends nothing.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pid the holding worker wrote into `marker`, once it is there (polled; the hang guard
/// aside, no timing is involved).
fn held_worker(marker: &Path) -> u32 {
    let started = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(started.elapsed() < LIMIT, "no worker held");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn predictions(out: &Path) -> usize {
    read(&out.join("generated_predictions.jsonl"))
        .lines()
        .count()
}

#[test]
fn a_stuck_worker_loses_its_lease_at_the_progress_deadline_and_the_job_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_chat_model(d);
    let (yaml, out, log, marker) = (
        d.join("job.yaml"),
        d.join("out"),
        d.join("log"),
        d.join("held"),
    );
    write_yaml(&yaml, &model, &out);
    // Ten seconds without a result: far longer than the tiny model needs for one.
    let run = step1(
        &yaml,
        2,
        &["--lease-progress-timeout", "10"],
        &log,
        Some(&marker),
    );
    let held = held_worker(&marker);
    let status = wait(run, LIMIT).status;
    let text = read(&log);
    assert!(status.success(), "evalfleet failed ({status}):\n{text}");
    assert_eq!(predictions(&out), ITEMS);
    assert!(
        text.contains("made no progress within the progress deadline"),
        "{text}"
    );
    // The stuck worker exited (told to stop at its next heartbeat, or by the end of the job,
    // whichever came first; fleet_rpc tests the former), its stuck thread notwithstanding.
    let started = Instant::now();
    while Path::new(&format!("/proc/{held}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{held}/stat")).unwrap_or_default();
        // A zombie has exited; only its parent's wait is missing.
        if state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the stuck worker {held} is still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `evalfleet step1` on a copy of `yaml` writing to `out`: must fail at once, naming `holder`
/// and `what` it holds. Returns its stderr.
fn refused(d: &Path, name: &str, model: &Path, out: &Path, holder: u32, held: &Path) -> String {
    let yaml = d.join(format!("{name}.yaml"));
    write_yaml(&yaml, model, out);
    let log = d.join(format!("{name}.log"));
    let status = wait(step1(&yaml, 1, &[], &log, None), LIMIT).status;
    let text = read(&log);
    assert!(!status.success(), "{name}: a second run started:\n{text}");
    assert!(
        text.contains(&format!("in use by pid {holder}")),
        "{name}: {text}"
    );
    assert!(text.contains(&held.display().to_string()), "{name}: {text}");
    assert!(!text.contains("starting 1 local worker"), "{name}: {text}");
    text
}

#[test]
fn a_second_run_on_a_directory_in_use_is_refused_by_any_path_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_chat_model(d);
    let out = d.join("out");
    let (yaml, log, marker) = (d.join("first.yaml"), d.join("first.log"), d.join("held"));
    write_yaml(&yaml, &model, &out);
    let mut first = KillOnDrop(step1(&yaml, 1, &[], &log, Some(&marker)));
    held_worker(&marker);
    let pid = first.0.id();
    std::fs::create_dir_all(out.join("x")).unwrap();
    std::os::unix::fs::symlink(&out, d.join("link")).unwrap();
    let canonical = out.canonicalize().unwrap();
    refused(d, "same", &model, &out, pid, &out);
    refused(
        d,
        "dotdot",
        &model,
        &out.join("x/.."),
        pid,
        &out.join("x/.."),
    );
    refused(d, "symlink", &model, &d.join("link"), pid, &d.join("link"));
    // A folder inside it: the first run holds the folder around it.
    let inner: PathBuf = out.join("inner");
    let said = refused(d, "inner", &model, &inner, pid, &canonical);
    assert!(said.contains("which holds"), "{said}");

    // SIGKILL: no clean-up at all, yet the lock is gone with the process.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let log2 = d.join("second.log");
    let status = wait(step1(&yaml, 1, &[], &log2, None), LIMIT).status;
    assert!(status.success(), "{}", read(&log2));
    assert_eq!(predictions(&out), ITEMS);
}
