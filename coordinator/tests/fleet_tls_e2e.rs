//! TLS end to end with the real binaries on the tiny model: `evalfleet step1 --listen --tls-cert
//! --tls-key` and an external `evalfleet-worker --coordinator https://... --tls-ca` write the same
//! predictions as a local-mode run; with TLS and local workers, those use the plain loopback
//! socket and the job completes.

mod bad_input_common;
mod fleet_common;
mod rpc_client;

use std::path::Path;

use bad_input_common::{LIMIT, Step1, evalfleet, run, worker};
use fleet_common::{listening_url, wait};
use rpc_client::{TOKEN, TestPki};

/// Writes the job's YAML with `out` as output_dir and a token file; returns both paths.
fn write_job(job: &Step1, out: &Path) -> (String, String) {
    let yaml = job.dir.path().join("tls-job.yaml");
    let text = job.yaml.replace(
        &format!("output_dir: {}", job.out.display()),
        &format!("output_dir: {}", out.display()),
    );
    std::fs::write(&yaml, text).unwrap();
    let token = job.dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    (
        yaml.to_str().unwrap().to_string(),
        token.to_str().unwrap().to_string(),
    )
}

fn predictions(out: &Path) -> String {
    std::fs::read_to_string(out.join("generated_predictions.jsonl")).unwrap()
}

#[test]
fn an_external_worker_over_tls_writes_what_local_mode_writes() {
    let job = Step1::new();
    let pki = TestPki::new("e2e");
    let files = pki.files(job.dir.path());
    let ca = job.dir.path().join("ca.pem");
    let tls_out = job.dir.path().join("tls-out");
    let (yaml, token) = write_job(&job, &tls_out);
    let mut cmd = evalfleet(&[
        "step1",
        &yaml,
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "0",
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
        "--token-file",
        &token,
    ]);
    let (coordinator, url) = listening_url(cmd.spawn().unwrap());
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let out = run(worker(&[
        "--coordinator",
        &url,
        "--tls-ca",
        ca.to_str().unwrap(),
        "--token-file",
        &token,
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = wait(coordinator, LIMIT);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    // The same job in local mode (plain loopback) writes the same predictions.
    let (_, local) = job.run(&[]);
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let tls = predictions(&tls_out);
    assert_eq!(tls.lines().count(), predictions(&job.out).lines().count());
    assert_eq!(tls, predictions(&job.out));
}

#[test]
fn local_workers_use_plain_loopback_next_to_the_tls_port() {
    let job = Step1::new();
    let files = TestPki::new("local").files(job.dir.path());
    let fresh = job.dir.path().join("fresh-out");
    let (yaml, token) = write_job(&job, &fresh);
    let out = run(evalfleet(&[
        "step1",
        &yaml,
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--cpu",
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
        "--token-file",
        &token,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("listening on https://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stderr.contains("local worker(s) on cpu (http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(!predictions(&fresh).is_empty());
}
