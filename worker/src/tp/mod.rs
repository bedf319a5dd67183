//! The tensor-parallel group runtime: k ranks that behave as one worker.
//!
//! Rank 0, the leader, is a normal worker (it talks to the coordinator and runs the executor and
//! engine); the other ranks, the followers, run [`follow`]: they receive each command the leader
//! broadcasts ([`command`]) and run it on their own shard of the model, in the same order. The
//! leader's side is [`TpModel`] (a [`crate::models::Decoder`]) and [`TpCache`] (a
//! [`crate::score::choice::RowCache`]), so generation and choice scoring drive a group exactly
//! as they drive one model. After each command a status round ([`status`]) tells every rank
//! whether every other succeeded, so an error on a follower fails the leader's call (and with it
//! the lease's items) instead of leaving the group waiting.
//!
//! Groups are started two ways:
//! - [`thread_group`]: k ranks as threads of one process over a
//!   [`crate::collective::LocalCollective`] (CPU tests, several ranks on one GPU);
//! - one process per GPU over NCCL (`evalfleet-worker --tp-size k --tp-rank r --tp-init-file F`),
//!   where [`liveness`] makes every rank exit when another dies, so no process is left waiting.

pub mod command;
mod follower;
pub mod launch;
mod leader;
pub mod liveness;
pub mod status;

use std::thread::JoinHandle;

use candle_core::Device;

pub use command::LoadSpec;
pub use follower::{CausalLmShards, ShardLoader, follow, parse_dtype, shard_load_options};
pub use leader::{TpCache, TpLeader, TpModel};

use crate::Result;
use crate::collective::{LocalCollective, SharedCollective};

/// Starts `world` ranks in this process on `device`: ranks 1.. run [`follow`] on their own
/// threads with the loader `make_loader(rank, collective)` gives; returns rank 0's leader and the
/// followers' threads (each ends with its loop's outcome).
pub fn thread_group<L, F>(
    world: usize,
    device: &Device,
    make_loader: F,
) -> Result<(TpLeader, Vec<JoinHandle<Result<()>>>)>
where
    L: ShardLoader + 'static,
    F: Fn(usize, SharedCollective) -> L + Send + Clone + 'static,
{
    let mut ranks = LocalCollective::group(world).into_iter();
    let rank0: SharedCollective = std::sync::Arc::new(ranks.next().expect("a group has rank 0"));
    let mut followers = Vec::new();
    for coll in ranks {
        let (device, make_loader) = (device.clone(), make_loader.clone());
        let rank = coll_rank(&coll);
        let handle = std::thread::Builder::new()
            .name(format!("tp-rank-{rank}"))
            .spawn(move || {
                // A follower that fails stops the group: rank 0's next collective fails too.
                coll.run_rank(|local| {
                    let coll: SharedCollective = std::sync::Arc::new(local.clone());
                    let mut loader = make_loader(rank, coll.clone());
                    follow(&*coll, &device, &mut loader)
                })
            })
            .map_err(|e| {
                crate::Error::Unsupported(format!("starting tensor-parallel rank {rank}: {e}"))
            })?;
        followers.push(handle);
    }
    Ok((TpLeader::new(rank0, device.clone())?, followers))
}

fn coll_rank(c: &LocalCollective) -> usize {
    use crate::collective::Collective;
    c.rank()
}

/// [`thread_group`] with the real loader ([`CausalLmShards`]).
pub fn causal_lm_thread_group(
    world: usize,
    device: &Device,
) -> Result<(TpLeader, Vec<JoinHandle<Result<()>>>)> {
    let dev = device.clone();
    thread_group(world, device, move |_, coll| {
        CausalLmShards::new(dev.clone(), coll)
    })
}

#[cfg(test)]
mod tests;
