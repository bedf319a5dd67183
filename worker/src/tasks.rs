//! Turns a lease from the coordinator into one result per item: loads the lease's model once (and
//! keeps it for the next leases) and hands it to the runner of the lease's kind
//! ([`crate::runners`]: generate, embed, choice, reward), which converts the items and runs them.
//!
//! Decoders (generation and step-3 choice scoring), embedders (step 2, a sentence-transformers
//! folder) and reward models (step 4) are kept in caches of their own, so that a worker can hold
//! one of each at once.
//!
//! An item that cannot be run (a prompt the template rejects, an empty prompt, ...) gets an
//! [`pb::ItemError`]; only failures that concern the whole lease (the model does not load, the
//! decoder fails) fail [`Executor::run_lease`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use evalfleet_proto::v1 as pb;

use crate::embed::Embedder;
use crate::engine::GenOptions;
use crate::models::{BaseCache, KvCache, LoadedModel, load_decoder};
use crate::runners::{self, LeaseKind, Results};
use crate::score::choice;
use crate::score::reward::{self, RewardScorer};
use crate::tokenize::{
    PromptBuilder, PromptStyle, TextTokenizer, generation_config_eos_ids, get_template,
};
use crate::tp::{LoadSpec, TpCache, TpLeader, TpModel, shard_load_options};
use crate::{Error, Result};

/// How the executor loads models and batches generation.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub device: Device,
    /// Most sequences run together: the worker's cap (`usize::MAX` = none). A lease's
    /// `batch_size` (the job's) lowers it for that lease; see [`Executor::lease_batch`].
    pub max_batch: usize,
    /// Most padded prompt tokens in one prefill (0 = no limit); bounds prefill memory.
    pub max_batch_tokens: usize,
    /// Loaded models kept for later leases (at least 1); the least recently used goes first.
    pub keep_models: usize,
    /// Tensor parallelism: this worker is rank 0 of a group whose followers load their shards
    /// of each decoder and mirror its calls ([`crate::tp`]); `None`: one rank. Embedding and
    /// reward models are not sharded: they run on rank 0 alone.
    pub tp: Option<TpLeader>,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        ExecutorOptions {
            device: Device::Cpu,
            max_batch: 8,
            max_batch_tokens: 0,
            keep_models: 1,
            tp: None,
        }
    }
}

/// A loaded model with what prompts and decoding need from its files.
struct LoadedEntry {
    key: String,
    /// Rank 0's shard under tensor parallelism, else the whole model.
    model: TpModel<LoadedModel>,
    tokenizer: TextTokenizer,
    /// `eos_token_id` of generation_config.json (HF folders), added to every item's stop ids.
    config_eos: Vec<u32>,
    /// Prompt builders by template name ("" = the model's chat template), made on first use.
    builders: HashMap<String, PromptBuilder>,
    /// Step-3 shared-prefix KV caches of this model, kept across leases.
    prefixes: choice::PrefixCache<TpCache<KvCache>>,
}

/// Runs leases; holds loaded models by [`pb::ModelSpec::key`].
pub struct Executor {
    opts: ExecutorOptions,
    /// Most recently used last.
    models: Vec<LoadedEntry>,
    /// Embedding models by [`pb::ModelSpec::key`], most recently used last; bounded by
    /// `keep_models` like the decoders but counted apart from them.
    embedders: Vec<(String, Embedder)>,
    /// Step-4 reward models by [`pb::ModelSpec::key`], kept like the embedders.
    rewarders: Vec<(String, RewardScorer)>,
    /// The base model of adapter leases, read once for all its adapters (sweeps).
    bases: BaseCache,
}

impl Executor {
    pub fn new(opts: ExecutorOptions) -> Self {
        Executor {
            opts,
            models: Vec::new(),
            embedders: Vec::new(),
            rewarders: Vec::new(),
            bases: BaseCache::new(),
        }
    }

    /// How many times a base model of adapter leases was read from disk (see [`BaseCache`]).
    pub fn base_loads(&self) -> usize {
        self.bases.base_loads()
    }

    pub fn options(&self) -> &ExecutorOptions {
        &self.opts
    }

    /// Sequences run together for `lease`: the job's batch size it carries, within the
    /// worker's cap; a lease that names none (0) runs at the cap.
    pub fn lease_batch(&self, lease: &pb::Lease) -> usize {
        let cap = self.opts.max_batch.max(1);
        match lease.batch_size as usize {
            0 => cap,
            job => job.min(cap),
        }
    }

    /// Keys of the models currently loaded.
    pub fn models_held(&self) -> Vec<String> {
        let embedders = self.embedders.iter().map(|(key, _)| key.clone());
        let rewarders = self.rewarders.iter().map(|(key, _)| key.clone());
        self.models
            .iter()
            .map(|m| m.key.clone())
            .chain(embedders)
            .chain(rewarders)
            .collect()
    }

    /// Runs every item of `lease`, calling `sink` with each item's result as soon as it is ready:
    /// loads the lease's model and hands it to the runner of the lease's kind
    /// ([`crate::runners`]).
    pub fn run_lease(
        &mut self,
        lease: &pb::Lease,
        sink: &mut dyn FnMut(pb::ItemResult),
    ) -> Result<()> {
        let started = Instant::now();
        let spec = lease.model.as_ref().ok_or_else(|| {
            Error::Unsupported(format!("lease {} names no model", lease.lease_id))
        })?;
        let batch = self.lease_batch(lease);
        let mut results = Results::new(lease, sink);
        let secs = || format!("{:.2}", started.elapsed().as_secs_f64());
        match LeaseKind::of(lease) {
            LeaseKind::Embed => {
                let pairs =
                    runners::embed::run(self.embedder(spec, batch)?, lease, batch, &mut results);
                tracing::info!(
                    lease = lease.lease_id,
                    pairs,
                    secs = secs(),
                    "embed lease done"
                );
            }
            LeaseKind::Reward => {
                runners::reward::run(self.rewarder(spec)?, lease, batch, &mut results);
                tracing::info!(lease = lease.lease_id, secs = secs(), "reward lease done");
            }
            LeaseKind::Choice => {
                let opts = choice::ScoreOptions {
                    max_batch: batch,
                    max_batch_tokens: self.opts.max_batch_tokens,
                };
                let Some(entry) = self.decoder_for(spec, lease, &mut results)? else {
                    return Ok(());
                };
                let builder = &entry.builders[template_of(lease)];
                let (hits, computed) = entry.prefixes.stats();
                runners::choice::run(
                    &entry.model,
                    builder,
                    lease,
                    &opts,
                    &mut entry.prefixes,
                    &mut results,
                )?;
                let (hits_now, computed_now) = entry.prefixes.stats();
                tracing::info!(
                    lease = lease.lease_id,
                    items = lease.items.len(),
                    prefix_hits = hits_now - hits,
                    prefix_levels_computed = computed_now - computed,
                    secs = secs(),
                    "choice lease done"
                );
            }
            LeaseKind::Generate => {
                let opts = GenOptions {
                    max_batch: batch,
                    max_batch_tokens: self.opts.max_batch_tokens,
                };
                let Some(entry) = self.decoder_for(spec, lease, &mut results)? else {
                    return Ok(());
                };
                let builder = &entry.builders[template_of(lease)];
                let new_tokens = runners::generate::run(
                    &entry.model,
                    builder,
                    &entry.config_eos,
                    lease,
                    &opts,
                    &mut results,
                )?;
                let elapsed = started.elapsed().as_secs_f64();
                tracing::info!(
                    lease = lease.lease_id,
                    items = lease.items.len(),
                    new_tokens,
                    secs = secs(),
                    tokens_per_s = format!("{:.1}", new_tokens as f64 / elapsed.max(1e-9)),
                    "lease done"
                );
            }
        }
        Ok(())
    }

    /// The decoder for `spec` with the prompt builder of `lease`'s template made; `None` when
    /// the template cannot be made (every item of the lease has then failed, saying why).
    fn decoder_for(
        &mut self,
        spec: &pb::ModelSpec,
        lease: &pb::Lease,
        results: &mut Results,
    ) -> Result<Option<&mut LoadedEntry>> {
        let entry = self.model(spec)?;
        Ok(entry
            .ready_builder(template_of(lease), results)
            .then_some(entry))
    }

    /// The embedder for `spec` (embedding `batch` texts per forward pass), loading it when needed
    /// and dropping the least recently used embedder beyond `keep_models`.
    fn embedder(&mut self, spec: &pb::ModelSpec, batch: usize) -> Result<&Embedder> {
        let key = model_key(spec);
        let keep = self.opts.keep_models;
        let held = touch_or_make_room(
            &mut self.embedders,
            keep,
            |(k, _)| k,
            &key,
            "embedding model",
        );
        if !held {
            let started = Instant::now();
            let embedder = Embedder::load(Path::new(&spec.model_path), &self.opts.device)?;
            tracing::info!(
                model = key,
                dim = embedder.dim(),
                max_seq_length = embedder.max_seq_length(),
                secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                "embedding model loaded"
            );
            self.embedders.push((key, embedder));
        }
        let (_, embedder) = self
            .embedders
            .last_mut()
            .expect("an embedder was just pushed");
        embedder.set_batch_size(batch);
        Ok(embedder)
    }

    /// The reward model for `spec` (docs/FIDELITY.md §4.5; bf16 unless the spec's dtype says
    /// otherwise), loading it when needed and dropping the least recently used beyond
    /// `keep_models`.
    fn rewarder(&mut self, spec: &pb::ModelSpec) -> Result<&RewardScorer> {
        let key = model_key(spec);
        let keep = self.opts.keep_models;
        if !touch_or_make_room(&mut self.rewarders, keep, |(k, _)| k, &key, "reward model") {
            // Reward checkpoints carry their adapter merged (what `evalfleet train-rm` writes);
            // scoring the base while an adapter was asked for would be silently wrong.
            if let Some(adapter) = spec.adapter_paths.first() {
                return Err(Error::Unsupported(format!(
                    "reward model {}: adapters are not applied to reward models (got {adapter});                      point reward_model_path at a folder with the adapter merged",
                    spec.model_path
                )));
            }
            let started = Instant::now();
            let dtype = reward::reward_dtype(&spec.dtype)?;
            let mut scorer =
                RewardScorer::load(Path::new(&spec.model_path), dtype, &self.opts.device)?;
            if self.opts.max_batch_tokens > 0 {
                scorer = scorer.with_max_batch_tokens(self.opts.max_batch_tokens);
            }
            tracing::info!(
                model = key,
                dtype = ?dtype,
                secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                "reward model loaded"
            );
            self.rewarders.push((key, scorer));
        }
        let (_, scorer) = self
            .rewarders
            .last()
            .expect("a reward model was just pushed");
        Ok(scorer)
    }

    /// The loaded model for `spec`, loading it (and dropping the least recently used beyond
    /// `keep_models`) when needed.
    fn model(&mut self, spec: &pb::ModelSpec) -> Result<&mut LoadedEntry> {
        let key = model_key(spec);
        let keep = self.opts.keep_models;
        if !touch_or_make_room(&mut self.models, keep, |m| &m.key, &key, "model") {
            let tp = self.opts.tp.as_ref();
            let entry = LoadedEntry::load(key, spec, &self.opts.device, tp, &mut self.bases)?;
            self.models.push(entry);
        }
        Ok(self.models.last_mut().expect("a model was just pushed"))
    }
}

/// The model caches' policy (most recently used last): when `key` is held, moves it last and
/// says so; otherwise drops the least recently used entries until a new one fits under `keep`
/// (at least 1), freeing memory before the next model loads rather than after.
fn touch_or_make_room<T>(
    held: &mut Vec<T>,
    keep: usize,
    key_of: impl Fn(&T) -> &String,
    key: &str,
    what: &str,
) -> bool {
    if let Some(pos) = held.iter().position(|e| key_of(e) == key) {
        let entry = held.remove(pos);
        held.push(entry);
        return true;
    }
    while held.len() >= keep.max(1) {
        let old = held.remove(0);
        tracing::info!(model = key_of(&old), "unloading {what}");
    }
    false
}

impl crate::rpc::LeaseRunner for Executor {
    /// Loads the lease's model now, so that the worker can report it ready before generating.
    fn prepare_lease(&mut self, lease: &pb::Lease) -> Result<()> {
        let Some(spec) = &lease.model else {
            return Ok(());
        };
        match LeaseKind::of(lease) {
            LeaseKind::Embed => self.embedder(spec, self.lease_batch(lease)).map(|_| ()),
            LeaseKind::Reward => self.rewarder(spec).map(|_| ()),
            // Choice leases (step 3) load a decoder like generation leases.
            LeaseKind::Choice | LeaseKind::Generate => self.model(spec).map(|_| ()),
        }
    }
    fn run_lease(&mut self, lease: &pb::Lease, emit: &mut dyn FnMut(pb::ItemResult)) -> Result<()> {
        Executor::run_lease(self, lease, emit)
    }
    fn models_held(&self) -> Vec<String> {
        Executor::models_held(self)
    }
}

/// The lease's template name ("" = the model's chat template).
fn template_of(lease: &pb::Lease) -> &str {
    lease.prompt.as_ref().map_or("", |p| p.template.as_str())
}

/// The spec's key, or one made from its fields when the coordinator left it empty.
fn model_key(spec: &pb::ModelSpec) -> String {
    if spec.key.is_empty() {
        format!(
            "{}+{}:{}",
            spec.model_path,
            spec.adapter_paths.join("+"),
            spec.dtype
        )
    } else {
        spec.key.clone()
    }
}

impl LoadedEntry {
    /// Loads `spec`'s model ([`load_decoder`]); with a tensor-parallel group, every rank loads
    /// its shard.
    fn load(
        key: String,
        spec: &pb::ModelSpec,
        device: &Device,
        tp: Option<&TpLeader>,
        bases: &mut BaseCache,
    ) -> Result<Self> {
        let started = Instant::now();
        let path = Path::new(&spec.model_path);
        let adapters: Vec<PathBuf> = spec.adapter_paths.iter().map(PathBuf::from).collect();
        let opts = shard_load_options(device, &spec.dtype, tp.map(TpLeader::collective))?;
        let load_spec = LoadSpec {
            model_path: spec.model_path.clone(),
            adapter_paths: spec.adapter_paths.clone(),
            dtype: spec.dtype.clone(),
        };
        let model = TpModel::load(tp, &load_spec, || {
            load_decoder(path, &adapters, &opts, bases)
        })?;
        let (shard, ranks) = (model.inner(), tp.map_or(1, TpLeader::world_size));
        // LLaMA-Factory loads the tokenizer from the base model, never from the adapter.
        let (tokenizer, config_eos) = match shard.gguf_content() {
            Some(content) => (
                TextTokenizer::from_gguf_content(content, shard.path())?,
                Vec::new(),
            ),
            None => (
                TextTokenizer::from_hf_dir(shard.path())?,
                generation_config_eos_ids(shard.path())?,
            ),
        };
        tracing::info!(
            model = key,
            path = %shard.path().display(),
            dtype = ?shard.dtype(),
            adapters = adapters.len(),
            tensor_parallel = ranks,
            secs = format!("{:.2}", started.elapsed().as_secs_f64()),
            "model loaded"
        );
        Ok(LoadedEntry {
            key,
            model,
            tokenizer,
            config_eos,
            builders: HashMap::new(),
            prefixes: choice::PrefixCache::default(),
        })
    }

    /// Makes the prompt builder for a LLaMA-Factory template name, or for the model's chat
    /// template when `template` is "".
    fn prepare_builder(&mut self, template: &str) -> Result<()> {
        if !self.builders.contains_key(template) {
            let style = if template.is_empty() {
                PromptStyle::ModelChatTemplate
            } else {
                PromptStyle::LlamaFactory(get_template(template)?)
            };
            let builder = PromptBuilder::new(style, &self.tokenizer)?;
            self.builders.insert(template.to_string(), builder);
        }
        Ok(())
    }

    /// Makes the prompt builder for `template` ([`LoadedEntry::prepare_builder`]); a template
    /// that cannot be made fails every item of the lease the same way (not retryable), and
    /// `false` says there is nothing left to run.
    fn ready_builder(&mut self, template: &str, results: &mut Results) -> bool {
        let made = self.prepare_builder(template);
        if let Err(e) = &made {
            results.fail_all(e);
        }
        made.is_ok()
    }
}
