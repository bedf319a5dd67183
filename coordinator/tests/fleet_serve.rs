//! End to end: `evalfleet serve` with external `evalfleet-worker` processes, jobs submitted with
//! `evalfleet submit`, watched with `evalfleet status --json`, cancelled with `evalfleet cancel`,
//! and its Prometheus endpoint scraped while a job runs.
//!
//! Jobs are step-1 YAMLs over two copies of the tiny chat model (`a/` and `b/`: the same weights,
//! so the same predictions, under two model keys). What is checked, none of it by timing:
//!
//! - three jobs (model a, b, a) queued before any worker exists, then ONE worker: it holds model a
//!   after job 1, so it takes job 3 (model a) before job 2 (model b, submitted earlier): its
//!   leases go job 1, job 3, job 2, and it loaded 2 models, not 3;
//! - a second worker joins, two more jobs run on both: every job's files equal those of
//!   `evalfleet run` on the same YAML (timings aside), and status lists all of them finished;
//! - a sixth job held mid-lease by a worker (the hold test hook): the metrics show its lease
//!   outstanding, one worker, the finished jobs' item counters and the model loads; cancelling
//!   it makes status say cancelled with no lease outstanding, and the metrics agree.

mod fleet_common;
mod rpc_client;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_common::{evalfleet_bin, repo, tiny_chat_model, wait, wait_ok, worker_bin};
use serde_json::Value;

/// What workers present (`--worker-token-file`).
const WORKER_TOKEN: &str = "serve-test-worker-token";
/// What submit/status/cancel present (`--control-token-file`).
const CONTROL_TOKEN: &str = "serve-test-control-token";

/// Writes both tokens into `dir`; returns serve's options naming them, with `dir` as the root
/// jobs may write (and read) and the repository (the demo data) as one they may read.
fn serve_args(dir: &Path) -> Vec<std::ffi::OsString> {
    let (worker, control) = (dir.join("worker.token"), dir.join("control.token"));
    std::fs::write(&worker, format!("{WORKER_TOKEN}\n")).unwrap();
    std::fs::write(&control, format!("{CONTROL_TOKEN}\n")).unwrap();
    vec![
        "--worker-token-file".into(),
        worker.into(),
        "--control-token-file".into(),
        control.into(),
        "--allow-output-root".into(),
        dir.into(),
        "--allow-input-root".into(),
        repo().into(),
    ]
}
/// Samples per demo data set (two data sets): 8 items per job.
const SAMPLES: usize = 4;
/// A guard against hangs only; nothing waits for a duration to pass.
const LIMIT: Duration = Duration::from_secs(600);

/// A step-1 job on `model`, writing to `out`.
fn write_yaml(dir: &Path, name: &str, model: &Path, out: &Path) -> PathBuf {
    let yaml = format!(
        "steps: [step1]\nmodel_name_or_path: {model}\nstage: sft\ndo_predict: true\nfinetuning_type: lora\n\
         dataset_dir: {data}\ndataset: demo_alpaca,demo_sharegpt\ntemplate: default\n\
         cutoff_len: 40\nmax_samples: {SAMPLES}\noutput_dir: {out}\n\
         per_device_eval_batch_size: 1\nmax_new_tokens: 8\ndo_sample: false\n",
        model = model.display(),
        data = repo().join("yamls/demo").display(),
        out = out.display(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `evalfleet ARGS` against the coordinator at `url`, with the test token.
fn client(url: &str, args: &[&str]) -> Value {
    client_with(url, &[], args)
}

/// [`client`] with `extra` client options (`--tls-ca FILE`).
fn client_with(url: &str, extra: &[&str], args: &[&str]) -> Value {
    let token_file =
        std::env::temp_dir().join(format!("evalfleet-serve-token-{}", std::process::id()));
    std::fs::write(&token_file, CONTROL_TOKEN).unwrap();
    let child = Command::new(evalfleet_bin())
        .args(args)
        .args(["--coordinator", url, "--token-file"])
        .arg(&token_file)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_ok(
        child,
        Duration::from_secs(60),
        &format!("evalfleet {args:?}"),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.trim().to_string()))
}

fn submit(url: &str, yaml: &Path) -> String {
    match client(url, &["submit", yaml.to_str().unwrap()]) {
        Value::String(id) => id,
        other => panic!("submit printed {other}"),
    }
}

fn status(url: &str) -> Value {
    client(url, &["status", "--json"])
}

/// The status entry of job `id`.
fn job<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == id)
        .unwrap_or_else(|| panic!("no job {id} in {status}"))
}

/// Polls status until `done` holds for it (or panics after [`LIMIT`], showing the last one).
fn wait_status(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let s = status(url);
        if done(&s) {
            return s;
        }
        assert!(started.elapsed() < LIMIT, "still not {what}: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn all_in_state(ids: &[&str], state: &'static str) -> impl Fn(&Value) -> bool {
    move |s: &Value| ids.iter().all(|id| job(s, id)["state"] == state)
}

/// `evalfleet serve` on loopback ports; returns it with its gRPC and metrics URLs.
fn start_serve(dir: &Path) -> (Child, String, String) {
    start_serve_with(dir, &[], None)
}

/// [`start_serve`] with `extra` options, under the shell's `ulimit -n NOFILE` if given.
fn start_serve_with(dir: &Path, extra: &[&str], nofile: Option<u32>) -> (Child, String, String) {
    let mut command = match nofile {
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                .arg(evalfleet_bin());
            c
        }
        None => Command::new(evalfleet_bin()),
    };
    let mut child = command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(serve_args(dir))
        .args(extra)
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = |prefix: &str| {
        let mut l = String::new();
        stdout.read_line(&mut l).unwrap();
        l.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {l:?}"))
            .to_string()
    };
    let url = line("listening on ");
    let metrics = line("metrics on ");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, url, metrics)
}

fn start_worker(url: &str, name: &str, hold: Option<&str>) -> Child {
    let mut cmd = Command::new(worker_bin());
    cmd.args([
        "--coordinator",
        url,
        "--worker-id",
        name,
        "--batch-size",
        "2",
    ])
    .env("EVALFLEET_TOKEN", WORKER_TOKEN)
    .env_remove("EVALFLEET_TEST_CRASH_ONCE")
    .env_remove("EVALFLEET_TEST_HOLD_ONCE");
    if let Some(spec) = hold {
        fleet_common::require_test_hooks();
        cmd.env("EVALFLEET_TEST_HOLD_ONCE", spec);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {}", child.id());
}

/// Kills the processes it names if the test panics before they exit (a passing test has ended
/// them all by then, so this then signals nothing of ours: pids are not reused that fast).
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for pid in &self.0 {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// An HTTP/1.1 GET of `url` (`http://host:port/path`), the body as text.
fn scrape(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample `series` (name plus labels, as exposed) in `metrics`.
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A results file without its speed metrics (timings differ between any two runs).
fn without_speed(text: String) -> String {
    text.lines()
        .filter(|l| !l.contains("_runtime\"") && !l.contains("_per_second\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that `out` holds what `evalfleet run` wrote to `reference`.
fn assert_same_outputs(out: &Path, reference: &Path) {
    assert_eq!(
        read(&out.join("generated_predictions.jsonl")),
        read(&reference.join("generated_predictions.jsonl")),
        "{}",
        out.display()
    );
    for file in ["predict_results.json", "all_results.json"] {
        assert_eq!(
            without_speed(read(&out.join(file))),
            without_speed(read(&reference.join(file))),
            "{}",
            out.join(file).display()
        );
    }
    assert!(!out.join(".evalfleet-journal").join("step1.jsonl").exists());
}

#[test]
fn serve_shares_workers_between_jobs_prefers_held_models_cancels_and_exposes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model_a = tiny_chat_model(&d.join("a"));
    let model_b = tiny_chat_model(&d.join("b"));
    let out = |n: usize| d.join(format!("out{n}"));
    let yamls: Vec<PathBuf> = [
        (1, &model_a),
        (2, &model_b),
        (3, &model_a),
        (4, &model_a),
        (5, &model_b),
        (6, &model_a),
    ]
    .iter()
    .map(|(n, m)| write_yaml(d, &format!("job{n}"), m, &out(*n)))
    .collect();

    // The reference: `evalfleet run` of job 1's YAML (to its own output directory).
    let reference = d.join("reference");
    let ref_yaml = write_yaml(d, "reference", &model_a, &reference);
    let run = Command::new(evalfleet_bin())
        .args([
            "run",
            ref_yaml.to_str().unwrap(),
            "--workers",
            "1",
            "--cpu",
            "--batch-size",
            "3",
        ])
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ok(run, LIMIT, "evalfleet run (reference)");

    let (serve, url, metrics_url) = start_serve(d);
    let mut guard = KillOnDrop(vec![serve.id()]);

    // Three jobs queued and planned before any worker exists.
    let ids: Vec<String> = yamls[..3].iter().map(|y| submit(&url, y)).collect();
    assert_eq!(ids, ["job-1", "job-2", "job-3"]);
    wait_status(&url, "attached", |s| {
        ids.iter()
            .all(|id| job(s, id)["state"] == "running" && job(s, id)["total"] == 8)
    });
    let w1 = start_worker(&url, "w1", None);
    guard.0.push(w1.id());
    let s = wait_status(
        &url,
        "finished",
        all_in_state(&["job-1", "job-2", "job-3"], "finished"),
    );
    let w = &s["workers"][0];
    assert_eq!(w["worker_id"], "w1");
    let mut order: Vec<&str> = w["lease_jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap())
        .collect();
    order.dedup();
    assert_eq!(order, ["job-1", "job-3", "job-2"], "{s:#}");
    assert_eq!(w["model_loads"], 2, "{s:#}");
    assert_eq!(w["items_done"], 24, "{s:#}");

    // A second worker; two jobs at once on both.
    let w2 = start_worker(&url, "w2", None);
    guard.0.push(w2.id());
    let more: Vec<String> = yamls[3..5].iter().map(|y| submit(&url, y)).collect();
    let s = wait_status(
        &url,
        "finished",
        all_in_state(&["job-4", "job-5"], "finished"),
    );
    assert_eq!(more, ["job-4", "job-5"]);
    for id in ["job-4", "job-5"] {
        let j = job(&s, id);
        assert_eq!(
            (j["done"].as_u64(), j["total"].as_u64()),
            (Some(8), Some(8)),
            "{j}"
        );
        assert_eq!(j["files"].as_array().unwrap().len(), 3, "{j}");
    }
    assert_eq!(s["workers"].as_array().unwrap().len(), 2, "{s:#}");
    for n in 1..=5 {
        assert_same_outputs(&out(n), &reference);
    }

    // Only a worker that will hold job 6 mid-lease is left.
    for w in [&w1, &w2] {
        sigterm(w);
    }
    wait_ok(w1, Duration::from_secs(60), "worker w1 after SIGTERM");
    wait_ok(w2, Duration::from_secs(60), "worker w2 after SIGTERM");
    let marker = d.join("hold-marker");
    let mut w3 = start_worker(&url, "w3", Some(&format!("{}:0", marker.display())));
    guard.0.push(w3.id());
    let held = submit(&url, &yamls[5]);
    assert_eq!(held, "job-6");
    let started = Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < LIMIT, "worker w3 never reached item 0");
        std::thread::sleep(Duration::from_millis(100));
    }
    // w1 and w2 have exited; wait until the coordinator has seen their streams close.
    let s = wait_status(&url, "down to one worker", |s| {
        s["workers"].as_array().unwrap().len() == 1
    });
    assert_eq!(s["workers"][0]["worker_id"], "w3", "{s:#}");
    assert_eq!(job(&s, "job-6")["state"], "running", "{s:#}");
    assert_eq!(job(&s, "job-6")["leases_outstanding"], 1, "{s:#}");

    let m = scrape(&metrics_url);
    assert_eq!(metric(&m, "evalfleet_leases_outstanding"), 1.0, "{m}");
    assert_eq!(metric(&m, "evalfleet_workers"), 1.0, "{m}");
    for job_id in ["job-1", "job-2", "job-3", "job-4", "job-5"] {
        let series = format!("evalfleet_items_done_total{{job=\"{job_id}\",step=\"step1\"}}");
        assert_eq!(metric(&m, &series), 8.0, "{m}");
    }
    let w2_items = metric(&m, "evalfleet_worker_items_total{worker=\"w2\"}");
    let w1_items = metric(&m, "evalfleet_worker_items_total{worker=\"w1\"}");
    assert!(w1_items >= 24.0, "jobs 1-3 ran on w1 alone: {m}");
    assert_eq!(w1_items + w2_items, 24.0 + 16.0, "jobs 4-5 on both: {m}");
    // Models a and b (the same folder name): two series, named without their paths.
    let loads: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("evalfleet_model_loads_total{worker=\"w1\""))
        .collect();
    assert_eq!(loads.len(), 2, "{m}");
    assert!(
        loads.iter().all(|l| l.contains("model=\"tiny-llama-chat|")),
        "{m}"
    );
    assert_ne!(loads[0], loads[1], "{m}");
    // No path in any sample: the metrics port answers without a token.
    assert!(
        !m.lines().any(|l| !l.starts_with('#') && l.contains('/')),
        "{m}"
    );
    assert!(
        m.contains("# TYPE evalfleet_worker_items_per_second gauge"),
        "{m}"
    );

    let state = client(&url, &["cancel", "job-6"]);
    assert!(
        state == "job-6 cancelling" || state == "job-6 cancelled",
        "{state}"
    );
    let s = wait_status(&url, "cancelled", all_in_state(&["job-6"], "cancelled"));
    assert_eq!(job(&s, "job-6")["leases_outstanding"], 0, "{s:#}");
    assert_eq!(s["workers"][0]["leases_outstanding"], 0, "{s:#}");
    let m = scrape(&metrics_url);
    assert_eq!(metric(&m, "evalfleet_leases_outstanding"), 0.0, "{m}");
    assert!(!out(6).join("generated_predictions.jsonl").exists());

    let _ = w3.kill();
    let _ = w3.wait();
    sigterm(&serve);
    let stopped = wait(serve, Duration::from_secs(60));
    assert!(
        stopped.status.success(),
        "serve after SIGTERM: {}",
        String::from_utf8_lossy(&stopped.stderr)
    );
}

#[test]
fn a_job_interrupted_by_a_coordinator_stop_runs_again_when_it_restarts_and_sweeps_run_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_chat_model(&d.join("a"));
    let yaml = write_yaml(d, "job", &model, &d.join("out"));
    let state = d.join("state");
    let tokens = serve_args(d);
    let serve = |extra: &[&str]| {
        let child = Command::new(evalfleet_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .args(&tokens)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        fleet_common::listening_url(child)
    };

    // No worker: the job runs (its fleet waits) until the coordinator is stopped.
    let (first, url) = serve(&[]);
    let mut guard = KillOnDrop(vec![first.id()]);
    assert_eq!(submit(&url, &yaml), "job-1");
    wait_status(&url, "attached", |s| job(s, "job-1")["total"] == 8);
    sigterm(&first);
    wait_ok(first, Duration::from_secs(60), "serve after SIGTERM");
    let record = read(&state.join("jobs/job-1.json"));
    assert!(record.contains("\"state\": \"queued\""), "{record}");

    // Started again on the same folder, with a worker this time: the job runs to its end.
    let (second, url) = serve(&["--workers", "1", "--cpu"]);
    guard.0.push(second.id());
    let s = wait_status(&url, "finished", all_in_state(&["job-1"], "finished"));
    assert_eq!(job(&s, "job-1")["done"], 8, "{s:#}");
    assert!(d.join("out/generated_predictions.jsonl").is_file());
    assert_eq!(
        submit(&url, &yaml),
        "job-2",
        "ids go on from the saved ones"
    );
    wait_status(&url, "finished", all_in_state(&["job-2"], "finished"));

    // A sweep YAML runs as `evalfleet sweep` does: two full-model checkpoints, then the report.
    for n in [1, 2] {
        let made = tiny_chat_model(&d.join(format!("c{n}")));
        std::fs::create_dir_all(d.join("ckpts")).unwrap();
        std::fs::rename(made, d.join(format!("ckpts/checkpoint-{n}"))).unwrap();
    }
    let sweep = d.join("sweep.yaml");
    std::fs::write(
        &sweep,
        format!(
            "model_name_or_path: {model}\ncheckpoints: {ckpts}/checkpoint-*\nsteps: [step1]\n\
             output_dir: {out}\ntemplate: default\nstep1:\n  dataset_dir: {data}\n  \
             dataset: demo_alpaca,demo_sharegpt\n  cutoff_len: 40\n  max_samples: {SAMPLES}\n  \
             per_device_eval_batch_size: 1\n  max_new_tokens: 8\n  do_sample: false\n",
            model = model.display(),
            ckpts = d.join("ckpts").display(),
            out = d.join("sweep-out").display(),
            data = repo().join("yamls/demo").display(),
        ),
    )
    .unwrap();
    assert_eq!(submit(&url, &sweep), "job-3");
    let s = wait_status(&url, "finished", all_in_state(&["job-3"], "finished"));
    let files = job(&s, "job-3")["files"].to_string();
    assert!(files.contains("summary.csv"), "{s:#}");
    for n in [1, 2] {
        let predictions = d.join(format!(
            "sweep-out/checkpoint-{n}/generated_predictions.jsonl"
        ));
        assert_eq!(
            read(&predictions),
            read(&d.join("out/generated_predictions.jsonl"))
        );
    }
    sigterm(&second);
    wait_ok(
        second,
        Duration::from_secs(60),
        "the second serve after SIGTERM",
    );
}

#[test]
fn evalfleet_run_serves_metrics_while_its_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_chat_model(&d.join("a"));
    let yaml = write_yaml(d, "job", &model, &d.join("out"));
    let marker = d.join("hold-marker");
    fleet_common::require_test_hooks();
    let mut run = Command::new(evalfleet_bin())
        .args([
            "run",
            yaml.to_str().unwrap(),
            "--workers",
            "1",
            "--cpu",
            "--batch-size",
            "2",
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env(
            "EVALFLEET_TEST_HOLD_ONCE",
            format!("{}:0", marker.display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(vec![run.id()]);
    let mut stdout = BufReader::new(run.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .to_string();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));

    // The worker holds its first lease at item 0: the job is running, mid-lease.
    let started = Instant::now();
    let worker_pid = loop {
        if let Ok(pid) = std::fs::read_to_string(&marker)
            && let Ok(pid) = pid.trim().parse::<u32>()
        {
            break pid;
        }
        assert!(started.elapsed() < LIMIT, "the worker never reached item 0");
        std::thread::sleep(Duration::from_millis(100));
    };
    guard.0.push(worker_pid);
    let m = scrape(&url);
    assert_eq!(metric(&m, "evalfleet_leases_outstanding"), 1.0, "{m}");
    assert_eq!(metric(&m, "evalfleet_workers"), 1.0, "{m}");
    let loads: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.starts_with("evalfleet_model_loads_total{") && l.contains("model=\"tiny-llama-chat|")
        })
        .collect();
    assert!(
        !m.lines().any(|l| !l.starts_with('#') && l.contains('/')),
        "{m}"
    );
    assert_eq!(loads.len(), 1, "{m}");
    assert!(loads[0].ends_with(" 1"), "{m}");
    assert!(
        m.contains("# TYPE evalfleet_items_done_total counter"),
        "{m}"
    );

    for pid in [run.id(), worker_pid] {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let _ = run.wait();
}

#[test]
fn serve_over_tls_runs_a_job_for_a_worker_and_a_client_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = rpc_client::TestPki::new("serve");
    let files = pki.files(d);
    let ca = d.join("ca.pem");
    let model = tiny_chat_model(&d.join("a"));
    let yaml = write_yaml(d, "job", &model, &d.join("out"));
    let token_file = d.join("control.token");
    let child = Command::new(evalfleet_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(serve_args(d))
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (serve, url) = fleet_common::listening_url(child);
    let mut guard = KillOnDrop(vec![serve.id()]);
    assert!(url.starts_with("https://"), "{url}");
    let tls = ["--tls-ca", ca.to_str().unwrap()];

    let id = client_with(&url, &tls, &["submit", yaml.to_str().unwrap()]);
    assert_eq!(id, "job-1");
    let worker = Command::new(worker_bin())
        .args(["--coordinator", &url, "--worker-id", "tls", "--tls-ca"])
        .arg(&ca)
        .env("EVALFLEET_TOKEN", WORKER_TOKEN)
        .env_remove("EVALFLEET_TEST_HOLD_ONCE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    guard.0.push(worker.id());
    let started = Instant::now();
    loop {
        let s = client_with(&url, &tls, &["status", "--json"]);
        if job(&s, "job-1")["state"] == "finished" {
            break;
        }
        assert!(started.elapsed() < LIMIT, "not finished: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.join("out/generated_predictions.jsonl").is_file());

    // Without the CA, a client does not even try plain text on an https:// URL.
    let refused = Command::new(evalfleet_bin())
        .args(["status", "--coordinator", &url, "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--tls-ca"), "{said}");

    sigterm(&serve);
    wait_ok(serve, Duration::from_secs(60), "serve after SIGTERM");
    let mut worker = worker;
    let _ = worker.wait();
}

/// `evalfleet serve ARGS` that must refuse to start: its stderr.
fn serve_refuses(dir: &Path, args: &[std::ffi::OsString]) -> String {
    let child = Command::new(evalfleet_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("EVALFLEET_WORKER_TOKEN")
        .env_remove("EVALFLEET_CONTROL_TOKEN")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait(child, Duration::from_secs(60));
    assert!(!out.status.success(), "serve started with {args:?}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `evalfleet status` against `url` presenting `token`.
fn status_with_token(dir: &Path, url: &str, token: &str) -> std::process::Output {
    let file = dir.join("client.token");
    std::fs::write(&file, token).unwrap();
    Command::new(evalfleet_bin())
        .args(["status", "--json", "--coordinator", url, "--token-file"])
        .arg(&file)
        .output()
        .unwrap()
}

#[test]
fn serve_keeps_the_worker_token_and_the_control_token_apart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = |name: &str, token: &str| {
        std::fs::write(d.join(name), format!("{token}\n")).unwrap();
        d.join(name).into_os_string()
    };
    let worker = file("worker.token", WORKER_TOKEN);
    // One token for both, a short token, or the old single --token-file: refused at start.
    let same = serve_refuses(
        d,
        &[
            "--worker-token-file".into(),
            worker.clone(),
            "--control-token-file".into(),
            worker.clone(),
        ],
    );
    assert!(
        same.contains("the worker token and the control token are the same"),
        "{same}"
    );
    let short = file("short.token", "0123456789abcde");
    let too_short = serve_refuses(
        d,
        &[
            "--worker-token-file".into(),
            worker.clone(),
            "--control-token-file".into(),
            short,
        ],
    );
    assert!(
        too_short.contains("the control token is 15 characters long; at least 16 are needed"),
        "{too_short}"
    );
    let old = serve_refuses(d, &["--token-file".into(), worker.clone()]);
    assert!(old.contains("--worker-token-file"), "{old}");
    let none = serve_refuses(d, &["--worker-token-file".into(), worker]);
    assert!(
        none.contains("pass --control-token-file FILE or set EVALFLEET_CONTROL_TOKEN"),
        "{none}"
    );

    let child = Command::new(evalfleet_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(serve_args(d))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (serve, url) = fleet_common::listening_url(child);
    let _guard = KillOnDrop(vec![serve.id()]);

    // Control: the control token opens it, the worker token does not.
    let ok = status_with_token(d, &url, CONTROL_TOKEN);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = status_with_token(d, &url, WORKER_TOKEN);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("missing or invalid bearer token"), "{said}");

    // Fleet: the worker token opens a worker stream, the control token does not.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = || async {
            tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
                .unwrap()
        };
        let hello = rpc_client::hello();
        let Err(status) = rpc_client::open(channel().await, Some(CONTROL_TOKEN), hello).await
        else {
            panic!("a worker stream opened with the control token");
        };
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let (_tx, mut inbound) =
            rpc_client::open(channel().await, Some(WORKER_TOKEN), rpc_client::hello())
                .await
                .unwrap();
        assert!(matches!(
            rpc_client::next(&mut inbound).await,
            evalfleet_proto::v1::coordinator_message::Msg::Welcome(_)
        ));
    });

    sigterm(&serve);
    wait_ok(serve, Duration::from_secs(60), "serve after SIGTERM");
}

#[test]
fn two_coordinators_on_one_state_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    let serve = |state: &Path| {
        Command::new(evalfleet_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .args(serve_args(d))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, _url) = fleet_common::listening_url(serve(&state));
    let _guard = KillOnDrop(vec![first.id()]);
    // The same folder by another name.
    std::fs::create_dir_all(state.join("x")).unwrap();
    let second = wait(serve(&state.join("x/..")), Duration::from_secs(60));
    assert!(!second.status.success());
    assert!(second.stdout.is_empty(), "the second one listened");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains(&format!("in use by pid {}", first.id())),
        "{said}"
    );
    sigterm(&first);
    wait_ok(first, Duration::from_secs(60), "serve after SIGTERM");
}

/// `evalfleet submit YAML` that the coordinator at `url` must refuse: its stderr.
fn submit_refused(url: &str, token: &Path, yaml: &Path) -> String {
    let out = Command::new(evalfleet_bin())
        .args([
            "submit",
            yaml.to_str().unwrap(),
            "--coordinator",
            url,
            "--token-file",
        ])
        .arg(token)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{} was accepted: {said}",
        yaml.display()
    );
    said
}

#[test]
fn serve_refuses_jobs_naming_paths_outside_its_allowed_roots() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (outputs, models, other) = (d.join("outputs"), d.join("models"), d.join("other"));
    for f in [&outputs, &other] {
        std::fs::create_dir_all(f).unwrap();
    }
    let model = tiny_chat_model(&models);
    let other_model = tiny_chat_model(&other.join("m"));
    std::os::unix::fs::symlink(&other, outputs.join("link")).unwrap();
    std::fs::write(d.join("control.token"), CONTROL_TOKEN).unwrap();
    let mut tokens = serve_args(d);
    tokens.truncate(4);

    // Without any root, serve does not start (unless told that any path will do).
    let none = serve_refuses(d, &tokens);
    assert!(
        none.contains("no --allow-output-root") && none.contains("--allow-any-path"),
        "{none}"
    );

    let roots = [
        "--allow-output-root".into(),
        outputs.clone().into_os_string(),
        "--allow-input-root".into(),
        models.clone().into_os_string(),
        "--allow-input-root".into(),
        repo().into_os_string(),
    ];
    let child = Command::new(evalfleet_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(outputs.join("state"))
        .args(&tokens)
        .args(roots)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (serve, url) = fleet_common::listening_url(child);
    let _guard = KillOnDrop(vec![serve.id()]);
    let token = d.join("control.token");
    let real = |p: &Path| p.canonicalize().unwrap().display().to_string();
    let output_roots = format!("output roots this coordinator allows: {}", real(&outputs));

    // Output directories outside the output root, however they are written.
    for (name, out) in [
        ("elsewhere", other.join("out")),
        ("dotdot", outputs.join("x/../../other/out")),
        ("symlink", outputs.join("link/out")),
        ("models", models.join("out")),
    ] {
        let yaml = write_yaml(d, name, &model, &out);
        let said = submit_refused(&url, &token, &yaml);
        assert!(said.contains("key `output_dir` (step1)"), "{name}: {said}");
        assert!(said.contains(&out.display().to_string()), "{name}: {said}");
        assert!(said.contains(&output_roots), "{name}: {said}");
    }
    // The coordinator's own state directory, or a folder holding it.
    for (name, out) in [
        ("state", outputs.join("state/jobs")),
        ("root", outputs.clone()),
    ] {
        let yaml = write_yaml(d, name, &model, &out);
        let said = submit_refused(&url, &token, &yaml);
        assert!(said.contains("state directory"), "{name}: {said}");
    }
    // A model outside the input roots.
    let yaml = write_yaml(d, "model", &other_model, &outputs.join("out"));
    let said = submit_refused(&url, &token, &yaml);
    assert!(said.contains("key `model_name_or_path` (step1)"), "{said}");
    assert!(said.contains(&real(&models)), "{said}");
    assert!(said.contains(&real(&repo())), "{said}");

    // None of them was queued; a job inside the roots is.
    let yaml = write_yaml(d, "ok", &model, &outputs.join("team-a/out"));
    assert_eq!(submit(&url, &yaml), "job-1");
    let s = status(&url);
    assert_eq!(s["jobs"].as_array().unwrap().len(), 1, "{s:#}");
    client(&url, &["cancel", "job-1"]);
    sigterm(&serve);
    wait_ok(serve, Duration::from_secs(60), "serve after SIGTERM");
}

/// Whether the server closed `conn` (end of stream or an error other than a read timeout);
/// whatever it sent before is read and dropped.
fn closed_by_server(conn: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Polls until the server has closed every connection of `conns` (a hang guard only).
fn wait_all_closed(conns: &mut [std::net::TcpStream], what: &str) {
    let started = Instant::now();
    let mut open: Vec<usize> = (0..conns.len()).collect();
    while !open.is_empty() {
        open.retain(|&i| !closed_by_server(&mut conns[i]));
        assert!(
            started.elapsed() < LIMIT,
            "{} of the {what} connections are still open",
            open.len()
        );
    }
}

/// `addr` of a URL such as `http://127.0.0.1:PORT/metrics`.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap().to_string()
}

#[test]
fn silent_connections_are_closed_and_the_metrics_port_caps_its_own_while_a_worker_works() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_chat_model(&d.join("a"));
    let yaml = write_yaml(d, "job", &model, &d.join("out"));
    let (serve, url, metrics_url) = start_serve_with(
        d,
        &[
            "--workers",
            "1",
            "--cpu",
            "--handshake-timeout",
            "3",
            "--idle-connection-timeout",
            "6",
        ],
        None,
    );
    let _guard = KillOnDrop(vec![serve.id()]);
    let (grpc, metrics) = (host_port(&url), host_port(&metrics_url));
    let connect = |addr: &str| std::net::TcpStream::connect(addr).unwrap();

    // Silent connections on the gRPC port, and one that sends the HTTP/2 preface and SETTINGS
    // and then nothing.
    let mut silent: Vec<_> = (0..100).map(|_| connect(&grpc)).collect();
    let mut idle = connect(&grpc);
    {
        use std::io::Write;
        idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
    }
    // The metrics port: as many as it keeps open, then one more, closed without an answer.
    let mut scrapers: Vec<_> = (0..64).map(|_| connect(&metrics)).collect();
    let mut extra = connect(&metrics);
    {
        use std::io::Write;
        let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    }
    let mut answer = Vec::new();
    {
        use std::io::Read;
        let _ = extra.read_to_end(&mut answer);
    }
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    // Meanwhile the local worker runs a job to its end.
    assert_eq!(submit(&url, &yaml), "job-1");
    let s = wait_status(&url, "finished", all_in_state(&["job-1"], "finished"));
    assert_eq!(job(&s, "job-1")["done"], 8, "{s:#}");
    wait_all_closed(&mut silent, "silent gRPC");
    wait_all_closed(std::slice::from_mut(&mut idle), "idle HTTP/2");
    wait_all_closed(&mut scrapers, "silent metrics");
    // Both ports serve again.
    let m = scrape(&metrics_url);
    assert!(m.contains("evalfleet_items_done_total{"), "{m}");
    assert_eq!(status(&url)["jobs"].as_array().unwrap().len(), 1);
    sigterm(&serve);
    wait_ok(serve, Duration::from_secs(60), "serve after SIGTERM");
}

/// CPU time (user + system, in clock ticks) process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(") ").unwrap();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_descriptors_the_accept_loops_back_off_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Few descriptors, and connections that stay until the test closes them.
    let (serve, url, metrics_url) = start_serve_with(d, &["--handshake-timeout", "0"], Some(48));
    let _guard = KillOnDrop(vec![serve.id()]);
    let (grpc, metrics) = (host_port(&url), host_port(&metrics_url));
    // More than the descriptors left: the rest wait in the listeners' backlogs, and every
    // accept fails with EMFILE until some close.
    let held: Vec<_> = (0..60)
        .flat_map(|_| [&grpc, &metrics])
        .map(|addr| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let started = Instant::now();
    // A spinning accept loop burns all the CPU it gets: 4 s of CPU in 4 s on an idle machine,
    // about 1 s on a machine loaded five times over; backing off, next to none. The bound
    // is a quarter of a second (the clock ticks 100 times a second).
    let before = cpu_ticks(serve.id());
    std::thread::sleep(Duration::from_secs(4));
    let used = cpu_ticks(serve.id()) - before;
    assert!(
        used < 25,
        "serve used {used} ticks of CPU in {:?} while out of descriptors",
        started.elapsed()
    );
    drop(held);
    // It serves again once descriptors are free.
    let m = scrape(&metrics_url);
    assert!(m.contains("# TYPE evalfleet_workers gauge"), "{m}");
    assert_eq!(status(&url)["jobs"].as_array().unwrap().len(), 0);
    sigterm(&serve);
    let out = wait(serve, Duration::from_secs(60));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("accepting a connection failed"), "{said}");
    assert!(said.contains("metrics port: accepting failed"), "{said}");
}

#[test]
fn serve_keeps_only_the_retained_ended_jobs_and_pages_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_chat_model(&d.join("a"));
    let state = d.join("state");
    let serve = |keep: &str| {
        let child = Command::new(evalfleet_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--max-jobs", "1"])
            .args(["--keep-jobs", keep, "--state-dir"])
            .arg(&state)
            .args(serve_args(d))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        fleet_common::listening_url(child)
    };
    let (first, url) = serve("3");
    let mut guard = KillOnDrop(vec![first.id()]);
    // No worker: job 1 runs (its fleet waits), the others queue. Cancelled from the last, the
    // queued ones end at once, 6 first; job 1 ends last, once its driver has stopped.
    let ids: Vec<String> = (1..=6)
        .map(|n| {
            let yaml = write_yaml(d, &format!("j{n}"), &model, &d.join(format!("out{n}")));
            submit(&url, &yaml)
        })
        .collect();
    for id in ids.iter().rev() {
        client(&url, &["cancel", id]);
    }
    let s = wait_status(&url, "pruned", |s| {
        s["jobs"].as_array().unwrap().len() == 3
            && s["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|j| j["state"] == "cancelled")
    });
    let listed: Vec<&str> = s["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["job-1", "job-2", "job-3"], "the last 3 to end");
    let records = |state: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(state.join("jobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(records(&state), ["job-1.json", "job-2.json", "job-3.json"]);

    // Pages: two jobs, then the rest after job 2.
    let page = client(&url, &["status", "--json", "--limit", "2"]);
    let ids_of = |v: &Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids_of(&page), ["job-1", "job-2"]);
    assert_eq!(page["next_after_seq"], 2, "{page:#}");
    let rest = client(&url, &["status", "--json", "--after", "2"]);
    assert_eq!(ids_of(&rest), ["job-3"]);
    assert_eq!(rest["next_after_seq"], 0, "{rest:#}");

    sigterm(&first);
    wait_ok(first, Duration::from_secs(60), "serve after SIGTERM");
    // Started again with a smaller retention: pruned at start, and the kept record is not
    // rewritten (its bytes and modification time are those of before).
    let kept = state.join("jobs/job-1.json");
    let (bytes, modified) = (
        std::fs::read(&kept).unwrap(),
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
    );
    let (second, url) = serve("1");
    guard.0.push(second.id());
    assert_eq!(records(&state), ["job-1.json"]);
    assert_eq!(std::fs::read(&kept).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
        modified
    );
    assert_eq!(ids_of(&status(&url)), ["job-1"]);
    sigterm(&second);
    wait_ok(
        second,
        Duration::from_secs(60),
        "the second serve after SIGTERM",
    );
}

#[test]
fn a_panicking_job_driver_fails_its_job_and_the_queue_goes_on() {
    fleet_common::require_test_hooks();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_chat_model(&d.join("a"));
    let child = Command::new(evalfleet_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--cpu",
        ])
        .args(serve_args(d))
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env("EVALFLEET_TEST_PANIC_JOB", "boom.yaml")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (serve, url) = fleet_common::listening_url(child);
    let _guard = KillOnDrop(vec![serve.id()]);
    let boom = write_yaml(d, "boom", &model, &d.join("out-boom"));
    assert_eq!(submit(&url, &boom), "job-1");
    let s = wait_status(&url, "failed", all_in_state(&["job-1"], "failed"));
    let error = job(&s, "job-1")["error"].as_str().unwrap().to_string();
    assert!(error.contains("the job's driver panicked"), "{error}");
    // The next job runs on the same coordinator and worker.
    let ok = write_yaml(d, "ok", &model, &d.join("out-ok"));
    assert_eq!(submit(&url, &ok), "job-2");
    let s = wait_status(&url, "finished", all_in_state(&["job-2"], "finished"));
    assert_eq!(job(&s, "job-2")["done"], 8, "{s:#}");
    sigterm(&serve);
    wait_ok(serve, Duration::from_secs(60), "serve after SIGTERM");
}
