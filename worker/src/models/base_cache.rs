//! The base-model cache of checkpoint sweeps (issue 7): a sweep evaluates many LoRA adapters over
//! one base, and re-reading the base's safetensors for every adapter would cost a full model
//! load each time. [`BaseCache`] reads the base folder's tensors once (in the compute dtype) and
//! keeps them; each checkpoint is then built from those tensors (candle tensors share their
//! storage, clones are free) with only the linear weights the adapter targets read again and
//! merged into new tensors, exactly as [`super::load_causal_lm`] merges at load. The models are
//! therefore identical to merging at load, and a new adapter costs its own merge plus building
//! the decoder's layers, not a read of the base.
//!
//! One base is held at a time (a sweep has one); loading another base replaces it. Models built
//! from the cache keep their tensors alive on their own, so replacing the base never breaks them.
//! Built layers are not shared: the decoder re-lays out and fuses dense weights when it builds a
//! model, so a worker holds the cached base plus the current checkpoint's layers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::config::DecoderConfig;
use super::decoder::{DecoderModel, WeightSource};
use super::hf::HfWeights;
use super::linear::Weight;
use super::loader::{
    DTypeChoice, LoadOptions, LoadedModel, SourceKind, load_causal_lm, resolve_model_path,
};
use super::lora::Adapter;
use super::shard::{Split, TpGroup};
use crate::Result;

/// The tensors of one base folder as the decoder asked for them, in the compute dtype.
struct BaseTensors {
    /// The base's HF folder (as resolved).
    dir: PathBuf,
    /// The dtype the load options asked for (the key, with `dir`).
    choice: DTypeChoice,
    /// [`WeightSource::tensor`] results by name.
    tensors: HashMap<String, Tensor>,
    /// [`WeightSource::linear_weight`] results of unadapted layers, by prefix.
    linears: HashMap<String, Weight>,
    /// [`WeightSource::lm_head`] results by `tied`, when no adapter targets the head.
    heads: HashMap<bool, Weight>,
}

/// Holds one base model's tensors for building adapted checkpoints of it (see the module docs).
#[derive(Default)]
pub struct BaseCache {
    held: Option<BaseTensors>,
    /// How many times a base was read from disk (a sweep of one base: once per worker).
    base_loads: usize,
    /// How many adapters were applied to a cached base.
    adapters_applied: usize,
}

impl std::fmt::Debug for BaseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseCache")
            .field("base", &self.held.as_ref().map(|b| &b.dir))
            .field("base_loads", &self.base_loads)
            .field("adapters_applied", &self.adapters_applied)
            .finish()
    }
}

impl BaseCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times a base model was read from disk.
    pub fn base_loads(&self) -> usize {
        self.base_loads
    }

    /// How many adapters were applied to a cached base.
    pub fn adapters_applied(&self) -> usize {
        self.adapters_applied
    }

    /// Whether `model_path` with `dtype` is the base held now (so loading it is cheap).
    pub fn holds(&self, model_path: &Path, dtype: DTypeChoice) -> bool {
        let Some(held) = &self.held else {
            return false;
        };
        resolve_model_path(model_path)
            .is_ok_and(|(kind, dir)| kind == SourceKind::HfFolder && dir == held.dir)
            && held.choice == dtype
    }

    /// Loads `model_path` (an HF folder) with `adapters` merged in order, reading the base's
    /// tensors from disk only when this cache does not hold them yet. Anything else (a GGUF
    /// model) is loaded by [`super::load_causal_lm`], which also reports what it refuses.
    pub fn load(
        &mut self,
        model_path: &Path,
        adapters: &[PathBuf],
        opts: &LoadOptions,
    ) -> Result<LoadedModel> {
        let (kind, dir) = resolve_model_path(model_path)?;
        if kind != SourceKind::HfFolder {
            return super::load_causal_lm(model_path, adapters, opts);
        }
        let cfg = DecoderConfig::from_hf_file(&dir.join("config.json"))?;
        let loaded: Vec<Adapter> = adapters
            .iter()
            .map(|a| Adapter::load(a))
            .collect::<Result<_>>()?;
        let fresh = !self
            .held
            .as_ref()
            .is_some_and(|b| b.dir == dir && b.choice == opts.dtype);
        if fresh {
            // Replace (not merge into) a cache of another base or dtype.
            self.held = Some(BaseTensors {
                dir: dir.clone(),
                choice: opts.dtype,
                tensors: HashMap::new(),
                linears: HashMap::new(),
                heads: HashMap::new(),
            });
        }
        let held = self.held.as_mut().expect("set above");
        let targets = loaded
            .iter()
            .flat_map(|a| a.modules.keys().cloned())
            .collect();
        let weights = HfWeights::open(&dir, loaded, requested_dtype(opts.dtype), &opts.device)?;
        let mut source = CachedSource {
            weights,
            cache: held,
            targets,
        };
        let model = DecoderModel::load(cfg, &mut source, &TpGroup::new(opts.tp.clone()))?;
        source.weights.check_adapters_used()?;
        if fresh {
            self.base_loads += 1;
            tracing::info!(base = %dir.display(), "loaded base {}", dir.display());
        }
        for a in adapters {
            self.adapters_applied += 1;
            tracing::info!(
                base = %dir.display(),
                adapter = %a.display(),
                "applied adapter {}",
                a.display()
            );
        }
        Ok(LoadedModel::from_hf(model, dir))
    }
}

/// [`LoadOptions::dtype`] as [`HfWeights::open`] takes it.
fn requested_dtype(choice: DTypeChoice) -> Option<DType> {
    match choice {
        DTypeChoice::Auto => None,
        DTypeChoice::F32 => Some(DType::F32),
        DTypeChoice::F16 => Some(DType::F16),
        DTypeChoice::BF16 => Some(DType::BF16),
    }
}

/// A weight source that answers from the cache, and otherwise asks the folder's [`HfWeights`]
/// (which merges the adapters) and keeps what is the base's own.
struct CachedSource<'a> {
    weights: HfWeights,
    cache: &'a mut BaseTensors,
    /// Modules some adapter targets: always built by `weights` (merged), never cached.
    targets: std::collections::HashSet<String>,
}

impl WeightSource for CachedSource<'_> {
    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        if let Some(t) = self.cache.tensors.get(name) {
            return Ok(t.clone());
        }
        let t = self.weights.tensor(name)?;
        self.cache.tensors.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn linear_weight(&mut self, prefix: &str, split: Split) -> Result<Weight> {
        if self.targets.contains(prefix) {
            return self.weights.linear_weight(prefix, split);
        }
        // A tensor-parallel rank caches only its own part (keyed with it).
        let key = match split {
            Split::Full => prefix.to_string(),
            part => format!("{prefix} {part:?}"),
        };
        if let Some(w) = self.cache.linears.get(&key) {
            return Ok(w.clone());
        }
        let w = self.weights.linear_weight(prefix, split)?;
        self.cache.linears.insert(key, w.clone());
        Ok(w)
    }

    fn lm_head(&mut self, tied: bool) -> Result<Weight> {
        if self.targets.contains("lm_head") {
            return self.weights.lm_head(tied);
        }
        if let Some(w) = self.cache.heads.get(&tied) {
            return Ok(w.clone());
        }
        let w = self.weights.lm_head(tied)?;
        self.cache.heads.insert(tied, w.clone());
        Ok(w)
    }

    fn device(&self) -> &candle_core::Device {
        self.weights.device()
    }

    fn dtype(&self) -> DType {
        self.weights.dtype()
    }
}

/// Loads a decoder; with adapters (or when `bases` holds its folder) through `bases`, so that a
/// sweep's adapters share one read of their base. Tensor-parallel followers load the same way.
pub fn load_decoder(
    path: &Path,
    adapters: &[PathBuf],
    opts: &LoadOptions,
    bases: &mut BaseCache,
) -> Result<LoadedModel> {
    if !adapters.is_empty() || bases.holds(path, opts.dtype) {
        bases.load(path, adapters, opts)
    } else {
        load_causal_lm(path, adapters, opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Decoder, ForwardInput, LogitsAt, load_causal_lm};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-llama")
            .join(name)
    }

    /// The last position's logits of a fixed prompt.
    fn logits(model: &LoadedModel) -> Vec<f32> {
        let ids = [1u32, 40, 41, 42, 43, 44];
        let device = model.device();
        let tokens = Tensor::new(&ids[..], device).and_then(|t| t.unsqueeze(0));
        let positions = Tensor::arange(0u32, ids.len() as u32, device).and_then(|t| t.unsqueeze(0));
        let input = ForwardInput {
            tokens: tokens.expect("tokens"),
            positions: positions.expect("positions"),
            key_mask: None,
        };
        let mut cache = model.new_cache();
        let out = model
            .forward(&input, &mut cache, LogitsAt::Last)
            .expect("forward");
        out.flatten_all().and_then(|t| t.to_vec1()).expect("logits")
    }

    #[test]
    fn adapters_over_a_cached_base_equal_merging_at_load_and_read_the_base_once() {
        let opts = LoadOptions {
            dtype: DTypeChoice::F32,
            ..LoadOptions::default()
        };
        let base = fixture("model");
        let mut cache = BaseCache::new();
        let sets: [&[&str]; 4] = [&["lora"], &["lora2"], &["lora", "lora2"], &[]];
        for set in sets {
            let adapters: Vec<PathBuf> = set.iter().map(|a| fixture(a)).collect();
            let cached = cache.load(&base, &adapters, &opts).expect("cached load");
            let direct = load_causal_lm(&base, &adapters, &opts).expect("direct load");
            assert_eq!(logits(&cached), logits(&direct), "adapters {set:?}");
        }
        assert_eq!(cache.base_loads(), 1);
        assert_eq!(cache.adapters_applied(), 4);
        assert!(cache.holds(&base, DTypeChoice::F32));
        assert!(!cache.holds(&base, DTypeChoice::BF16));
    }

    #[test]
    fn another_base_or_dtype_replaces_the_cache() {
        let base = fixture("model");
        let mut cache = BaseCache::new();
        let f32 = LoadOptions {
            dtype: DTypeChoice::F32,
            ..LoadOptions::default()
        };
        let bf16 = LoadOptions {
            dtype: DTypeChoice::BF16,
            ..LoadOptions::default()
        };
        cache.load(&base, &[fixture("lora")], &f32).expect("f32");
        cache.load(&base, &[fixture("lora")], &bf16).expect("bf16");
        cache
            .load(&base, &[fixture("lora2")], &bf16)
            .expect("bf16 again");
        assert_eq!(cache.base_loads(), 2);
        let err = cache
            .load(&fixture("missing"), &[], &f32)
            .expect_err("no such folder");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
