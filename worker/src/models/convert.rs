//! GGUF → HF folder conversion: dequantized f32 `model.safetensors` with HF tensor names (q/k
//! rows un-permuted back to the HF rotary layout) and a `config.json`. This gives an f32 HF
//! checkpoint of a GGUF model without torch; the tokenizer files are written separately by the
//! tokenizer module from the GGUF vocabulary.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{Value, json};

use super::config::{DecoderConfig, RopeLayout, RopeScaling};
use super::gguf::{GgufWeights, gguf_to_hf_name};
use crate::{Error, Result};

/// Writes `out_dir/model.safetensors` and `out_dir/config.json` for the GGUF file `gguf`, and
/// returns the configuration. `out_dir` is created if needed; existing files are replaced.
pub fn convert_gguf_to_hf(gguf: &Path, out_dir: &Path) -> Result<DecoderConfig> {
    let mut w = GgufWeights::open(gguf, &Device::Cpu, false)?;
    let cfg = w.config()?;
    if w.has("rope_freqs.weight") {
        return Err(Error::Unsupported(format!(
            "{}: converting a GGUF with rope_freqs (llama 3 rope scaling) to an HF folder",
            gguf.display()
        )));
    }
    let mut names: Vec<String> = w.content().tensor_infos.keys().cloned().collect();
    names.sort();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for g in names {
        let hf = gguf_to_hf_name(&g)
            .ok_or_else(|| Error::bad_file(gguf, format!("tensor `{g}` has no HF counterpart")))?;
        let t = w.qtensor(&g)?.dequantize(&Device::Cpu)?;
        let t = match (cfg.rope_layout, hf.as_str()) {
            (RopeLayout::Interleaved, n) if n.ends_with("self_attn.q_proj.weight") => {
                unpermute(&t, cfg.heads)?
            }
            (RopeLayout::Interleaved, n) if n.ends_with("self_attn.k_proj.weight") => {
                unpermute(&t, cfg.kv_heads)?
            }
            _ => t,
        };
        tensors.insert(hf, t);
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let st_path = out_dir.join("model.safetensors");
    let tmp = out_dir.join("model.safetensors.partial");
    candle_core::safetensors::save(&tensors, &tmp)
        .map_err(|e| Error::bad_file(&tmp, format!("cannot write safetensors: {e}")))?;
    std::fs::rename(&tmp, &st_path).map_err(|e| Error::io(&st_path, e))?;
    let config = hf_config_json(&cfg, w.content());
    let cfg_path = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).expect("a JSON value always serializes");
    std::fs::write(&cfg_path, text).map_err(|e| Error::io(&cfg_path, e))?;
    Ok(cfg)
}

/// Undoes llama.cpp's q/k row permutation: GGUF row `h*d + 2j + p` is HF row `h*d + p*d/2 + j`.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let half = out / heads / 2;
    Ok(w.reshape((heads, half, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// The HF `config.json` equivalent of `cfg` (with token ids from the GGUF metadata).
fn hf_config_json(
    cfg: &DecoderConfig,
    content: &candle_core::quantized::gguf_file::Content,
) -> Value {
    let model_type = match cfg.architecture.as_str() {
        "Qwen2ForCausalLM" => "qwen2",
        "MistralForCausalLM" => "mistral",
        _ => "llama",
    };
    let mut j = json!({
        "architectures": [cfg.architecture],
        "model_type": model_type,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_positions,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "vocab_size": cfg.vocab,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "float32",
    });
    if model_type == "llama" {
        j["attention_bias"] = json!(cfg.qkv_bias);
        j["mlp_bias"] = json!(cfg.mlp_bias);
    }
    if let Some(RopeScaling::Linear { factor }) = &cfg.rope_scaling {
        j["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
    }
    for (gguf_key, hf_key) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ] {
        if let Some(id) = content.metadata.get(gguf_key).and_then(|v| v.to_u32().ok()) {
            j[hf_key] = json!(id);
        }
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_restores_half_split_rows() {
        // One head of dim 4: HF rows [a0, a1, b0, b1] are stored by llama.cpp as [a0, b0, a1, b1].
        let gguf = Tensor::new(&[[0f32], [2.], [1.], [3.]], &Device::Cpu).unwrap();
        let hf = unpermute(&gguf, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(hf, [0., 1., 2., 3.]);
    }
}
