//! The folders submitted jobs may use (`evalfleet serve --allow-output-root DIR`,
//! `--allow-input-root DIR`): every path a job names is resolved (made absolute against the
//! coordinator's working directory, `..` and symlinks followed as far as the path exists:
//! [`canonical_path`]) and must lie inside an allowed root, else the job is refused at submit with
//! a message naming the key and the roots. Output keys (`output_dir`, step 3's `save_dir`, a
//! sweep's `output_dir`) need an output root; input keys (models, adapters, data sets, task
//! folders, checkpoints) an input root or an output root (a job may read what jobs wrote).
//! The check runs again when a queued job starts, so a symlink planted meanwhile, or a job
//! restored from `--state-dir` under other roots, is refused too (docs/ARCHITECTURE.md,
//! "serve").
//!
//! Without any root `evalfleet serve` refuses to start unless given `--allow-any-path`: a
//! forgotten flag on a shared cluster must not leave every path the coordinator can reach open
//! to anyone holding the control token.

use std::path::{Path, PathBuf};

use crate::config::{JobConfig, StepConfig};
use crate::dirlock::canonical_path;
use crate::sweep::SweepConfig;

/// The allowed roots (canonical), or none at all (`--allow-any-path`).
#[derive(Debug, Clone, Default)]
pub struct AllowedRoots {
    /// `None`: every path is allowed.
    roots: Option<Roots>,
}

#[derive(Debug, Clone)]
struct Roots {
    outputs: Vec<PathBuf>,
    inputs: Vec<PathBuf>,
    /// Off limits inside the roots: the coordinator's own `--state-dir`.
    reserved: Vec<PathBuf>,
}

/// Why `serve` cannot take the roots it was given.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error(
        "no --allow-output-root: jobs submitted to this coordinator could write anywhere it can; \
         name the folders jobs may write (--allow-output-root DIR) and read \
         (--allow-input-root DIR), or pass --allow-any-path on a coordinator only you use"
    )]
    NoRoots,
    #[error("--allow-any-path cannot go with --allow-output-root / --allow-input-root")]
    AnyPathWithRoots,
    #[error("{flag} {}: {source}", path.display())]
    Missing {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: not a directory", path.display())]
    NotADirectory { flag: &'static str, path: PathBuf },
}

/// A path a job names, outside the allowed roots.
#[derive(Debug, thiserror::Error)]
#[error("{file}: key {key}: {path} (resolved: {resolved}) {why}")]
pub struct OutsideRoots {
    pub file: String,
    /// The key, quoted, with its step if it is a step's.
    pub key: String,
    pub path: String,
    pub resolved: String,
    /// "is outside the output roots this coordinator allows: ROOTS", or why a root refuses it.
    pub why: String,
}

/// What a job does with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Read,
    Write,
}

impl AllowedRoots {
    /// Every path allowed.
    pub fn any() -> Self {
        AllowedRoots { roots: None }
    }

    /// The roots `serve` was given, each an existing directory (canonicalized); refused when
    /// there is none and `any_path` is not set.
    pub fn new(
        outputs: &[PathBuf],
        inputs: &[PathBuf],
        any_path: bool,
    ) -> Result<Self, RootsError> {
        if any_path {
            if outputs.is_empty() && inputs.is_empty() {
                return Ok(AllowedRoots::any());
            }
            return Err(RootsError::AnyPathWithRoots);
        }
        if outputs.is_empty() {
            return Err(RootsError::NoRoots);
        }
        let canonical = |flag: &'static str, dirs: &[PathBuf]| {
            dirs.iter()
                .map(|d| {
                    let real = std::fs::canonicalize(d).map_err(|source| RootsError::Missing {
                        flag,
                        path: d.clone(),
                        source,
                    })?;
                    if !real.is_dir() {
                        return Err(RootsError::NotADirectory {
                            flag,
                            path: d.clone(),
                        });
                    }
                    Ok(real)
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(AllowedRoots {
            roots: Some(Roots {
                outputs: canonical("--allow-output-root", outputs)?,
                inputs: canonical("--allow-input-root", inputs)?,
                reserved: Vec::new(),
            }),
        })
    }

    /// Keeps jobs out of `dir` (the state directory) even where it lies inside a root: no job
    /// may read or write in it, nor write to a folder holding it.
    pub fn reserve(mut self, dir: &Path) -> Self {
        if let Some(roots) = &mut self.roots {
            roots.reserved.push(canonical_path(dir));
        }
        self
    }

    /// Checks every path of a run file (`file`: its name, for the message).
    pub fn check_job(&self, file: &str, cfg: &JobConfig) -> Result<(), OutsideRoots> {
        for (key, path, usage) in job_paths(cfg) {
            self.check(file, &key, path, usage)?;
        }
        Ok(())
    }

    /// Checks every path of a sweep: its base model, checkpoints and folder, and every path
    /// of each checkpoint's run file.
    pub fn check_sweep(&self, file: &str, cfg: &SweepConfig) -> Result<(), OutsideRoots> {
        self.check(file, "`model_name_or_path`", &cfg.base, Use::Read)?;
        self.check(file, "`output_dir`", &cfg.output_dir, Use::Write)?;
        for c in &cfg.checkpoints {
            self.check(file, "`checkpoints`", &c.path, Use::Read)?;
            // A checkpoint whose run file does not parse was refused by the parser already.
            if let Ok(job) = cfg.checkpoint_job(c) {
                self.check_job(file, &job)?;
            }
        }
        Ok(())
    }

    fn check(&self, file: &str, key: &str, path: &Path, usage: Use) -> Result<(), OutsideRoots> {
        let Some(roots) = &self.roots else {
            return Ok(());
        };
        let resolved = canonical_path(path);
        let (allowed, kind): (Vec<&PathBuf>, _) = match usage {
            Use::Write => (roots.outputs.iter().collect(), "output"),
            Use::Read => (roots.inputs.iter().chain(&roots.outputs).collect(), "input"),
        };
        let reserved = roots
            .reserved
            .iter()
            .find(|r| resolved.starts_with(r) || (usage == Use::Write && r.starts_with(&resolved)));
        let why = if let Some(reserved) = reserved {
            format!(
                "is in or around the coordinator's state directory {}, which no job may use",
                reserved.display()
            )
        } else if allowed.iter().any(|root| resolved.starts_with(root)) {
            return Ok(());
        } else {
            let list: Vec<String> = allowed.iter().map(|r| r.display().to_string()).collect();
            format!(
                "is outside the {kind} roots this coordinator allows: {}",
                list.join(", ")
            )
        };
        Err(OutsideRoots {
            file: file.to_string(),
            key: key.to_string(),
            path: path.display().to_string(),
            resolved: resolved.display().to_string(),
            why,
        })
    }
}

/// A key and the path it names.
type Keyed<'a> = (&'a str, &'a Path);

/// Every path a run file names: `(key, path, use)`, each key as "`KEY` (STEP)".
fn job_paths(cfg: &JobConfig) -> Vec<(String, &Path, Use)> {
    let mut paths = Vec::new();
    for step in &cfg.steps {
        let (name, mut reads, writes): (&str, Vec<Keyed>, Vec<Keyed>) = match step {
            StepConfig::Step1(c) => (
                "step1",
                vec![
                    ("model_name_or_path", c.model.model_name_or_path.as_path()),
                    ("dataset_dir", c.data.dataset_dir.as_path()),
                ],
                vec![("output_dir", c.output_dir.as_path())],
            ),
            StepConfig::Step2(c) => (
                "step2",
                vec![("model_path", c.model_path.as_path())],
                vec![("output_dir", c.output_dir.as_path())],
            ),
            StepConfig::Step3(c) => (
                "step3",
                vec![
                    ("model_name_or_path", c.model.model_name_or_path.as_path()),
                    ("task_dir", c.task_dir.as_path()),
                ],
                c.save_dir
                    .iter()
                    .map(|d| ("save_dir", d.as_path()))
                    .collect(),
            ),
            StepConfig::Step4(c) => (
                "step4",
                vec![
                    ("model_path", c.model_path.as_path()),
                    ("reward_model_path", c.reward_model_path.as_path()),
                    ("task_dir", c.task_dir.as_path()),
                ],
                vec![("output_dir", c.output_dir.as_path())],
            ),
        };
        let adapters: &[PathBuf] = match step {
            StepConfig::Step1(c) => &c.model.adapter_name_or_path,
            StepConfig::Step3(c) => &c.model.adapter_name_or_path,
            StepConfig::Step4(c) => &c.adapter_name_or_path,
            StepConfig::Step2(_) => &[],
        };
        reads.extend(
            adapters
                .iter()
                .map(|a| ("adapter_name_or_path", a.as_path())),
        );
        let key = |k: &str| format!("`{k}` ({name})");
        paths.extend(reads.into_iter().map(|(k, p)| (key(k), p, Use::Read)));
        paths.extend(writes.into_iter().map(|(k, p)| (key(k), p, Use::Write)));
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(model: &Path, out: &Path) -> JobConfig {
        let yaml = format!(
            "steps: [step1]\nmodel_name_or_path: {}\ndataset: d\ndataset_dir: {}\noutput_dir: {}\n",
            model.display(),
            model.display(),
            out.display()
        );
        crate::config::parse_job(Path::new("job.yaml"), &yaml).unwrap()
    }

    #[test]
    fn paths_are_checked_after_dot_dot_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (outs, ins, other) = (d.join("outs"), d.join("ins"), d.join("other"));
        for f in [&outs, &ins, &other] {
            std::fs::create_dir_all(f).unwrap();
        }
        std::os::unix::fs::symlink(&other, outs.join("link")).unwrap();
        let roots = AllowedRoots::new(
            std::slice::from_ref(&outs),
            std::slice::from_ref(&ins),
            false,
        )
        .unwrap()
        .reserve(&outs.join("state"));
        let model = ins.join("model");
        roots
            .check_job("job.yaml", &job(&model, &outs.join("a/b")))
            .unwrap();
        // Reading what jobs wrote is allowed.
        roots
            .check_job("job.yaml", &job(&outs.join("x"), &outs.join("a")))
            .unwrap();
        let refused = |out: &Path| {
            roots
                .check_job("job.yaml", &job(&model, out))
                .unwrap_err()
                .to_string()
        };
        for out in [
            other.join("a"),
            outs.join("../other"),
            outs.join("missing/../../other"),
            outs.join("link/a"),
            ins.join("a"),
            outs.join("state/x"),
            outs.clone(),
        ] {
            let said = refused(&out);
            assert!(
                said.starts_with("job.yaml: key `output_dir` (step1): "),
                "{said}"
            );
            assert!(said.contains(&out.display().to_string()), "{said}");
        }
        let said = refused(&other);
        let outs_real = outs.canonicalize().unwrap();
        assert!(
            said.ends_with(&format!(
                "is outside the output roots this coordinator allows: {}",
                outs_real.display()
            )),
            "{said}"
        );
        assert!(
            refused(&outs).contains("state directory"),
            "{}",
            refused(&outs)
        );
        let said = roots
            .check_job("job.yaml", &job(&other.join("m"), &outs.join("a")))
            .unwrap_err()
            .to_string();
        assert!(said.contains("key `model_name_or_path` (step1)"), "{said}");
        assert!(said.contains("input roots"), "{said}");
    }

    #[test]
    fn no_roots_needs_allow_any_path_and_roots_must_exist() {
        let none = AllowedRoots::new(&[], &[], false).unwrap_err().to_string();
        assert!(none.contains("--allow-output-root"), "{none}");
        assert!(none.contains("--allow-any-path"), "{none}");
        let any = AllowedRoots::new(&[], &[], true).unwrap();
        any.check_job("j", &job(Path::new("/m"), Path::new("/o")))
            .unwrap();
        let both = AllowedRoots::new(&[PathBuf::from("/")], &[], true).unwrap_err();
        assert!(matches!(both, RootsError::AnyPathWithRoots));
        let missing = AllowedRoots::new(&[PathBuf::from("/nonexistent-evalfleet")], &[], false)
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("--allow-output-root /nonexistent-evalfleet: "),
            "{missing}"
        );
    }
}
