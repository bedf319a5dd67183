//! Starting this process's part of a group (the worker binary's `--tp-*` flags), and ending it
//! with the group: a group cannot go on without all its ranks, so when one rank ends
//! unexpectedly the others end the process (no rank is left waiting on a collective forever).
//!
//! - [`threads`] (`--tp-threads k`): rank 0 here, ranks 1.. on threads of this process.
//! - [`process_rank`] (`--tp-size k --tp-rank r --tp-init-file F`): one process per GPU over
//!   NCCL; rank 0 writes the NCCL id to F, the others wait for it; [`super::liveness`] watches
//!   the other ranks' processes.
//! - [`pod`] (`--tp-group k`): this process starts the k rank processes of one group and
//!   supervises them (one Kubernetes pod with k GPUs).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use candle_core::Device;

use super::liveness::Liveness;
use super::{CausalLmShards, TpLeader, causal_lm_thread_group, follow};
use crate::collective::SharedCollective;
use crate::{Error, Result};

pub mod pod;

/// Rank 0's group: its [`TpLeader`] and what stops the group with the worker.
pub struct Group {
    pub leader: TpLeader,
    liveness: Option<Liveness>,
    /// Set before a deliberate stop, so the followers' ends are not taken for failures.
    stopping: Arc<AtomicBool>,
}

impl Group {
    /// Tells the followers to stop (the worker is done). A follower still inside a command the
    /// leader abandoned (a lease running when the coordinator said Shutdown) ends with the
    /// process instead.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(l) = &self.liveness {
            l.expect_stop();
        }
        self.leader.try_shutdown();
    }
}

/// `world` ranks in this process on `device` (`--tp-threads`). A follower thread that fails or
/// panics ends the process with status 1.
pub fn threads(world: usize, device: &Device) -> Result<Group> {
    let (leader, handles) = causal_lm_thread_group(world, device)?;
    let stopping = Arc::new(AtomicBool::new(false));
    for (i, handle) in handles.into_iter().enumerate() {
        let stopping = stopping.clone();
        std::thread::Builder::new()
            .name(format!("tp-join-{}", i + 1))
            .spawn(move || {
                let why = match handle.join() {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "it panicked".to_string(),
                };
                if !stopping.load(Ordering::SeqCst) {
                    group_lost(i + 1, &why);
                }
            })
            .map_err(|e| Error::Unsupported(format!("watching tensor-parallel rank {i}: {e}")))?;
    }
    Ok(Group {
        leader,
        liveness: None,
        stopping,
    })
}

/// What a process of a process group does.
pub enum ProcessRole {
    /// Rank 0: the worker, with this group.
    Leader(Group),
    /// Rank r > 0: serve the leader ([`ProcessFollower::serve`]).
    Follower(ProcessFollower),
}

/// A follower process, joined to its group.
pub struct ProcessFollower {
    coll: SharedCollective,
    device: Device,
    _liveness: Liveness,
}

impl ProcessFollower {
    /// Runs the leader's commands until it sends Shutdown (`Ok`) or the exchange fails.
    pub fn serve(self) -> Result<()> {
        let mut loader = CausalLmShards::new(self.device.clone(), self.coll.clone());
        follow(&*self.coll, &self.device, &mut loader)
    }
}

/// Joins group `init_file` as `rank` of `world` on `device`, over NCCL: `join` makes the
/// collective (rank 0 writes the id to `init_file`, the others wait up to `timeout`).
pub fn process_rank(
    rank: usize,
    world: usize,
    device: &Device,
    init_file: &Path,
    timeout: Duration,
) -> Result<ProcessRole> {
    if cfg!(not(feature = "nccl")) {
        return Err(Error::Unsupported(NO_NCCL.into()));
    }
    process_rank_with(rank, world, device, init_file, || {
        nccl_join(rank, world, device, init_file, timeout)
    })
}

/// [`process_rank`] with the collective made by `join` (tests use an in-process one).
pub fn process_rank_with(
    rank: usize,
    world: usize,
    device: &Device,
    init_file: &Path,
    join: impl FnOnce() -> Result<SharedCollective>,
) -> Result<ProcessRole> {
    if world < 2 || rank >= world {
        return Err(Error::Unsupported(format!(
            "--tp-rank {rank} with --tp-size {world}: the size must be at least 2 and the rank \
             below it"
        )));
    }
    // Locked before joining: the others watch this file only once the join has succeeded.
    let liveness = Liveness::announce(init_file, rank)?;
    let coll = join()?;
    let others: Vec<usize> = (0..world).filter(|&r| r != rank).collect();
    if rank == 0 {
        let stopping = Arc::new(AtomicBool::new(false));
        liveness.watch(init_file, others, |r| {
            group_lost(r, "its process ended");
        })?;
        let leader = TpLeader::new(coll, device.clone())?;
        return Ok(ProcessRole::Leader(Group {
            leader,
            liveness: Some(liveness),
            stopping,
        }));
    }
    // A follower only needs rank 0: if another follower dies, rank 0 ends and with it this one.
    liveness.watch(init_file, [0], move |_| {
        tracing::info!("tensor-parallel rank 0 ended; rank {rank} ends too");
        std::process::exit(0);
    })?;
    Ok(ProcessRole::Follower(ProcessFollower {
        coll,
        device: device.clone(),
        _liveness: liveness,
    }))
}

/// A rank ended while the group was in use: nothing it was part of can complete.
fn group_lost(rank: usize, why: &str) {
    tracing::error!(
        "tensor-parallel rank {rank} ended unexpectedly ({why}); the group cannot go on, so this \
         worker exits (the coordinator re-runs its lease elsewhere)"
    );
    std::process::exit(1);
}

#[cfg(feature = "nccl")]
fn nccl_join(
    rank: usize,
    world: usize,
    device: &Device,
    init_file: &Path,
    timeout: Duration,
) -> Result<SharedCollective> {
    let coll = crate::collective::NcclCollective::join(rank, world, device, init_file, timeout)?;
    Ok(Arc::new(coll))
}

#[cfg(not(feature = "nccl"))]
fn nccl_join(
    _rank: usize,
    _world: usize,
    _device: &Device,
    _init_file: &Path,
    _timeout: Duration,
) -> Result<SharedCollective> {
    Err(Error::Unsupported(NO_NCCL.into()))
}

/// What a build without NCCL says to `--tp-size`.
pub const NO_NCCL: &str = "tensor parallelism over processes (--tp-size) needs NCCL: build the \
     worker with `--features nccl` (scripts/build-cuda.sh does), or run the ranks as threads of \
     one process with --tp-threads K";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::{Collective, LocalCollective};
    use crate::tp::command::{Command, LoadSpec};
    use crate::tp::liveness;

    /// The process-group roles with an in-process collective standing in for NCCL: each rank
    /// announces itself before joining, rank 0 leads, rank 1 serves it until Shutdown.
    #[test]
    fn process_ranks_meet_lead_and_follow() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("group.id");
        let mut colls = LocalCollective::group(2).into_iter();
        let (c0, c1) = (colls.next().unwrap(), colls.next().unwrap());
        let init1 = init.clone();
        let follower = std::thread::spawn(move || {
            let role = process_rank_with(1, 2, &Device::Cpu, &init1, || {
                // Like NCCL's join, returns once every rank has joined.
                c1.barrier()?;
                Ok(Arc::new(c1))
            })
            .unwrap();
            let ProcessRole::Follower(f) = role else {
                panic!("rank 1 must follow")
            };
            f.serve()
        });
        let role = process_rank_with(0, 2, &Device::Cpu, &init, || {
            c0.barrier()?;
            Ok(Arc::new(c0))
        })
        .unwrap();
        let ProcessRole::Leader(group) = role else {
            panic!("rank 0 must lead")
        };
        assert!(liveness::alive_path(&init, 1).exists());
        // A load the follower fails too comes back naming it (both ranks read the same path).
        let spec = LoadSpec {
            model_path: dir.path().join("missing").display().to_string(),
            adapter_paths: vec![],
            dtype: "f32".into(),
        };
        let e = group
            .leader
            .run(Command::Load { model: 1, spec }, || Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("load failed on rank 1") && e.contains("missing"),
            "{e}"
        );
        group.stop();
        follower.join().unwrap().unwrap();
        // The group stays announced (its liveness) until the process ends.
        std::mem::forget(group);
    }

    #[test]
    fn bad_sizes_and_ranks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("g");
        let never = || -> Result<SharedCollective> { unreachable!("no join for a bad rank") };
        let e = process_rank_with(2, 2, &Device::Cpu, &init, never)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("--tp-rank 2 with --tp-size 2"),
            "{e}"
        );
        assert!(process_rank_with(0, 1, &Device::Cpu, &init, never).is_err());
    }
}
