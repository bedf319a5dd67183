//! [`DecoderRewardModel`]: a reward model over the llama / qwen2 / mistral decoder
//! ([`DecoderModel`]): the final-normed hidden state of the last token, then
//! `score = Linear(hidden, 1, bias)` and a sigmoid — the same head and score convention as
//! BaichuanCharRM (docs/FIDELITY.md §4.5: the driver reports `sigmoid · 4 + 1`).
//!
//! Folder layout: the decoder's own HF folder (config.json with `architectures` one of
//! [`super::SUPPORTED_ARCHITECTURES`], e.g. `LlamaForCausalLM`; tokenizer files) whose weights
//! also hold `score.weight` `(1, hidden)` and `score.bias` `(1,)`; `lm_head.weight` is not read.
//! The causal-LM name is kept (rather than `...ForSequenceClassification`, whose HF head has no
//! bias) so the folder stays loadable as the base it was trained from; the `score.*` tensors are
//! what make it a reward model. `evalfleet train-rm` writes such folders.
//!
//! Each sequence runs as its own batch of one (no padding, positions `0..n`), in scoring and in
//! training alike: one forward pass per sequence is the one implementation of the maths. For
//! training, [`DecoderRewardModel::from_tensors`] with `differentiable` switches the decoder to
//! tensor ops that have a backward pass ([`DecoderModel::into_differentiable`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::baichuan_weights::RmWeights;
use super::config::DecoderConfig;
use super::decoder::{DecoderModel, WeightSource};
use super::linear::Weight;
use super::shard::{Split, TpGroup};
use super::torch_ops;
use super::{ForwardInput, LogitsAt};
use crate::{Error, Result};

/// The state-dict names and shapes of a decoder reward model of config `cfg` (no LM head; the
/// score head last).
pub fn decoder_rm_param_shapes(cfg: &DecoderConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (cfg.hidden, cfg.intermediate);
    let (q, kv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab, h])];
    let linear = |out: &mut Vec<(String, Vec<usize>)>, name: String, o, inp, bias: bool| {
        if bias {
            out.push((format!("{name}.bias"), vec![o]));
        }
        out.push((format!("{name}.weight"), vec![o, inp]));
    };
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        linear(
            &mut out,
            format!("{p}.self_attn.q_proj"),
            q,
            h,
            cfg.qkv_bias,
        );
        linear(
            &mut out,
            format!("{p}.self_attn.k_proj"),
            kv,
            h,
            cfg.qkv_bias,
        );
        linear(
            &mut out,
            format!("{p}.self_attn.v_proj"),
            kv,
            h,
            cfg.qkv_bias,
        );
        linear(&mut out, format!("{p}.self_attn.o_proj"), h, q, cfg.o_bias);
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        linear(&mut out, format!("{p}.mlp.gate_proj"), i, h, cfg.mlp_bias);
        linear(&mut out, format!("{p}.mlp.up_proj"), i, h, cfg.mlp_bias);
        linear(&mut out, format!("{p}.mlp.down_proj"), h, i, cfg.mlp_bias);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    out.push(("score.weight".to_string(), vec![1, h]));
    out.push(("score.bias".to_string(), vec![1]));
    out
}

/// `eos_token_id` of a config.json (an integer, or the first of a list).
pub fn config_eos(json: &Value) -> Option<u32> {
    let v = json.get("eos_token_id")?;
    let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
    v.as_u64().map(|n| n as u32)
}

/// In-memory tensors by name, handed to the decoder as they are (no copy), so gradients reach
/// the trainer's variables.
struct MemorySource {
    label: PathBuf,
    tensors: HashMap<String, Tensor>,
    device: Device,
    dtype: DType,
}

impl WeightSource for MemorySource {
    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::bad_file(&self.label, format!("missing tensor `{name}`")))
    }

    fn linear_weight(&mut self, prefix: &str, split: Split) -> Result<Weight> {
        let name = format!("{prefix}.weight");
        let w = self.tensor(&name)?;
        Ok(Weight::Dense(split.apply(&w, &name)?))
    }

    /// A reward model never runs the LM head; the embedding stands in for it (shared memory).
    fn lm_head(&mut self, _tied: bool) -> Result<Weight> {
        Ok(Weight::Dense(self.tensor("model.embed_tokens.weight")?))
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// A llama-family decoder with a `Linear(hidden, 1)` score head.
#[derive(Debug, Clone)]
pub struct DecoderRewardModel {
    model: DecoderModel,
    /// `(1, hidden)` and `(1,)`, kept as given (attached to the trainer's variables in
    /// training); the head computes in f32.
    score_weight: Tensor,
    score_bias: Tensor,
    eos_token_id: Option<u32>,
}

impl DecoderRewardModel {
    /// Loads the reward model folder `dir` (see the module header) to compute in `dtype`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&path, format!("invalid JSON: {e}")))?;
        let cfg = DecoderConfig::from_hf_json(&path, &json)?;
        let ws = RmWeights::open(dir, dtype, device)?;
        if !ws.contains("score.weight")? {
            return Err(Error::bad_file(
                dir,
                "missing tensor `score.weight`: a decoder reward model needs a score head \
                 (`evalfleet train-rm` adds and trains one)",
            ));
        }
        let mut tensors = HashMap::new();
        for (name, shape) in decoder_rm_param_shapes(&cfg) {
            tensors.insert(name.clone(), ws.get(&name, &shape)?);
        }
        Self::from_tensors(cfg, tensors, config_eos(&json), dtype, device, false)
    }

    /// A model over in-memory tensors named as in [`decoder_rm_param_shapes`], of `dtype` on
    /// `device`. With `differentiable`, the forward pass uses only ops with a backward pass, so
    /// a loss of [`Self::logits`] backpropagates into these very tensors.
    pub fn from_tensors(
        cfg: DecoderConfig,
        tensors: HashMap<String, Tensor>,
        eos_token_id: Option<u32>,
        dtype: DType,
        device: &Device,
        differentiable: bool,
    ) -> Result<Self> {
        let mut src = MemorySource {
            label: PathBuf::from("<in-memory weights>"),
            tensors,
            device: device.clone(),
            dtype,
        };
        let score_weight = src.tensor("score.weight")?;
        let score_bias = src.tensor("score.bias")?;
        let model = DecoderModel::load(cfg, &mut src, &TpGroup::default())?;
        let model = if differentiable {
            model.into_differentiable()
        } else {
            model
        };
        Ok(Self {
            model,
            score_weight,
            score_bias,
            eos_token_id,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        self.model.config()
    }

    pub fn dtype(&self) -> DType {
        self.model.dtype()
    }

    /// config.json's `eos_token_id`, used when the tokenizer names no eos token.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    fn check(&self, seqs: &[&[u32]]) -> Result<()> {
        let vocab = self.config().vocab;
        for (i, s) in seqs.iter().enumerate() {
            if s.is_empty() {
                return Err(Error::Unsupported(format!(
                    "reward input {i} has no tokens"
                )));
            }
            if let Some(&id) = s.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::Unsupported(format!(
                    "token id {id} is outside the reward model's vocabulary of {vocab}"
                )));
            }
        }
        Ok(())
    }

    /// The final-normed hidden state of each sequence's last token, `(seqs, hidden)` in the
    /// compute dtype; each sequence is its own forward pass.
    pub fn last_hidden(&self, seqs: &[&[u32]]) -> Result<Tensor> {
        self.check(seqs)?;
        let device = self.model.device();
        let mut rows = Vec::with_capacity(seqs.len());
        for s in seqs {
            let n = s.len();
            let input = ForwardInput {
                tokens: Tensor::new(*s, device)?.reshape((1, n))?,
                positions: Tensor::arange(0u32, n as u32, device)?.reshape((1, n))?,
                key_mask: None,
            };
            let mut cache = self.model.new_cache();
            let h = self
                .model
                .normed_hidden(&input, &mut cache, LogitsAt::Last)?;
            rows.push(h.reshape((1, ()))?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// The score logits `(seqs,)` in f32, before the sigmoid.
    pub fn logits(&self, seqs: &[&[u32]]) -> Result<Tensor> {
        let hidden = self.last_hidden(seqs)?.to_dtype(DType::F32)?;
        let w = self.score_weight.to_dtype(DType::F32)?;
        let b = self.score_bias.to_dtype(DType::F32)?;
        Ok(hidden.matmul(&w.t()?)?.broadcast_add(&b)?.squeeze(1)?)
    }

    /// The sigmoids of the scores of `seqs`, in input order: the head's logit and the sigmoid
    /// each rounded once to the model dtype, as a `Linear` head and `torch.sigmoid` in that
    /// dtype round them (then widened to f32).
    pub fn score_batch(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        let refs: Vec<&[u32]> = seqs.iter().map(|s| &s[..]).collect();
        let logits: Vec<f32> = self.logits(&refs)?.to_vec1()?;
        let dtype = self.dtype();
        Ok(logits
            .into_iter()
            .map(|l| torch_ops::reward_sigmoid(l, dtype))
            .collect())
    }
}
