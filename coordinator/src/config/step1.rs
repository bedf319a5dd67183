//! Step 1 (SFT predict) settings: LLaMA-Factory v0.7.1's arguments with their defaults, checked.

use std::path::PathBuf;

use super::ConfigError;
use super::fields::{Fields, split_commas};

/// Everything step 1 needs, with LLaMA-Factory v0.7.1's defaults filled in.
///
/// Paths are kept as written. Relative ones are relative to the current working directory, as
/// in the original tool (it ran `python main.py step1 yamls/step1.yaml` from its root with
/// `dataset_dir: ./data`), not to the YAML file's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Step1Config {
    /// The model under test and how to load it.
    pub model: ModelConfig,
    /// Where the test set comes from and how prompts are built.
    pub data: DataConfig,
    /// Sampling settings.
    pub generation: GenerationConfig,
    /// `output_dir` (required): where the three step-1 files go; created if missing.
    pub output_dir: PathBuf,
    /// `per_device_eval_batch_size` (HF default 8). Only used for `predict_steps_per_second`,
    /// `ceil(N / per_device_eval_batch_size) / runtime`, so the number means what it meant.
    pub per_device_eval_batch_size: usize,
    /// `batch_size` (evalfleet): how many items a worker generates together; `None` lets the
    /// fleet choose. Does not change predictions.
    pub batch_size: Option<usize>,
    /// `workers` (evalfleet): local worker processes to spawn; `None` = one per visible GPU, else
    /// one CPU worker. The CLI's `--workers` wins over it.
    pub workers: Option<usize>,
    /// `tensor_parallel_size` (evalfleet): ranks per local worker (k GPUs, or k threads on the
    /// CPU), the group counting as one worker; `None` = 1. The CLI's `--tensor-parallel-size`
    /// wins over it. Does not change greedy predictions on the CPU.
    pub tensor_parallel_size: Option<usize>,
}

/// The model keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `model_name_or_path` (required): an HF model folder or a `.gguf` file.
    pub model_name_or_path: PathBuf,
    /// `adapter_name_or_path`: comma-separated PEFT LoRA folders, merged in this order (empty
    /// when unset).
    pub adapter_name_or_path: Vec<PathBuf>,
    /// `finetuning_type` (default `lora`); adapters are only valid with `lora`, as in LF.
    pub finetuning_type: FinetuningType,
    /// `dtype` (evalfleet, default `auto`): the compute dtype of the worker.
    pub dtype: Dtype,
}

/// LLaMA-Factory's `finetuning_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinetuningType {
    /// LoRA adapters on a base model (merged at load).
    Lora,
    /// Partially trained full model.
    Freeze,
    /// Fully trained model.
    Full,
}

/// Compute dtype of the model on the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// The worker's choice: the checkpoint's `torch_dtype` where the device supports it (bf16,
    /// else f16 on GPUs, as LF's `infer_optim_dtype`), f32 on CPU.
    Auto,
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// The name used on the wire (`ModelSpec.dtype`): `auto`, `f32`, `f16`, `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Auto => "auto",
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(Dtype::Auto),
            "f32" | "fp32" | "float32" | "float" => Some(Dtype::F32),
            "f16" | "fp16" | "float16" | "half" => Some(Dtype::F16),
            "bf16" | "bfloat16" => Some(Dtype::Bf16),
            _ => None,
        }
    }
}

/// The data keys.
#[derive(Debug, Clone, PartialEq)]
pub struct DataConfig {
    /// `dataset_dir` (LF default `data`): the folder holding `dataset_info.json`.
    pub dataset_dir: PathBuf,
    /// `dataset` (required): names in `dataset_info.json`, comma-separated in the YAML.
    pub dataset: Vec<String>,
    /// `template`: a LLaMA-Factory template name (`qwen`, `chatml`, ...). `None` asks for the
    /// model's own chat template (an evalfleet extension; LF v0.7.1 required a name).
    pub template: Option<String>,
    /// `cutoff_len` (default 1024): LF's prompt + label token budget for truncation.
    pub cutoff_len: usize,
    /// `reserved_label_len` (default 1): LF's minimum label share of `cutoff_len`.
    pub reserved_label_len: usize,
    /// `max_samples`: keep the first N rows of each dataset (`None`: all).
    pub max_samples: Option<usize>,
}

/// The generation keys, LF `GeneratingArguments` defaults where the YAML is silent.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// `do_sample` (default true); false = greedy.
    pub do_sample: bool,
    /// `temperature` (default 0.95), > 0.
    pub temperature: f64,
    /// `top_p` (default 0.7), in (0, 1].
    pub top_p: f64,
    /// `top_k` (default 50); 0 disables it.
    pub top_k: usize,
    /// `num_beams`: only 1 (no beam search) is supported; anything else is an error.
    pub num_beams: usize,
    /// `max_new_tokens` (default 1024), at least 1.
    pub max_new_tokens: usize,
    /// `repetition_penalty` (default 1.0), > 0.
    pub repetition_penalty: f64,
    /// `length_penalty` (default 1.0): only beam search uses it, so it has no effect; kept so
    /// the job records what it asked for.
    pub length_penalty: f64,
    /// `seed` (HF default 42): with the item id it fixes each item's random stream.
    pub seed: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            do_sample: true,
            temperature: 0.95,
            top_p: 0.7,
            top_k: 50,
            num_beams: 1,
            max_new_tokens: 1024,
            repetition_penalty: 1.0,
            length_penalty: 1.0,
            seed: 42,
        }
    }
}

/// Reads step 1's keys (all other keys were checked to be known or ignored before).
pub(crate) fn parse(fields: &Fields) -> Result<Step1Config, ConfigError> {
    let model = parse_model(fields)?;
    let data = parse_data(fields)?;
    let generation = parse_generation(fields)?;
    let output_dir = fields
        .required_string("output_dir", "the folder the result files are written to")?
        .into();
    let per_device_eval_batch_size = fields
        .usize_at_least("per_device_eval_batch_size", 1)?
        .unwrap_or(8);
    Ok(Step1Config {
        model,
        data,
        generation,
        output_dir,
        per_device_eval_batch_size,
        batch_size: fields.usize_at_least("batch_size", 1)?,
        workers: fields.usize_at_least("workers", 0)?,
        tensor_parallel_size: fields.usize_at_least("tensor_parallel_size", 1)?,
    })
}

pub(super) fn parse_model(fields: &Fields) -> Result<ModelConfig, ConfigError> {
    let model_name_or_path = fields
        .required_string("model_name_or_path", "an HF model folder or a .gguf file")?
        .into();
    let adapter_name_or_path: Vec<PathBuf> = fields
        .string("adapter_name_or_path")?
        .map(|s| split_commas(&s).into_iter().map(PathBuf::from).collect())
        .unwrap_or_default();
    let finetuning_type = match fields.string("finetuning_type")?.as_deref() {
        None | Some("lora") => FinetuningType::Lora,
        Some("freeze") => FinetuningType::Freeze,
        Some("full") => FinetuningType::Full,
        Some(other) => {
            return Err(fields.invalid(
                "finetuning_type",
                format!("expected one of lora, freeze, full, got {other:?}"),
            ));
        }
    };
    if !adapter_name_or_path.is_empty() && finetuning_type != FinetuningType::Lora {
        return Err(fields.invalid(
            "adapter_name_or_path",
            "adapters are only valid with `finetuning_type: lora`",
        ));
    }
    let dtype = match fields.string("dtype")? {
        None => Dtype::Auto,
        Some(s) => Dtype::parse(&s).ok_or_else(|| {
            fields.invalid(
                "dtype",
                format!("expected auto, f32, f16 or bf16, got {s:?}"),
            )
        })?,
    };
    Ok(ModelConfig {
        model_name_or_path,
        adapter_name_or_path,
        finetuning_type,
        dtype,
    })
}

fn parse_data(fields: &Fields) -> Result<DataConfig, ConfigError> {
    let dataset = fields
        .string_list("dataset")?
        .filter(|names| names.iter().any(|n| !n.is_empty()))
        .ok_or_else(|| ConfigError::Missing {
            file: fields.file().to_owned(),
            key: "dataset".to_owned(),
            hint: "dataset names from dataset_info.json, comma-separated",
        })?;
    if dataset.iter().any(String::is_empty) {
        return Err(fields.invalid("dataset", "empty dataset name in the list"));
    }
    Ok(DataConfig {
        dataset_dir: fields
            .string("dataset_dir")?
            .unwrap_or_else(|| "data".to_owned())
            .into(),
        dataset,
        template: fields.string("template")?,
        cutoff_len: fields.usize_at_least("cutoff_len", 1)?.unwrap_or(1024),
        reserved_label_len: fields.usize_at_least("reserved_label_len", 0)?.unwrap_or(1),
        max_samples: fields.usize_at_least("max_samples", 1)?,
    })
}

pub(super) fn parse_generation(fields: &Fields) -> Result<GenerationConfig, ConfigError> {
    let d = GenerationConfig::default();
    let g = GenerationConfig {
        do_sample: fields.bool("do_sample")?.unwrap_or(d.do_sample),
        temperature: fields.float("temperature")?.unwrap_or(d.temperature),
        top_p: fields.float("top_p")?.unwrap_or(d.top_p),
        top_k: fields.usize_at_least("top_k", 0)?.unwrap_or(d.top_k),
        num_beams: fields
            .usize_at_least("num_beams", 1)?
            .unwrap_or(d.num_beams),
        max_new_tokens: fields
            .usize_at_least("max_new_tokens", 1)?
            .unwrap_or(d.max_new_tokens),
        repetition_penalty: fields
            .float("repetition_penalty")?
            .unwrap_or(d.repetition_penalty),
        length_penalty: fields.float("length_penalty")?.unwrap_or(d.length_penalty),
        seed: fields.uint("seed")?.unwrap_or(d.seed),
    };
    if g.num_beams != 1 {
        return Err(fields.invalid(
            "num_beams",
            format!(
                "beam search is not supported: only 1 is, got {}",
                g.num_beams
            ),
        ));
    }
    // The ranges HF's logits warpers enforce when sampling.
    if g.do_sample && !(g.temperature > 0.0 && g.temperature.is_finite()) {
        return Err(fields.invalid(
            "temperature",
            format!("must be > 0 when sampling, got {}", g.temperature),
        ));
    }
    if !(g.top_p > 0.0 && g.top_p <= 1.0) {
        return Err(fields.invalid("top_p", format!("must be in (0, 1], got {}", g.top_p)));
    }
    if !(g.repetition_penalty > 0.0 && g.repetition_penalty.is_finite()) {
        return Err(fields.invalid(
            "repetition_penalty",
            format!("must be > 0, got {}", g.repetition_penalty),
        ));
    }
    Ok(g)
}

impl Step1Config {
    /// The YAML's fleet keys (see [`super::FleetKeys`]).
    pub fn fleet_keys(&self) -> super::FleetKeys {
        super::FleetKeys {
            workers: self.workers,
            batch_size: self.batch_size,
            tensor_parallel_size: self.tensor_parallel_size,
        }
    }
}
