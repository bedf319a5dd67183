//! Step 2 (semantic similarity) settings: the original tool's `yamls/step2.yaml` keys `model_path`
//! and `output_dir`, plus evalfleet's `batch_size` and `workers`.

use std::path::{Path, PathBuf};

use super::fields::{Entry, Fields};
use super::{ConfigError, key_name, keys, parse_mapping, read};

/// Keys step 2 applies.
pub const STEP2_KEYS: &[&str] = &["model_path", "output_dir", "batch_size", "workers"];

/// Everything step 2 needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Step2Config {
    /// `model_path` (required): a sentence-transformers folder (the original tool used
    /// gte-large-zh).
    pub model_path: PathBuf,
    /// `output_dir` (required): the step-1 output folder whose files step 2 scores and updates.
    pub output_dir: PathBuf,
    /// `batch_size` (evalfleet): texts per forward pass on a worker; `None` lets the fleet
    /// choose. Does not change scores beyond float rounding.
    pub batch_size: Option<usize>,
    /// `workers` (evalfleet): local worker processes to spawn, as for step 1.
    pub workers: Option<usize>,
}

/// Loads a step-2 file (the original tool's `yamls/step2.yaml` form).
pub fn load_step2(path: &Path) -> Result<Step2Config, ConfigError> {
    parse_step2(path, &read(path)?)
}

/// Parses the text of a step-2 file; `file` is only used in messages.
pub fn parse_step2(file: &Path, text: &str) -> Result<Step2Config, ConfigError> {
    let mut entries = Vec::new();
    for (key, value) in parse_mapping(file, text)?.iter() {
        let key = key_name(file, key)?;
        if !STEP2_KEYS.contains(&key.as_str()) {
            return Err(ConfigError::UnknownKey {
                file: file.to_owned(),
                suggestion: keys::suggest(&key, STEP2_KEYS.iter().copied()).map(str::to_owned),
                key,
            });
        }
        entries.push(Entry {
            shown: key.clone(),
            key,
            value: value.clone(),
        });
    }
    build(file, entries)
}

/// Parses step 2's entries (all of them keys of [`STEP2_KEYS`]; the caller rejects others).
pub(super) fn build(file: &Path, entries: Vec<Entry>) -> Result<Step2Config, ConfigError> {
    let fields = Fields::new(file, entries);
    Ok(Step2Config {
        model_path: fields
            .required_string("model_path", "a sentence-transformers model folder")?
            .into(),
        output_dir: fields
            .required_string("output_dir", "the step-1 output folder to score")?
            .into(),
        batch_size: fields.usize_at_least("batch_size", 1)?,
        workers: fields.usize_at_least("workers", 0)?,
    })
}

impl Step2Config {
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

    fn parse(text: &str) -> Result<Step2Config, ConfigError> {
        parse_step2(Path::new("step2.yaml"), text)
    }

    #[test]
    fn the_seed_file_parses() {
        let c = parse("model_path: /home/wangguisen/models/gte-large-zh\noutput_dir: ./output")
            .unwrap();
        assert_eq!(
            c.model_path,
            PathBuf::from("/home/wangguisen/models/gte-large-zh")
        );
        assert_eq!(c.output_dir, PathBuf::from("./output"));
        assert_eq!((c.batch_size, c.workers), (None, None));
        let c = parse("model_path: m\noutput_dir: o\nbatch_size: 64\nworkers: 2").unwrap();
        assert_eq!((c.batch_size, c.workers), (Some(64), Some(2)));
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse("model_pth: m\noutput_dir: o")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "step2.yaml: unknown key `model_pth` (did you mean `model_path`?)"
        );
        let err = parse("output_dir: o").unwrap_err().to_string();
        assert!(
            err.starts_with("step2.yaml: missing required key `model_path`"),
            "{err}"
        );
        let err = parse("model_path: m\noutput_dir: o\nbatch_size: 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`batch_size`"), "{err}");
    }
}
