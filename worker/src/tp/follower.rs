//! The followers' side (ranks 1..k): [`follow`] receives the leader's commands and runs each on
//! this rank's shard, in the same order, reporting success or failure in the status rounds.
//!
//! A command that fails here fails on the leader too (it learns of it in the status round), and
//! the loop goes on with the next command. Only a broken exchange (a collective error, a message
//! that does not decode) ends the loop with an error: the group can no longer stay in step, so
//! the caller must end the process.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::command::{Command, ForwardCmd, LoadSpec, Message, Release};
use super::status::status_round;
use crate::collective::{Collective, SharedCollective};
use crate::models::{
    BaseCache, DTypeChoice, Decoder, ForwardInput, LoadOptions, LoadedModel, load_decoder,
};
use crate::score::choice::RowCache;
use crate::{Error, Result};

/// How a follower loads its shard of a model.
pub trait ShardLoader {
    type Model: Decoder<Cache: RowCache>;
    fn load(&mut self, spec: &LoadSpec) -> Result<Self::Model>;
}

/// The real loader: HF folders and GGUF files on this rank's device, sharded by this rank's
/// collective, loaded as rank 0's executor loads them (a sweep's base read once, through a
/// [`BaseCache`] of its own).
pub struct CausalLmShards {
    device: Device,
    coll: SharedCollective,
    bases: BaseCache,
}

impl CausalLmShards {
    pub fn new(device: Device, coll: SharedCollective) -> Self {
        CausalLmShards {
            device,
            coll,
            bases: BaseCache::new(),
        }
    }
}

impl ShardLoader for CausalLmShards {
    type Model = LoadedModel;
    fn load(&mut self, spec: &LoadSpec) -> Result<LoadedModel> {
        let adapters: Vec<std::path::PathBuf> = spec.adapter_paths.iter().map(Into::into).collect();
        let opts = shard_load_options(&self.device, &spec.dtype, Some(&self.coll))?;
        load_decoder(spec.model_path.as_ref(), &adapters, &opts, &mut self.bases)
    }
}

/// Load options for one rank: `coll` (rank and world size) selects the shard.
pub fn shard_load_options(
    device: &Device,
    dtype: &str,
    coll: Option<&SharedCollective>,
) -> Result<LoadOptions> {
    Ok(LoadOptions {
        device: device.clone(),
        dtype: parse_dtype(dtype)?,
        tp: coll.cloned(),
    })
}

/// The `dtype` of a model spec.
pub fn parse_dtype(dtype: &str) -> Result<DTypeChoice> {
    match dtype.to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(DTypeChoice::Auto),
        "f32" | "float32" => Ok(DTypeChoice::F32),
        "f16" | "float16" | "fp16" => Ok(DTypeChoice::F16),
        "bf16" | "bfloat16" => Ok(DTypeChoice::BF16),
        other => Err(Error::Unsupported(format!(
            "dtype {other:?}: expected auto, f32, f16 or bf16"
        ))),
    }
}

/// A follower's models and caches, by the leader's ids.
struct Shards<M: Decoder> {
    models: HashMap<u64, M>,
    /// Each cache with the id of its model.
    caches: HashMap<u64, (u64, M::Cache)>,
}

impl<M: Decoder<Cache: RowCache>> Shards<M> {
    /// The cache `id`, made empty at its first use (the leader never reuses an id).
    fn cache(&mut self, model: u64, id: u64) -> Result<(&M, &mut M::Cache)> {
        let m = self.models.get(&model).ok_or_else(|| {
            Error::Unsupported(format!(
                "no model {model} on this rank (its load failed here?)"
            ))
        })?;
        let (owner, cache) = self
            .caches
            .entry(id)
            .or_insert_with(|| (model, m.new_cache()));
        if *owner != model {
            return Err(Error::Unsupported(format!(
                "cache {id} belongs to model {owner}, not {model}"
            )));
        }
        Ok((m, cache))
    }

    fn release(&mut self, r: Release) {
        match r {
            Release::Cache(id) => {
                self.caches.remove(&id);
            }
            Release::Model(id) => {
                self.models.remove(&id);
            }
        }
    }

    fn select_rows(&mut self, model: u64, src: u64, dst: u64, rows: &[u32]) -> Result<()> {
        let rows: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
        let (_, cache) = self.cache(model, src)?;
        let copy = cache.select_rows(&rows)?;
        self.caches.insert(dst, (model, copy));
        Ok(())
    }
}

/// Serves the leader until it sends Shutdown. Returns an error when the exchange itself fails
/// (the group is out of step; end the process).
pub fn follow<L: ShardLoader>(
    coll: &dyn Collective,
    device: &Device,
    loader: &mut L,
) -> Result<()> {
    let mut shards = Shards::<L::Model> {
        models: HashMap::new(),
        caches: HashMap::new(),
    };
    loop {
        let bytes = coll.broadcast_bytes(&[], 0)?;
        let msg = Message::decode(&bytes)?;
        msg.releases.into_iter().for_each(|r| shards.release(r));
        let outcome = match msg.command {
            Command::Shutdown => return Ok(()),
            Command::Forward(f) => {
                let prepared = prepare(&f, device).and_then(|input| {
                    shards.cache(f.model, f.cache)?;
                    Ok(input)
                });
                let ready = prepared.as_ref().map(|_| ()).map_err(ToString::to_string);
                if !status_round(coll, device, ready)?.is_empty() {
                    // Some rank (maybe this one) could not start: nobody runs it.
                    continue;
                }
                let input = prepared?;
                let (model, cache) = shards.cache(f.model, f.cache)?;
                // The logits are rank 0's to read; here only the cache matters.
                model.forward(&input, cache, f.at).map(|_| ())
            }
            Command::Load { model, spec } => loader.load(&spec).map(|m| {
                shards.models.insert(model, m);
            }),
            Command::RetainRows { model, cache, rows } => {
                let rows: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
                shards
                    .cache(model, cache)
                    .and_then(|(m, c)| m.retain_rows(c, &rows))
            }
            Command::SelectRows {
                model,
                src,
                dst,
                rows,
            } => shards.select_rows(model, src, dst, &rows),
            Command::Sync => Ok(()),
        };
        if let Err(e) = &outcome {
            tracing::warn!("tensor-parallel rank {}: {e}", coll.rank());
        }
        status_round(coll, device, outcome.map_err(|e| e.to_string()))?;
    }
}

/// The forward input on this rank's device.
fn prepare(f: &ForwardCmd, device: &Device) -> Result<ForwardInput> {
    let shape = (f.batch, f.seq);
    let key_mask = match &f.key_mask {
        None => None,
        Some((keys, mask)) => Some(Tensor::from_slice(mask, (f.batch, *keys), device)?),
    };
    Ok(ForwardInput {
        tokens: Tensor::from_slice(&f.tokens, shape, device)?,
        positions: Tensor::from_slice(&f.positions, shape, device)?,
        key_mask,
    })
}
