//! [`TrainableRm`]: a BaichuanCharRM-style reward model whose weights are candle `Var`s. The
//! forward pass is the step-4 model's own ([`BaichuanRewardModel::from_tensors`] over these
//! tensors, then [`BaichuanRewardModel::last_hidden`]): one implementation of the maths for
//! scoring and training. Only the score head is computed here, as a matmul of the `Var`s.
//!
//! Parameters whose names match none of the trainable prefixes are frozen: they enter the
//! forward pass detached and get no gradient and no optimizer state.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::models::{BaichuanConfig, BaichuanRewardModel, RmWeights};
use crate::{Error, Result};

/// The reward model's parameters as trainable variables, by HF state-dict name.
#[derive(Debug)]
pub struct TrainableRm {
    cfg: BaichuanConfig,
    params: BTreeMap<String, Var>,
    trainable: Vec<String>,
    device: Device,
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

impl TrainableRm {
    /// Loads the reward model folder `dir` in f32 (any format the step-4 loader reads) and
    /// marks trainable every parameter whose name starts with one of `trainable` (empty: all).
    pub fn load(dir: &Path, trainable: &[String], device: &Device) -> Result<Self> {
        let cfg = BaichuanConfig::from_file(&dir.join("config.json"))?;
        let ws = RmWeights::open(dir, DType::F32, device)?;
        let mut params = BTreeMap::new();
        for (name, shape) in param_shapes(&cfg) {
            let t = ws.get(&name, &shape)?;
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
            cfg,
            params,
            trainable: names,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &BaichuanConfig {
        &self.cfg
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
    fn model(&self, grad: bool) -> Result<BaichuanRewardModel> {
        let tensors: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, v)| {
                let t = if grad && self.is_trainable(n) {
                    v.as_tensor().clone()
                } else {
                    v.as_tensor().detach()
                };
                (n.clone(), t)
            })
            .collect();
        BaichuanRewardModel::from_tensors(self.cfg.clone(), tensors, DType::F32, &self.device)
    }

    /// The score logits `r_θ` `(seqs,)` (before the sigmoid) of `seqs`, differentiable with
    /// respect to the trainable parameters when `grad`.
    pub fn logits(&self, seqs: &[&[u32]], grad: bool) -> Result<Tensor> {
        let vocab = self.cfg.vocab;
        if let Some(id) = seqs
            .iter()
            .flat_map(|s| s.iter())
            .find(|&&id| id as usize >= vocab)
        {
            return Err(Error::Unsupported(format!(
                "token id {id} is outside the reward model's vocabulary of {vocab}"
            )));
        }
        let hidden = self.model(grad)?.last_hidden(seqs)?;
        let head = |name: &str| -> Result<Tensor> {
            let v = self.param(name)?.as_tensor();
            Ok(if grad && self.is_trainable(name) {
                v.clone()
            } else {
                v.detach()
            })
        };
        let w = head("score.weight")?;
        let b = head("score.bias")?;
        Ok(hidden.matmul(&w.t()?)?.broadcast_add(&b)?.squeeze(1)?)
    }

    /// Copies `values` (by name) into the parameters, e.g. rank 0's after a broadcast or a
    /// checkpoint's.
    pub fn set(&self, name: &str, value: &Tensor) -> Result<()> {
        Ok(self.param(name)?.set(value)?)
    }

    /// Every parameter as a plain tensor (for saving).
    pub fn state_dict(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }
}
