//! The normalized decoder configuration and the registry that maps HF `architectures` to it.
//!
//! llama, qwen2 and mistral differ only in a handful of switches (qkv bias, sliding window, rope
//! scaling, tied embeddings), so each architecture is a small `config.json` parser producing one
//! [`DecoderConfig`] instead of a model file of its own.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// How the two halves of each rotary pair are laid out in the q/k projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// HF transformers: element `i` pairs with `i + head_dim / 2` (`rotate_half`).
    HalfSplit,
    /// GGUF from llama.cpp's converter (which permutes q/k rows): element `2i` pairs with `2i + 1`.
    Interleaved,
}

/// Rotary frequency scaling (`rope_scaling` in config.json).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.x: long wavelengths divided by `factor`, a smooth ramp between the two bands.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: usize,
    },
    /// Positions divided by `factor` (all frequencies divided by `factor`).
    Linear { factor: f64 },
    /// Per-frequency divisors taken verbatim from a GGUF `rope_freqs.weight` tensor.
    FreqFactors(Vec<f32>),
}

/// Everything the decoder needs to know about one checkpoint, whatever format it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// The HF architecture name this config stands for (used in converted folders and messages).
    pub architecture: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub rope_layout: RopeLayout,
    /// q/k/v projections carry a bias (qwen2; llama with `attention_bias`).
    pub qkv_bias: bool,
    /// o_proj carries a bias (llama `attention_bias`).
    pub o_bias: bool,
    /// gate/up/down carry a bias (llama `mlp_bias`).
    pub mlp_bias: bool,
    /// A key is visible only if it is fewer than this many positions behind the query (mistral).
    pub sliding_window: Option<usize>,
    /// The LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
}

/// Architectures [`DecoderConfig::from_hf_json`] knows, as HF spells them.
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"];

/// Reads one config.json field with a clear error.
struct Fields<'a> {
    path: &'a Path,
    json: &'a Value,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| {
            Error::bad_file(
                self.path,
                format!("missing `{key}` (expected a non-negative integer)"),
            )
        })
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                Error::bad_file(
                    self.path,
                    format!("`{key}` is {v}, expected a non-negative integer"),
                )
            }),
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                Error::bad_file(self.path, format!("`{key}` is {v}, expected a number"))
            }),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::bad_file(self.path, format!("`{key}` is {v}, expected true or false"))
            }),
        }
    }
}

impl DecoderConfig {
    /// Parses an HF `config.json` (already read into `json`; `path` is for messages) through the
    /// registry of supported `architectures`.
    pub fn from_hf_json(path: &Path, json: &Value) -> Result<Self> {
        let arch = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::bad_file(path, "missing `architectures` (expected a list of names)")
            })?;
        let f = Fields { path, json };
        match arch {
            "LlamaForCausalLM" => Self::common(&f, arch, f.bool_or("attention_bias", false)?),
            "Qwen2ForCausalLM" => {
                if f.bool_or("use_sliding_window", false)? {
                    return Err(Error::Unsupported(format!(
                        "{}: Qwen2 with `use_sliding_window: true` (per-layer windows) is not supported",
                        path.display()
                    )));
                }
                let mut cfg = Self::common(&f, arch, true)?;
                // Qwen2 biases q/k/v but not o_proj.
                cfg.o_bias = false;
                Ok(cfg)
            }
            "MistralForCausalLM" => {
                let mut cfg = Self::common(&f, arch, false)?;
                cfg.sliding_window = f.opt_usize("sliding_window")?;
                Ok(cfg)
            }
            other => Err(Error::Unsupported(format!(
                "{}: architecture `{other}`; supported: {}",
                path.display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            ))),
        }
    }

    /// Reads and parses `config.json` at `path`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))?;
        Self::from_hf_json(path, &json)
    }

    /// The fields every supported architecture shares.
    fn common(f: &Fields, arch: &str, attention_bias: bool) -> Result<Self> {
        let act = f
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(Error::Unsupported(format!(
                "{}: hidden_act `{act}` (only silu is supported)",
                f.path.display()
            )));
        }
        let hidden = f.usize("hidden_size")?;
        let heads = f.usize("num_attention_heads")?;
        if heads == 0 || hidden % heads != 0 && f.opt_usize("head_dim")?.is_none() {
            return Err(Error::bad_file(
                f.path,
                format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"),
            ));
        }
        let kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(Error::bad_file(
                f.path,
                format!(
                    "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
                ),
            ));
        }
        Ok(Self {
            architecture: arch.to_string(),
            hidden,
            intermediate: f.usize("intermediate_size")?,
            layers: f.usize("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim: f.opt_usize("head_dim")?.unwrap_or(hidden / heads),
            vocab: f.usize("vocab_size")?,
            max_positions: f.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta: rope_theta(f)?,
            rope_scaling: parse_rope_scaling(f)?,
            rope_layout: RopeLayout::HalfSplit,
            qkv_bias: attention_bias,
            o_bias: attention_bias,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            sliding_window: None,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        })
    }
}

/// transformers 5 writes `rope_parameters` (holding `rope_theta` and the scaling); older
/// versions `rope_theta` and `rope_scaling` at the top level.
fn rope_theta(f: &Fields) -> Result<f64> {
    match f.get("rope_parameters").and_then(|p| p.get("rope_theta")) {
        Some(v) => v.as_f64().ok_or_else(|| {
            Error::bad_file(
                f.path,
                format!("`rope_parameters.rope_theta` is {v}, expected a number"),
            )
        }),
        None => f.f64_or("rope_theta", 10_000.0),
    }
}

fn parse_rope_scaling(f: &Fields) -> Result<Option<RopeScaling>> {
    let Some(rs) = f.get("rope_scaling").or_else(|| f.get("rope_parameters")) else {
        return Ok(None);
    };
    let kind = rs
        .get("rope_type")
        .or_else(|| rs.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let sub = Fields {
        path: f.path,
        json: rs,
    };
    let key = |k: &str| format!("rope_scaling.{k}");
    let num = |k: &str| -> Result<f64> {
        sub.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::bad_file(f.path, format!("missing or non-numeric `{}`", key(k))))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_positions: num("original_max_position_embeddings")? as usize,
        })),
        other => Err(Error::Unsupported(format!(
            "{}: rope_scaling type `{other}` (supported: default, linear, llama3)",
            f.path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<DecoderConfig> {
        DecoderConfig::from_hf_json(Path::new("config.json"), &v)
    }

    fn base(arch: &str) -> Value {
        json!({"architectures": [arch], "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "vocab_size": 300, "max_position_embeddings": 128})
    }

    #[test]
    fn unknown_architecture_names_it_and_the_supported_list() {
        let err = parse(base("GPT2LMHeadModel")).unwrap_err().to_string();
        assert!(err.contains("GPT2LMHeadModel"), "{err}");
        assert!(err.contains("Qwen2ForCausalLM"), "{err}");
    }

    #[test]
    fn qwen2_has_qkv_bias_and_mistral_a_window() {
        let q = parse(base("Qwen2ForCausalLM")).unwrap();
        assert!(q.qkv_bias && !q.o_bias);
        let mut m = base("MistralForCausalLM");
        m["sliding_window"] = json!(5);
        assert_eq!(parse(m).unwrap().sliding_window, Some(5));
        let l = parse(base("LlamaForCausalLM")).unwrap();
        assert_eq!((l.head_dim, l.kv_heads, l.sliding_window), (16, 2, None));
    }

    #[test]
    fn unsupported_rope_scaling_is_named() {
        let mut v = base("LlamaForCausalLM");
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
        let mut v = base("LlamaForCausalLM");
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        assert!(matches!(
            parse(v).unwrap().rope_scaling,
            Some(RopeScaling::Llama3 { .. })
        ));
    }
}
