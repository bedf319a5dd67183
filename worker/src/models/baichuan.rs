//! [`BaichuanRewardModel`]: the BaichuanCharRM reward model of CharacterEval
//! (docs/FIDELITY.md §4.5), a Baichuan2-13B-style decoder without LM head: pre-norm layers with a
//! fused `W_pack` q/k/v projection, ALiBi (or, for Baichuan-7B-style configs, rotary) attention,
//! SiLU MLP, a final RMSNorm, and `score = Linear(hidden, 1, bias)` on the last token, through a
//! sigmoid.
//!
//! Rounding follows the PyTorch model op by op, so that bf16 scores land on the reference's bf16
//! grid (each matmul accumulates in f32 and rounds once): RMSNorm computes in f32 and casts
//! before the weight multiply; the attention scores are divided by `sqrt(head_dim)` in f32 and
//! rounded once (not multiplied by a factor rounded to bf16: inexact for head size 128); the
//! ALiBi bias is built in f32 and cast (see [`super::alibi`]); softmax and SiLU compute in f32
//! and round once; the score head rounds once after its bias, and the sigmoid once.
//!
//! Batching packs the sequences of a batch end to end (no padding): the linear layers run over
//! all tokens at once, and attention runs per sequence over its own keys, with the same shapes
//! as one sequence alone. Positions (ALiBi key indices, rotary angles) are each sequence's own
//! 0-based indices, so a batched score equals the one-at-a-time score bit for bit on the CPU
//! (the CPU gemm gives a row the same bits for any row count from 2 up; a batch of one token is
//! run twice so that it never takes the one-row path).
//!
//! Tensor parallelism ([`BaichuanRewardModel::load_sharded`]): each rank keeps its heads (its
//! rows of each of W_pack's q, k and v blocks, and their ALiBi slopes) and its MLP units;
//! o_proj and down_proj sum the ranks' partial outputs; embeddings, norms and the score head
//! are whole on every rank. LoRA adapters ([`BaichuanRewardModel::load_with`]) are merged into
//! the full weights first, so a merged W_pack is cut per q/k/v block like a base one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};

use super::alibi::{alibi_bias, alibi_slopes};
use super::baichuan_config::{BaichuanConfig, PositionEncoding};
use super::baichuan_weights::RmWeights;
use super::linear::{Linear, Weight};
use super::lora::Adapter;
use super::shard::{RowLinear, Split, TpGroup};
use super::torch_ops;
use crate::collective::SharedCollective;
use crate::{Error, Result};

/// Queries per attention block: bounds the `(heads, block, keys)` score matrix of long inputs
/// (40 heads × 512 × 4096 keys in f32 is 320 MiB).
const QUERY_BLOCK: usize = 512;

/// Default bound on the tokens of one packed batch.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 16_384;

/// RMSNorm as Baichuan computes it: variance in f32, `x · rsqrt(var + eps)` cast to the model
/// dtype, then times the weight in the model dtype (two roundings in bf16, not one).
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(ws: &RmWeights, name: &str, hidden: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: ws.get(name, &[hidden])?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        torch_ops::rms_norm(x, &self.weight, self.eps)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_norm: RmsNorm,
    w_pack: Linear,
    o_proj: RowLinear,
    post_norm: RmsNorm,
    gate_up: Linear,
    down: RowLinear,
}

impl Layer {
    fn load(cfg: &BaichuanConfig, ws: &RmWeights, i: usize, tp: &TpGroup) -> Result<Self> {
        let p = format!("model.layers.{i}");
        let (h, inter) = (cfg.hidden, cfg.intermediate);
        // Checked whole against the config, then cut on the CPU: only this rank's part goes to
        // the device.
        // LoRA deltas are merged into the full matrix here, before the cut.
        let dense = |name: &str, shape: [usize; 2], split: Split| -> Result<Weight> {
            let module = format!("{p}.{name}");
            let full = ws.linear_as(&module, &shape, ws.dtype())?;
            Ok(Weight::Dense(
                split
                    .apply(&full, &format!("{module}.weight"))?
                    .to_device(ws.device())?,
            ))
        };
        let gate_up = Linear::fused(
            vec![
                (dense("mlp.gate_proj", [inter, h], tp.rows(1))?, None),
                (dense("mlp.up_proj", [inter, h], tp.rows(1))?, None),
            ],
            "gate_up_proj",
        )?
        .ok_or_else(|| Error::Unsupported("gate/up projections that cannot be fused".into()))?;
        Ok(Self {
            input_norm: RmsNorm::load(
                ws,
                &format!("{p}.input_layernorm.weight"),
                h,
                cfg.rms_norm_eps,
            )?,
            // q, k and v blocks, each cut by heads, re-fused per rank.
            w_pack: Linear::new(
                dense("self_attn.W_pack", [3 * h, h], tp.rows(3))?,
                None,
                "W_pack",
            )?,
            o_proj: RowLinear::new(
                dense("self_attn.o_proj", [h, h], tp.cols())?,
                None,
                tp,
                "o_proj",
            )?,
            post_norm: RmsNorm::load(
                ws,
                &format!("{p}.post_attention_layernorm.weight"),
                h,
                cfg.rms_norm_eps,
            )?,
            gate_up,
            down: RowLinear::new(
                dense("mlp.down_proj", [h, inter], tp.cols())?,
                None,
                tp,
                "down_proj",
            )?,
        })
    }
}

/// What attention needs besides q/k/v, shared by every layer of one forward pass.
struct PositionTables {
    /// `(heads, 1, max_len)` ALiBi bias in the model dtype.
    alibi: Option<Tensor>,
    /// `(max_len, head_dim)` f32 cos and sin (angles repeated over both halves).
    rope: Option<(Tensor, Tensor)>,
    /// Causal masks per query block start, `(1, block, block_start + block)`, 0 or -inf.
    masks: Vec<Tensor>,
}

/// A loaded BaichuanCharRM-style reward model.
#[derive(Debug, Clone)]
pub struct BaichuanRewardModel {
    cfg: BaichuanConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// The score head in f32: one dot product per sequence, computed the same way whatever the
    /// batch (a matmul would take another kernel for one row than for several).
    score_weight: Vec<f32>,
    score_bias: f32,
    /// The ALiBi slopes of this rank's heads.
    slopes: Vec<f64>,
    /// This rank's attention heads and intermediate units (all of them without a group).
    heads: usize,
    intermediate: usize,
    device: Device,
    dtype: DType,
    max_batch_tokens: usize,
    /// Softmax by differentiable tensor ops (training) instead of candle's fused kernel, which
    /// has no backward pass.
    differentiable: bool,
}

impl BaichuanRewardModel {
    /// Loads the reward model folder `dir` (config.json + safetensors or PyTorch `.bin`
    /// weights) to compute in `dtype` (bf16 like the reference, or f32/f16) on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_sharded(dir, dtype, device, None)
    }

    /// [`Self::load`] for one rank of the tensor-parallel group `tp` (`None`: the whole model).
    /// Every rank must then score the same inputs at the same time (the layers all-reduce
    /// over the group). The world size must divide the attention heads and the intermediate
    /// size; otherwise the error names the folder, the count and the world size.
    pub fn load_sharded(
        dir: &Path,
        dtype: DType,
        device: &Device,
        tp: Option<SharedCollective>,
    ) -> Result<Self> {
        Self::load_with(dir, &[], dtype, device, tp)
    }

    /// [`Self::load_sharded`] with the PEFT LoRA adapter folders `adapters` merged in order
    /// (`W += scale · B·A` in f32, see [`super::lora`]) into the linear layers they target
    /// (`model.layers.N.self_attn.W_pack`, `o_proj`, `mlp.gate_proj`, `up_proj`, `down_proj`),
    /// before the tensor-parallel cut. An adapter module that is not one of these is refused.
    pub fn load_with(
        dir: &Path,
        adapters: &[PathBuf],
        dtype: DType,
        device: &Device,
        tp: Option<SharedCollective>,
    ) -> Result<Self> {
        let cfg = BaichuanConfig::from_file(&dir.join("config.json"))?;
        let tp = TpGroup::new(tp);
        let label = format!("the reward model {}", dir.display());
        tp.share(&label, "attention heads", cfg.heads)?;
        tp.share(&label, "intermediate units", cfg.intermediate)?;
        let adapters = adapters
            .iter()
            .map(|a| Adapter::load(a))
            .collect::<Result<Vec<_>>>()?;
        let ws = RmWeights::open(dir, dtype, device)?.with_adapters(adapters);
        let model = Self::from_weights(cfg, &ws, false, &tp)?;
        ws.check_adapters_used()?;
        Ok(model)
    }

    /// A model over in-memory tensors named as in the HF state dict (all of them, `score.*`
    /// included), all of one `dtype` on `device`: the trainer's view of its parameters. The
    /// layers use these very tensors, so a loss computed from [`Self::last_hidden`]
    /// backpropagates into them (softmax then runs as differentiable tensor ops).
    pub fn from_tensors(
        cfg: BaichuanConfig,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let ws = RmWeights::from_tensors(Path::new("<in-memory weights>"), tensors, dtype, device);
        Self::from_weights(cfg, &ws, true, &TpGroup::default())
    }

    fn from_weights(
        cfg: BaichuanConfig,
        ws: &RmWeights,
        differentiable: bool,
        tp: &TpGroup,
    ) -> Result<Self> {
        let dtype = ws.dtype();
        let h = cfg.hidden;
        let heads = tp.share("the reward model", "attention heads", cfg.heads)?;
        let intermediate = tp.share("the reward model", "intermediate units", cfg.intermediate)?;
        let embed = ws.get("model.embed_tokens.weight", &[cfg.vocab, h])?;
        let layers = (0..cfg.layers)
            .map(|i| Layer::load(&cfg, ws, i, tp))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(ws, "model.norm.weight", h, cfg.rms_norm_eps)?;
        // The head's weight and bias are in the model dtype in the reference; keep those values.
        let score_weight = ws
            .get_as("score.weight", &[1, h], dtype)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let score_bias = ws
            .get_as("score.bias", &[1], dtype)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?[0];
        let slopes = match cfg.position {
            PositionEncoding::Alibi => {
                alibi_slopes(cfg.heads)[tp.rank() * heads..(tp.rank() + 1) * heads].to_vec()
            }
            PositionEncoding::Rope { .. } => Vec::new(),
        };
        Ok(Self {
            embed,
            layers,
            norm,
            score_weight,
            score_bias,
            slopes,
            heads,
            intermediate,
            device: ws.device().clone(),
            dtype: ws.dtype(),
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            differentiable,
            cfg,
        })
    }

    /// Bounds the tokens of one packed batch (at least one sequence is always run).
    pub fn with_max_batch_tokens(mut self, tokens: usize) -> Self {
        self.max_batch_tokens = tokens.max(1);
        self
    }

    pub fn config(&self) -> &BaichuanConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The sigmoid of one sequence's score, in the model dtype widened to f32.
    pub fn score(&self, ids: &[u32]) -> Result<f32> {
        Ok(self.score_packed(&[ids])?[0])
    }

    /// Scores many sequences: sorted by length, packed into batches of at most the configured
    /// number of tokens, results in the input order. Equal to [`Self::score`] of each, bit for bit
    /// on the CPU.
    pub fn score_batch(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        let mut out = vec![0f32; seqs.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            let mut tokens = seqs[order[start]].len();
            while end < order.len() && tokens + seqs[order[end]].len() <= self.max_batch_tokens {
                tokens += seqs[order[end]].len();
                end += 1;
            }
            let group: Vec<&[u32]> = order[start..end].iter().map(|&i| &seqs[i][..]).collect();
            for (&i, s) in order[start..end].iter().zip(self.score_packed(&group)?) {
                out[i] = s;
            }
            start = end;
        }
        Ok(out)
    }

    /// One forward pass over `seqs` packed end to end.
    fn score_packed(&self, seqs: &[&[u32]]) -> Result<Vec<f32>> {
        for (i, s) in seqs.iter().enumerate() {
            if s.is_empty() {
                return Err(Error::Unsupported(format!(
                    "reward input {i} has no tokens"
                )));
            }
            if let Some(&id) = s.iter().find(|&&id| id as usize >= self.cfg.vocab) {
                return Err(Error::Unsupported(format!(
                    "token id {id} is outside the reward model's vocabulary of {}",
                    self.cfg.vocab
                )));
            }
        }
        // A single token alone would be one matmul row, which the CPU gemm rounds differently
        // from several rows: run it twice instead.
        if seqs.len() == 1 && seqs[0].len() == 1 {
            return Ok(self.score_packed(&[seqs[0], seqs[0]])?[..1].to_vec());
        }
        let hidden = self.last_hidden(seqs)?;
        let rows: Vec<Vec<f32>> = hidden.to_dtype(DType::F32)?.to_vec2()?;
        Ok(rows.iter().map(|r| self.head(r)).collect())
    }

    /// The final-normed hidden state of each sequence's last token, `(seqs, hidden)` in the
    /// model dtype: everything but the score head, for the trainer's differentiable head.
    /// Token ids are not checked here (see [`Self::score_batch`]).
    pub fn last_hidden(&self, seqs: &[&[u32]]) -> Result<Tensor> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let max_len = lens.iter().copied().max().unwrap_or(0);
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, lens.iter().sum::<usize>(), &self.device)?;
        let tables = self.position_tables(max_len)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &lens, &tables)?;
        }
        let mut last = Vec::with_capacity(lens.len());
        let mut end = 0;
        for &len in &lens {
            end += len;
            last.push(end as u32 - 1);
        }
        let last = Tensor::from_vec(last, lens.len(), &self.device)?;
        self.norm.forward(&x.index_select(&last, 0)?)
    }

    /// `sigmoid(score · h + b)`, rounded to the model dtype where the reference rounds: the
    /// logit once (after the bias) and the sigmoid once.
    fn head(&self, h: &[f32]) -> f32 {
        let dot: f32 = h.iter().zip(&self.score_weight).map(|(a, b)| a * b).sum();
        torch_ops::reward_sigmoid(dot + self.score_bias, self.dtype)
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        lens: &[usize],
        tables: &PositionTables,
    ) -> Result<Tensor> {
        let (heads, d) = (self.heads, self.cfg.head_dim);
        let h = heads * d; // this rank's width of each of q, k and v
        let qkv = layer.w_pack.forward(&layer.input_norm.forward(x)?)?;
        let mut outs = Vec::with_capacity(lens.len());
        let mut off = 0;
        for &len in lens {
            let part = |i: usize| -> Result<Tensor> {
                let t = qkv.narrow(0, off, len)?.narrow(1, i * h, h)?;
                Ok(t.reshape((len, heads, d))?.transpose(0, 1)?.contiguous()?)
            };
            let (mut q, mut k, v) = (part(0)?, part(1)?, part(2)?);
            if let Some((cos, sin)) = &tables.rope {
                let (cos, sin) = (cos.narrow(0, 0, len)?, sin.narrow(0, 0, len)?);
                q = rotate(&q, &cos, &sin)?;
                k = rotate(&k, &cos, &sin)?;
            }
            outs.push(self.attend(&q, &k, &v, tables)?);
            off += len;
        }
        let attn = Tensor::cat(&outs, 0)?;
        let x = (x + layer.o_proj.forward(&attn)?)?;
        let hn = layer.post_norm.forward(&x)?;
        let gu = layer.gate_up.forward(&hn)?;
        let i = self.intermediate;
        let gate = torch_ops::silu(&gu.narrow(1, 0, i)?)?;
        let mlp = (gate * gu.narrow(1, i, i)?)?;
        Ok((x + layer.down.forward(&mlp)?)?)
    }

    /// Causal attention of one sequence: `q`, `k`, `v` `(heads, len, d)` → `(len, heads · d)`.
    /// Queries go in blocks of [`QUERY_BLOCK`]; block `b` reads only the keys up to its last
    /// query, so the work is about half of the full square.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        tables: &PositionTables,
    ) -> Result<Tensor> {
        let (heads, len, d) = q.dims3()?;
        let mut blocks = Vec::with_capacity(len.div_ceil(QUERY_BLOCK));
        for (b, start) in (0..len).step_by(QUERY_BLOCK).enumerate() {
            let n = QUERY_BLOCK.min(len - start);
            let keys = start + n;
            let qb = q.narrow(1, start, n)?.contiguous()?;
            let kb = k.narrow(1, 0, keys)?.contiguous()?;
            let mut s = torch_ops::scale_scores(&qb.matmul(&kb.t()?)?, d)?;
            if let Some(alibi) = &tables.alibi {
                s = s.broadcast_add(&alibi.narrow(2, 0, keys)?)?;
            }
            let mask = tables.masks[b].narrow(1, 0, n)?.narrow(2, 0, keys)?;
            s = s.broadcast_add(&mask)?;
            let s32 = s.to_dtype(DType::F32)?;
            let p = if self.differentiable {
                softmax_differentiable(&s32)?
            } else {
                candle_nn::ops::softmax_last_dim(&s32)?
            }
            .to_dtype(q.dtype())?;
            blocks.push(p.matmul(&v.narrow(1, 0, keys)?.contiguous()?)?);
        }
        let out = Tensor::cat(&blocks, 1)?; // (heads, len, d)
        Ok(out.transpose(0, 1)?.reshape((len, heads * d))?)
    }

    /// The bias, rotary tables and causal masks for sequences of up to `max_len` tokens.
    fn position_tables(&self, max_len: usize) -> Result<PositionTables> {
        let alibi = match self.cfg.position {
            PositionEncoding::Alibi => {
                Some(alibi_bias(&self.slopes, max_len, self.dtype, &self.device)?)
            }
            PositionEncoding::Rope { .. } => None,
        };
        let rope = match self.cfg.position {
            PositionEncoding::Rope { theta } => Some(rope_tables(
                theta,
                self.cfg.head_dim,
                max_len,
                &self.device,
            )?),
            PositionEncoding::Alibi => None,
        };
        let mut masks = Vec::new();
        for start in (0..max_len).step_by(QUERY_BLOCK) {
            let n = QUERY_BLOCK.min(max_len - start);
            let keys = start + n;
            let values: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..keys).map(move |j| {
                        if j <= start + i {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let m = Tensor::from_vec(values, (1, n, keys), &self.device)?;
            masks.push(m.to_dtype(self.dtype)?);
        }
        Ok(PositionTables { alibi, rope, masks })
    }
}

/// Softmax over the last dimension from differentiable ops. The row maximum is a constant
/// shift (detached: it changes nothing mathematically and its gradient would only add rounding).
fn softmax_differentiable(s: &Tensor) -> Result<Tensor> {
    let max = s.max_keepdim(D::Minus1)?.detach();
    let e = s.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// `(len, d)` f32 cos and sin of the angles `pos · theta^(-2i/d)`, each repeated over both halves
/// (computed as transformers does: f32 inverse frequencies, f32 products).
fn rope_tables(theta: f64, d: usize, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    let mut angles = Vec::with_capacity(len * d);
    for pos in 0..len {
        for _half in 0..2 {
            angles.extend(inv.iter().map(|f| pos as f32 * f));
        }
    }
    let a = Tensor::from_vec(angles, (len, d), device)?;
    Ok((a.cos()?, a.sin()?))
}

/// Rotary embedding of `x` `(heads, len, d)` with half-split pairs, in f32, cast back.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(2)?;
    let xf = x.to_dtype(DType::F32)?;
    let (a, b) = (xf.narrow(2, 0, d / 2)?, xf.narrow(2, d / 2, d / 2)?);
    let rotated = Tensor::cat(&[&b.neg()?, &a], 2)?;
    let y = (xf.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
    Ok(y.to_dtype(x.dtype())?)
}
