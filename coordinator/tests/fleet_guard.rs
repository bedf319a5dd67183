//! Guards of a running job, with real `evalfleet` / `evalfleet-worker` processes and the tiny
//! model:
//!
//! - a worker whose runner is stuck (heartbeats still coming from its timer) loses its lease at
//!   the progress deadline, the job finishes with the other worker, and the stuck one exits;
//! - a second run on an output directory a run is using, by any path (the same, `D/x/..`, a
//!   symlink, a folder inside it), is refused naming the first one's pid, and runs once the
//!   first is gone (even killed with SIGKILL: the kernel drops its lock);
//! - local workers killed with SIGKILL mid-job are started again, their leases re-leased, and
//!   the job's files are those of a clean run.
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

/// The `evalfleet-worker` processes whose parent is `parent` (from /proc).
fn worker_children(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if ppid == Some(&parent.to_string())
            && state != Some("Z")
            && head.contains("(evalfleet-work")
        {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// A results file without its speed metrics (timings differ between any two runs).
fn without_speed(text: String) -> String {
    text.lines()
        .filter(|l| !l.contains("_runtime\"") && !l.contains("_per_second\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that every file `reference` holds is in `out` with the same bytes (results files
/// without their timings).
fn same_files(out: &Path, reference: &Path) {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(reference).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let (a, b) = (out.join(&name), entry.path());
        if name.ends_with("results.json") {
            assert_eq!(without_speed(read(&a)), without_speed(read(&b)), "{name}");
        } else {
            assert!(
                std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
                "{name} differs"
            );
        }
        names.push(name);
    }
    assert!(
        names.iter().any(|n| n == "generated_predictions.jsonl"),
        "{names:?}"
    );
}

#[test]
fn local_workers_killed_mid_job_are_restarted_and_the_files_match_a_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_chat_model(d);
    let (reference, out) = (d.join("reference"), d.join("out"));
    let (yaml_ref, yaml) = (d.join("ref.yaml"), d.join("job.yaml"));
    write_yaml(&yaml_ref, &model, &reference);
    write_yaml(&yaml, &model, &out);
    let log_ref = d.join("ref.log");
    let status = wait(step1(&yaml_ref, 2, &[], &log_ref, None), LIMIT).status;
    assert!(status.success(), "{}", read(&log_ref));

    // One worker hangs at item 3 holding its lease: the job cannot be done yet.
    let (log, marker) = (d.join("log"), d.join("held"));
    let mut run = KillOnDrop(step1(&yaml, 2, &[], &log, Some(&marker)));
    let held = held_worker(&marker);
    let workers = worker_children(run.0.id());
    assert_eq!(workers.len(), 2, "{workers:?}\n{}", read(&log));
    assert!(workers.contains(&held), "{workers:?} vs {held}");
    for pid in &workers {
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -9 {pid}");
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < LIMIT, "still running:\n{}", read(&log));
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = read(&log);
    assert!(status.success(), "evalfleet failed ({status}):\n{text}");
    assert_eq!(
        text.matches("exited unexpectedly").count(),
        2,
        "both workers' deaths are reported:\n{text}"
    );
    assert!(text.contains("worker 0 restarted"), "{text}");
    assert!(text.contains("worker 1 restarted"), "{text}");
    assert_eq!(predictions(&out), ITEMS);
    same_files(&out, &reference);
    // The restarted workers were told to exit with the job: none is left that dials its port.
    let url = text
        .split_once("local worker(s) on cpu, cpu (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(url, _)| url.to_string())
        .unwrap_or_else(|| panic!("no worker URL in the log:\n{text}"));
    let left: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains(&url)
        })
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "workers left running: {left:?}");
}

#[test]
fn sigterm_while_the_results_are_written_leaves_them_all_new() {
    fleet_common::require_test_hooks();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_chat_model(d);
    let (out, reference) = (d.join("out"), d.join("reference"));
    // An earlier run's files in `out` (4 new tokens), then a run with 2 new tokens over them.
    let yaml_old = d.join("old.yaml");
    write_yaml(&yaml_old, &model, &out);
    let log = d.join("old.log");
    let status = wait(step1(&yaml_old, 1, &[], &log, None), LIMIT).status;
    assert!(status.success(), "{}", read(&log));
    let shorter = |path: &Path, out: &Path| {
        write_yaml(path, &model, out);
        let text = read(path).replace("max_new_tokens: 4", "max_new_tokens: 2");
        std::fs::write(path, text).unwrap();
    };
    let (yaml_new, yaml_ref) = (d.join("new.yaml"), d.join("ref.yaml"));
    shorter(&yaml_new, &out);
    shorter(&yaml_ref, &reference);
    let log_ref = d.join("ref.log");
    let status = wait(step1(&yaml_ref, 1, &[], &log_ref, None), LIMIT).status;
    assert!(status.success(), "{}", read(&log_ref));
    let predictions = |dir: &Path| read(&dir.join("generated_predictions.jsonl"));
    assert_ne!(
        predictions(&out),
        predictions(&reference),
        "the two runs differ"
    );

    // The new run stops at its last file (the results files are written already) until the
    // marker is removed; SIGTERM comes meanwhile.
    let marker = d.join("writing");
    let log = d.join("new.log");
    let mut cmd = std::process::Command::new(fleet_common::evalfleet_bin());
    cmd.args([
        "step1",
        yaml_new.to_str().unwrap(),
        "--workers",
        "1",
        "--cpu",
    ])
    .env("EVALFLEET_WORKER_BIN", fleet_common::worker_bin())
    .env(
        "EVALFLEET_TEST_HOLD_WRITE",
        format!("generated_predictions.jsonl:{}", marker.display()),
    )
    .env_remove("EVALFLEET_TEST_HOLD_ONCE")
    .env_remove("EVALFLEET_TEST_CRASH_ONCE")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    let mut run = KillOnDrop(cmd.spawn().unwrap());
    held_worker(&marker);
    let term = std::process::Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // Once the signal was seen (it says so), the write may go on.
    let started = Instant::now();
    while !read(&log).contains("exiting once the result files being written are complete") {
        assert!(started.elapsed() < LIMIT, "{}", read(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(&marker).unwrap();
    let started = Instant::now();
    let code = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(started.elapsed() < LIMIT, "still running:\n{}", read(&log));
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = read(&log);
    assert_eq!(code, Some(130), "{text}");
    assert_eq!(predictions(&out), predictions(&reference), "{text}");
    for name in ["predict_results.json", "all_results.json"] {
        let (a, b) = (read(&out.join(name)), read(&reference.join(name)));
        assert_eq!(without_speed(a), without_speed(b), "{name}");
    }
}
