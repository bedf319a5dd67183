//! Job YAMLs: the original tool's step files and evalfleet's multi-step `run` files.
//!
//! **Step file** (`evalfleet step1 yamls/step1.yaml`, the original CLI shape): a flat mapping of
//! LLaMA-Factory v0.7.1 keys, exactly the original tool's `yamls/step1.yaml`, plus evalfleet's
//! `dtype`, `batch_size` and `workers`. See [`Step1Config`] for every applied key and its default.
//!
//! **Run file** (`evalfleet run job.yaml`): the same keys, plus `steps` naming the steps to run
//! in order, and optionally one mapping per step whose keys override the top-level ones for that
//! step only:
//!
//! ```yaml
//! steps: [step1]                 # or "step1" / "step1,step2"
//! model_name_or_path: ./models/my-model
//! template: qwen
//! step1:                         # optional; wins over the top-level keys for step 1
//!   dataset_dir: ./data
//!   dataset: demo
//!   output_dir: ./output
//! ```
//!
//! `step1` and `step2` run (in the order listed, one after the other); naming another step is
//! an error saying so. Top-level keys go to every listed step that knows them (`output_dir` to
//! both: step 2 scores step 1's output); a top-level key no listed step knows is an error, and
//! a `step2:` section holds only step-2 keys:
//!
//! ```yaml
//! steps: [step1, step2]
//! model_name_or_path: ./models/my-model
//! output_dir: ./output
//! step2:
//!   model_path: ./models/all-minilm-l6-v2
//! ```
//!
//! **Step-2 file** (`evalfleet step2 yamls/step2.yaml`): the original tool's `model_path` and
//! `output_dir` ([`Step2Config`], read by [`load_step2`]).
//!
//! Rules for both forms:
//! - A LLaMA-Factory/HF key with no effect here (caching, training, quantisation, ...;
//!   [`keys::IGNORED_KEYS`]) is accepted and listed in [`JobConfig::ignored_keys`] for the caller
//!   to log once.
//! - An unknown key is an error naming the file and key and suggesting the nearest known key.
//! - A value of the wrong type is an error naming the file, the key and the expected type.
//! - Relative paths stay relative to the current working directory, as in the original tool
//!   (run from its root with `dataset_dir: ./data`); they are not resolved against the YAML's
//!   folder.

mod fields;
pub(crate) use fields::describe;
pub mod keys;
mod step1;
mod step2;
mod step3;
mod step4;

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use fields::{Entry, Fields, split_commas};
pub use step1::{DataConfig, Dtype, FinetuningType, GenerationConfig, ModelConfig, Step1Config};
pub use step2::{STEP2_KEYS, Step2Config, load_step2, parse_step2};
pub use step3::{FewShotOrder, STEP3_KEYS, Split, Step3Config, Step3Task, load_step3, parse_step3};
pub use step4::{
    STEP4_KEYS, STEP4_MAX_NEW_TOKENS, Step4Config, Step4Stage, load_step4, parse_step4,
};

/// The step names a run file may list; only [`SUPPORTED_STEPS`] run today.
pub const KNOWN_STEPS: &[&str] = &["step1", "step2", "step3", "step4"];
/// The steps evalfleet can run now.
pub const SUPPORTED_STEPS: &[&str] = &["step1", "step2", "step3", "step4"];

/// Why a job YAML cannot be used. Every variant names the file; key names are shown as written
/// (`step1.cutoff_len` for a key inside a `step1:` mapping).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("{}: line {line}, column {column}: invalid YAML: {message}", file.display())]
    Yaml {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The document (or a step's section) is not a mapping of keys.
    #[error("{}: {where_}: expected a mapping of `key: value` lines, found {found}", file.display())]
    NotAMapping {
        file: PathBuf,
        where_: String,
        found: String,
    },
    /// A key no step knows.
    #[error("{}: unknown key `{key}`{}", file.display(), did_you_mean(.suggestion))]
    UnknownKey {
        file: PathBuf,
        key: String,
        suggestion: Option<String>,
    },
    /// A value of the wrong type.
    #[error("{}: key `{key}`: expected {expected}, found {found}", file.display())]
    WrongType {
        file: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    /// A required key is absent.
    #[error("{}: missing required key `{key}` ({hint})", file.display())]
    Missing {
        file: PathBuf,
        key: String,
        hint: &'static str,
    },
    /// A value of the right type that cannot be used.
    #[error("{}: key `{key}`: {message}", file.display())]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// A parsed job: its steps in order and the ignored keys.
#[derive(Debug, Clone, PartialEq)]
pub struct JobConfig {
    /// The YAML file it came from.
    pub file: PathBuf,
    /// The steps, in the order they run.
    pub steps: Vec<StepConfig>,
    /// Accepted keys that have no effect here, each once, in file order (log them once).
    pub ignored_keys: Vec<String>,
}

impl JobConfig {
    /// The directories its steps write (`output_dir`, step 3's `save_dir`), in step order.
    pub fn output_dirs(&self) -> Vec<PathBuf> {
        self.steps
            .iter()
            .filter_map(|step| step.output_dir().map(Path::to_path_buf))
            .collect()
    }

    /// The step-1 settings, if the job has step 1.
    pub fn step1(&self) -> Option<&Step1Config> {
        self.steps.iter().find_map(|step| match step {
            StepConfig::Step1(c) => Some(c),
            _ => None,
        })
    }

    /// The step-3 settings, if the job has step 3.
    pub fn step3(&self) -> Option<&Step3Config> {
        self.steps.iter().find_map(|step| match step {
            StepConfig::Step3(c) => Some(c),
            _ => None,
        })
    }

    /// The step-2 settings, if the job has step 2.
    pub fn step2(&self) -> Option<&Step2Config> {
        self.steps.iter().find_map(|step| match step {
            StepConfig::Step2(c) => Some(c),
            _ => None,
        })
    }

    /// The step-4 settings, if the job has step 4.
    pub fn step4(&self) -> Option<&Step4Config> {
        self.steps.iter().find_map(|step| match step {
            StepConfig::Step4(c) => Some(c),
            _ => None,
        })
    }
}

/// One step's settings.
// A job holds one of these per step, so the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StepConfig {
    /// SFT predict with ROUGE/BLEU.
    Step1(Step1Config),
    /// Semantic similarity of step 1's predictions to their labels.
    Step2(Step2Config),
    /// MMLU / CMMLU / C-Eval multiple-choice accuracy.
    Step3(Step3Config),
    /// CharacterEval: generation, reward-model scores, means.
    Step4(Step4Config),
}

/// The fleet keys a step's YAML may set (evalfleet's own: `workers`, `batch_size`,
/// `tensor_parallel_size`); merged with the command line in one place,
/// [`crate::run::FleetSetup::merged_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetKeys {
    pub workers: Option<usize>,
    pub batch_size: Option<usize>,
    pub tensor_parallel_size: Option<usize>,
}

impl FleetKeys {
    /// Each key of `self`, else `other`'s (a chain's second step fills what the first left unset).
    pub fn or(self, other: FleetKeys) -> FleetKeys {
        FleetKeys {
            workers: self.workers.or(other.workers),
            batch_size: self.batch_size.or(other.batch_size),
            tensor_parallel_size: self.tensor_parallel_size.or(other.tensor_parallel_size),
        }
    }
}

impl JobConfig {
    /// The fleet keys of the whole job: each key from the first step that sets it (one fleet
    /// serves every step: its workers and tensor parallelism are the job's).
    pub fn fleet_keys(&self) -> FleetKeys {
        self.steps.iter().fold(FleetKeys::default(), |keys, step| {
            keys.or(step.fleet_keys())
        })
    }
}

impl StepConfig {
    /// The directory this step writes (its journals live there): `output_dir`, or step 3's
    /// `save_dir` (none: step 3 then writes no files).
    pub fn output_dir(&self) -> Option<&Path> {
        match self {
            StepConfig::Step1(c) => Some(&c.output_dir),
            StepConfig::Step2(c) => Some(&c.output_dir),
            StepConfig::Step3(c) => c.save_dir.as_deref(),
            StepConfig::Step4(c) => Some(&c.output_dir),
        }
    }

    /// This step's fleet keys.
    pub fn fleet_keys(&self) -> FleetKeys {
        match self {
            StepConfig::Step1(c) => c.fleet_keys(),
            StepConfig::Step2(c) => c.fleet_keys(),
            StepConfig::Step3(c) => c.fleet_keys(),
            StepConfig::Step4(c) => c.fleet_keys(),
        }
    }
}

/// Loads a step-1 file (the original tool's `yamls/step1.yaml` form).
pub fn load_step1(path: &Path) -> Result<JobConfig, ConfigError> {
    parse_step1(path, &read(path)?)
}

/// Loads a run file (`steps: [...]`, see the module docs).
pub fn load_job(path: &Path) -> Result<JobConfig, ConfigError> {
    parse_job(path, &read(path)?)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })
}

/// The top-level keys of a single-step file, in file order, each shown under its own name.
fn top_entries(file: &Path, text: &str) -> Result<Vec<Entry>, ConfigError> {
    let mut entries = Vec::new();
    for (key, value) in parse_mapping(file, text)?.iter() {
        let key = key_name(file, key)?;
        entries.push(Entry {
            shown: key.clone(),
            key,
            value: value.clone(),
        });
    }
    Ok(entries)
}

/// Parses the text of a step-1 file; `file` is only used in messages.
pub fn parse_step1(file: &Path, text: &str) -> Result<JobConfig, ConfigError> {
    let entries = top_entries(file, text)?;
    if let Some(e) = entries
        .iter()
        .find(|e| e.key == "steps" || KNOWN_STEPS.contains(&e.key.as_str()))
    {
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            key: e.key.clone(),
            message: "belongs to a run file; use `evalfleet run` for it".to_owned(),
        });
    }
    let mut ignored = Vec::new();
    let config = build_step1(file, entries, &mut ignored)?;
    Ok(JobConfig {
        file: file.to_owned(),
        steps: vec![StepConfig::Step1(config)],
        ignored_keys: ignored,
    })
}

/// Parses the text of a run file; `file` is only used in messages.
pub fn parse_job(file: &Path, text: &str) -> Result<JobConfig, ConfigError> {
    let top = parse_mapping(file, text)?;
    let mut shared = Vec::new();
    let mut sections: Vec<(String, &Mapping)> = Vec::new();
    let mut steps_value = None;
    for (key, value) in top.iter() {
        let key = key_name(file, key)?;
        if key == "steps" {
            steps_value = Some(value);
        } else if KNOWN_STEPS.contains(&key.as_str()) {
            let section = value.as_mapping().ok_or_else(|| ConfigError::NotAMapping {
                file: file.to_owned(),
                where_: format!("key `{key}`"),
                found: describe(value),
            })?;
            sections.push((key, section));
        } else {
            shared.push(Entry {
                shown: key.clone(),
                key,
                value: value.clone(),
            });
        }
    }
    let steps = parse_steps(file, steps_value)?;
    if let Some((name, _)) = sections.iter().find(|(name, _)| !steps.contains(name)) {
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            key: name.clone(),
            message: format!("`steps` does not list {name}, so its settings would not be used"),
        });
    }

    let mut ignored = Vec::new();
    let mut configs = Vec::new();
    for step in &steps {
        let mut entries = shared.clone();
        // A top-level key goes to every listed step that knows it; a key no listed step knows
        // goes to all of them, so that the first one reports it as unknown.
        entries.retain(|e| {
            step_knows(step, &e.key) || !steps.iter().any(|o| o != step && step_knows(o, &e.key))
        });
        if let Some((_, section)) = sections.iter().find(|(name, _)| name == step) {
            for (key, value) in section.iter() {
                let key = key_name(file, key)?;
                entries.retain(|e| e.key != key);
                entries.push(Entry {
                    shown: format!("{step}.{key}"),
                    key,
                    value: value.clone(),
                });
            }
        }
        // parse_steps only lets supported steps through.
        configs.push(match step.as_str() {
            "step2" => StepConfig::Step2(build_step2(file, entries)?),
            "step3" => StepConfig::Step3(step3::build(file, entries, &mut ignored)?),
            "step4" => StepConfig::Step4(step4::build(file, entries)?),
            _ => StepConfig::Step1(build_step1(file, entries, &mut ignored)?),
        });
    }
    Ok(JobConfig {
        file: file.to_owned(),
        steps: configs,
        ignored_keys: ignored,
    })
}

/// Whether `step` applies or ignores a top-level `key` of a run file.
fn step_knows(step: &str, key: &str) -> bool {
    match step {
        "step1" => keys::STEP1_KEYS.contains(&key) || keys::is_ignored(key),
        "step2" => STEP2_KEYS.contains(&key),
        "step3" => STEP3_KEYS.contains(&key) || step3::is_ignored(key),
        "step4" => STEP4_KEYS.contains(&key),
        _ => false,
    }
}

/// `steps`: a list or a comma-separated string of known, supported, distinct step names.
fn parse_steps(file: &Path, value: Option<&Value>) -> Result<Vec<String>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        file: file.to_owned(),
        key: "steps".to_owned(),
        message,
    };
    let names = match value {
        None | Some(Value::Null) => {
            return Err(ConfigError::Missing {
                file: file.to_owned(),
                key: "steps".to_owned(),
                hint: "the steps to run, e.g. `steps: [step1]`",
            });
        }
        Some(Value::String(s)) => split_commas(s),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ConfigError::WrongType {
                file: file.to_owned(),
                key: "steps".to_owned(),
                expected: "a list of step names",
                found: "a list with a non-string item".to_owned(),
            })?,
        Some(other) => {
            return Err(ConfigError::WrongType {
                file: file.to_owned(),
                key: "steps".to_owned(),
                expected: "a list of step names",
                found: describe(other),
            });
        }
    };
    if names.is_empty() {
        return Err(invalid("lists no step".to_owned()));
    }
    for (i, name) in names.iter().enumerate() {
        if !KNOWN_STEPS.contains(&name.as_str()) {
            let hint = keys::suggest(name, KNOWN_STEPS.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(invalid(format!(
                "unknown step {name:?}{hint}; known steps: {}",
                KNOWN_STEPS.join(", ")
            )));
        }
        if !SUPPORTED_STEPS.contains(&name.as_str()) {
            return Err(invalid(format!(
                "{name} is not supported yet (supported: {})",
                SUPPORTED_STEPS.join(", ")
            )));
        }
        if names[..i].contains(name) {
            return Err(invalid(format!("{name} is listed twice")));
        }
    }
    Ok(names)
}

/// Sorts a step's entries into applied and ignored keys, rejects unknown ones, then parses.
fn build_step1(
    file: &Path,
    entries: Vec<Entry>,
    ignored: &mut Vec<String>,
) -> Result<Step1Config, ConfigError> {
    let mut applied = Vec::new();
    for entry in entries {
        if keys::STEP1_KEYS.contains(&entry.key.as_str()) {
            applied.push(entry);
        } else if keys::is_ignored(&entry.key) {
            if !ignored.contains(&entry.key) {
                ignored.push(entry.key);
            }
        } else {
            let known = keys::STEP1_KEYS.iter().chain(keys::IGNORED_KEYS).copied();
            return Err(ConfigError::UnknownKey {
                file: file.to_owned(),
                suggestion: keys::suggest(&entry.key, known).map(str::to_owned),
                key: entry.shown,
            });
        }
    }
    step1::parse(&Fields::new(file, applied))
}

/// Rejects keys step 2 does not know, then parses.
fn build_step2(file: &Path, entries: Vec<Entry>) -> Result<Step2Config, ConfigError> {
    if let Some(entry) = entries
        .iter()
        .find(|e| !STEP2_KEYS.contains(&e.key.as_str()))
    {
        return Err(ConfigError::UnknownKey {
            file: file.to_owned(),
            suggestion: keys::suggest(&entry.key, STEP2_KEYS.iter().copied()).map(str::to_owned),
            key: entry.shown.clone(),
        });
    }
    step2::build(file, entries)
}

/// A YAML file's top-level mapping; errors name the file and the line and column.
pub(crate) fn parse_mapping(file: &Path, text: &str) -> Result<Mapping, ConfigError> {
    let value: Value = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        ConfigError::Yaml {
            file: file.to_owned(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    match value {
        Value::Mapping(m) => Ok(m),
        other => Err(ConfigError::NotAMapping {
            file: file.to_owned(),
            where_: "top level".to_owned(),
            found: describe(&other),
        }),
    }
}

fn key_name(file: &Path, key: &Value) -> Result<String, ConfigError> {
    key.as_str()
        .map(str::to_owned)
        .ok_or_else(|| ConfigError::NotAMapping {
            file: file.to_owned(),
            where_: format!("key {}", describe(key)),
            found: "a key that is not a string".to_owned(),
        })
}

#[cfg(test)]
mod tests;
