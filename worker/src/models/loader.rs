//! The entry point: [`load_causal_lm`] picks the format (HF folder or GGUF), merges adapters and
//! returns a [`LoadedModel`] the engine drives through [`Decoder`].

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};

use super::cache::KvCache;
use super::config::{DecoderConfig, RopeScaling};
use super::decoder::{DecoderModel, check_tensor_parallel};
use super::gguf::{GgufWeights, rope_freq_factors};
use super::hf::HfWeights;
use super::lora::Adapter;
use super::shard::TpGroup;
use super::{Decoder, ForwardInput, LogitsAt};
use crate::collective::SharedCollective;
use crate::{Error, Result};

/// The compute dtype to load weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    /// f32 on the CPU; on a GPU the checkpoint's own f16/bf16 (f32 stays f32).
    #[default]
    Auto,
    F32,
    F16,
    BF16,
}

/// How to load a model.
#[derive(Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DTypeChoice,
    /// Tensor parallelism: the group this rank belongs to (its rank and world size come from
    /// it). The loaded model holds this rank's heads and MLP units and all-reduces over the group
    /// in every forward pass, which every rank must run with the same inputs. `None`: the whole
    /// model (a world of one).
    pub tp: Option<SharedCollective>,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("tp", &TpGroup::new(self.tp.clone()))
            .finish()
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DTypeChoice::Auto,
            tp: None,
        }
    }
}

/// Which format a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// An HF folder with safetensors weights.
    HfFolder,
    /// A GGUF file (quantized linear layers).
    Gguf,
}

/// A loaded causal LM.
#[derive(Debug)]
pub struct LoadedModel {
    model: DecoderModel,
    kind: SourceKind,
    path: PathBuf,
    gguf: Option<Content>,
}

impl LoadedModel {
    /// A model built from the HF folder `path` (by [`super::BaseCache`]).
    pub(crate) fn from_hf(model: DecoderModel, path: PathBuf) -> Self {
        LoadedModel {
            model,
            kind: SourceKind::HfFolder,
            path,
            gguf: None,
        }
    }
    pub fn source_kind(&self) -> SourceKind {
        self.kind
    }
    /// The HF folder or the GGUF file the weights came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The GGUF header (metadata incl. `tokenizer.ggml.*` and `tokenizer.chat_template`, and the
    /// tensor table) when the model came from a GGUF file.
    pub fn gguf_content(&self) -> Option<&Content> {
        self.gguf.as_ref()
    }
    pub fn config(&self) -> &DecoderConfig {
        self.model.config()
    }
    pub fn dtype(&self) -> DType {
        self.model.dtype()
    }
}

impl Decoder for LoadedModel {
    type Cache = KvCache;
    fn new_cache(&self) -> KvCache {
        self.model.new_cache()
    }
    fn forward(&self, input: &ForwardInput, cache: &mut KvCache, at: LogitsAt) -> Result<Tensor> {
        self.model.forward(input, cache, at)
    }
    fn retain_rows(&self, cache: &mut KvCache, rows: &[usize]) -> Result<()> {
        cache.retain_rows(rows)
    }
    fn device(&self) -> &Device {
        self.model.device()
    }
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }
}

/// Where the weights of `model_path` are: an HF folder (has config.json), a `.gguf` file, or a
/// folder holding exactly one `.gguf` file.
pub fn resolve_model_path(model_path: &Path) -> Result<(SourceKind, PathBuf)> {
    if model_path.is_file() {
        return if model_path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            Ok((SourceKind::Gguf, model_path.to_path_buf()))
        } else {
            Err(Error::bad_file(
                model_path,
                "expected an HF model folder or a .gguf file",
            ))
        };
    }
    if !model_path.is_dir() {
        return Err(Error::bad_file(model_path, "no such model file or folder"));
    }
    if model_path.join("config.json").exists() {
        return Ok((SourceKind::HfFolder, model_path.to_path_buf()));
    }
    let entries = std::fs::read_dir(model_path).map_err(|e| Error::io(model_path, e))?;
    let mut ggufs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    match ggufs.len() {
        1 => Ok((SourceKind::Gguf, ggufs.remove(0))),
        0 => Err(Error::bad_file(
            model_path,
            "neither config.json nor a .gguf file in this folder",
        )),
        _ => Err(Error::bad_file(
            model_path,
            format!("several .gguf files, name one of them: {ggufs:?}"),
        )),
    }
}

/// Loads a causal LM from `model_path` (see [`resolve_model_path`]) and merges `adapters` (PEFT
/// LoRA folders) in order.
///
/// LoRA on a GGUF model is refused: merging into quantized blocks would need a dequantize and
/// requantize that changes the base weights; convert the GGUF with
/// [`super::convert_gguf_to_hf`] and load the adapter on that folder instead.
///
/// With [`LoadOptions::tp`], the model is this rank's part (see `shard`): the world size must
/// divide the attention heads, KV heads and intermediate size (else an error naming the model,
/// the count and the world size), and a GGUF model must be dequantized (`dtype` f32), since
/// quantized blocks cannot be cut between ranks.
pub fn load_causal_lm(
    model_path: &Path,
    adapters: &[PathBuf],
    opts: &LoadOptions,
) -> Result<LoadedModel> {
    let (kind, path) = resolve_model_path(model_path)?;
    let _span = tracing::info_span!("load_model", path = %path.display()).entered();
    let tp = TpGroup::new(opts.tp.clone());
    match kind {
        SourceKind::HfFolder => {
            let cfg = DecoderConfig::from_hf_file(&path.join("config.json"))?;
            // Before any weight is read: a bad world size fails at once, naming the folder.
            check_tensor_parallel(&cfg, &model_label(&path, &cfg), &tp)?;
            let adapters = adapters
                .iter()
                .map(|a| Adapter::load(a))
                .collect::<Result<Vec<_>>>()?;
            let dtype = match opts.dtype {
                DTypeChoice::Auto => None,
                DTypeChoice::F32 => Some(DType::F32),
                DTypeChoice::F16 => Some(DType::F16),
                DTypeChoice::BF16 => Some(DType::BF16),
            };
            let mut ws = HfWeights::open(&path, adapters, dtype, &opts.device)?;
            let model = DecoderModel::load(cfg, &mut ws, &tp)?;
            ws.check_adapters_used()?;
            Ok(LoadedModel {
                model,
                kind,
                path,
                gguf: None,
            })
        }
        SourceKind::Gguf => {
            if let Some(a) = adapters.first() {
                return Err(Error::Unsupported(format!(
                    "LoRA adapter {} on the GGUF model {}: merging into quantized weights is not \
                     supported (convert the GGUF to an HF folder first)",
                    a.display(),
                    path.display()
                )));
            }
            if tp.is_sharded() && opts.dtype != DTypeChoice::F32 {
                return Err(Error::Unsupported(format!(
                    "tensor parallelism over {} ranks with the quantized GGUF model {}: quantized \
                     weights cannot be split between ranks (use dtype f32 to dequantize them, or \
                     convert the GGUF to an HF folder)",
                    tp.world(),
                    path.display()
                )));
            }
            let dequantize = match opts.dtype {
                DTypeChoice::Auto => false,
                DTypeChoice::F32 => true,
                other => {
                    return Err(Error::Unsupported(format!(
                        "dtype {other:?} for the GGUF model {} (GGUF models compute in f32; use auto \
                         to keep the weights quantized or f32 to dequantize them)",
                        path.display()
                    )));
                }
            };
            let mut ws = GgufWeights::open(&path, &opts.device, dequantize)?;
            let mut cfg = ws.config()?;
            check_tensor_parallel(&cfg, &model_label(&path, &cfg), &tp)?;
            if let Some(ff) = rope_freq_factors(&mut ws)? {
                cfg.rope_scaling = Some(RopeScaling::FreqFactors(ff));
            }
            let model = DecoderModel::load(cfg, &mut ws, &tp)?;
            Ok(LoadedModel {
                model,
                kind,
                path,
                gguf: Some(ws.into_content()),
            })
        }
    }
}

/// How messages name a model: its path and architecture.
fn model_label(path: &Path, cfg: &DecoderConfig) -> String {
    format!("the model {} ({})", path.display(), cfg.architecture)
}
