//! GGUF files (llama.cpp): hyperparameters from the metadata, `blk.N.*` tensors mapped to the
//! HF state-dict names the decoder asks for, linear layers kept quantized (`QMatMul`).
//!
//! llama.cpp's converter permutes the q/k rows of llama checkpoints so that rotary pairs are
//! adjacent; such files use the interleaved RoPE layout. qwen2 files are not permuted.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use super::config::{DecoderConfig, RopeLayout, RopeScaling};
use super::decoder::WeightSource;
use super::linear::Weight;
use super::shard::Split;
use crate::{Error, Result};

/// `general.architecture` values this loader understands.
pub const SUPPORTED_GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// Quant types the decoder runs (what candle's quantized matmul implements).
const SUPPORTED_QUANTS: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Quant types whose CPU matmul in candle is scalar code (about 6x slower than f32 here). They
/// are requantized to Q8_0 at load, which has SIMD kernels: 1.7x the bytes of Q4_1 but still a
/// quarter of f32, and its rounding step (max/127 per 32 values) is far below the original 4- or
/// 5-bit step, so the model's outputs barely move (see tests/models_smollm2.rs).
const NO_CPU_SIMD: &[GgmlDType] = &[GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

fn requantize_q8_0(q: &QTensor, device: &Device) -> Result<QTensor> {
    Ok(QTensor::quantize(&q.dequantize(device)?, GgmlDType::Q8_0)?)
}

/// (HF name part, GGUF name part) for the tensors of one block and the top level.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];
const TOP_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens", "token_embd"),
    ("model.norm", "output_norm"),
    ("lm_head", "output"),
];

/// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`.
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if let Some(rest) = stem.strip_prefix("model.layers.") {
        let (i, part) = rest.split_once('.')?;
        let g = LAYER_NAMES.iter().find(|(h, _)| *h == part)?.1;
        return Some(format!("blk.{i}.{g}.{suffix}"));
    }
    let g = TOP_NAMES.iter().find(|(h, _)| *h == stem)?.1;
    Some(format!("{g}.{suffix}"))
}

/// `blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if let Some(rest) = stem.strip_prefix("blk.") {
        let (i, part) = rest.split_once('.')?;
        let h = LAYER_NAMES.iter().find(|(_, g)| *g == part)?.0;
        return Some(format!("model.layers.{i}.{h}.{suffix}"));
    }
    let h = TOP_NAMES.iter().find(|(_, g)| *g == stem)?.0;
    Some(format!("{h}.{suffix}"))
}

/// Reads the header (metadata and tensor table) of a GGUF file, without its tensors.
pub fn read_gguf_content(path: &Path) -> Result<Content> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Content::read(&mut BufReader::new(file)).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unknown dtype") {
            // candle refuses quant types it does not implement while reading the tensor table.
            Error::Unsupported(format!(
                "{}: {msg} (a GGUF quant type candle does not implement; supported: {SUPPORTED_QUANTS:?})",
                path.display()
            ))
        } else {
            Error::bad_file(path, format!("not a readable GGUF file: {msg}"))
        }
    })
}

/// A parsed GGUF file and an open reader for its tensors.
pub(crate) struct GgufWeights {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
    device: Device,
    /// Hand out dense f32 weights instead of quantized ones.
    dequantize: bool,
}

impl GgufWeights {
    pub fn open(path: &Path, device: &Device, dequantize: bool) -> Result<Self> {
        let content = read_gguf_content(path)?;
        for (name, info) in &content.tensor_infos {
            if !SUPPORTED_QUANTS.contains(&info.ggml_dtype) {
                return Err(Error::Unsupported(format!(
                    "{}: tensor `{name}` has quant type {:?}; supported: {:?}",
                    path.display(),
                    info.ggml_dtype,
                    SUPPORTED_QUANTS
                )));
            }
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader: BufReader::new(file),
            device: device.clone(),
            dequantize,
        })
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    pub fn into_content(self) -> Content {
        self.content
    }

    pub fn has(&self, gguf_name: &str) -> bool {
        self.content.tensor_infos.contains_key(gguf_name)
    }

    /// Reads one tensor by its GGUF name.
    pub fn qtensor(&mut self, gguf_name: &str) -> Result<QTensor> {
        if !self.has(gguf_name) {
            return Err(Error::bad_file(
                &self.path,
                format!("missing tensor `{gguf_name}`"),
            ));
        }
        self.content
            .tensor(&mut self.reader, gguf_name, &self.device)
            .map_err(|e| Error::bad_file(&self.path, format!("tensor `{gguf_name}`: {e}")))
    }

    fn qtensor_hf(&mut self, hf_name: &str) -> Result<QTensor> {
        let g = hf_to_gguf_name(hf_name)
            .ok_or_else(|| Error::bad_file(&self.path, format!("no GGUF name for `{hf_name}`")))?;
        self.qtensor(&g)
    }

    /// The decoder configuration from the metadata.
    pub fn config(&self) -> Result<DecoderConfig> {
        gguf_config(&self.path, &self.content)
    }
}

/// Builds a [`DecoderConfig`] from a GGUF file's metadata (`path` is for messages).
pub fn gguf_config(path: &Path, content: &Content) -> Result<DecoderConfig> {
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| Error::bad_file(path, "missing `general.architecture`"))?
        .clone();
    let (hf_arch, layout) = match arch.as_str() {
        "llama" => ("LlamaForCausalLM", RopeLayout::Interleaved),
        "qwen2" => ("Qwen2ForCausalLM", RopeLayout::HalfSplit),
        other => {
            return Err(Error::Unsupported(format!(
                "{}: GGUF architecture `{other}`; supported: {}",
                path.display(),
                SUPPORTED_GGUF_ARCHITECTURES.join(", ")
            )));
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let get = |k: &str| md.get(&key(k));
    let int = |k: &str| -> Result<Option<usize>> {
        get(k)
            .map(|v| {
                value_usize(v)
                    .ok_or_else(|| Error::bad_file(path, format!("`{}` is not an integer", key(k))))
            })
            .transpose()
    };
    let req =
        |k: &str| int(k)?.ok_or_else(|| Error::bad_file(path, format!("missing `{}`", key(k))));
    let float = |k: &str| get(k).and_then(value_f64);
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| Error::bad_file(path, "missing tensor `token_embd.weight`"))?;
    let rope_scaling = match get("rope.scaling.type")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
    {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear {
            factor: float("rope.scaling.factor").unwrap_or(1.0),
        }),
        Some(other) => {
            return Err(Error::Unsupported(format!(
                "{}: GGUF rope scaling `{other}` (supported: linear)",
                path.display()
            )));
        }
    };
    Ok(DecoderConfig {
        architecture: hf_arch.to_string(),
        hidden,
        intermediate: req("feed_forward_length")?,
        layers: req("block_count")?,
        heads,
        kv_heads: int("attention.head_count_kv")?.unwrap_or(heads),
        head_dim: int("attention.key_length")?.unwrap_or(hidden / heads.max(1)),
        vocab: embd.shape.dims().first().copied().unwrap_or(0),
        max_positions: int("context_length")?.unwrap_or(4096),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        rope_scaling,
        rope_layout: layout,
        qkv_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        o_bias: content.tensor_infos.contains_key("blk.0.attn_output.bias"),
        mlp_bias: content.tensor_infos.contains_key("blk.0.ffn_up.bias"),
        sliding_window: None,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
    })
}

fn value_usize(v: &Value) -> Option<usize> {
    v.to_u64()
        .ok()
        .or_else(|| v.to_u32().ok().map(u64::from))
        .or_else(|| v.to_i32().ok().and_then(|x| u64::try_from(x).ok()))
        .or_else(|| v.to_i64().ok().and_then(|x| u64::try_from(x).ok()))
        .map(|x| x as usize)
}

fn value_f64(v: &Value) -> Option<f64> {
    v.to_f32().map(f64::from).ok().or_else(|| v.to_f64().ok())
}

impl WeightSource for GgufWeights {
    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let q = self.qtensor_hf(name)?;
        Ok(q.dequantize(&self.device)?)
    }

    fn linear_weight(&mut self, prefix: &str, split: Split) -> Result<Weight> {
        let name = format!("{prefix}.weight");
        let q = self.qtensor_hf(&name)?;
        if self.dequantize {
            return split.apply_weight(Weight::Dense(q.dequantize(&self.device)?), &name);
        }
        let w = match q.dtype() {
            // Unquantized tensors are plain matmuls (and can then fuse with other dense ones).
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                Weight::Dense(q.dequantize(&self.device)?)
            }
            t if self.device.is_cpu() && NO_CPU_SIMD.contains(&t) => {
                Weight::Quantized(QMatMul::from_qtensor(requantize_q8_0(&q, &self.device)?)?)
            }
            _ => Weight::Quantized(QMatMul::from_qtensor(q)?),
        };
        split.apply_weight(w, &name)
    }

    fn lm_head(&mut self, _tied: bool) -> Result<Weight> {
        // A GGUF file ties the head by leaving `output.weight` out.
        let name = if self.has("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let q = self.qtensor(name)?;
        if self.dequantize {
            return Ok(Weight::Dense(q.dequantize(&self.device)?));
        }
        Ok(Weight::Quantized(QMatMul::from_qtensor(q)?))
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        DType::F32
    }
}

/// Frequency factors from a `rope_freqs.weight` tensor (llama 3 GGUF files), if present.
pub(crate) fn rope_freq_factors(w: &mut GgufWeights) -> Result<Option<Vec<f32>>> {
    if !w.has("rope_freqs.weight") {
        return Ok(None);
    }
    let t = w.qtensor("rope_freqs.weight")?.dequantize(&Device::Cpu)?;
    Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for hf in [
            "model.layers.12.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.bias",
            "model.layers.3.post_attention_layernorm.weight",
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.norm.weight",
        ] {
            let g = hf_to_gguf_name(hf).unwrap();
            assert_eq!(gguf_to_hf_name(&g).as_deref(), Some(hf), "{g}");
        }
        assert_eq!(
            hf_to_gguf_name("model.layers.1.mlp.down_proj.weight").unwrap(),
            "blk.1.ffn_down.weight"
        );
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
    }
}
