//! Step 4 (CharacterEval) settings: the original tool's `yamls/step4.yaml` keys (`model_path`,
//! `reward_model_path`, `task_dir`, `output_dir`, `adapter_name_or_path`, `template`,
//! `finetuning_type`), plus `max_samples`, LLaMA-Factory-style generation keys and evalfleet's
//! `dtype`, `reward_dtype`, `batch_size`, `workers` and `stage`.

use std::path::{Path, PathBuf};

use super::fields::{Entry, Fields, split_commas};
use super::step1::parse_generation;
use super::{ConfigError, Dtype, FinetuningType, GenerationConfig, keys, read, top_entries};

/// Keys step 4 applies.
pub const STEP4_KEYS: &[&str] = &[
    "model_path",
    "reward_model_path",
    "task_dir",
    "output_dir",
    "adapter_name_or_path",
    "template",
    "finetuning_type",
    "dtype",
    "reward_dtype",
    "max_samples",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "num_beams",
    "max_new_tokens",
    "repetition_penalty",
    "length_penalty",
    "seed",
    "batch_size",
    "workers",
    "stage",
];

/// The original tool's generation length (`generate(do_sample=True, max_new_tokens=512)`,
/// docs/FIDELITY.md §4.2).
pub const STEP4_MAX_NEW_TOKENS: usize = 512;

/// The four sub-steps of step 4, in order. A run starts at one of them and runs the rest,
/// reading the previous sub-step's file from `output_dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step4Stage {
    /// Sub-step 1: generate a reply per dialogue (`step1_generation.jsonl`).
    Generate,
    /// Sub-step 2: one row per (dialogue, metric) (`step2_generation_trans.jsonl`).
    Transform,
    /// Sub-step 3: reward-model scores (`step3_evaluation.jsonl`).
    Score,
    /// Sub-step 4: the means (`step4_eval_scores.jsonl`, `step4_eval_scores.json`).
    Aggregate,
}

impl Step4Stage {
    /// Every stage, in order.
    pub const ALL: [Step4Stage; 4] = [
        Step4Stage::Generate,
        Step4Stage::Transform,
        Step4Stage::Score,
        Step4Stage::Aggregate,
    ];

    /// The name used in YAMLs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Step4Stage::Generate => "generate",
            Step4Stage::Transform => "transform",
            Step4Stage::Score => "score",
            Step4Stage::Aggregate => "aggregate",
        }
    }

    /// The stage named `s` (`generate`, `transform`, `score`, `aggregate`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|stage| stage.as_str() == s)
    }
}

/// Everything step 4 needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Step4Config {
    /// `model_path` (required): the model under test (HF folder or `.gguf`).
    pub model_path: PathBuf,
    /// `adapter_name_or_path`: PEFT LoRA folders merged in order (docs/FIDELITY.md, decision 3:
    /// applied, unlike the original tool).
    pub adapter_name_or_path: Vec<PathBuf>,
    /// `finetuning_type` (default `lora`); adapters need `lora`.
    pub finetuning_type: FinetuningType,
    /// `template`: a LLaMA-Factory template name; `None` (or empty) renders the model's own
    /// chat template, as the original tool's `apply_chat_template` fallback did.
    pub template: Option<String>,
    /// `dtype` (evalfleet, default `auto`): the generator's compute dtype.
    pub dtype: Dtype,
    /// `reward_model_path` (required): the BaichuanCharRM folder.
    pub reward_model_path: PathBuf,
    /// `reward_dtype` (evalfleet, default `bf16` as the original tool;
    /// docs/FIDELITY.md, decision 6).
    pub reward_dtype: Dtype,
    /// `task_dir` (required): the folder of `test_data.jsonl`, `character_profiles.json`,
    /// `id2metric.jsonl`.
    pub task_dir: PathBuf,
    /// `output_dir` (required): where the four files go; created if missing.
    pub output_dir: PathBuf,
    /// `max_samples`: only the first N dialogues of `test_data.jsonl`.
    pub max_samples: Option<usize>,
    /// Sampling settings: LF's defaults (docs/FIDELITY.md, decision 5) except `max_new_tokens`, 512
    /// as the original tool.
    pub generation: GenerationConfig,
    /// `batch_size` (evalfleet): items per lease / batch on a worker.
    pub batch_size: Option<usize>,
    /// `workers` (evalfleet): local worker processes; the CLI's `--workers` wins.
    pub workers: Option<usize>,
    /// `stage` (evalfleet, default `generate`): the first sub-step to run; the CLI's `--stage`
    /// wins.
    pub stage: Step4Stage,
}

/// Loads a step-4 file (the original tool's `yamls/step4.yaml` form).
pub fn load_step4(path: &Path) -> Result<Step4Config, ConfigError> {
    parse_step4(path, &read(path)?)
}

/// Parses the text of a step-4 file; `file` is only used in messages.
pub fn parse_step4(file: &Path, text: &str) -> Result<Step4Config, ConfigError> {
    let entries = top_entries(file, text)?;
    build(file, entries)
}

/// Rejects keys step 4 does not know, then parses.
pub(super) fn build(file: &Path, entries: Vec<Entry>) -> Result<Step4Config, ConfigError> {
    if let Some(entry) = entries
        .iter()
        .find(|e| !STEP4_KEYS.contains(&e.key.as_str()))
    {
        return Err(ConfigError::UnknownKey {
            file: file.to_owned(),
            suggestion: keys::suggest(&entry.key, STEP4_KEYS.iter().copied()).map(str::to_owned),
            key: entry.shown.clone(),
        });
    }
    let fields = Fields::new(file, entries);
    let adapter_name_or_path: Vec<PathBuf> = fields
        .string("adapter_name_or_path")?
        .map(|s| split_commas(&s).into_iter().map(PathBuf::from).collect())
        .unwrap_or_default();
    let finetuning_type = finetuning_type(&fields)?;
    if !adapter_name_or_path.is_empty() && finetuning_type != FinetuningType::Lora {
        return Err(fields.invalid(
            "adapter_name_or_path",
            "adapters are only valid with `finetuning_type: lora`",
        ));
    }
    let mut generation = parse_generation(&fields)?;
    if fields.uint("max_new_tokens")?.is_none() {
        generation.max_new_tokens = STEP4_MAX_NEW_TOKENS;
    }
    let stage = match fields.string("stage")? {
        None => Step4Stage::Generate,
        Some(s) => Step4Stage::parse(&s).ok_or_else(|| {
            fields.invalid(
                "stage",
                format!("expected generate, transform, score or aggregate, got {s:?}"),
            )
        })?,
    };
    Ok(Step4Config {
        model_path: fields
            .required_string(
                "model_path",
                "the model under test: an HF folder or a .gguf",
            )?
            .into(),
        adapter_name_or_path,
        finetuning_type,
        template: fields.string("template")?.filter(|t| !t.is_empty()),
        dtype: dtype(&fields, "dtype", Dtype::Auto)?,
        reward_model_path: fields
            .required_string("reward_model_path", "the BaichuanCharRM folder")?
            .into(),
        reward_dtype: dtype(&fields, "reward_dtype", Dtype::Bf16)?,
        task_dir: fields
            .required_string("task_dir", "the CharacterEval data folder")?
            .into(),
        output_dir: fields
            .required_string("output_dir", "the folder the four step-4 files go to")?
            .into(),
        max_samples: fields.usize_at_least("max_samples", 1)?,
        generation,
        batch_size: fields.usize_at_least("batch_size", 1)?,
        workers: fields.usize_at_least("workers", 0)?,
        stage,
    })
}

fn finetuning_type(fields: &Fields) -> Result<FinetuningType, ConfigError> {
    match fields.string("finetuning_type")?.as_deref() {
        None | Some("lora") => Ok(FinetuningType::Lora),
        Some("freeze") => Ok(FinetuningType::Freeze),
        Some("full") => Ok(FinetuningType::Full),
        Some(other) => Err(fields.invalid(
            "finetuning_type",
            format!("expected one of lora, freeze, full, got {other:?}"),
        )),
    }
}

fn dtype(fields: &Fields, key: &str, default: Dtype) -> Result<Dtype, ConfigError> {
    match fields.string(key)? {
        None => Ok(default),
        Some(s) => Dtype::parse(&s).ok_or_else(|| {
            fields.invalid(key, format!("expected auto, f32, f16 or bf16, got {s:?}"))
        }),
    }
}

impl Step4Config {
    /// The YAML's fleet keys (see [`super::FleetKeys`]).
    pub fn fleet_keys(&self) -> super::FleetKeys {
        super::FleetKeys {
            workers: self.workers,
            batch_size: self.batch_size,
            tensor_parallel_size: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Step4Config, ConfigError> {
        parse_step4(Path::new("step4.yaml"), text)
    }

    const SEED: &str = "model_path: /home/u/models/Qwen1.5-14B-Chat\n\
        reward_model_path: /home/u/models/BaichuanCharRM\n\
        task_dir: ./evaluation/CharacterEval\n\
        output_dir: ./output/CharacterEval\n\n\
        adapter_name_or_path: /home/u/ckpt/checkpoint-5000\n\
        template: qwen\n\
        finetuning_type: lora";

    #[test]
    fn the_seed_file_parses_with_the_seed_defaults() {
        let c = parse(SEED).unwrap();
        assert_eq!(
            c.model_path,
            PathBuf::from("/home/u/models/Qwen1.5-14B-Chat")
        );
        assert_eq!(
            c.reward_model_path,
            PathBuf::from("/home/u/models/BaichuanCharRM")
        );
        assert_eq!(c.task_dir, PathBuf::from("./evaluation/CharacterEval"));
        assert_eq!(
            c.adapter_name_or_path,
            [PathBuf::from("/home/u/ckpt/checkpoint-5000")]
        );
        assert_eq!(c.template.as_deref(), Some("qwen"));
        assert_eq!((c.dtype, c.reward_dtype), (Dtype::Auto, Dtype::Bf16));
        assert_eq!(c.generation.max_new_tokens, 512);
        assert!(c.generation.do_sample);
        assert_eq!(
            (c.stage, c.max_samples, c.workers),
            (Step4Stage::Generate, None, None)
        );
    }

    #[test]
    fn optional_keys_apply() {
        let text = format!(
            "{}\nmax_samples: 4\nmax_new_tokens: 16\ndo_sample: false\nreward_dtype: f32\n\
             stage: score\nworkers: 2\nbatch_size: 3\ntemplate: ''",
            SEED.replace("template: qwen\n", "")
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.max_samples, Some(4));
        assert_eq!(c.generation.max_new_tokens, 16);
        assert!(!c.generation.do_sample);
        assert_eq!(c.reward_dtype, Dtype::F32);
        assert_eq!(c.stage, Step4Stage::Score);
        assert_eq!((c.workers, c.batch_size), (Some(2), Some(3)));
        assert_eq!(c.template, None);
    }

    #[test]
    fn a_run_file_can_list_step4() {
        let text = format!("steps: [step4]\n{SEED}\nstep4:\n  max_samples: 2\n");
        let job = crate::config::parse_job(Path::new("job.yaml"), &text).unwrap();
        let c = job.step4().expect("step 4");
        assert_eq!(
            (c.max_samples, c.template.as_deref()),
            (Some(2), Some("qwen"))
        );
        assert!(job.step1().is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse(&format!("{SEED}\nreward_modl_path: x"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "step4.yaml: unknown key `reward_modl_path` (did you mean `reward_model_path`?)"
        );
        let err = parse(&format!("{SEED}\nstage: judge"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `stage`: expected generate"), "{err}");
        let err = parse("model_path: m\ntask_dir: t\noutput_dir: o")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("step4.yaml: missing required key `reward_model_path`"),
            "{err}"
        );
    }
}
