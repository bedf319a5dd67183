//! [`TrainableRm`]: a reward model whose weights are candle `Var`s — BaichuanCharRM-style, or a
//! llama / qwen2 / mistral decoder with a score head (chosen by config.json, as step 4 does).
//! The forward pass is the step-4 model's own ([`BaichuanRewardModel::from_tensors`] then
//! [`BaichuanRewardModel::last_hidden`], whose score head is computed here as a matmul of the
//! `Var`s; or [`DecoderRewardModel::from_tensors`] in its differentiable mode, then
//! [`DecoderRewardModel::logits`]): one implementation of the maths for scoring and training.
//!
//! Parameters whose names match none of the trainable prefixes are frozen: they enter the
//! forward pass detached and get no gradient and no optimizer state.
//!
//! Mixed precision ([`TrainableRm::with_compute_dtype`]): the `Var`s (master weights), their
//! gradients and the optimizer state are f32; in bf16 the forward pass reads each weight cast
//! to bf16 (a cast is differentiable, so gradients come back in f32), the frozen ones cast
//! once. The score head, the softmax and the norms compute in f32, as in scoring.
//!
//! LoRA ([`TrainableRm::with_lora`]): each target weight `W` gets `lora_A` `(r, in)` (uniform in
//! ±1/sqrt(in), PEFT's kaiming-uniform bound) and `lora_B` `(out, r)` (zeros), and the forward
//! pass reads `W + (alpha/r) · B·A` with `W` frozen: the merged weight is rebuilt from the
//! `Var`s at every forward, so the step-4 maths is unchanged and gradients reach A and B.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::models::{
    BaichuanConfig, BaichuanRewardModel, DecoderConfig, DecoderRewardModel, RewardModel, RmWeights,
    config_eos, decoder_rm_param_shapes, is_decoder_folder,
};
use crate::{Error, Result};

/// The reward model's parameters as trainable variables, by HF state-dict name.
#[derive(Debug)]
pub struct TrainableRm {
    arch: RmArch,
    params: BTreeMap<String, Var>,
    trainable: Vec<String>,
    /// LoRA pairs by target weight name: `(lora_A name, lora_B name, alpha / r)`.
    lora: BTreeMap<String, (String, String, f64)>,
    device: Device,
    /// The dtype of the forward and backward passes.
    compute: DType,
    /// The frozen parameters without LoRA, already in their forward dtype (only when that is
    /// not f32): they never change, so they are cast once rather than at every forward pass.
    frozen_cast: HashMap<String, Tensor>,
}

/// The dtype parameter `name` enters a forward pass computing in `dtype` in: the score head
/// computes in f32 (as in scoring), everything else in `dtype`.
fn forward_dtype(name: &str, dtype: DType) -> DType {
    if name.starts_with("score.") {
        DType::F32
    } else {
        dtype
    }
}

/// Which reward model the parameters make up.
#[derive(Debug, Clone)]
enum RmArch {
    Baichuan(BaichuanConfig),
    /// The decoder's config and config.json's `eos_token_id`.
    Decoder(DecoderConfig, Option<u32>),
}

impl RmArch {
    /// Reads the config.json of `dir` (a decoder architecture, else Baichuan).
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !is_decoder_folder(dir)? {
            return Ok(RmArch::Baichuan(BaichuanConfig::from_file(&path)?));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&path, format!("invalid JSON: {e}")))?;
        Ok(RmArch::Decoder(
            DecoderConfig::from_hf_json(&path, &json)?,
            config_eos(&json),
        ))
    }

    fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            RmArch::Baichuan(cfg) => param_shapes(cfg),
            RmArch::Decoder(cfg, _) => decoder_rm_param_shapes(cfg),
        }
    }

    fn vocab(&self) -> usize {
        match self {
            RmArch::Baichuan(cfg) => cfg.vocab,
            RmArch::Decoder(cfg, _) => cfg.vocab,
        }
    }
}

/// LoRA settings: rank, alpha, and the module names to adapt (Baichuan: `W_pack`, `o_proj`,
/// `gate_proj`, `up_proj`, `down_proj`; decoders: `q_proj`, `k_proj`, `v_proj`, `o_proj` and
/// the same MLP names).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub target_modules: Vec<String>,
}

/// The state-dict names and shapes of a Baichuan reward model of config `cfg`.
pub fn param_shapes(cfg: &BaichuanConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (cfg.hidden, cfg.intermediate);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab, h])];
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.W_pack.weight"), vec![3 * h, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    out.push(("score.weight".to_string(), vec![1, h]));
    out.push(("score.bias".to_string(), vec![1]));
    out
}

/// A score head for a folder without one (a Baichuan language model): weight drawn from
/// N(0, 0.02²) as transformers' `initializer_range` default (fixed seed, so runs repeat), bias 0.
fn new_head_tensor(name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
    tracing::info!(
        tensor = name,
        "no score head in the base model: initialising a new one"
    );
    let n: usize = shape.iter().product();
    if name.ends_with(".bias") {
        return Ok(Tensor::zeros(shape, DType::F32, device)?);
    }
    let mut rng = super::data::SplitMix::new(0x5C0E);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            // Box–Muller from two uniforms in (0, 1].
            let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * 0.02) as f32
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, device)?)
}

impl TrainableRm {
    /// Loads the reward model folder `dir` in f32 (any format the step-4 loader reads; a
    /// Baichuan or decoder folder without `score.*` gets a new `Linear(hidden, 1)` head) and
    /// marks trainable every parameter whose name starts with one of `trainable` (empty: all).
    pub fn load(dir: &Path, trainable: &[String], device: &Device) -> Result<Self> {
        let arch = RmArch::read(dir)?;
        let ws = RmWeights::open(dir, DType::F32, device)?;
        let mut params = BTreeMap::new();
        for (name, shape) in arch.param_shapes() {
            let t = if name.starts_with("score.") && !ws.contains(&name)? {
                new_head_tensor(&name, &shape, device)?
            } else {
                ws.get(&name, &shape)?
            };
            params.insert(name, Var::from_tensor(&t)?);
        }
        let names: Vec<String> = params
            .keys()
            .filter(|n| trainable.is_empty() || trainable.iter().any(|p| n.starts_with(p.as_str())))
            .cloned()
            .collect();
        if names.is_empty() {
            return Err(Error::Unsupported(format!(
                "trainable prefixes {trainable:?} match no parameter of {}",
                dir.display()
            )));
        }
        Ok(Self {
            arch,
            params,
            trainable: names,
            lora: BTreeMap::new(),
            device: device.clone(),
            compute: DType::F32,
            frozen_cast: HashMap::new(),
        })
    }

    /// Computes the forward and backward passes in `dtype` (f32 or bf16); the parameters,
    /// gradients and optimizer state stay f32.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(Error::Unsupported(format!(
                "training computes in f32 or bf16, not {dtype:?}"
            )));
        }
        self.compute = dtype;
        self.cast_frozen()?;
        Ok(self)
    }

    /// The dtype of the forward and backward passes.
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// Refills [`Self::frozen_cast`] after the compute dtype or the trainable set changed.
    fn cast_frozen(&mut self) -> Result<()> {
        let mut cast = HashMap::new();
        if self.compute != DType::F32 {
            for (name, var) in &self.params {
                if !self.is_trainable(name)
                    && !name.contains(".lora_")
                    && !self.lora.contains_key(name)
                {
                    let dtype = forward_dtype(name, self.compute);
                    cast.insert(name.clone(), var.as_tensor().detach().to_dtype(dtype)?);
                }
            }
        }
        self.frozen_cast = cast;
        Ok(())
    }

    /// Adds LoRA to the weights of `cfg.target_modules`; from then on only the LoRA matrices and
    /// the base parameters matching `base_trainable` (empty: the score head, `score.`) train.
    /// `seed` fixes the initial `lora_A`.
    pub fn with_lora(
        mut self,
        cfg: &LoraConfig,
        base_trainable: &[String],
        seed: u64,
    ) -> Result<Self> {
        if cfg.rank == 0 {
            return Err(Error::Unsupported("LoRA rank must be at least 1".into()));
        }
        let scale = cfg.alpha / cfg.rank as f64;
        let targets: Vec<String> = self
            .params
            .keys()
            .filter(|n| {
                cfg.target_modules
                    .iter()
                    .any(|t| n.ends_with(&format!(".{t}.weight")))
            })
            .cloned()
            .collect();
        if targets.is_empty() {
            return Err(Error::Unsupported(format!(
                "LoRA target_modules {:?} match no weight (expected W_pack or q_proj, k_proj, \
                 v_proj; o_proj, gate_proj, up_proj, down_proj)",
                cfg.target_modules
            )));
        }
        let mut rng = super::data::SplitMix::new(seed);
        let mut names = Vec::new();
        for t in targets {
            let (out, inp) = self.params[&t].as_tensor().dims2()?;
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..cfg.rank * inp)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let a = Tensor::from_vec(a, (cfg.rank, inp), &self.device)?;
            let b = Tensor::zeros((out, cfg.rank), DType::F32, &self.device)?;
            let stem = t.trim_end_matches(".weight");
            let (an, bn) = (
                format!("{stem}.lora_A.weight"),
                format!("{stem}.lora_B.weight"),
            );
            self.params.insert(an.clone(), Var::from_tensor(&a)?);
            self.params.insert(bn.clone(), Var::from_tensor(&b)?);
            names.push(an.clone());
            names.push(bn.clone());
            self.lora.insert(t, (an, bn, scale));
        }
        let base: Vec<String> = if base_trainable.is_empty() {
            vec!["score.".to_string()]
        } else {
            base_trainable.to_vec()
        };
        names.extend(
            self.params
                .keys()
                .filter(|n| !n.contains(".lora_") && base.iter().any(|p| n.starts_with(p.as_str())))
                .cloned(),
        );
        names.sort();
        self.trainable = names;
        self.cast_frozen()?;
        Ok(self)
    }

    /// Whether LoRA matrices are part of the parameters.
    pub fn has_lora(&self) -> bool {
        !self.lora.is_empty()
    }

    /// The Baichuan config, `None` for a decoder reward model.
    pub fn config(&self) -> Option<&BaichuanConfig> {
        match &self.arch {
            RmArch::Baichuan(cfg) => Some(cfg),
            RmArch::Decoder(..) => None,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Names of the trainable parameters, sorted.
    pub fn trainable(&self) -> &[String] {
        &self.trainable
    }

    /// Every parameter by name.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Parameter `name`.
    pub fn param(&self, name: &str) -> Result<&Var> {
        self.params
            .get(name)
            .ok_or_else(|| Error::Unsupported(format!("no parameter `{name}`")))
    }

    fn is_trainable(&self, name: &str) -> bool {
        self.trainable
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    /// The step-4 model over the current parameters; with `grad`, trainable ones stay attached
    /// to their `Var`s, otherwise everything is detached (evaluation).
    fn model(&self, grad: bool) -> Result<RewardModel> {
        let tensors = self.effective(grad, self.compute)?;
        Ok(match &self.arch {
            RmArch::Baichuan(cfg) => {
                BaichuanRewardModel::from_tensors(cfg.clone(), tensors, self.compute, &self.device)?
                    .into()
            }
            RmArch::Decoder(cfg, eos) => DecoderRewardModel::from_tensors(
                cfg.clone(),
                tensors,
                *eos,
                self.compute,
                &self.device,
                grad,
            )?
            .into(),
        })
    }

    /// Parameter `name` as the forward pass reads it (attached when `grad` and trainable).
    fn tensor(&self, name: &str, grad: bool) -> Result<Tensor> {
        let v = self.param(name)?.as_tensor();
        Ok(if grad && self.is_trainable(name) {
            v.clone()
        } else {
            v.detach()
        })
    }

    /// The model's weights by state-dict name, LoRA merged in, as a forward pass computing in
    /// `dtype` reads them ([`forward_dtype`]).
    fn effective(&self, grad: bool, dtype: DType) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for name in self.params.keys().filter(|n| !n.contains(".lora_")) {
            let t = match self.frozen_cast.get(name) {
                Some(t) if dtype == self.compute => t.clone(),
                _ => self
                    .merged(name, grad)?
                    .to_dtype(forward_dtype(name, dtype))?,
            };
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    /// Parameter `name` in f32 with its LoRA delta merged in (`W + scale · B·A`); merging in
    /// f32 keeps a small delta that a bf16 sum would round away.
    fn merged(&self, name: &str, grad: bool) -> Result<Tensor> {
        let t = self.tensor(name, grad)?;
        Ok(match self.lora.get(name) {
            Some((a, b, scale)) => {
                let delta = self.tensor(b, grad)?.matmul(&self.tensor(a, grad)?)?;
                (t + (delta * *scale)?)?
            }
            None => t,
        })
    }

    /// The score logits `r_θ` `(seqs,)` (before the sigmoid) of `seqs`, differentiable with
    /// respect to the trainable parameters when `grad`.
    pub fn logits(&self, seqs: &[&[u32]], grad: bool) -> Result<Tensor> {
        let vocab = self.arch.vocab();
        if let Some(id) = seqs
            .iter()
            .flat_map(|s| s.iter())
            .find(|&&id| id as usize >= vocab)
        {
            return Err(Error::Unsupported(format!(
                "token id {id} is outside the reward model's vocabulary of {vocab}"
            )));
        }
        let hidden = match self.model(grad)? {
            RewardModel::Baichuan(m) => m.last_hidden(seqs)?.to_dtype(DType::F32)?,
            RewardModel::Decoder(m) => return m.logits(seqs),
        };
        let w = self.tensor("score.weight", grad)?;
        let b = self.tensor("score.bias", grad)?;
        Ok(hidden.matmul(&w.t()?)?.broadcast_add(&b)?.squeeze(1)?)
    }

    /// Copies `values` (by name) into the parameters, e.g. rank 0's after a broadcast or a
    /// checkpoint's.
    pub fn set(&mut self, name: &str, value: &Tensor) -> Result<()> {
        self.param(name)?.set(value)?;
        if let Some(cast) = self.frozen_cast.get_mut(name) {
            *cast = value.to_dtype(cast.dtype())?;
        }
        Ok(())
    }

    /// The step-4 model over the current weights (detached), e.g. for a [`RewardScorer`].
    ///
    /// [`RewardScorer`]: crate::score::reward::RewardScorer
    pub fn scoring_model(&self) -> Result<RewardModel> {
        self.model(false)
    }

    /// The model's weights as step 4 loads them (LoRA merged in), in f32 whatever the compute
    /// dtype (the master weights).
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        self.effective(false, DType::F32)
    }

    /// Every parameter as it is stored, LoRA matrices apart (for resuming).
    pub fn raw_state(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// The LoRA matrices under PEFT's names (`base_model.model.<module>.lora_A.weight`).
    pub fn peft_adapter(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .filter(|(n, _)| n.contains(".lora_"))
            .map(|(n, v)| (format!("base_model.model.{n}"), v.as_tensor().detach()))
            .collect()
    }
}
