//! The weights of a Baichuan-style reward model folder, by HF state-dict name, from whichever
//! format it was published in: `model.safetensors`, safetensors shards with
//! `model.safetensors.index.json`, `pytorch_model.bin`, or `.bin` shards with
//! `pytorch_model.bin.index.json` (PyTorch zip pickles, read with candle's pickle reader).
//!
//! LoRA adapters given to [`RmWeights::with_adapters`] are merged into the full linear weights
//! they target (by [`super::lora::merge`], as the decoder's weights are), before any cut.
//!
//! Every tensor is checked against the shape the config implies, so a checkpoint of another
//! shape fails at load with the tensor's name instead of deep inside a matmul.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::lora::{self, Adapter};
use crate::{Error, Result};

/// Where the tensors are stored.
enum Store {
    Safetensors(MmapedSafetensors),
    /// One reader per `.bin` file and the file each tensor name lives in.
    Pth {
        files: Vec<PthTensors>,
        by_name: HashMap<String, usize>,
    },
    /// Tensors already in memory (the trainer's parameters, see `train`).
    Memory(HashMap<String, Tensor>),
}

/// A reward model folder's tensors, cast to the compute dtype on the compute device.
pub(crate) struct RmWeights {
    dir: PathBuf,
    store: Store,
    device: Device,
    dtype: DType,
    /// Adapters merged into the linear weights, in order.
    adapters: Vec<Adapter>,
    /// Modules some adapter was merged into, to refuse adapters on modules the model lacks.
    merged: RefCell<HashSet<String>>,
}

/// The shard files an index lists (`weight_map` values), in name order.
fn index_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(index, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_file(index, "missing `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::bad_file(index, format!("`weight_map.{name}` is not a file name"))
        })?;
        files.insert(file.to_string());
    }
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(Error::bad_file(
            missing,
            format!("listed in {} but missing", index.display()),
        ));
    }
    Ok(files)
}

impl RmWeights {
    /// Opens the weights of `dir`, preferring safetensors over `.bin` when both are there.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let st_index = dir.join("model.safetensors.index.json");
        let st_single = dir.join("model.safetensors");
        let bin_index = dir.join("pytorch_model.bin.index.json");
        let bin_single = dir.join("pytorch_model.bin");
        let store = if st_index.is_file() || st_single.is_file() {
            let files = if st_index.is_file() {
                index_files(&st_index)?
            } else {
                vec![st_single]
            };
            // SAFETY: the files are only read; we rely on them not being truncated while mapped.
            let st = unsafe { MmapedSafetensors::multi(&files) }
                .map_err(|e| Error::bad_file(dir, format!("cannot map safetensors: {e}")))?;
            Store::Safetensors(st)
        } else if bin_index.is_file() || bin_single.is_file() {
            let paths = if bin_index.is_file() {
                index_files(&bin_index)?
            } else {
                vec![bin_single]
            };
            Self::open_pth(&paths)?
        } else {
            return Err(Error::bad_file(
                dir,
                "no weights: expected model.safetensors, model.safetensors.index.json, \
                 pytorch_model.bin or pytorch_model.bin.index.json",
            ));
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            store,
            device: device.clone(),
            dtype,
            adapters: Vec::new(),
            merged: RefCell::default(),
        })
    }

    /// Merges `adapters` (in order) into the linear weights read by [`Self::linear_as`].
    pub fn with_adapters(mut self, adapters: Vec<Adapter>) -> Self {
        self.adapters = adapters;
        self
    }

    /// Weights held in memory by name, e.g. the trainer's `Var`s: `get` hands out the same
    /// tensors (no copy when dtype and device match), so gradients flow back to them.
    pub fn from_tensors(
        label: &Path,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            dir: label.to_path_buf(),
            store: Store::Memory(tensors),
            device: device.clone(),
            dtype,
            adapters: Vec::new(),
            merged: RefCell::default(),
        }
    }

    fn open_pth(paths: &[PathBuf]) -> Result<Store> {
        let mut files = Vec::with_capacity(paths.len());
        let mut by_name = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let pth = PthTensors::new(path, None).map_err(|e| {
                Error::bad_file(path, format!("cannot read the PyTorch checkpoint: {e}"))
            })?;
            for name in pth.tensor_infos().keys() {
                by_name.insert(name.clone(), i);
            }
            files.push(pth);
        }
        Ok(Store::Pth { files, by_name })
    }

    fn load_raw(&self, name: &str) -> Result<Option<Tensor>> {
        let bad =
            |e: candle_core::Error| Error::bad_file(&self.dir, format!("tensor `{name}`: {e}"));
        match &self.store {
            Store::Safetensors(st) => {
                if st.get(name).is_err() {
                    return Ok(None);
                }
                st.load(name, &Device::Cpu).map(Some).map_err(bad)
            }
            Store::Pth { files, by_name } => match by_name.get(name) {
                None => Ok(None),
                Some(&i) => files[i].get(name).map_err(bad),
            },
            Store::Memory(map) => Ok(map.get(name).cloned()),
        }
    }

    /// Whether the folder holds tensor `name` (e.g. a language model without a `score` head,
    /// which the trainer then initialises).
    pub fn contains(&self, name: &str) -> Result<bool> {
        Ok(self.load_raw(name)?.is_some())
    }

    /// Tensor `name` of shape `shape` in the compute dtype on the compute device.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .get_as(name, shape, self.dtype)?
            .to_device(&self.device)?)
    }

    /// Tensor `name` of shape `shape` in `dtype`, on the CPU (on its own device for in-memory
    /// weights).
    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self
            .load_raw(name)?
            .ok_or_else(|| Error::bad_file(&self.dir, format!("missing tensor `{name}`")))?;
        if t.dims() != shape {
            return Err(Error::bad_file(
                &self.dir,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?} from config.json",
                    t.dims()
                ),
            ));
        }
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::bad_file(
                &self.dir,
                format!(
                    "tensor `{name}` is {:?}, expected f32, f16 or bf16",
                    t.dtype()
                ),
            ));
        }
        Ok(t.to_dtype(dtype)?)
    }

    /// The weight of the linear layer `module` (`<module>.weight`, shape `shape`) in `dtype` on
    /// the CPU, with the adapters' deltas for `module` merged in f32 first.
    pub fn linear_as(&self, module: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let name = format!("{module}.weight");
        if !self.adapters.iter().any(|a| a.modules.contains_key(module)) {
            // Cast once, exactly as without adapters.
            return self.get_as(&name, shape, dtype);
        }
        let w = self.get_as(&name, shape, DType::F32)?;
        let merged = lora::merge(&self.adapters, module, &w)?.unwrap_or(w);
        self.merged.borrow_mut().insert(module.to_string());
        Ok(merged.to_dtype(dtype)?)
    }

    /// Fails if an adapter targets a module no [`Self::linear_as`] call consumed.
    pub fn check_adapters_used(&self) -> Result<()> {
        lora::check_all_merged(&self.adapters, &self.merged.borrow())
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}
