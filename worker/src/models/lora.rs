//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`), merged into the base
//! weights at load: `W += scale * B @ A` in f32, with `scale = alpha / r` (or `alpha / sqrt(r)`
//! with rsLoRA). Merging once costs nothing per token and keeps the decoder format-agnostic.
//!
//! Only plain LoRA on linear layers is supported; anything else (DoRA, `modules_to_save`,
//! per-module rank/alpha patterns, embedding LoRA) is refused with a message that names it,
//! because silently dropping it would evaluate a different model.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::{Error, Result};

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";

/// One module's low-rank pair: `a` `(r, in)`, `b` `(out, r)`, both f32 on the CPU.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// A loaded adapter: its scale and one [`LoraPair`] per target module, keyed by the module's
/// name in the base model (e.g. `model.layers.0.self_attn.q_proj`).
#[derive(Debug, Clone)]
pub struct Adapter {
    pub dir: PathBuf,
    pub scale: f64,
    /// `fan_in_fan_out`: the base weight is stored `(in, out)`, so the delta is transposed.
    pub fan_in_fan_out: bool,
    pub base_model: Option<String>,
    pub modules: BTreeMap<String, LoraPair>,
}

impl Adapter {
    /// Reads the adapter folder `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&cfg_path, format!("invalid JSON: {e}")))?;
        let (scale, fan_in_fan_out) = parse_config(&cfg_path, &cfg)?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.exists() {
            let msg = if dir.join("adapter_model.bin").exists() {
                "not found (adapter_model.bin is not supported; save the adapter with safetensors)"
            } else {
                "not found"
            };
            return Err(Error::bad_file(&weights, msg));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            scale,
            fan_in_fan_out,
            base_model: cfg
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(String::from),
            modules: read_pairs(&weights)?,
        })
    }

    /// The f32 delta `scale * B @ A` for one module, shaped like the base weight `(out, in)`.
    pub fn delta(&self, pair: &LoraPair) -> Result<Tensor> {
        let d = (pair.b.matmul(&pair.a)? * self.scale)?;
        Ok(if self.fan_in_fan_out {
            d.t()?.contiguous()?
        } else {
            d
        })
    }
}

/// `w` (the full base weight of `module`, `(out, in)`) with the delta of every adapter that
/// targets `module` added in f32, in order; `None` when no adapter targets it. The result stays
/// f32 on `w`'s device: callers cut it for tensor parallelism, then cast (merge before the cut,
/// because a LoRA delta is a full-matrix update).
pub(crate) fn merge(adapters: &[Adapter], module: &str, w: &Tensor) -> Result<Option<Tensor>> {
    let mut merged: Option<Tensor> = None;
    for a in adapters {
        let Some(pair) = a.modules.get(module) else {
            continue;
        };
        let base = match merged.take() {
            Some(t) => t,
            None => w.to_dtype(DType::F32)?,
        };
        let delta = a.delta(pair)?.to_device(w.device())?;
        if delta.dims() != base.dims() {
            return Err(Error::bad_file(
                a.dir.join(WEIGHTS_FILE),
                format!(
                    "module `{module}`: delta {:?} does not match weight {:?}",
                    delta.dims(),
                    base.dims()
                ),
            ));
        }
        merged = Some((base + delta)?);
    }
    Ok(merged)
}

/// Fails if an adapter targets a module that is not in `merged` (the modules the model
/// consumed as linear layers): such a module would silently evaluate the base weights.
pub(crate) fn check_all_merged(adapters: &[Adapter], merged: &HashSet<String>) -> Result<()> {
    for a in adapters {
        if let Some(m) = a.modules.keys().find(|m| !merged.contains(*m)) {
            return Err(Error::bad_file(
                a.dir.join(WEIGHTS_FILE),
                format!("LoRA module `{m}` is not a linear layer of the model"),
            ));
        }
    }
    Ok(())
}

/// Returns the merge scale and `fan_in_fan_out`, refusing unsupported adapter kinds.
fn parse_config(path: &Path, cfg: &Value) -> Result<(f64, bool)> {
    let get = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    let peft_type = get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(Error::Unsupported(format!(
            "{}: peft_type `{peft_type}` (only LORA adapters can be merged)",
            path.display()
        )));
    }
    let unsupported = |what: &str| {
        Error::Unsupported(format!(
            "{}: {what} is not supported (only plain LoRA on linear layers)",
            path.display()
        ))
    };
    if get("use_dora").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("use_dora (DoRA)"));
    }
    if get("modules_to_save").is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(unsupported("modules_to_save (fully trained extra modules)"));
    }
    if get("lora_bias").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("lora_bias"));
    }
    for k in ["trainable_token_indices", "target_parameters"] {
        if get(k).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(unsupported(k));
        }
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if get(k).is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty())) {
            return Err(unsupported(k));
        }
    }
    let num = |k: &str| -> Result<f64> {
        get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::bad_file(path, format!("missing or non-numeric `{k}`")))
    };
    let r = num("r")?;
    if r <= 0.0 {
        return Err(Error::bad_file(
            path,
            format!("`r` is {r}, expected a positive rank"),
        ));
    }
    let alpha = num("lora_alpha")?;
    let rslora = get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let scale = if rslora { alpha / r.sqrt() } else { alpha / r };
    Ok((
        scale,
        get("fan_in_fan_out")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    ))
}

/// Reads every `base_model.model.<module>.lora_{A,B}.weight` pair; any other key is an error.
fn read_pairs(path: &Path) -> Result<BTreeMap<String, LoraPair>> {
    // SAFETY: the file is only read; like every mmap-based loader we rely on it not being
    // truncated while mapped.
    let st = unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| Error::bad_file(path, format!("cannot read safetensors: {e}")))?;
    let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (key, _) in st.tensors() {
        let (module, is_a) = split_key(&key).ok_or_else(|| {
            Error::bad_file(
                path,
                format!("unexpected tensor `{key}` (expected `{KEY_PREFIX}<module>.lora_A.weight` or `.lora_B.weight`)"),
            )
        })?;
        let t = st
            .load(&key, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| Error::bad_file(path, format!("tensor `{key}`: {e}")))?;
        let slot = halves.entry(module.to_string()).or_default();
        if is_a {
            slot.0 = Some(t)
        } else {
            slot.1 = Some(t)
        }
    }
    let mut pairs = BTreeMap::new();
    for (module, (a, b)) in halves {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(Error::bad_file(
                path,
                format!("module `{module}` has only one of lora_A / lora_B"),
            ));
        };
        let (r_a, r_b) = (a.dims2()?.0, b.dims2()?.1);
        if r_a != r_b {
            return Err(Error::bad_file(
                path,
                format!("module `{module}`: lora_A rank {r_a} != lora_B rank {r_b}"),
            ));
        }
        pairs.insert(module, LoraPair { a, b });
    }
    if pairs.is_empty() {
        return Err(Error::bad_file(path, "no LoRA tensors found"));
    }
    Ok(pairs)
}

/// `base_model.model.X.lora_A.weight` → (`X`, true).
fn split_key(key: &str) -> Option<(&str, bool)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        Some((m, true))
    } else {
        rest.strip_suffix(".lora_B.weight").map(|m| (m, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scale_follows_rslora() {
        let p = Path::new("adapter_config.json");
        let (s, _) = parse_config(p, &json!({"r": 4, "lora_alpha": 8})).unwrap();
        assert_eq!(s, 2.0);
        let (s, _) =
            parse_config(p, &json!({"r": 4, "lora_alpha": 8, "use_rslora": true})).unwrap();
        assert_eq!(s, 4.0);
    }

    #[test]
    fn modules_to_save_and_dora_are_refused_by_name() {
        let p = Path::new("adapter_config.json");
        let e = parse_config(
            p,
            &json!({"r": 4, "lora_alpha": 8, "modules_to_save": ["lm_head"]}),
        );
        assert!(e.unwrap_err().to_string().contains("modules_to_save"));
        let e = parse_config(p, &json!({"r": 4, "lora_alpha": 8, "use_dora": true}));
        assert!(e.unwrap_err().to_string().contains("DoRA"));
    }

    #[test]
    fn keys_are_split_into_module_and_half() {
        assert_eq!(
            split_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            Some(("model.layers.0.self_attn.q_proj", true))
        );
        assert_eq!(split_key("base_model.model.lm_head.weight"), None);
    }
}
