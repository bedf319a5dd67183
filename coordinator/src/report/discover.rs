//! Which output directories a report covers: `dir` itself when it holds result files (the
//! original layout), else its subfolders that do (a sweep): folders whose name ends in a step
//! number (`checkpoint-500`, the last run of digits, as `evalfleet sweep` orders a glob) first,
//! by number, then any other result folders by name. A sweep that lists its checkpoints passes
//! that order ([`in_order`]).

use std::path::{Path, PathBuf};

use super::ReportError;
use super::read::{CHARACTER_EVAL_SCORES, STEP3_LOG, STEP3_TASKS};
use crate::output::{ALL_RESULTS, GENERATED_PREDICTIONS, PREDICT_RESULTS};

/// Whether `dir` holds at least one result file of the original layout.
pub fn is_output_dir(dir: &Path) -> bool {
    let mut files: Vec<PathBuf> = [PREDICT_RESULTS, ALL_RESULTS, GENERATED_PREDICTIONS]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    files.extend(STEP3_TASKS.iter().map(|t| dir.join(t).join(STEP3_LOG)));
    files.push(dir.join(CHARACTER_EVAL_SCORES));
    files.iter().any(|f| f.is_file())
}

/// The step number of a checkpoint folder name: its last run of digits (`checkpoint-1500`,
/// `step_1500`, `ckpt1500-lora` give 1500), as `evalfleet sweep` orders a glob's matches.
pub fn checkpoint_step(name: &str) -> Option<u64> {
    let end = name.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = name[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    name[start..end].parse().ok()
}

/// `dirs` with the names in `order` first, in that order, then the others as they were.
pub fn in_order(mut dirs: Vec<(String, PathBuf)>, order: &[String]) -> Vec<(String, PathBuf)> {
    let mut out = Vec::with_capacity(dirs.len());
    for name in order {
        if let Some(i) = dirs.iter().position(|(n, _)| n == name) {
            out.push(dirs.remove(i));
        }
    }
    out.extend(dirs);
    out
}

/// The `(name, path)` of each output directory the report covers, in row order: `dir` itself
/// (named after its folder), or the sweep's checkpoint folders.
pub fn checkpoint_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, ReportError> {
    if is_output_dir(dir) {
        return Ok(vec![(folder_name(dir), dir.to_owned())]);
    }
    let io = |source| ReportError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() && is_output_dir(&path) {
            found.push((folder_name(&path), path));
        }
    }
    if found.is_empty() {
        return Err(ReportError::NoResults {
            path: dir.to_owned(),
        });
    }
    // Checkpoints (by step) before other folders (by name); `None` sorts first, hence the flag.
    found.sort_by(|(a, _), (b, _)| {
        let key = |n: &str| {
            (
                checkpoint_step(n).is_none(),
                checkpoint_step(n),
                n.to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(found)
}

/// The last component of `dir` (made absolute first, so `.` has a name).
pub(super) fn folder_name(dir: &Path) -> String {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    abs.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| abs.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_order_is_by_step_then_name() {
        let root = tempfile::tempdir().expect("temp dir");
        for name in [
            "checkpoint-1000",
            "zeta",
            "checkpoint-500",
            "base",
            "empty",
            "step_750",
        ] {
            let d = root.path().join(name);
            std::fs::create_dir(&d).expect("mkdir");
            if name != "empty" {
                std::fs::write(d.join(PREDICT_RESULTS), "{}").expect("write");
            }
        }
        let names: Vec<String> = checkpoint_dirs(root.path())
            .expect("dirs")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "checkpoint-500",
                "step_750",
                "checkpoint-1000",
                "base",
                "zeta"
            ]
        );
        let dirs = checkpoint_dirs(root.path()).expect("dirs");
        let listed = ["base".to_owned(), "checkpoint-1000".into(), "gone".into()];
        let names: Vec<String> = in_order(dirs, &listed)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "base",
                "checkpoint-1000",
                "checkpoint-500",
                "step_750",
                "zeta"
            ]
        );
        assert_eq!(checkpoint_step("ckpt1500-lora"), Some(1500));
        assert_eq!(checkpoint_step("base"), None);
    }

    #[test]
    fn no_results_is_an_error() {
        let root = tempfile::tempdir().expect("temp dir");
        let err = checkpoint_dirs(root.path()).expect_err("empty");
        assert!(err.to_string().contains("no results found"), "{err}");
    }
}
