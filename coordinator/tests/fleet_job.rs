//! One fleet per job: a two-step job (`steps: [step1, step3]`, two schedulers one after the
//! other, with step 1's scoring and writing and step 3's planning between them) is served by one
//! fleet that lives for the whole job.
//!
//! - `--health-listen` answers gRPC health from the coordinator's start to its exit: a probe
//!   polling it every 100 ms is never refused while the job runs.
//! - External workers (`--listen --workers 0`, the Kubernetes layouts) serve every step: one
//!   worker process runs both steps' leases and exits once, when the job ends. (Before, the
//!   first step's fleet told it to exit and the second step waited forever.)

mod fleet_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet_common::{
    evalfleet_bin, health_addr, listening_url, repo, tiny_chat_model_long, wait, wait_ok,
    worker_bin,
};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The job file of a step-1 + step-3 job on the tiny model, under `dir`; its outputs go to
/// `dir/out` (step 1) and `dir/step3` (step 3).
fn two_step_job(dir: &Path) -> PathBuf {
    let model = tiny_chat_model_long(dir);
    fleet_common::tiny_mmlu(&dir.join("tasks"));
    let yaml = dir.join("job.yaml");
    std::fs::write(
        &yaml,
        format!(
            "steps: [step1, step3]\nmodel_name_or_path: {model}\ntemplate: default\n\
             output_dir: {out}\n\
             step1: {{dataset_dir: {data}, dataset: demo_alpaca, max_samples: 4, max_new_tokens: 4, \
             do_sample: false, cutoff_len: 40}}\n\
             step3: {{task_dir: {tasks}, tasks: [mmlu], langs: [en], splits: [test], n_shot: 1, \
             save_dir: {save}}}\n",
            model = model.display(),
            out = dir.join("out").display(),
            data = repo().join("yamls/demo").display(),
            tasks = dir.join("tasks").display(),
            save = dir.join("step3").display(),
        ),
    )
    .unwrap();
    yaml
}

/// Both steps' files exist under `dir` (see [`two_step_job`]).
fn assert_both_steps_written(dir: &Path, log: &str) {
    let predictions = dir.join("out/generated_predictions.jsonl");
    let lines = std::fs::read_to_string(&predictions)
        .unwrap_or_else(|e| panic!("{}: {e}\n{log}", predictions.display()));
    assert_eq!(lines.lines().count(), 4, "{log}");
    assert!(dir.join("step3/mmlu/results.json").is_file(), "{log}");
}

fn evalfleet_run(yaml: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(evalfleet_bin());
    cmd.args(["run", yaml.to_str().unwrap()])
        .args(extra)
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The health status at `addr`, or the error of a refused or failed call.
async fn check(addr: &str) -> Result<i32, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("address: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|e| format!("check: {e}"))?;
    Ok(reply.into_inner().status)
}

#[test]
fn health_answers_through_every_phase_of_a_two_step_job() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = two_step_job(tmp.path());
    let child = evalfleet_run(
        &yaml,
        &["--workers", "1", "--cpu", "--health-listen", "127.0.0.1:0"],
    )
    .spawn()
    .unwrap();
    let (child, addr) = health_addr(child);

    // Poll every 100 ms until the coordinator has exited.
    let exited = Arc::new(AtomicBool::new(false));
    let poller = {
        let exited = exited.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut calls = Vec::new();
            while !exited.load(Ordering::SeqCst) {
                calls.push(match rt.block_on(check(&addr)) {
                    Ok(status) if status == ServingStatus::Serving as i32 => Ok(()),
                    other => Err(format!("{other:?}")),
                });
                std::thread::sleep(Duration::from_millis(100));
            }
            calls
        })
    };
    let output = wait(child, Duration::from_secs(900));
    exited.store(true, Ordering::SeqCst);
    let calls = poller.join().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the job failed:\n{log}");
    assert_both_steps_written(tmp.path(), &log);
    // Calls after the last answered one may have met the port closing as the process exited;
    // none before it may fail.
    let last_ok = calls
        .iter()
        .rposition(Result::is_ok)
        .unwrap_or_else(|| panic!("no health check answered: {calls:?}\n{log}"));
    let refused: Vec<_> = calls[..last_ok].iter().filter(|c| c.is_err()).collect();
    assert!(
        refused.is_empty(),
        "health refused while the job ran ({} of {} calls): {refused:?}\n{log}",
        refused.len(),
        calls.len()
    );
}

#[test]
fn an_external_worker_serves_every_step_of_a_multi_step_job() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = two_step_job(tmp.path());
    let coordinator = evalfleet_run(&yaml, &["--listen", "127.0.0.1:0", "--workers", "0"])
        .env("EVALFLEET_TOKEN", "a-token-for-this-test")
        .spawn()
        .unwrap();
    let (coordinator, url) = listening_url(coordinator);
    let worker = Command::new(worker_bin())
        .args(["--coordinator", &url])
        .env("EVALFLEET_TOKEN", "a-token-for-this-test")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let worker = wait_ok(worker, Duration::from_secs(600), "the external worker");
    let job = wait_ok(coordinator, Duration::from_secs(600), "the coordinator");
    let log = String::from_utf8_lossy(&job.stderr);
    assert_both_steps_written(tmp.path(), &log);
    let worker_log = String::from_utf8_lossy(&worker.stderr);
    // Step 1's lease, then step 3's: the same process, told to exit once, at the job's end.
    let leases: usize = worker_log
        .split("done after ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `done after N leases` line:\n{worker_log}"));
    assert!(leases >= 2, "one worker ran both steps:\n{worker_log}");
    assert_eq!(
        worker_log.matches("stopping:").count(),
        1,
        "the worker was told to stop more than once:\n{worker_log}"
    );
    assert!(
        worker_log.contains("(job finished)"),
        "the worker did not stay to the job's end:\n{worker_log}"
    );
}
