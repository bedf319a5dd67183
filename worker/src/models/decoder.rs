//! The decoder-only transformer shared by llama, qwen2 and mistral (pre-norm RMSNorm, RoPE
//! attention with grouped KV heads, SwiGLU MLP). Reference: HF transformers `modeling_llama.py`;
//! what differs between the three is in [`DecoderConfig`].
//!
//! The KV cache is owned by the caller ([`KvCache`]), the batch is left-padded with per-row
//! positions, and the LM head runs only at the positions the caller asks for.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};

use super::cache::{KvCache, LayerCache};
use super::config::DecoderConfig;
use super::linear::{Linear, Weight};
use super::mask::attention_mask;
use super::rope::Rope;
use super::shard::{RowLinear, Split, TpGroup};
use super::{ForwardInput, LogitsAt};
use super::{attention, cpu_kernels, torch_ops};
use crate::{Error, Result};

/// Where the decoder gets its weights from, by HF state-dict name; implemented for safetensors
/// folders (with LoRA merging) and for GGUF files (mapping the names).
pub(crate) trait WeightSource {
    /// A dense tensor in the compute dtype (embeddings, norm weights, biases).
    fn tensor(&mut self, name: &str) -> Result<Tensor>;
    /// This rank's `split` of the weight of linear layer `prefix` (`{prefix}.weight`), cut
    /// after any LoRA delta is merged into the full matrix.
    fn linear_weight(&mut self, prefix: &str, split: Split) -> Result<Weight>;
    /// The LM head: `lm_head.weight`, or the embedding matrix when tied or absent.
    fn lm_head(&mut self, tied: bool) -> Result<Weight>;
    fn device(&self) -> &Device;
    fn dtype(&self) -> DType;
}

/// `ws.linear_weight(prefix, split)`, refused naming the tensor when its `(out, in)` shape is
/// not the `full` one that config.json implies (as cut by `split`): a checkpoint that does not
/// match its config, or a damaged one, fails at load with both shapes instead of as a matmul
/// error at the first forward pass.
fn checked_weight(
    ws: &mut dyn WeightSource,
    prefix: &str,
    split: Split,
    full: [usize; 2],
) -> Result<Weight> {
    let w = ws.linear_weight(prefix, split)?;
    let [out, inp] = full;
    let want = match split {
        Split::Full => [out, inp],
        Split::Rows { world, .. } => [out / world, inp],
        Split::Cols { world, .. } => [out, inp / world],
    };
    let got = match &w {
        Weight::Dense(t) => t.dims().to_vec(),
        Weight::Quantized(QMatMul::QTensor(q)) => q.shape().dims().to_vec(),
        Weight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.dims().to_vec(),
    };
    if got != want {
        return Err(Error::Candle(candle_core::Error::Msg(format!(
            "tensor `{prefix}.weight` has shape {got:?}, expected {want:?} for this config.json"
        ))));
    }
    Ok(w)
}

/// A row-parallel layer (o_proj, down_proj): this rank's input columns, the bias whole (it is
/// added once, after the all-reduce).
fn row_linear(
    ws: &mut dyn WeightSource,
    prefix: &str,
    bias: bool,
    tp: &TpGroup,
    name: &'static str,
    full: [usize; 2],
) -> Result<RowLinear> {
    let w = checked_weight(ws, prefix, tp.cols(), full)?;
    let b = if bias {
        Some(ws.tensor(&format!("{prefix}.bias"))?)
    } else {
        None
    };
    RowLinear::new(w, b, tp, name)
}

/// Projections that read the same input: fused into one matmul when the weights allow it.
#[derive(Debug, Clone)]
enum Proj {
    Fused(Linear),
    Separate(Vec<Linear>),
}

impl Proj {
    /// Column-parallel parts: each part's weight and bias cut by `split` (this rank's output
    /// rows), then fused per rank when `fuse` (and the weights allow it).
    #[allow(clippy::too_many_arguments)]
    fn load(
        ws: &mut dyn WeightSource,
        prefixes: &[String],
        bias: bool,
        split: Split,
        names: &[&'static str],
        fused_name: &'static str,
        full: &[[usize; 2]],
        fuse: bool,
    ) -> Result<Self> {
        let mut parts = Vec::with_capacity(prefixes.len());
        for (p, &full) in prefixes.iter().zip(full) {
            let b = if bias {
                let name = format!("{p}.bias");
                Some(split.apply(&ws.tensor(&name)?, &name)?)
            } else {
                None
            };
            parts.push((checked_weight(ws, p, split, full)?, b));
        }
        if fuse && let Some(f) = Linear::fused(parts.clone(), fused_name)? {
            return Ok(Proj::Fused(f));
        }
        let layers = parts
            .into_iter()
            .zip(names)
            .map(|((w, b), n)| Linear::new(w, b, n))
            .collect::<Result<_>>()?;
        Ok(Proj::Separate(layers))
    }

    /// The outputs of every part, each `(b, s, n_i, unit)` (a view into the fused output);
    /// `widths` are the parts' output sizes in units.
    fn forward(&self, x: &Tensor, widths: &[usize], unit: usize) -> Result<Vec<Tensor>> {
        let (b, s, _) = x.dims3()?;
        match self {
            Proj::Fused(l) => {
                let total: usize = widths.iter().sum();
                let y = l.forward(x)?.reshape((b, s, total, unit))?;
                let mut off = 0;
                let mut out = Vec::with_capacity(widths.len());
                for &w in widths {
                    out.push(y.narrow(2, off, w)?);
                    off += w;
                }
                Ok(out)
            }
            Proj::Separate(ls) => ls
                .iter()
                .zip(widths)
                .map(|(l, &w)| Ok(l.forward(x)?.reshape((b, s, w, unit))?))
                .collect(),
        }
    }

    /// The fused output `(b, s, Σ widths)` itself, when the parts are fused.
    fn forward_fused(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match self {
            Proj::Fused(l) => Ok(Some(l.forward(x)?)),
            Proj::Separate(_) => Ok(None),
        }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    qkv: Proj,
    o: RowLinear,
    /// This rank's query and KV heads (all of them without tensor parallelism).
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Plain tensor ops with a backward pass (training) instead of the fused CPU kernels.
    differentiable: bool,
    span: tracing::Span,
}

impl Attention {
    fn new(cfg: &DecoderConfig, ws: &mut dyn WeightSource, p: &str, tp: &TpGroup) -> Result<Self> {
        let prefixes = ["q_proj", "k_proj", "v_proj"].map(|n| format!("{p}.{n}"));
        let (q, kv) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        Ok(Self {
            qkv: Proj::load(
                ws,
                &prefixes,
                cfg.qkv_bias,
                tp.rows(1),
                &["q_proj", "k_proj", "v_proj"],
                "qkv_proj",
                &[[q, cfg.hidden], [kv, cfg.hidden], [kv, cfg.hidden]],
                true,
            )?,
            o: row_linear(
                ws,
                &format!("{p}.o_proj"),
                cfg.o_bias,
                tp,
                "o_proj",
                [cfg.hidden, q],
            )?,
            heads: tp.share(&cfg.architecture, "attention heads", cfg.heads)?,
            kv_heads: tp.share(&cfg.architecture, "key/value heads", cfg.kv_heads)?,
            head_dim: cfg.head_dim,
            differentiable: false,
            span: tracing::trace_span!("attn"),
        })
    }

    /// `x` `(b, s, hidden)`; `mask` additive f32 `(b or 1, 1, 1, s, past + s)`, or (off the CPU)
    /// already `(b, kv_heads, rep, s, past + s)`, or `None`.
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        cs: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, s, _) = x.dims3()?;
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        // The sub-spans below are for `evalfleet-bench` profiles (see profile.rs): trace level,
        // so they cost a disabled-callsite check otherwise.
        let parts = {
            let _s = tracing::trace_span!("qkv").entered();
            self.qkv.forward(x, &[h, kvh, kvh], d)?
        };
        // (b, s, n, d) views → (b, n, s, d) contiguous: the one copy each of q, k, v needs.
        let heads_first = |t: &Tensor| -> Result<Tensor> { Ok(t.transpose(1, 2)?.contiguous()?) };
        let rotate = |t: &Tensor| -> Result<Tensor> {
            if self.differentiable {
                rope.apply_differentiable(t, &cs.0, &cs.1)
            } else {
                rope.apply(t, &cs.0, &cs.1)
            }
        };
        let rope_span = tracing::trace_span!("rope").entered();
        let q = rotate(&heads_first(&parts[0])?)?;
        let k = rotate(&heads_first(&parts[1])?)?;
        let v = heads_first(&parts[2])?;
        drop(rope_span);
        // The cache writes in place (no backward pass): a differentiable pass is one whole
        // sequence, with no cache.
        let (k, v) = if self.differentiable {
            (k, v)
        } else {
            cache.append(&k, &v)?
        };
        // On the CPU, reductions over visible keys only: padding must not change a row's bits
        // (see attention.rs). That kernel takes the queries scaled (f32 only).
        if !self.differentiable && attention::supported(&q, &k, &v) {
            let q = (q * (1.0 / (d as f64).sqrt()))?;
            let out = {
                let _s = tracing::trace_span!("core").entered();
                attention::attend(&q, &k, &v, mask)?
            };
            let _o = tracing::trace_span!("o_proj").entered();
            return self.o.forward(&out);
        }
        let t = k.dim(2)?;
        // Grouped-query attention without repeating K/V: the query heads that share a KV head
        // are consecutive, so they fold into the row dimension of one matmul per KV head.
        let rep = h / kvh;
        let q = q.reshape((b, kvh, rep * s, d))?;
        let scores_span = tracing::trace_span!("scores").entered();
        // As transformers' eager attention: `q·kᵀ` rounded to the dtype, divided by
        // `sqrt(head_dim)` in f32 and rounded again, then the softmax in f32.
        let scores = torch_ops::scale_scores(&q.matmul(&k.t()?)?, d)?.to_dtype(DType::F32)?;
        let scores = match mask {
            Some(m) => scores
                .reshape((b, kvh, rep, s, t))?
                .broadcast_add(m)?
                .reshape((b, kvh, rep * s, t))?,
            None => scores,
        };
        drop(scores_span);
        let softmax_span = tracing::trace_span!("softmax").entered();
        let probs = if self.differentiable {
            candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        drop(softmax_span);
        let pv_span = tracing::trace_span!("pv").entered();
        let probs = probs.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?; // (b, kvh, rep * s, d) = (b, h, s, d)
        let out = out
            .reshape((b, h, s, d))?
            .transpose(1, 2)?
            .reshape((b, s, h * d))?;
        drop(pv_span);
        let _o = tracing::trace_span!("o_proj").entered();
        self.o.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_up: Proj,
    down: RowLinear,
    /// This rank's share of the intermediate size.
    intermediate: usize,
    /// candle's SiLU and product (they have a backward pass) instead of the CPU kernel.
    differentiable: bool,
    span: tracing::Span,
}

impl Mlp {
    fn new(cfg: &DecoderConfig, ws: &mut dyn WeightSource, p: &str, tp: &TpGroup) -> Result<Self> {
        let prefixes = ["gate_proj", "up_proj"].map(|n| format!("{p}.{n}"));
        // Off the CPU, gate and up stay two matmuls: views into one fused output would make
        // SiLU and the product strided kernels, which on a GPU cost 4x the matmul (profiled on
        // an H200: 1.6 ms against 0.37 ms per layer for 8192 tokens of a 0.5B model).
        let fuse = ws.device().is_cpu();
        Ok(Self {
            gate_up: Proj::load(
                ws,
                &prefixes,
                cfg.mlp_bias,
                tp.rows(1),
                &["gate_proj", "up_proj"],
                "gate_up_proj",
                &[[cfg.intermediate, cfg.hidden]; 2],
                fuse,
            )?,
            down: row_linear(
                ws,
                &format!("{p}.down_proj"),
                cfg.mlp_bias,
                tp,
                "down_proj",
                [cfg.hidden, cfg.intermediate],
            )?,
            intermediate: tp.share(&cfg.architecture, "intermediate units", cfg.intermediate)?,
            differentiable: false,
            span: tracing::trace_span!("mlp"),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, s, _) = x.dims3()?;
        let i = self.intermediate;
        if !self.differentiable && cpu_kernels::cpu_f32(&[x]) {
            let fused = {
                let _s = tracing::trace_span!("gate_up").entered();
                self.gate_up.forward_fused(x)?
            };
            if let Some(y) = fused {
                // One pass over the fused output: candle's SiLU and product on its two halves
                // (strided views) cost as much as the gate/up matmul itself.
                let h = {
                    let _s = tracing::trace_span!("act").entered();
                    cpu_kernels::swiglu(&y, i)?
                };
                let _s = tracing::trace_span!("down").entered();
                return self.down.forward(&h);
            }
        }
        let parts = {
            let _s = tracing::trace_span!("gate_up").entered();
            self.gate_up.forward(x, &[i, i], 1)?
        };
        let h = {
            let _s = tracing::trace_span!("act").entered();
            let g = torch_ops::silu(&parts[0])?;
            (g * &parts[1])?.reshape((b, s, i))?
        };
        let _s = tracing::trace_span!("down").entered();
        self.down.forward(&h)
    }
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
    /// Plain tensor ops (candle's fused kernel has no backward pass).
    differentiable: bool,
}

impl RmsNorm {
    fn new(ws: &mut dyn WeightSource, name: &str, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: ws.tensor(name)?,
            eps: eps as f32,
            differentiable: false,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // candle's fused kernel rounds once, after the weight: right in f32 only. Training and
        // the reduced dtypes take transformers' steps (and roundings).
        if self.differentiable || x.dtype() != DType::F32 {
            return torch_ops::rms_norm(x, &self.weight, f64::from(self.eps));
        }
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
    span: tracing::Span,
}

impl Layer {
    fn new(cfg: &DecoderConfig, ws: &mut dyn WeightSource, i: usize, tp: &TpGroup) -> Result<Self> {
        let p = format!("model.layers.{i}");
        Ok(Self {
            input_norm: RmsNorm::new(ws, &format!("{p}.input_layernorm.weight"), cfg.rms_norm_eps)?,
            attn: Attention::new(cfg, ws, &format!("{p}.self_attn"), tp)?,
            post_norm: RmsNorm::new(
                ws,
                &format!("{p}.post_attention_layernorm.weight"),
                cfg.rms_norm_eps,
            )?,
            mlp: Mlp::new(cfg, ws, &format!("{p}.mlp"), tp)?,
            span: tracing::trace_span!("layer", i),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        cs: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = (x + self
            .attn
            .forward(&self.input_norm.forward(x)?, rope, cs, mask, cache)?)?;
        Ok((&h + self.mlp.forward(&self.post_norm.forward(&h)?)?)?)
    }
}

/// The llama-family decoder with its weights loaded (one rank's part of them under tensor
/// parallelism: its heads and MLP units; embeddings, norms and the LM head are whole).
#[derive(Debug, Clone)]
pub struct DecoderModel {
    cfg: DecoderConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    head: Linear,
    rope: Rope,
    device: Device,
    dtype: DType,
}

impl DecoderModel {
    /// Loads the weights of `ws`; with a group of several ranks, this rank's part of them
    /// (see [`check_tensor_parallel`] for what must divide).
    pub(crate) fn load(
        cfg: DecoderConfig,
        ws: &mut dyn WeightSource,
        tp: &TpGroup,
    ) -> Result<Self> {
        check_tensor_parallel(&cfg, &cfg.architecture, tp)?;
        let embed = ws.tensor("model.embed_tokens.weight")?;
        let layers = (0..cfg.layers)
            .map(|i| Layer::new(&cfg, ws, i, tp))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(ws, "model.norm.weight", cfg.rms_norm_eps)?;
        // The head stays `(vocab, hidden)` off the CPU's f32 kernels: a transposed view is the
        // faster layout for so wide a gemm, and a tied head shares the embedding's memory. In f32
        // on the CPU it is packed (linear.rs), a copy of a tied embedding.
        let head = Linear::new_as_stored(ws.lm_head(cfg.tie_word_embeddings)?, "lm_head")?;
        let rope = Rope::new(&cfg, ws.dtype(), ws.device())?;
        Ok(Self {
            embed,
            layers,
            norm,
            head,
            rope,
            device: ws.device().clone(),
            dtype: ws.dtype(),
            cfg,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The dtype activations are computed in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.layers)
    }

    /// Switches every layer to plain tensor ops that have a backward pass (softmax, RMSNorm,
    /// rotary embedding) and to cache-less attention, for training: each forward pass must
    /// then be one whole sequence batch with a fresh cache.
    pub fn into_differentiable(mut self) -> Self {
        for l in &mut self.layers {
            l.attn.differentiable = true;
            l.mlp.differentiable = true;
            l.input_norm.differentiable = true;
            l.post_norm.differentiable = true;
        }
        self.norm.differentiable = true;
        self
    }

    /// See [`super::Decoder::forward`].
    pub fn forward(
        &self,
        input: &ForwardInput,
        cache: &mut KvCache,
        at: LogitsAt,
    ) -> Result<Tensor> {
        let x = self.normed_hidden(input, cache, at)?;
        let logits = self.head.forward(&x)?;
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// The final-normed hidden states `(b, s or 1, hidden)` in the compute dtype (what the LM
    /// head reads; a reward head reads the last position's).
    pub fn normed_hidden(
        &self,
        input: &ForwardInput,
        cache: &mut KvCache,
        at: LogitsAt,
    ) -> Result<Tensor> {
        let (b, s) = input.tokens.dims2()?;
        if input.positions.dims2()? != (b, s) {
            return Err(Error::Unsupported(format!(
                "positions shape {:?} does not match tokens shape ({b}, {s})",
                input.positions.dims()
            )));
        }
        if s == 0 {
            return Err(Error::Unsupported("forward pass over zero tokens".into()));
        }
        let past = cache.seq_len();
        if past > 0 && cache.batch() != Some(b) {
            return Err(Error::Unsupported(format!(
                "batch of {b} rows after a cache of {:?} rows",
                cache.batch()
            )));
        }
        let mask = {
            let _s = tracing::trace_span!("mask").entered();
            let mask = attention_mask(
                b,
                s,
                past,
                input.key_mask.as_ref(),
                self.cfg.sliding_window,
                &self.device,
            )?;
            match (mask, self.layers.first()) {
                (Some(m), Some(l)) if !self.device.is_cpu() => Some(expand_mask(
                    m,
                    b,
                    l.attn.kv_heads,
                    l.attn.heads / l.attn.kv_heads,
                )?),
                (m, _) => m,
            }
        };
        let embed_span = tracing::trace_span!("embed").entered();
        let cs = self.rope.gather(&input.positions)?;
        let mut x = self
            .embed
            .index_select(&input.tokens.flatten_all()?, 0)?
            .reshape((b, s, ()))?;
        drop(embed_span);
        for (layer, lc) in self.layers.iter().zip(cache.layers_mut()) {
            x = layer.forward(&x, &self.rope, &cs, mask.as_ref(), lc)?;
        }
        // Norm and head only where logits are read: the head is the largest matmul of a small model.
        let x = match at {
            LogitsAt::All => x,
            LogitsAt::Last => x.narrow(1, s - 1, 1)?.contiguous()?,
        };
        self.norm.forward(&x)
    }

    pub fn vocab_size(&self) -> usize {
        self.embed.dim(0).unwrap_or(self.cfg.vocab)
    }
}

/// Largest mask [`expand_mask`] materialises (it is as large as one layer's f32 scores).
const MAX_EXPANDED_MASK_BYTES: usize = 1 << 30;

/// Off the CPU, the `(b or 1, 1, 1, s, t)` mask expanded once per forward pass to the scores'
/// full `(b, kv_heads, rep, s, t)` shape, so that every layer adds it with a contiguous kernel:
/// a broadcast operand makes candle's GPU kernels compute a strided index per element, which on an
/// H200 cost as much as the attention's matmuls (1.4 ms per layer for 32 x 256 tokens). Left as
/// it is above [`MAX_EXPANDED_MASK_BYTES`].
fn expand_mask(m: Tensor, b: usize, kv_heads: usize, rep: usize) -> Result<Tensor> {
    let (_, _, _, s, t) = m.dims5()?;
    if b * kv_heads * rep * s * t * DType::F32.size_in_bytes() > MAX_EXPANDED_MASK_BYTES {
        return Ok(m);
    }
    Ok(m.broadcast_as((b, kv_heads, rep, s, t))?.contiguous()?)
}

/// Fails unless the world size of `tp` divides the attention heads, the KV heads and the
/// intermediate size of `cfg` (`model` names it in the message).
pub(crate) fn check_tensor_parallel(cfg: &DecoderConfig, model: &str, tp: &TpGroup) -> Result<()> {
    tp.share(model, "attention heads", cfg.heads)?;
    tp.share(model, "key/value heads", cfg.kv_heads)?;
    tp.share(model, "intermediate units", cfg.intermediate)?;
    Ok(())
}
