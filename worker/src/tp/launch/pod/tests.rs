//! The launcher's argument handling, and its supervision with shell processes standing in for the
//! ranks (real ranks need NCCL and GPUs).

use std::path::{Path, PathBuf};

use super::*;

fn os(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

#[test]
fn ranks_get_the_workers_arguments_with_their_own_device_and_group() {
    let argv = os(&[
        "--coordinator",
        "http://c:50051",
        "--tp-group",
        "2",
        "--device=cuda:4",
        "--worker-id",
        "pod-a",
    ]);
    let base = strip_group_flags(&argv);
    assert_eq!(
        base,
        os(&["--coordinator", "http://c:50051", "--worker-id", "pod-a"])
    );
    let init = Path::new("/tmp/x/group.id");
    let one = rank_args(&base, 2, 4, 1, init);
    assert_eq!(
        one[4..],
        os(&[
            "--device",
            "cuda:5",
            "--tp-size",
            "2",
            "--tp-rank",
            "1",
            "--tp-init-file",
            "/tmp/x/group.id"
        ])
    );
    assert_eq!(
        strip_group_flags(&os(&[
            "--tp-group=2",
            "--device",
            "cuda:0",
            "--batch-size",
            "4"
        ])),
        os(&["--batch-size", "4"])
    );
    assert_eq!(first_gpu("cuda:3").unwrap(), 3);
    let e = first_gpu("cpu").unwrap_err().to_string();
    assert!(
        e.contains("--device must be cuda:N") && e.contains("--tp-threads"),
        "{e}"
    );
}

#[cfg(not(feature = "nccl"))]
#[test]
fn a_build_without_nccl_refuses_a_group_naming_the_feature() {
    let e = run_group(Path::new("/nonexistent"), &[], 2, "cuda:0")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--tp-group") && e.contains("--features nccl"),
        "{e}"
    );
}

/// A shell standing in for a rank. Its output goes nowhere: a `sleep` it started outlives a killed
/// shell for up to a second and would otherwise hold the test's stdout open past the test's end.
fn sh(script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `sh` that writes `ready` once its TERM trap is set, and on TERM writes `term` and exits 0.
fn trapping(dir: &Path, name: &str) -> (Child, PathBuf, PathBuf) {
    let (ready, term) = (
        dir.join(format!("{name}.ready")),
        dir.join(format!("{name}.term")),
    );
    let child = sh(&format!(
        "trap 'echo > {t}; exit 0' TERM; echo > {r}; while :; do sleep 1; done",
        t = term.display(),
        r = ready.display()
    ));
    (child, ready, term)
}

#[tokio::test]
async fn a_failing_follower_stops_the_group_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let (rank0, ready, term) = trapping(dir.path(), "rank0");
    // The follower fails only once rank 0 listens for TERM, so that the stop is seen.
    let rank1 = sh(&format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exit 7",
        ready.display()
    ));
    let never = std::future::pending::<String>();
    let code = supervise(vec![rank0, rank1], never, FOLLOWER_GRACE).await;
    assert_eq!(code, 7, "the failing rank's status");
    assert!(term.exists(), "rank 0 was asked to stop with SIGTERM");
}

#[tokio::test]
async fn a_group_that_ends_normally_exits_zero() {
    let never = std::future::pending::<String>();
    let code = supervise(vec![sh("exit 0"), sh("exit 0")], never, FOLLOWER_GRACE).await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn rank_zero_failing_is_the_groups_status() {
    let never = std::future::pending::<String>();
    let code = supervise(
        vec![sh("exit 1"), sh("exec sleep 600")],
        never,
        FOLLOWER_GRACE,
    )
    .await;
    assert_eq!(
        code, 1,
        "the follower killed by the launcher does not count"
    );
}

#[tokio::test]
async fn a_stop_signal_goes_to_rank_zero_only_and_the_group_reports_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (rank0, ready0, term0) = trapping(dir.path(), "rank0");
    let (rank1, ready1, term1) = trapping(dir.path(), "rank1");
    // The "signal" arrives once both ranks listen for TERM.
    let stop = async move {
        while !(ready0.exists() && ready1.exists()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        "SIGTERM".to_string()
    };
    // No grace: the follower, which does not end by itself here, is killed once rank 0 has ended.
    let code = supervise(vec![rank0, rank1], stop, Duration::ZERO).await;
    assert_eq!(code, STOPPED);
    assert!(term0.exists(), "rank 0 got SIGTERM");
    assert!(
        !term1.exists(),
        "the follower must not get SIGTERM (rank 0 stops it)"
    );
}
