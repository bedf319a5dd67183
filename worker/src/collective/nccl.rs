//! [`NcclCollective`]: one rank per GPU over NCCL (feature `nccl`). The ranks may be processes
//! (one per GPU of a node: the tensor-parallel group the coordinator starts) or threads.
//!
//! Rank 0 creates the NCCL unique id and writes it to a file the other ranks wait for: the id is
//! 128 opaque bytes, so a file on the node (or a shared volume) is the simplest channel that
//! needs nothing but the file system. The communicator runs on the candle device's own stream, so
//! collectives are ordered with the kernels around them without extra synchronisation.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::Collective;
use crate::{Error, Result};

/// The NCCL communicator. NCCL allows a communicator to be driven from any thread as long as
/// calls do not overlap; the mutex serialises them, which is what makes sharing it sound.
struct CommCell(Mutex<Comm>);

// SAFETY: see `CommCell`: every use of the raw communicator goes through the mutex.
unsafe impl Send for CommCell {}
// SAFETY: as above.
unsafe impl Sync for CommCell {}

/// One rank of an NCCL group on one GPU.
#[derive(Clone)]
pub struct NcclCollective {
    comm: Arc<CommCell>,
    device: Device,
    rank: usize,
    world: usize,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclCollective(rank {} of {})", self.rank, self.world)
    }
}

/// Size of an NCCL unique id (`ncclUniqueId.internal`).
const ID_BYTES: usize = 128;

impl NcclCollective {
    /// Joins group `world` as `rank` on `device` (a CUDA device). Rank 0 writes a new unique id
    /// to `id_file` (atomically, replacing what is there); the others wait up to `timeout` for
    /// it. The path must be fresh for each group start, or a follower could read an old id.
    pub fn join(
        rank: usize,
        world: usize,
        device: &Device,
        id_file: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        if world == 0 || rank >= world {
            return Err(Error::Unsupported(format!(
                "NCCL rank {rank} is not in a group of {world}"
            )));
        }
        let id = if rank == 0 {
            let id = Id::new().map_err(|e| nccl_error("creating the unique id", e))?;
            write_id(id_file, &id)?;
            id
        } else {
            wait_for_id(id_file, timeout)?
        };
        let cuda = device.as_cuda_device().map_err(|_| {
            Error::Unsupported(format!(
                "NCCL needs a CUDA device, got {device:?}: start the rank with --device cuda:N"
            ))
        })?;
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, id)
            .map_err(|e| nccl_error("joining the group", e))?;
        Ok(Self {
            comm: Arc::new(CommCell(Mutex::new(comm))),
            device: device.clone(),
            rank,
            world,
        })
    }

    /// Runs `op` on `t` moved to this rank's GPU (contiguous), returning it on `t`'s device.
    fn run(&self, t: &Tensor, op: NcclOp) -> Result<Tensor> {
        let on_gpu = t.to_device(&self.device)?.contiguous()?;
        let out = on_gpu.apply_op1_no_bwd(&NcclTensorOp {
            comm: self.comm.clone(),
            op,
        })?;
        Ok(out.to_device(t.device())?)
    }
}

#[derive(Debug, Clone, Copy)]
enum NcclOp {
    AllReduceSum,
    Broadcast(usize),
}

/// The candle op that hands a contiguous GPU buffer to NCCL and returns the received buffer.
struct NcclTensorOp {
    comm: Arc<CommCell>,
    op: NcclOp,
}

impl NcclTensorOp {
    fn exchange<T: CudaDType + DeviceRepr + ValidAsZeroBits + NcclType>(
        &self,
        storage: &CudaStorage,
        start: usize,
        end: usize,
    ) -> candle_core::Result<CudaStorage> {
        let dev = storage.device();
        let src = storage.as_cuda_slice::<T>()?.slice(start..end);
        let mut dst: CudaSlice<T> = dev.alloc_zeros::<T>(end - start)?;
        let comm = self
            .comm
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("NCCL communicator poisoned".into()))?;
        let res = match self.op {
            NcclOp::AllReduceSum => comm.all_reduce(&src, &mut dst, &ReduceOp::Sum),
            NcclOp::Broadcast(root) => comm.broadcast(Some(&src), &mut dst, root as i32),
        };
        res.map_err(|e| candle_core::Error::Msg(format!("NCCL {:?}: {e:?}", self.op)))?;
        Ok(CudaStorage::wrap_cuda_slice(dst, dev.clone()))
    }
}

impl CustomOp1 for NcclTensorOp {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives need GPU tensors")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("NCCL collectives need a contiguous tensor")
        };
        let out = match storage.dtype() {
            DType::BF16 => self.exchange::<half::bf16>(storage, start, end)?,
            DType::F16 => self.exchange::<half::f16>(storage, start, end)?,
            DType::F32 => self.exchange::<f32>(storage, start, end)?,
            DType::U32 => self.exchange::<u32>(storage, start, end)?,
            DType::U8 => self.exchange::<u8>(storage, start, end)?,
            other => candle_core::bail!("NCCL collective on {other:?} tensors is not supported"),
        };
        Ok((out, layout.shape().clone()))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        // No shortcut for a world of one: the device check exercises NCCL at that size.
        self.run(t, NcclOp::AllReduceSum)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world {
            return Err(Error::Unsupported(format!(
                "broadcast from rank {root} in a group of {}",
                self.world
            )));
        }
        self.run(t, NcclOp::Broadcast(root))
    }

    fn broadcast_bytes(&self, bytes: &[u8], root: usize) -> Result<Vec<u8>> {
        // The length first (followers do not know it), then the bytes.
        let len = u32::try_from(bytes.len()).map_err(|_| {
            Error::Unsupported(format!("a {} byte message is too large", bytes.len()))
        })?;
        let len = if self.rank == root { len } else { 0 };
        let len = self.broadcast(&Tensor::new(&[len], &self.device)?, root)?;
        let n = len.to_vec1::<u32>()?[0] as usize;
        if n == 0 {
            return Ok(Vec::new());
        }
        let data = if self.rank == root {
            Tensor::from_slice(bytes, n, &self.device)?
        } else {
            Tensor::zeros(n, DType::U8, &self.device)?
        };
        Ok(self.broadcast(&data, root)?.to_vec1::<u8>()?)
    }

    fn barrier(&self) -> Result<()> {
        let one = Tensor::ones(1, DType::F32, &self.device)?;
        let sum = self.run(&one, NcclOp::AllReduceSum)?.to_vec1::<f32>()?;
        if sum[0] as usize != self.world {
            return Err(Error::Unsupported(format!(
                "NCCL barrier: {} of {} ranks answered",
                sum[0], self.world
            )));
        }
        Ok(())
    }
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Unsupported(format!("NCCL: {what} failed: {e:?}"))
}

fn write_id(path: &Path, id: &Id) -> Result<()> {
    let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| {
        Error::Unsupported(format!("writing the NCCL id file {}: {e}", path.display()))
    };
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn wait_for_id(path: &Path, timeout: Duration) -> Result<Id> {
    let started = Instant::now();
    loop {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == ID_BYTES => {
                let mut internal = [0 as std::ffi::c_char; ID_BYTES];
                for (dst, src) in internal.iter_mut().zip(&bytes) {
                    *dst = *src as std::ffi::c_char;
                }
                return Ok(Id::uninit(internal));
            }
            Ok(bytes) => {
                return Err(Error::Unsupported(format!(
                    "NCCL id file {} holds {} bytes, expected {ID_BYTES}",
                    path.display(),
                    bytes.len()
                )));
            }
            Err(_) if started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return Err(Error::Unsupported(format!(
                    "NCCL id file {} did not appear within {:?} ({e}): is rank 0 running with the \
                     same --tp-init-file?",
                    path.display(),
                    timeout
                )));
            }
        }
    }
}
