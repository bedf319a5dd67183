//! One tensor-parallel group in one process tree (`evalfleet-worker --tp-group K ...`): the form a
//! Kubernetes pod with K GPUs runs. This process starts K rank processes of its own program with
//! its own arguments, rank R on `cuda:N+R` with `--tp-size K --tp-rank R --tp-init-file F` (F in
//! a fresh private temporary folder, so every start of the group meets anew), and supervises them:
//!
//! - SIGTERM/SIGINT go to rank 0 only: it stops gracefully (returns its lease to the coordinator)
//!   and shuts the followers down itself. A follower that got the signal would die at once and
//!   rank 0 would take that for a lost group.
//! - When a rank fails (a non-zero status this process did not cause), the others are stopped and
//!   this process exits with that rank's status, so the container is restarted as a whole.
//! - When rank 0 has ended, followers that do not end by themselves (their liveness watch makes
//!   them) are killed after a grace period.
//!
//! The exit status is the first failure's, else 143 (128 + SIGTERM) after a stop signal (a stopped
//! group has not finished the job: an Indexed Job must not count it as a success), else 0.

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::NO_NCCL;
use crate::{Error, Result};

/// The flag that makes a process a group's launcher.
pub const GROUP_FLAG: &str = "--tp-group";
/// How long followers may outlive rank 0 before they are killed.
pub const FOLLOWER_GRACE: Duration = Duration::from_secs(20);
/// The status after a stop signal (128 + SIGTERM, as a shell reports it).
pub const STOPPED: i32 = 128 + 15;

/// Runs the group: `program` (this binary) with `argv` (this process's arguments, without the
/// program name) as `world` ranks from GPU `device` (`cuda:N`) on. Returns the exit status.
pub fn run_group(program: &Path, argv: &[OsString], world: usize, device: &str) -> Result<i32> {
    if cfg!(not(feature = "nccl")) {
        return Err(Error::Unsupported(format!("{GROUP_FLAG}: {NO_NCCL}")));
    }
    let first = first_gpu(device)?;
    let dir = tempfile::Builder::new()
        .prefix("evalfleet-tp-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let init = dir.path().join("group.id");
    let base = strip_group_flags(argv);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Unsupported(format!("starting the group's runtime: {e}")))?;
    let code = runtime.block_on(async {
        // Listening before the ranks start, so that no stop signal is lost in between.
        let stop = stop_signal()?;
        let mut ranks = Vec::with_capacity(world);
        for rank in 0..world {
            let args = rank_args(&base, world, first, rank, &init);
            let child = Command::new(program)
                .args(&args)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| Error::io(program, e))?;
            ranks.push(child);
        }
        tracing::info!(
            "tensor-parallel group: {world} ranks on cuda:{first}..cuda:{}",
            first + world - 1
        );
        Ok::<_, Error>(supervise(ranks, stop, FOLLOWER_GRACE).await)
    })?;
    drop(dir);
    Ok(code)
}

/// The GPU index of `cuda:N`; the group needs GPUs.
pub fn first_gpu(device: &str) -> Result<usize> {
    device
        .strip_prefix("cuda:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{GROUP_FLAG} runs one rank per GPU: --device must be cuda:N, the group's first \
                 GPU (got {device:?}); for ranks on the CPU use --tp-threads K"
            ))
        })
}

/// `argv` without `--tp-group` and `--device` (and their values, as `--flag V` or `--flag=V`),
/// which the launcher sets for each rank.
pub fn strip_group_flags(argv: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len());
    let mut words = argv.iter();
    while let Some(w) = words.next() {
        let s = w.to_string_lossy();
        let owned = [GROUP_FLAG, "--device"]
            .into_iter()
            .find(|f| s == *f || s.starts_with(&format!("{f}=")));
        match owned {
            Some(flag) if s == flag => {
                words.next();
            }
            Some(_) => {}
            None => out.push(w.clone()),
        }
    }
    out
}

/// Rank `rank`'s arguments: the worker's `base` arguments plus its device and group flags.
pub fn rank_args(
    base: &[OsString],
    world: usize,
    first_gpu: usize,
    rank: usize,
    init_file: &Path,
) -> Vec<OsString> {
    let mut args = base.to_vec();
    let flags: [(&str, OsString); 4] = [
        ("--device", format!("cuda:{}", first_gpu + rank).into()),
        ("--tp-size", world.to_string().into()),
        ("--tp-rank", rank.to_string().into()),
        ("--tp-init-file", init_file.as_os_str().to_owned()),
    ];
    for (flag, value) in flags {
        args.push(OsStr::new(flag).to_owned());
        args.push(value);
    }
    args
}

/// What woke the supervisor.
enum Event {
    Exit(usize, std::io::Result<ExitStatus>),
    Stop(String),
    Grace,
}

/// Waits for every rank (rank 0 first in `ranks`) and returns the group's exit status (see the
/// module docs); `stop` resolves at a stop signal, `grace` is how long followers may outlive
/// rank 0.
pub async fn supervise(
    mut ranks: Vec<Child>,
    stop: impl Future<Output = String>,
    grace: Duration,
) -> i32 {
    let pids: Vec<Option<u32>> = ranks.iter().map(Child::id).collect();
    let mut exited = vec![false; ranks.len()];
    // Ranks this process signalled: their non-zero status is its doing, not a failure.
    let mut signalled = vec![false; ranks.len()];
    let mut failure: Option<i32> = None;
    let mut stopping = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    tokio::pin!(stop);
    while exited.contains(&false) {
        let event = {
            let waits: Vec<_> = ranks
                .iter_mut()
                .enumerate()
                .filter(|(r, _)| !exited[*r])
                .map(|(r, c)| Box::pin(async move { (r, c.wait().await) }))
                .collect();
            let grace_over = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ((r, status), _, _) = futures::future::select_all(waits) => Event::Exit(r, status),
                why = &mut stop, if !stopping => Event::Stop(why),
                _ = grace_over => Event::Grace,
            }
        };
        match event {
            Event::Exit(r, status) => {
                exited[r] = true;
                let code = exit_code(&status);
                if code != 0 && !signalled[r] && failure.is_none() {
                    tracing::error!(
                        "tensor-parallel rank {r} failed (status {code}); stopping the group"
                    );
                    failure = Some(code);
                    for (other, pid) in pids.iter().enumerate() {
                        if !exited[other] {
                            signalled[other] = true;
                            terminate(*pid);
                        }
                    }
                }
                if r == 0 && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + grace);
                }
            }
            Event::Stop(why) => {
                tracing::info!("{why}: stopping the group through rank 0");
                stopping = true;
                if !exited[0] {
                    signalled[0] = true;
                    terminate(pids[0]);
                }
            }
            Event::Grace => {
                deadline = None;
                for (r, child) in ranks.iter_mut().enumerate() {
                    if !exited[r] {
                        tracing::warn!("tensor-parallel rank {r} outlived rank 0; killing it");
                        signalled[r] = true;
                        let _ = child.start_kill();
                    }
                }
            }
        }
    }
    failure.unwrap_or(if stopping { STOPPED } else { 0 })
}

/// A process's status as a shell reports it (128 + N after signal N).
fn exit_code(status: &std::io::Result<ExitStatus>) -> i32 {
    match status {
        Ok(s) => s
            .code()
            .or_else(|| s.signal().map(|n| 128 + n))
            .unwrap_or(1),
        Err(_) => 1,
    }
}

/// Sends SIGTERM to a rank that has not been reaped yet (so its pid is still its own).
fn terminate(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) has no memory effects; the pid is our unreaped child's.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// Resolves with the signal's name at the first SIGTERM or SIGINT.
fn stop_signal() -> Result<impl Future<Output = String>> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind| {
        signal(kind).map_err(|e| Error::Unsupported(format!("listening for stop signals: {e}")))
    };
    let (mut term, mut int) = (
        listen(SignalKind::terminate())?,
        listen(SignalKind::interrupt())?,
    );
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM".to_string(),
            _ = int.recv() => "SIGINT".to_string(),
        }
    })
}

#[cfg(test)]
mod tests;
