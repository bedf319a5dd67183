//! [`BaichuanConfig`]: the `config.json` of a Baichuan-style reward model (BaichuanCharRM,
//! docs/FIDELITY.md §4.5), and the rule that picks ALiBi or rotary position encoding.
//!
//! The rule, in order:
//! 1. `position_embedding_type` when present: `"alibi"`, or `"rope"` / `"rotary"`; any other
//!    value is an error naming the key.
//! 2. Otherwise the shape of the published configs: Baichuan-7B and Baichuan2-7B (rotary) write
//!    `max_position_embeddings`; Baichuan-13B and Baichuan2-13B (ALiBi) write only
//!    `model_max_length`. So `max_position_embeddings` present means rotary, absent ALiBi.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// How attention sees positions.
#[derive(Debug, Clone, PartialEq)]
pub enum PositionEncoding {
    /// Baichuan-13B: linear biases with the interleave slopes, no rotary embedding.
    Alibi,
    /// Baichuan-7B: rotary embeddings (half-split pairs) with base `theta`.
    Rope { theta: f64 },
}

/// The fields of a Baichuan config.json the reward model uses.
#[derive(Debug, Clone, PartialEq)]
pub struct BaichuanConfig {
    pub hidden: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub vocab: usize,
    /// `model_max_length` (or `max_position_embeddings`), 4096 by default: the reference's
    /// truncation length.
    pub max_length: usize,
    pub rms_norm_eps: f64,
    pub position: PositionEncoding,
    /// `eos_token_id`, used when the tokenizer names no eos token.
    pub eos_token_id: Option<u32>,
}

impl BaichuanConfig {
    /// Reads and parses `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))?;
        Self::from_json(path, &json)
    }

    /// Parses an already-read config.json (`path` is for messages).
    pub fn from_json(path: &Path, json: &Value) -> Result<Self> {
        let get = |key: &str| json.get(key).filter(|v| !v.is_null());
        let usize_opt = |key: &str| -> Result<Option<usize>> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                    Error::bad_file(
                        path,
                        format!("`{key}` is {v}, expected a non-negative integer"),
                    )
                }),
            }
        };
        let usize_req = |key: &str| -> Result<usize> {
            usize_opt(key)?.ok_or_else(|| {
                Error::bad_file(
                    path,
                    format!("missing `{key}` (expected a positive integer)"),
                )
            })
        };
        let f64_or = |key: &str, default: f64| -> Result<f64> {
            match get(key) {
                None => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| {
                    Error::bad_file(path, format!("`{key}` is {v}, expected a number"))
                }),
            }
        };
        if let Some(act) = get("hidden_act")
            && act.as_str() != Some("silu")
        {
            return Err(Error::Unsupported(format!(
                "{}: `hidden_act` is {act} (only \"silu\" is supported)",
                path.display()
            )));
        }
        let hidden = usize_req("hidden_size")?;
        let heads = usize_req("num_attention_heads")?;
        if heads == 0 || hidden % heads != 0 {
            return Err(Error::bad_file(
                path,
                format!(
                    "`hidden_size` {hidden} is not a multiple of `num_attention_heads` {heads}"
                ),
            ));
        }
        let max_positions = usize_opt("max_position_embeddings")?;
        let position = match get("position_embedding_type") {
            Some(v) => match v.as_str() {
                Some("alibi") => PositionEncoding::Alibi,
                Some("rope" | "rotary") => PositionEncoding::Rope {
                    theta: f64_or("rope_theta", 10_000.0)?,
                },
                _ => {
                    return Err(Error::Unsupported(format!(
                        "{}: `position_embedding_type` is {v} (expected \"alibi\", \"rope\" or \
                         \"rotary\")",
                        path.display()
                    )));
                }
            },
            None if max_positions.is_some() => PositionEncoding::Rope {
                theta: f64_or("rope_theta", 10_000.0)?,
            },
            None => PositionEncoding::Alibi,
        };
        let eos_token_id = usize_opt("eos_token_id")?.map(|v| v as u32);
        Ok(Self {
            hidden,
            heads,
            head_dim: hidden / heads,
            layers: usize_req("num_hidden_layers")?,
            intermediate: usize_req("intermediate_size")?,
            vocab: usize_req("vocab_size")?,
            max_length: usize_opt("model_max_length")?
                .or(max_positions)
                .unwrap_or(4096),
            rms_norm_eps: f64_or("rms_norm_eps", 1e-6)?,
            position,
            eos_token_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<BaichuanConfig> {
        BaichuanConfig::from_json(Path::new("config.json"), &v)
    }

    /// The Baichuan2-13B shape (class defaults of docs/FIDELITY.md §4.5 with the real vocabulary).
    fn thirteen_b() -> Value {
        json!({"architectures": ["BaichuanForCausalLM"], "hidden_size": 5120,
               "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 40,
               "vocab_size": 125696, "model_max_length": 4096, "rms_norm_eps": 1e-6,
               "hidden_act": "silu", "eos_token_id": 2})
    }

    #[test]
    fn thirteen_b_is_alibi_and_seven_b_is_rope() {
        let c = parse(thirteen_b()).unwrap();
        assert_eq!(c.position, PositionEncoding::Alibi);
        assert_eq!(
            (c.head_dim, c.max_length, c.eos_token_id),
            (128, 4096, Some(2))
        );
        let mut seven = thirteen_b();
        seven["max_position_embeddings"] = json!(4096);
        assert_eq!(
            parse(seven).unwrap().position,
            PositionEncoding::Rope { theta: 10_000.0 }
        );
    }

    #[test]
    fn explicit_key_wins_and_unknown_values_are_named() {
        let mut v = thirteen_b();
        v["position_embedding_type"] = json!("rope");
        v["rope_theta"] = json!(500.0);
        assert_eq!(
            parse(v).unwrap().position,
            PositionEncoding::Rope { theta: 500.0 }
        );
        let mut v = thirteen_b();
        v["position_embedding_type"] = json!("absolute");
        let err = parse(v).unwrap_err().to_string();
        assert!(
            err.contains("position_embedding_type") && err.contains("absolute"),
            "{err}"
        );
    }

    #[test]
    fn bad_shapes_and_activations_are_errors() {
        let mut v = thirteen_b();
        v["num_attention_heads"] = json!(7);
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("num_attention_heads"), "{err}");
        let mut v = thirteen_b();
        v["hidden_act"] = json!("gelu");
        assert!(parse(v).unwrap_err().to_string().contains("gelu"));
        let mut v = thirteen_b();
        v.as_object_mut().unwrap().remove("num_hidden_layers");
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("num_hidden_layers"), "{err}");
    }
}
