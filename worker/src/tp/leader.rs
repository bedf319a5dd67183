//! The leader's side (rank 0): [`TpLeader`] sends each command to the followers and runs the
//! status rounds; [`TpModel`] and [`TpCache`] wrap rank 0's own shard and its caches so that the
//! engine and choice scoring drive a tensor-parallel group through the same [`Decoder`] and
//! [`RowCache`] calls as a single model.
//!
//! Caches and models carry ids the followers key their copies by. A cache is created on the
//! followers at its first use (ids are never reused), and a dropped cache or model is released
//! there with the next command, not from `Drop` (which cannot fail and may run while unwinding).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};

use super::command::{Command, ForwardCmd, LoadSpec, Message, Release};
use super::status::{describe, status_round};
use crate::collective::SharedCollective;
use crate::models::{Decoder, ForwardInput, LogitsAt};
use crate::score::choice::RowCache;
use crate::{Error, Result};

/// Rank 0 of a tensor-parallel group. Cheap to clone (one shared handle).
#[derive(Clone)]
pub struct TpLeader {
    inner: Arc<LeaderInner>,
}

struct LeaderInner {
    coll: SharedCollective,
    /// Where the status flags live (the collective's device).
    device: Device,
    next_id: AtomicU64,
    released: Mutex<Vec<Release>>,
    /// Held for a whole command (broadcast, local work, status rounds): commands from several
    /// threads must reach the followers in the order they run here.
    state: Mutex<LeaderState>,
}

#[derive(Default)]
struct LeaderState {
    /// Why the group can no longer be used (its ranks may be out of step).
    broken: Option<String>,
    shut_down: bool,
}

impl std::fmt::Debug for TpLeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpLeader")
            .field("world_size", &self.world_size())
            .field("device", &self.inner.device)
            .finish()
    }
}

impl TpLeader {
    /// The leader of the group `coll` belongs to; `coll` must be rank 0.
    pub fn new(coll: SharedCollective, device: Device) -> Result<Self> {
        if coll.rank() != 0 {
            return Err(Error::Unsupported(format!(
                "the tensor-parallel leader must be rank 0, not rank {}",
                coll.rank()
            )));
        }
        Ok(TpLeader {
            inner: Arc::new(LeaderInner {
                coll,
                device,
                next_id: AtomicU64::new(1),
                released: Mutex::new(Vec::new()),
                state: Mutex::new(LeaderState::default()),
            }),
        })
    }

    pub fn world_size(&self) -> usize {
        self.inner.coll.world_size()
    }

    /// Rank 0's collective (what its own shard is loaded with).
    pub fn collective(&self) -> &SharedCollective {
        &self.inner.coll
    }

    /// Why the group is unusable, if it is: a forward pass failed on rank 0, so the followers
    /// may be waiting inside the model's collectives. The worker should exit (its followers with
    /// it) and let the coordinator re-run its lease elsewhere.
    pub fn broken(&self) -> Option<String> {
        match self.inner.state.lock() {
            Ok(st) => st.broken.clone(),
            Err(_) => Some("a command panicked on rank 0".into()),
        }
    }

    /// Tells the followers to leave their loop. Later commands fail.
    pub fn shutdown(&self) -> Result<()> {
        let mut st = self.inner.state.lock().map_err(|_| poisoned())?;
        self.shutdown_locked(&mut st)
    }

    /// [`TpLeader::shutdown`] unless a command is running now (the exit path after a lease was
    /// abandoned mid-way: a follower blocked on that command ends with the process instead).
    pub fn try_shutdown(&self) -> bool {
        match self.inner.state.try_lock() {
            Ok(mut st) => self.shutdown_locked(&mut st).is_ok(),
            Err(_) => false,
        }
    }

    fn shutdown_locked(&self, st: &mut LeaderState) -> Result<()> {
        if st.shut_down || st.broken.is_some() {
            return Ok(());
        }
        st.shut_down = true;
        let msg = Message {
            releases: Vec::new(),
            command: Command::Shutdown,
        };
        self.inner.coll.broadcast_bytes(&msg.encode(), 0)?;
        Ok(())
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn release(&self, r: Release) {
        if let Ok(mut released) = self.inner.released.lock() {
            released.push(r);
        }
    }

    /// Runs `command` on every follower and `local` on rank 0, in step; `Ok` only if every rank
    /// succeeded, else an error naming the ranks that failed and why.
    pub(crate) fn run<T>(&self, command: Command, local: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut st = self.inner.state.lock().map_err(|_| poisoned())?;
        if let Some(why) = &st.broken {
            return Err(Error::Unsupported(format!(
                "the tensor-parallel group is unusable: {why}"
            )));
        }
        if st.shut_down {
            return Err(Error::Unsupported(
                "the tensor-parallel group was shut down".into(),
            ));
        }
        let name = command.name();
        let ready_round = command.needs_ready_round();
        let releases = self
            .inner
            .released
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        let bytes = Message { releases, command }.encode();
        let coll = &*self.inner.coll;
        if let Err(e) = coll.broadcast_bytes(&bytes, 0) {
            return Err(broke(
                &mut st,
                format!("sending a {name} command failed: {e}"),
            ));
        }
        if ready_round {
            let failures = self.round(&mut st, Ok(()))?;
            if !failures.is_empty() {
                return Err(failed(name, &describe(&failures)));
            }
        }
        let out = local();
        if ready_round && let Err(e) = &out {
            // The followers may be inside the model's collectives, which rank 0 left.
            return Err(broke(&mut st, format!("rank 0 failed in a {name}: {e}")));
        }
        let mine = out.as_ref().map(|_| ()).map_err(ToString::to_string);
        let failures = self.round(&mut st, mine)?;
        match out {
            Err(e) => Err(e),
            Ok(_) if !failures.is_empty() => Err(failed(name, &describe(&failures))),
            Ok(v) => Ok(v),
        }
    }

    fn round(
        &self,
        st: &mut LeaderState,
        mine: std::result::Result<(), String>,
    ) -> Result<Vec<super::status::RankFailure>> {
        status_round(&*self.inner.coll, &self.inner.device, mine)
            .map_err(|e| broke(st, format!("a status round failed: {e}")))
    }
}

fn poisoned() -> Error {
    Error::Unsupported("the tensor-parallel group is unusable: a command panicked on rank 0".into())
}

fn failed(name: &str, why: &str) -> Error {
    Error::Unsupported(format!("tensor-parallel {name} failed on {why}"))
}

/// Marks the group unusable and returns the error saying why.
fn broke(st: &mut LeaderState, why: String) -> Error {
    tracing::error!("tensor-parallel group unusable: {why}");
    st.broken = Some(why.clone());
    Error::Unsupported(format!("the tensor-parallel group is unusable: {why}"))
}

/// A model as the engine sees it: rank 0's shard, mirrored by the followers when there is a
/// group, or a plain model (`leader: None`) when there is not.
pub struct TpModel<M> {
    model: M,
    id: u64,
    leader: Option<TpLeader>,
}

impl<M> TpModel<M> {
    /// A model without a group: every call goes straight to `model`.
    pub fn solo(model: M) -> Self {
        TpModel {
            model,
            id: 0,
            leader: None,
        }
    }

    /// Loads `spec` on every rank: the followers through their loader, rank 0 with
    /// `load_local`. Without a leader this is `load_local` alone.
    pub fn load(
        leader: Option<&TpLeader>,
        spec: &LoadSpec,
        load_local: impl FnOnce() -> Result<M>,
    ) -> Result<Self> {
        let Some(leader) = leader else {
            return load_local().map(Self::solo);
        };
        let id = leader.next_id();
        let command = Command::Load {
            model: id,
            spec: spec.clone(),
        };
        let model = leader.run(command, load_local)?;
        Ok(TpModel {
            model,
            id,
            leader: Some(leader.clone()),
        })
    }

    /// Rank 0's shard.
    pub fn inner(&self) -> &M {
        &self.model
    }
}

impl<M> Drop for TpModel<M> {
    fn drop(&mut self) {
        if let Some(leader) = &self.leader {
            leader.release(Release::Model(self.id));
        }
    }
}

/// Rank 0's cache with the id the followers know their copies by.
pub struct TpCache<C> {
    cache: C,
    id: u64,
    model: u64,
    leader: Option<TpLeader>,
}

impl<C> Drop for TpCache<C> {
    fn drop(&mut self) {
        if let Some(leader) = &self.leader {
            leader.release(Release::Cache(self.id));
        }
    }
}

impl<C: RowCache> RowCache for TpCache<C> {
    fn seq_len(&self) -> usize {
        self.cache.seq_len()
    }
    fn bytes(&self) -> usize {
        self.cache.bytes()
    }
    fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        let Some(leader) = &self.leader else {
            return Ok(TpCache {
                cache: self.cache.select_rows(rows)?,
                id: 0,
                model: self.model,
                leader: None,
            });
        };
        let dst = leader.next_id();
        let command = Command::SelectRows {
            model: self.model,
            src: self.id,
            dst,
            rows: rows.iter().map(|&r| r as u32).collect(),
        };
        let cache = leader.run(command, || self.cache.select_rows(rows))?;
        Ok(TpCache {
            cache,
            id: dst,
            model: self.model,
            leader: Some(leader.clone()),
        })
    }
}

impl<M: Decoder> Decoder for TpModel<M> {
    type Cache = TpCache<M::Cache>;

    fn new_cache(&self) -> Self::Cache {
        TpCache {
            cache: self.model.new_cache(),
            id: self.leader.as_ref().map_or(0, TpLeader::next_id),
            model: self.id,
            leader: self.leader.clone(),
        }
    }

    fn forward(
        &self,
        input: &ForwardInput,
        cache: &mut Self::Cache,
        at: LogitsAt,
    ) -> Result<Tensor> {
        let Some(leader) = &self.leader else {
            return self.model.forward(input, &mut cache.cache, at);
        };
        let command = Command::Forward(forward_command(self.id, cache.id, input, at)?);
        leader.run(command, || self.model.forward(input, &mut cache.cache, at))
    }

    fn retain_rows(&self, cache: &mut Self::Cache, rows: &[usize]) -> Result<()> {
        let Some(leader) = &self.leader else {
            return self.model.retain_rows(&mut cache.cache, rows);
        };
        let command = Command::RetainRows {
            model: self.id,
            cache: cache.id,
            rows: rows.iter().map(|&r| r as u32).collect(),
        };
        leader.run(command, || self.model.retain_rows(&mut cache.cache, rows))
    }

    fn device(&self) -> &Device {
        self.model.device()
    }

    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }
}

/// The host copy of `input` the followers rebuild their tensors from.
fn forward_command(
    model: u64,
    cache: u64,
    input: &ForwardInput,
    at: LogitsAt,
) -> Result<ForwardCmd> {
    let (batch, seq) = input.tokens.dims2()?;
    let host = |t: &Tensor| t.to_device(&Device::Cpu)?.flatten_all();
    let key_mask = match &input.key_mask {
        None => None,
        Some(m) => Some((m.dim(1)?, host(m)?.to_vec1::<u8>()?)),
    };
    Ok(ForwardCmd {
        model,
        cache,
        batch,
        seq,
        tokens: host(&input.tokens)?.to_vec1()?,
        positions: host(&input.positions)?.to_vec1()?,
        key_mask,
        at,
    })
}
