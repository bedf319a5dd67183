//! Collectives for data-parallel training: the [`Collective`] trait (all-reduce sum, broadcast,
//! barrier over f32 tensors between `world_size` ranks) and [`LocalCollective`], its in-process
//! implementation for N ranks on threads of one process (CPU data parallelism and tests).
//!
//! The trainer only talks to the trait. An NCCL implementation (one rank per GPU of a node,
//! issue 8's tensor-parallel collectives) plugs in behind the same trait: `all_reduce_sum` maps
//! to `ncclAllReduce(sum)`, `broadcast` to `ncclBroadcast`, `barrier` to an all-reduce of one
//! element; nothing in `train` changes.

mod local;

pub use local::LocalCollective;

use candle_core::Tensor;

use crate::Result;

/// A group of `world_size` ranks that exchange tensors. Every rank must call the same
/// operations in the same order (as with MPI/NCCL); a rank that stops calling blocks the others.
pub trait Collective: Send {
    /// This rank's index in `0..world_size`.
    fn rank(&self) -> usize;
    /// The number of ranks in the group.
    fn world_size(&self) -> usize;
    /// The element-wise sum of `t` over all ranks (same shape on every rank), in f32. The sum
    /// is taken in rank order, so every rank gets the same bits.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s `t` (every rank passes a tensor of the same shape).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}
