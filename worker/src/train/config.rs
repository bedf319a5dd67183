//! [`TrainConfig`]: the `train-rm` YAML (see `yamls/train_rm.yaml`). Relative paths are taken
//! as given, i.e. relative to the working directory, like the other yamls.

use std::path::{Path, PathBuf};

use candle_core::DType;
use serde::{Deserialize, Serialize};

use super::adamw::AdamWConfig;
use super::params::LoraConfig;
use crate::models::DTypeChoice;
use crate::tp::parse_dtype;
use crate::{Error, Result};

/// Weights of the two losses in `loss = ranking · loss_1 + regression · loss_2`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossWeights {
    pub ranking: f64,
    pub regression: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            ranking: 1.0,
            regression: 1.0,
        }
    }
}

/// Everything one training run needs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The reward model folder to start from (BaichuanCharRM layout: config.json, weights,
    /// tokenizer files).
    pub model: PathBuf,
    /// Training records, JSONL (see [`super::data`]).
    pub train_data: PathBuf,
    /// Held-out records; when absent, `eval_fraction` of the training contexts are held out.
    #[serde(default)]
    pub eval_data: Option<PathBuf>,
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// Checkpoints (`checkpoint-<step>/`) and `metrics.jsonl` go here.
    pub output_dir: PathBuf,
    /// Tokens kept per input (left truncation, as step 4); 0 = the model's `model_max_length`.
    #[serde(default)]
    pub max_length: usize,
    #[serde(default)]
    pub loss: LossWeights,
    /// Parameter-name prefixes to train (e.g. `score.`, `model.norm.`, `model.layers.1.`);
    /// the rest is frozen. Empty: full fine-tuning.
    #[serde(default)]
    pub trainable: Vec<String>,
    /// LoRA on these modules instead of full fine-tuning; `trainable` then names the base
    /// parameters that also train (empty: the score head).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    #[serde(default)]
    pub adamw: AdamWConfig,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "one")]
    pub epochs: u64,
    /// Caps the number of optimizer steps (otherwise `epochs` over the data).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Groups (one context, one dimension, its responses) per optimizer step, over all ranks.
    #[serde(default = "default_batch_groups")]
    pub batch_groups: usize,
    /// Micro-batches per rank per optimizer step (gradient accumulation).
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    /// Data-parallel ranks: threads of this process (on the CPU, or with `device: cuda` one GPU
    /// each, over NCCL in a build with the `nccl` feature).
    #[serde(default = "one_usize")]
    pub ranks: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub save_every: u64,
    /// Evaluate the held-out split every this many steps (0: only before and after training).
    #[serde(default)]
    pub eval_every: u64,
    /// Continue from the last checkpoint in `output_dir` when there is one.
    #[serde(default = "yes")]
    pub resume: bool,
    #[serde(default)]
    pub seed: u64,
    /// `cpu`, `cuda:N`, or `cuda` (rank `r` on GPU `r`).
    #[serde(default = "default_device")]
    pub device: String,
    /// Compute dtype: `auto` (bf16 on a GPU, f32 on the CPU), `f32` or `bf16`. The weights the
    /// optimizer updates, their gradients and its moments are f32 either way; bf16 is the dtype
    /// of the forward and backward passes.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Stop after this many steps of this process as if killed (no final checkpoint): for the
    /// resume tests.
    #[serde(default)]
    pub stop_after: Option<u64>,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "auto".into()
}
fn default_eval_fraction() -> f64 {
    0.1
}
fn default_batch_groups() -> usize {
    8
}
fn one() -> u64 {
    1
}
fn one_usize() -> usize {
    1
}
fn yes() -> bool {
    true
}

impl TrainConfig {
    /// Reads and checks the YAML file `path`.
    pub fn from_yaml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: TrainConfig = serde_yaml::from_str(&text)
            .map_err(|e| Error::bad_file(path, format!("invalid train-rm config: {e}")))?;
        cfg.check().map_err(|m| Error::bad_file(path, m))?;
        Ok(cfg)
    }

    /// The settings that cannot work, named by key.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.batch_groups == 0 {
            return Err("`batch_groups` must be at least 1".into());
        }
        if self.grad_accum == 0 || self.ranks == 0 {
            return Err("`grad_accum` and `ranks` must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err(format!(
                "`eval_fraction` {} is not in [0, 1)",
                self.eval_fraction
            ));
        }
        if self.adamw.lr <= 0.0 {
            return Err(format!("`adamw.lr` {} must be positive", self.adamw.lr));
        }
        self.compute_dtype()?;
        Ok(())
    }

    /// The compute dtype `dtype` names on `device` (`auto`: bf16 on CUDA, f32 elsewhere).
    pub fn compute_dtype(&self) -> std::result::Result<DType, String> {
        let choice = parse_dtype(&self.dtype).map_err(|_| {
            format!(
                "`dtype` {:?}: expected auto (bf16 on a GPU, f32 on the CPU), f32 or bf16",
                self.dtype
            )
        })?;
        match choice {
            DTypeChoice::Auto if self.device.starts_with("cuda") => Ok(DType::BF16),
            DTypeChoice::Auto | DTypeChoice::F32 => Ok(DType::F32),
            DTypeChoice::BF16 => Ok(DType::BF16),
            DTypeChoice::F16 => Err(
                "`dtype` f16 is not supported for training (it would need loss scaling): use bf16 \
                 or f32"
                    .into(),
            ),
        }
    }
}
