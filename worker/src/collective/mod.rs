//! Collectives between the ranks of a data-parallel (training) or tensor-parallel (inference)
//! group: the [`Collective`] trait (all-reduce sum, broadcast, byte messages, barrier) and its
//! implementations:
//! - [`LocalCollective`]: N ranks on threads of one process, exchanging through host memory (CPU
//!   data/tensor parallelism, tests, and several ranks on one GPU);
//! - `NcclCollective` (feature `nccl`): one rank per GPU, over NCCL, ranks in one process or in
//!   several (the unique id travels through a file).
//!
//! Models and the trainer only talk to the trait.

mod local;
#[cfg(feature = "nccl")]
mod nccl;

pub use local::LocalCollective;
#[cfg(feature = "nccl")]
pub use nccl::NcclCollective;

use std::sync::Arc;

use candle_core::Tensor;

use crate::Result;

/// A group of `world_size` ranks that exchange tensors. Every rank must call the same
/// operations in the same order (as with MPI/NCCL); a rank that stops calling blocks the others.
pub trait Collective: Send {
    /// This rank's index in `0..world_size`.
    fn rank(&self) -> usize;
    /// The number of ranks in the group.
    fn world_size(&self) -> usize;
    /// The element-wise sum of `t` over all ranks (same shape and dtype on every rank), in `t`'s
    /// dtype and on `t`'s device. Every rank gets the same bits.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s `t` (every rank passes a tensor of the same shape).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Rank `root`'s `bytes`; the other ranks pass anything (their input is ignored) and do not
    /// need to know the length. A tensor-parallel leader sends its followers their work this way.
    fn broadcast_bytes(&self, bytes: &[u8], root: usize) -> Result<Vec<u8>>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// A collective shared by the layers of one rank's model (they call it from the rank's thread).
pub type SharedCollective = Arc<dyn Collective + Sync>;
