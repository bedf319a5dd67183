//! Checkpoints: `checkpoint-<step>/` folders that step 4 loads as a reward model (config.json,
//! `model.safetensors` in f32, the base folder's tokenizer files) and the trainer resumes from
//! (`optimizer.safetensors` with AdamW's moments, `trainer_state.json` with the step; with LoRA,
//! `model.safetensors` is merged, `trainer_params.safetensors` keeps base and LoRA apart for
//! resuming, and `adapter_model.safetensors` + `adapter_config.json` are the PEFT-style adapter,
//! `score` as a module to save). A folder
//! is written under a temporary name and renamed when complete, so a crash never leaves a
//! half-written checkpoint that resume would pick.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::adamw::AdamW;
use super::params::{LoraConfig, TrainableRm};
use crate::{Error, Result};

const STATE: &str = "trainer_state.json";
/// The raw parameters of a LoRA run (base weights and LoRA matrices apart).
const TRAINER_PARAMS: &str = "trainer_params.safetensors";

/// What a checkpoint records besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    pub total_steps: u64,
}

/// The folder of the checkpoint after `step` steps.
pub fn checkpoint_dir(output: &Path, step: u64) -> PathBuf {
    output.join(format!("checkpoint-{step}"))
}

/// Files of the base model folder not to copy into a checkpoint (weights and trainer state);
/// the rest (config, tokenizer files) is copied.
fn is_weight_file(name: &str) -> bool {
    // A base that is itself a checkpoint brings its trainer files, which describe another run.
    name.ends_with(".safetensors")
        || name.ends_with(".bin")
        || name.ends_with(".index.json")
        || name == STATE
        || name == "adapter_config.json"
}

/// Writes `checkpoint-<state.step>` under `output`.
pub fn save(
    output: &Path,
    base: &Path,
    model: &TrainableRm,
    opt: &AdamW,
    state: &TrainerState,
    lora: Option<&LoraConfig>,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(output, state.step);
    let tmp = output.join(format!(".checkpoint-{}.tmp", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for entry in std::fs::read_dir(base).map_err(|e| Error::io(base, e))? {
        let entry = entry.map_err(|e| Error::io(base, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.path().is_file() && !is_weight_file(&name) {
            std::fs::copy(entry.path(), tmp.join(&name)).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    candle_core::safetensors::save(&model.state_dict()?, tmp.join("model.safetensors"))?;
    if model.has_lora() {
        // model.safetensors has LoRA merged in (what step 4 loads); resuming needs the base
        // weights and the LoRA matrices apart, and users may want the PEFT-style adapter.
        candle_core::safetensors::save(&model.raw_state(), tmp.join(TRAINER_PARAMS))?;
        candle_core::safetensors::save(
            &model.peft_adapter(),
            tmp.join("adapter_model.safetensors"),
        )?;
        if let Some(lora) = lora {
            let json = serde_json::json!({"peft_type": "LORA", "r": lora.rank,
                "lora_alpha": lora.alpha, "target_modules": lora.target_modules,
                "lora_dropout": 0.0, "bias": "none", "modules_to_save": ["score"]});
            std::fs::write(tmp.join("adapter_config.json"), json.to_string())
                .map_err(|e| Error::io(&tmp, e))?;
        }
    }
    let mut moments: HashMap<String, Tensor> = HashMap::new();
    for (name, (m, v)) in &opt.moments {
        moments.insert(format!("m/{name}"), m.clone());
        moments.insert(format!("v/{name}"), v.clone());
    }
    moments.insert(
        "adamw_step".into(),
        Tensor::new(&[opt.step as f32], &Device::Cpu)?,
    );
    candle_core::safetensors::save(&moments, tmp.join("optimizer.safetensors"))?;
    let json =
        serde_json::to_string_pretty(state).map_err(|e| Error::bad_file(&tmp, e.to_string()))?;
    std::fs::write(tmp.join(STATE), json).map_err(|e| Error::io(&tmp, e))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// The complete checkpoint with the most steps under `output`, if any.
pub fn latest(output: &Path) -> Option<(PathBuf, TrainerState)> {
    let entries = std::fs::read_dir(output).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("checkpoint-")?.parse::<u64>().ok()?;
            let text = std::fs::read_to_string(e.path().join(STATE)).ok()?;
            let state: TrainerState = serde_json::from_str(&text).ok()?;
            Some((e.path(), state))
        })
        .max_by_key(|(_, s)| s.step)
}

/// Loads a checkpoint's weights into `model` and its moments into `opt`.
pub fn restore(dir: &Path, model: &mut TrainableRm, opt: &mut AdamW) -> Result<()> {
    let device = model.device().clone();
    let file = if dir.join(TRAINER_PARAMS).is_file() {
        TRAINER_PARAMS
    } else {
        "model.safetensors"
    };
    let weights = candle_core::safetensors::load(dir.join(file), &device)?;
    let names: Vec<String> = model.params().keys().cloned().collect();
    for name in &names {
        let t = weights
            .get(name)
            .ok_or_else(|| Error::bad_file(dir, format!("checkpoint lacks `{name}`")))?;
        model.set(name, t)?;
    }
    let path = dir.join("optimizer.safetensors");
    let mut state = candle_core::safetensors::load(&path, &device)?;
    let step = state
        .remove("adamw_step")
        .ok_or_else(|| Error::bad_file(&path, "missing `adamw_step`"))?;
    opt.step = step.to_vec1::<f32>()?[0] as u64;
    opt.moments.clear();
    for name in model.trainable() {
        if let (Some(m), Some(v)) = (
            state.remove(&format!("m/{name}")),
            state.remove(&format!("v/{name}")),
        ) {
            opt.moments.insert(name.clone(), (m, v));
        }
    }
    Ok(())
}
