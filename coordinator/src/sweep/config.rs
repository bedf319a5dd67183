//! The sweep YAML: a run file (`steps`, shared keys, `step1:` ... `step4:` sections, see
//! [`crate::config`]) whose model is a base plus a list of checkpoints, and whose `output_dir`
//! holds one output folder per checkpoint:
//!
//! ```yaml
//! model_name_or_path: ./models/base          # the base the LoRA checkpoints were trained on
//! checkpoints: ./runs/x/checkpoint-*          # a glob (ordered by step number) or a list
//! steps: [step1, step3]
//! output_dir: ./out/sweep                     # <output_dir>/<checkpoint name>/...
//! template: qwen
//! step1: {dataset_dir: ./data, dataset: demo}
//! step3: {task_dir: ./evaluation, tasks: [mmlu]}
//! ```
//!
//! Each checkpoint becomes an ordinary run file ([`SweepConfig::checkpoint_yaml`]): a LoRA
//! adapter (a folder with `adapter_config.json`) is evaluated as `adapter_name_or_path` over the
//! base, a full model folder (`config.json`) or `.gguf` file as `model_name_or_path`; the output
//! keys point into `<output_dir>/<name>/` with the original layout (step 1 and 2 files in the
//! folder itself, step 3's `<task>/` folders in it as `save_dir`, step 4 in `CharacterEval/`).
//! So every key a step file takes works here with the same meaning, and errors about them are
//! the step files' own. The keys the sweep sets itself are refused where a user sets them.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

pub use super::checkpoints::{Checkpoint, CheckpointKind};
use crate::config::{ConfigError, JobConfig, parse_job};

/// The step sections a sweep may hold (those of a run file).
const SECTIONS: &[&str] = &["step1", "step2", "step3", "step4"];
/// Step 4's output folder inside a checkpoint's folder (the original tool's layout).
pub const CHARACTER_EVAL_DIR: &str = "CharacterEval";

/// A parsed sweep YAML.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// The YAML file (for messages).
    pub file: PathBuf,
    /// `model_name_or_path`: the base of the LoRA checkpoints.
    pub base: PathBuf,
    /// The checkpoints in evaluation (and report) order.
    pub checkpoints: Vec<Checkpoint>,
    /// `output_dir`: the sweep folder, one subfolder per checkpoint.
    pub output_dir: PathBuf,
    /// The steps, in order.
    pub steps: Vec<String>,
    /// Everything else: shared keys and step sections, passed to every checkpoint's run file.
    shared: Mapping,
}

/// Loads a sweep YAML (see the module docs).
pub fn load_sweep(path: &Path) -> Result<SweepConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse_sweep(path, &text)
}

/// Parses the text of a sweep YAML; `file` is used in messages. Checks the checkpoints on disk
/// and every checkpoint's run file, so that a bad key fails before any worker starts.
pub fn parse_sweep(file: &Path, text: &str) -> Result<SweepConfig, ConfigError> {
    let top = crate::config::parse_mapping(file, text)?;
    let mut shared = Mapping::new();
    let (mut base, mut output_dir, mut checkpoints) = (None, None, None);
    for (key, value) in top {
        let name = key.as_str().ok_or_else(|| ConfigError::NotAMapping {
            file: file.to_owned(),
            where_: "top level".into(),
            found: "a key that is not a string".into(),
        })?;
        match name {
            "model_name_or_path" => base = Some(path_value(file, name, &value)?),
            "output_dir" => output_dir = Some(path_value(file, name, &value)?),
            "checkpoints" => checkpoints = Some(value),
            _ => {
                shared.insert(key, value);
            }
        }
    }
    let missing = |key: &str, hint: &'static str| ConfigError::Missing {
        file: file.to_owned(),
        key: key.into(),
        hint,
    };
    let base = base.ok_or_else(|| {
        missing(
            "model_name_or_path",
            "the base model the LoRA checkpoints were trained on",
        )
    })?;
    let output_dir = output_dir.ok_or_else(|| {
        missing(
            "output_dir",
            "the sweep folder; each checkpoint's outputs go to <output_dir>/<checkpoint name>/",
        )
    })?;
    let checkpoints = checkpoints.ok_or_else(|| {
        missing(
            "checkpoints",
            "a glob such as runs/x/checkpoint-* or a list of adapter or model folders",
        )
    })?;
    refuse_sweep_owned_keys(file, &shared)?;
    let checkpoints = super::checkpoints::resolve(file, &checkpoints)?;
    let mut cfg = SweepConfig {
        file: file.to_owned(),
        base,
        checkpoints,
        output_dir,
        steps: Vec::new(),
        shared,
    };
    // Every checkpoint's run file parses the same way but for paths: check the first fully
    // (unknown keys, types, steps) and take the step names from it.
    let first = cfg.checkpoint_job(&cfg.checkpoints[0])?;
    cfg.steps = first
        .steps
        .iter()
        .map(|s| s.step().name())
        .map(String::from)
        .collect();
    if cfg.steps.iter().any(|s| s == "step2") && !cfg.steps.iter().any(|s| s == "step1") {
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            key: "steps".into(),
            message: "a sweep runs step2 on the predictions its step1 makes: list step1 too".into(),
        });
    }
    Ok(cfg)
}

impl SweepConfig {
    /// The output folder of `c`: `<output_dir>/<name>`.
    pub fn checkpoint_dir(&self, c: &Checkpoint) -> PathBuf {
        self.output_dir.join(&c.name)
    }

    /// The run file evaluating `c` (see the module docs), as YAML text.
    pub fn checkpoint_yaml(&self, c: &Checkpoint) -> String {
        let mut m = self.shared.clone();
        let dir = path_string(&self.checkpoint_dir(c));
        let (model, adapter) = match c.kind {
            CheckpointKind::Adapter => (path_string(&self.base), Some(path_string(&c.path))),
            CheckpointKind::FullModel => (path_string(&c.path), None),
        };
        let steps = step_list(&m);
        let listed = |s: &str| steps.iter().any(|x| x == s);
        if listed("step1") || listed("step3") {
            set(&mut m, "model_name_or_path", &model);
            if let Some(a) = &adapter {
                set(&mut m, "adapter_name_or_path", a);
            }
        }
        if listed("step1") {
            set(section(&mut m, "step1"), "output_dir", &dir);
        }
        if listed("step2") {
            set(section(&mut m, "step2"), "output_dir", &dir);
        }
        if listed("step3") {
            set(section(&mut m, "step3"), "save_dir", &dir);
        }
        if listed("step4") {
            let s4 = section(&mut m, "step4");
            let out = self.checkpoint_dir(c).join(CHARACTER_EVAL_DIR);
            set(s4, "output_dir", &path_string(&out));
            set(s4, "model_path", &model);
            if let Some(a) = &adapter {
                set(s4, "adapter_name_or_path", a);
            }
        }
        serde_yaml::to_string(&Value::Mapping(m)).expect("a mapping of YAML values serializes")
    }

    /// The fleet keys of the sweep's one fleet: the first checkpoint's run file's (see
    /// [`JobConfig::fleet_keys`]); none without checkpoints.
    pub fn fleet_keys(&self) -> Result<crate::config::FleetKeys, ConfigError> {
        match self.checkpoints.first() {
            Some(c) => Ok(self.checkpoint_job(c)?.fleet_keys()),
            None => Ok(Default::default()),
        }
    }

    /// The parsed run file of `c`.
    pub fn checkpoint_job(&self, c: &Checkpoint) -> Result<JobConfig, ConfigError> {
        parse_job(&self.file, &self.checkpoint_yaml(c))
    }
}

/// `steps` as written (a list or a comma-separated string); validated later by `parse_job`.
fn step_list(m: &Mapping) -> Vec<String> {
    match m.get("steps") {
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s.split(',').map(|p| p.trim().to_string()).collect(),
        _ => Vec::new(),
    }
}

/// The keys the sweep sets for every checkpoint, refused where the YAML sets them (a silent
/// override would evaluate something else than written).
fn refuse_sweep_owned_keys(file: &Path, shared: &Mapping) -> Result<(), ConfigError> {
    let refuse = |key: String, message: &str| ConfigError::Invalid {
        file: file.to_owned(),
        key,
        message: message.into(),
    };
    const ADAPTER: &str =
        "set by the sweep for each checkpoint (list the adapters under `checkpoints`)";
    const OUTPUT: &str = "set by the sweep: each checkpoint's outputs go to <output_dir>/<checkpoint name>/ (set the top-level output_dir)";
    if shared.contains_key("adapter_name_or_path") {
        return Err(refuse("adapter_name_or_path".into(), ADAPTER));
    }
    if shared.contains_key("save_dir") {
        return Err(refuse("save_dir".into(), OUTPUT));
    }
    for name in SECTIONS {
        let section = match shared.get(*name) {
            None => continue,
            Some(Value::Mapping(section)) => section,
            Some(other) => {
                return Err(ConfigError::NotAMapping {
                    file: file.to_owned(),
                    where_: format!("key `{name}`"),
                    found: crate::config::describe(other),
                });
            }
        };
        for key in ["output_dir", "save_dir"] {
            if section.contains_key(key) {
                return Err(refuse(format!("{name}.{key}"), OUTPUT));
            }
        }
        if section.contains_key("adapter_name_or_path") {
            return Err(refuse(format!("{name}.adapter_name_or_path"), ADAPTER));
        }
        if section.contains_key("model_name_or_path") {
            return Err(refuse(
                format!("{name}.model_name_or_path"),
                "set by the sweep: the top-level model_name_or_path (the base) or the checkpoint",
            ));
        }
    }
    if let Some(Value::Mapping(s4)) = shared.get("step4")
        && s4.contains_key("model_path")
    {
        return Err(refuse(
            "step4.model_path".into(),
            "set by the sweep: step 4 generates with the base (plus each adapter) or the checkpoint",
        ));
    }
    // A top-level model_path would reach step 4 as its generator: only step 2's embedder may be
    // named that way, under `step2:`.
    if shared.contains_key("model_path") && step_list(shared).iter().any(|s| s == "step4") {
        return Err(refuse(
            "model_path".into(),
            "ambiguous in a sweep with step4 (its generator is set by the sweep): put step 2's embedder under `step2:`",
        ));
    }
    Ok(())
}

/// A path-valued key (a non-empty string).
fn path_value(file: &Path, key: &str, value: &Value) -> Result<PathBuf, ConfigError> {
    match value.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(PathBuf::from(s.trim())),
        _ => Err(ConfigError::WrongType {
            file: file.to_owned(),
            key: key.into(),
            expected: "a path",
            found: crate::config::describe(value),
        }),
    }
}

/// The step section `name` of `m`, created empty when absent (the caller has checked that a
/// present one is a mapping, or `parse_job` reports it).
fn section<'a>(m: &'a mut Mapping, name: &str) -> &'a mut Mapping {
    let key = Value::String(name.into());
    if !matches!(m.get(&key), Some(Value::Mapping(_))) {
        m.insert(key.clone(), Value::Mapping(Mapping::new()));
    }
    match m.get_mut(&key) {
        Some(Value::Mapping(s)) => s,
        _ => unreachable!("inserted above"),
    }
}

fn set(m: &mut Mapping, key: &str, value: &str) {
    m.insert(Value::String(key.into()), Value::String(value.into()));
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
