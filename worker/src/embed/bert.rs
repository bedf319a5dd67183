//! A BERT encoder (HF `BertModel` without its pooler) in float32: word + token-type + absolute
//! position embeddings and LayerNorm, then post-norm layers of self-attention and an exact-erf
//! GELU feed-forward block. Padding is masked out of attention, so a padded text encodes as it
//! would alone (up to float rounding).

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::models::{Linear, Weight};
use crate::tokenize::config::read_json_file;
use crate::{Error, Result};

/// The `config.json` fields a BERT encoder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// Reads `dir/config.json`; a model other than an absolute-position, GELU BERT is an error
    /// that names the field.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let json = read_json_file(&path)?;
        let string = |key: &str| json.get(key).and_then(Value::as_str);
        let unsupported = |what: String| Error::Unsupported(format!("{}: {what}", path.display()));
        match string("model_type") {
            Some("bert") => {}
            other => {
                return Err(unsupported(format!(
                    "model_type {other:?}: only BERT encoders (model_type \"bert\") are supported"
                )));
            }
        }
        if let Some(kind) = string("position_embedding_type").filter(|k| *k != "absolute") {
            return Err(unsupported(format!(
                "position_embedding_type `{kind}`: only \"absolute\" is supported"
            )));
        }
        match string("hidden_act") {
            Some("gelu") | None => {}
            Some(act) => {
                return Err(unsupported(format!(
                    "hidden_act `{act}`: only \"gelu\" is supported"
                )));
            }
        }
        let int = |key: &str, default: Option<usize>| -> Result<usize> {
            match json.get(key) {
                Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    Error::bad_file(&path, format!("`{key}` must be a non-negative integer"))
                }),
                None => default.ok_or_else(|| Error::bad_file(&path, format!("missing `{key}`"))),
            }
        };
        let config = Self {
            vocab_size: int("vocab_size", None)?,
            hidden_size: int("hidden_size", None)?,
            num_hidden_layers: int("num_hidden_layers", None)?,
            num_attention_heads: int("num_attention_heads", None)?,
            intermediate_size: int("intermediate_size", None)?,
            max_position_embeddings: int("max_position_embeddings", Some(512))?,
            type_vocab_size: int("type_vocab_size", Some(2))?,
            layer_norm_eps: json
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-12),
        };
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(Error::bad_file(
                &path,
                "`hidden_size` must be a multiple of `num_attention_heads`",
            ));
        }
        Ok(config)
    }
}

/// `y = x W^T + b` with the HF `(out, in)` weight: the decoders' linear layer (on the CPU the
/// project's f32 kernels, whose rows do not depend on the batch).
#[derive(Debug, Clone)]
struct Dense(Linear);

impl Dense {
    fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = Weight::Dense(vb.get((out_dim, in_dim), "weight")?);
        Ok(Self(Linear::new(
            weight,
            Some(vb.get(out_dim, "bias")?),
            "bert",
        )?))
    }

    /// `x`: `(batch, seq, in)`; one 2-D product over all rows.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(&x.contiguous()?)
    }
}

/// LayerNorm over the last dimension, two-pass (mean, then the variance of the centred values) as
/// torch computes it: the one-pass `E[x²] - E[x]²` loses digits when the mean is large.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// One post-norm encoder layer.
#[derive(Debug, Clone)]
struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attn_out: Dense,
    attn_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    out_norm: LayerNorm,
    heads: usize,
}

impl Layer {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let att = vb.pp("attention");
        Ok(Self {
            query: Dense::load(&att.pp("self.query"), h, h)?,
            key: Dense::load(&att.pp("self.key"), h, h)?,
            value: Dense::load(&att.pp("self.value"), h, h)?,
            attn_out: Dense::load(&att.pp("output.dense"), h, h)?,
            attn_norm: LayerNorm::load(&att.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            intermediate: Dense::load(&vb.pp("intermediate.dense"), h, i)?,
            output: Dense::load(&vb.pp("output.dense"), i, h)?,
            out_norm: LayerNorm::load(&vb.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            heads: c.num_attention_heads,
        })
    }

    /// `x`: `(batch, seq, hidden)`; `bias`: `(batch, 1, 1, seq)`, 0 for tokens, a huge negative
    /// number for padding.
    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let d = h / self.heads;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, h))?;
        let x = self
            .attn_norm
            .forward(&(self.attn_out.forward(&ctx)? + x)?)?;
        let inner = crate::models::gelu_erf(&self.intermediate.forward(&x)?)?;
        self.out_norm.forward(&(self.output.forward(&inner)? + x)?)
    }
}

/// The encoder: embeddings and layers, weights in f32 on one device.
#[derive(Debug, Clone)]
pub struct BertModel {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    config: BertConfig,
}

impl BertModel {
    /// Loads the weights of `dir/model.safetensors`, with or without the `bert.` prefix that
    /// `BertFor*` checkpoints carry.
    pub fn load(dir: &Path, config: BertConfig, device: &Device) -> Result<Self> {
        let path = dir.join("model.safetensors");
        if !path.exists() {
            let hint = if dir.join("pytorch_model.bin").exists() {
                " (pytorch_model.bin is not supported: convert the checkpoint to safetensors)"
            } else {
                ""
            };
            return Err(Error::bad_file(dir, format!("no model.safetensors{hint}")));
        }
        // SAFETY: the file is only read; we rely on it not being truncated while mapped.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(std::slice::from_ref(&path), DType::F32, device)
        }
        .map_err(|e| Error::bad_file(&path, format!("cannot map safetensors: {e}")))?;
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        Self::from_vb(vb, config).map_err(|e| match e {
            Error::Candle(c) => Error::bad_file(
                &path,
                format!("not a BERT checkpoint matching config.json: {c}"),
            ),
            other => other,
        })
    }

    fn from_vb(vb: VarBuilder, c: BertConfig) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let h = c.hidden_size;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), &c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: emb.get((c.vocab_size, h), "word_embeddings.weight")?,
            position: emb.get((c.max_position_embeddings, h), "position_embeddings.weight")?,
            token_type: emb.get((c.type_vocab_size, h), "token_type_embeddings.weight")?,
            embed_norm: LayerNorm::load(&emb.pp("LayerNorm"), h, c.layer_norm_eps)?,
            layers,
            config: c,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.word.device()
    }

    /// The last hidden states `(batch, seq, hidden)` of `ids` `(batch, seq)` u32, with `mask`
    /// `(batch, seq)` f32 (1 for tokens, 0 for padding). Token types are all 0 (one segment).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.config.max_position_embeddings {
            return Err(Error::Unsupported(format!(
                "{t} tokens exceed max_position_embeddings {}",
                self.config.max_position_embeddings
            )));
        }
        let h = self.config.hidden_size;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        // HF adds the token-type embedding first, then the positions.
        let x = words
            .broadcast_add(&self.token_type.get(0)?)?
            .broadcast_add(&self.position.narrow(0, 0, t)?)?;
        let mut x = self.embed_norm.forward(&x)?;
        let bias = ((mask.ones_like()? - mask)? * f64::from(f32::MIN))?.reshape((b, 1, 1, t))?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias)?;
        }
        Ok(x)
    }
}
