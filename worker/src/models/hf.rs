//! HF folders: `config.json` plus `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped; f32/f16/bf16 weights cast to the compute
//! dtype, with LoRA deltas merged in f32 before the cast.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::decoder::WeightSource;
use super::linear::Weight;
use super::lora::{self, Adapter};
use super::shard::Split;
use crate::{Error, Result};

const EMBED: &str = "model.embed_tokens.weight";

/// The safetensors files of the HF folder `dir`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&index, format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::bad_file(&index, "missing `weight_map` object"))?;
        let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let hint = if dir.join("pytorch_model.bin").exists() {
        " (pytorch_model.bin is not supported: convert the checkpoint to safetensors)"
    } else {
        ""
    };
    Err(Error::bad_file(
        dir,
        format!("no model.safetensors or model.safetensors.index.json{hint}"),
    ))
}

/// Fails naming `path` and both sizes when a safetensors file is shorter than its header says
/// (an interrupted download or copy), which mapping it would only call "incomplete metadata".
fn check_complete(path: &Path) -> Result<()> {
    use std::io::Read;
    let truncated = |size: u64, want: u64| {
        Error::bad_file(
            path,
            format!(
                "truncated: {size} bytes, but its header describes {want} (expected the whole \
                 file; download or copy it again)"
            ),
        )
    };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| truncated(size, 8))?;
    let header_end = 8u64.saturating_add(u64::from_le_bytes(len));
    if header_end > size {
        return Err(truncated(size, header_end));
    }
    let mut header = vec![0u8; (header_end - 8) as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let json: Value = serde_json::from_slice(&header)
        .map_err(|e| Error::bad_file(path, format!("invalid safetensors header: {e}")))?;
    let data_end = json
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let want = header_end.saturating_add(data_end);
    if size < want {
        return Err(truncated(size, want));
    }
    Ok(())
}

/// Weights of one HF folder, with the adapters to merge.
pub(crate) struct HfWeights {
    dir: PathBuf,
    st: MmapedSafetensors,
    adapters: Vec<Adapter>,
    /// LoRA modules merged so far, to report adapter modules the model does not have.
    merged: HashSet<String>,
    embed: Option<Tensor>,
    device: Device,
    dtype: DType,
}

impl HfWeights {
    /// Maps the folder's safetensors. `dtype: None` keeps the stored dtype of the embeddings on
    /// a GPU and uses f32 on the CPU (whose f16/bf16 matmuls are slow and less precise).
    pub fn open(
        dir: &Path,
        adapters: Vec<Adapter>,
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<Self> {
        let files = safetensors_files(dir)?;
        for f in &files {
            if !f.exists() {
                return Err(Error::bad_file(
                    f,
                    "listed in model.safetensors.index.json but missing",
                ));
            }
            check_complete(f)?;
        }
        // SAFETY: the files are only read; we rely on them not being truncated while mapped.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| Error::bad_file(dir, format!("cannot map safetensors: {e}")))?;
        let dtype = match dtype {
            Some(d) => d,
            None if device.is_cpu() => DType::F32,
            None => match st.get(EMBED).map(|v| v.dtype()) {
                Ok(safetensors::Dtype::BF16) => DType::BF16,
                Ok(safetensors::Dtype::F16) => DType::F16,
                _ => DType::F32,
            },
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            st,
            adapters,
            merged: HashSet::new(),
            embed: None,
            device: device.clone(),
            dtype,
        })
    }

    fn load_raw(&self, name: &str) -> Result<Tensor> {
        if self.st.get(name).is_err() {
            return Err(Error::bad_file(
                &self.dir,
                format!("missing tensor `{name}`"),
            ));
        }
        self.st
            .load(name, &self.device)
            .map_err(|e| Error::bad_file(&self.dir, format!("tensor `{name}`: {e}")))
    }

    /// Fails if an adapter targets a module that no linear layer of the model consumed.
    pub fn check_adapters_used(&self) -> Result<()> {
        lora::check_all_merged(&self.adapters, &self.merged)
    }
}

impl WeightSource for HfWeights {
    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let t = self.load_raw(name)?.to_dtype(self.dtype)?;
        if name == EMBED {
            self.embed = Some(t.clone());
        }
        Ok(t)
    }

    fn linear_weight(&mut self, prefix: &str, split: Split) -> Result<Weight> {
        let name = format!("{prefix}.weight");
        let w = self.load_raw(&name)?;
        let w32 = lora::merge(&self.adapters, prefix, &w)?;
        if w32.is_some() {
            self.merged.insert(prefix.to_string());
        }
        // Cut after merging (a LoRA delta is a full-matrix update), before the cast.
        let full = w32.unwrap_or(w);
        Ok(Weight::Dense(
            split.apply(&full, &name)?.to_dtype(self.dtype)?,
        ))
    }

    fn lm_head(&mut self, tied: bool) -> Result<Weight> {
        if !tied && self.st.get("lm_head.weight").is_ok() {
            return self.linear_weight("lm_head", Split::Full);
        }
        if !tied {
            return Err(Error::bad_file(
                &self.dir,
                "missing tensor `lm_head.weight` (and tie_word_embeddings is false)",
            ));
        }
        if self
            .adapters
            .iter()
            .any(|a| a.modules.contains_key("lm_head"))
        {
            return Err(Error::Unsupported(
                "a LoRA adapter on lm_head of a model with tied embeddings".into(),
            ));
        }
        let embed = match &self.embed {
            Some(e) => e.clone(),
            None => self.tensor(EMBED)?,
        };
        Ok(Weight::Dense(embed))
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}
