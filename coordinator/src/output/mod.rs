//! Result files written exactly as the original Python tool wrote them (docs/FIDELITY.md §1.7),
//! each one atomically.
//!
//! - Floats are written as Python's `repr(float)` ([`float_repr`], from `evalfleet-pyfmt`).
//! - [`pyjson`] holds a JSON value and Python's `json.dump(s)` layouts and escaping.
//! - [`predictions`] writes and reads `generated_predictions.jsonl`.
//! - [`speed`] is HF `speed_metrics` (runtime, samples and steps per second).
//! - [`svg`] is the frame shared by the SVG figures (step 2's histogram, the report's charts).
//! - [`write_step1`] writes `generated_predictions.jsonl`, `predict_results.json` and
//!   `all_results.json`.
//!
//! Every file goes through [`write_atomic`]: a temporary file in the same directory, fsync,
//! rename, so a reader (or a crash) never sees half a file.

pub mod predictions;
pub mod pyjson;
pub mod speed;
pub mod svg;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use evalfleet_pyfmt::{float_repr, json_float};
pub use predictions::{PredictionRow, generated_predictions_jsonl, read_generated_predictions};
pub use pyjson::{JsonSyntax, PyJson, dumps_compact, dumps_pretty, dumps_pretty_sorted, loads};
pub use speed::SpeedMetrics;

/// File names of step 1, as LF/HF name them.
pub const GENERATED_PREDICTIONS: &str = "generated_predictions.jsonl";
/// HF `save_metrics("predict", ...)` file.
pub const PREDICT_RESULTS: &str = "predict_results.json";
/// HF's combined metrics file, updated in place across runs.
pub const ALL_RESULTS: &str = "all_results.json";

/// Errors of the output writers; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Creating, writing, syncing or renaming a file failed.
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// An existing file that must be updated could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// An existing metrics file (`all_results.json`, `predict_results.json`) is not valid JSON.
    #[error("{}: {syntax}", path.display())]
    Parse { path: PathBuf, syntax: JsonSyntax },
    /// A line of a predictions file is not a `{"label": str, "predict": str, ...}` object.
    #[error("{}: line {line}: {message}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The output directory cannot be created, or a file cannot be created in it.
    #[error(
        "{}: the output directory is not writable: {source} (expected a directory this user can \
         create files in)",
        path.display()
    )]
    DirNotWritable { path: PathBuf, source: io::Error },
    /// An existing metrics file holds something other than a JSON object.
    #[error("{}: expected a JSON object of metrics at the top level", path.display())]
    NotAnObject { path: PathBuf },
}

/// What [`write_step1`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Step1Files {
    /// `<output_dir>/generated_predictions.jsonl`.
    pub predictions: PathBuf,
    /// `<output_dir>/predict_results.json`.
    pub predict_results: PathBuf,
    /// `<output_dir>/all_results.json`.
    pub all_results: PathBuf,
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory (created if
/// missing), fsync, rename over `path`, then fsync of the directory so the rename is durable.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), OutputError> {
    let wrap = |source| OutputError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(wrap)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".evalfleet-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(wrap)?;
    write_contents(tmp.as_file_mut(), path, contents).map_err(wrap)?;
    set_readable_permissions(tmp.as_file()).map_err(wrap)?;
    tmp.as_file().sync_all().map_err(wrap)?;
    tmp.persist(path).map_err(|e| wrap(e.error))?;
    // Best effort: some filesystems refuse to fsync a directory; the data itself is synced.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Test hook for the disk-full fault test (`tests/bad_input_files.rs`): a file whose name equals
/// this variable's value gets half its bytes, then fails with ENOSPC, as on a full disk. Compiled
/// only with the `test-hooks` feature (scripts/test.sh builds with it), not into release builds.
#[cfg(feature = "test-hooks")]
const TEST_DISK_FULL_ENV: &str = "EVALFLEET_TEST_DISK_FULL";
/// Test hook for the stop-while-writing test (`tests/fleet_guard.rs`): `NAME:MARKER` makes the
/// write of the file named NAME create MARKER and wait until it is removed.
#[cfg(feature = "test-hooks")]
const TEST_HOLD_WRITE_ENV: &str = "EVALFLEET_TEST_HOLD_WRITE";

// `path` is read only by the test hook.
#[cfg_attr(not(feature = "test-hooks"), allow(unused_variables))]
fn write_contents(file: &mut fs::File, path: &Path, contents: &[u8]) -> io::Result<()> {
    #[cfg(feature = "test-hooks")]
    if let Ok(spec) = std::env::var(TEST_HOLD_WRITE_ENV)
        && let Some((name, marker)) = spec.split_once(':')
        && path.file_name().is_some_and(|n| n == name)
    {
        fs::write(marker, std::process::id().to_string())?;
        while Path::new(marker).exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    #[cfg(feature = "test-hooks")]
    if std::env::var_os(TEST_DISK_FULL_ENV)
        .is_some_and(|name| path.file_name() == Some(name.as_os_str()))
    {
        file.write_all(&contents[..contents.len() / 2])?;
        const ENOSPC: i32 = 28;
        return Err(io::Error::from_raw_os_error(ENOSPC));
    }
    file.write_all(contents)
}

/// Creates `dir` if missing and checks that a file can be created in it, so that a run fails
/// before any work rather than when its results are ready to be written.
pub fn check_output_dir(dir: &Path) -> Result<(), OutputError> {
    let wrap = |source| OutputError::DirNotWritable {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(wrap)?;
    // The probe is deleted when dropped.
    tempfile::Builder::new()
        .prefix(".evalfleet-probe-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(wrap)
}

/// Temporary files are created 0600; Python's `open(path, "w")` gives 0644 under the usual
/// umask, and other tools (step 2, people) read these files.
#[cfg(unix)]
fn set_readable_permissions(file: &fs::File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn set_readable_permissions(_file: &fs::File) -> io::Result<()> {
    Ok(())
}

/// The `predict_*` metrics as HF hands them to `save_metrics`: each metric key prefixed with
/// `predict_` (e.g. `rouge-1` → `predict_rouge-1`), then the speed metrics.
pub fn predict_metrics<S: AsRef<str>>(
    metrics: &[(S, f64)],
    speed: &SpeedMetrics,
) -> Vec<(String, PyJson)> {
    let mut all: Vec<(String, PyJson)> = metrics
        .iter()
        .map(|(key, value)| (format!("predict_{}", key.as_ref()), PyJson::Float(*value)))
        .collect();
    all.extend(speed.pairs("predict"));
    all
}

/// HF `Trainer.save_metrics(split, metrics, combined=True)`: writes `<split>_results.json` and
/// merges the metrics into `all_results.json` (keys of earlier runs survive, same keys are
/// replaced). Returns the two paths.
pub fn save_metrics(
    output_dir: &Path,
    split: &str,
    metrics: &[(String, PyJson)],
) -> Result<(PathBuf, PathBuf), OutputError> {
    let split_path = output_dir.join(format!("{split}_results.json"));
    let split_value = PyJson::Object(metrics.to_vec());
    write_atomic(&split_path, dumps_pretty_sorted(&split_value).as_bytes())?;

    let all_path = output_dir.join(ALL_RESULTS);
    let mut all = read_metrics_object(&all_path)?;
    for (key, value) in metrics {
        // dict.update: replace in place, or append a new key.
        match all.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.clone(),
            None => all.push((key.clone(), value.clone())),
        }
    }
    write_atomic(
        &all_path,
        dumps_pretty_sorted(&PyJson::Object(all)).as_bytes(),
    )?;
    Ok((split_path, all_path))
}

/// Reads an existing metrics file as an object's entries (as Python's `json.load`, so `NaN`
/// written by an earlier run reads back); a missing file is an empty object.
fn read_metrics_object(path: &Path) -> Result<Vec<(String, PyJson)>, OutputError> {
    let text = read_if_exists(path).map_err(|source| OutputError::Read {
        path: path.to_owned(),
        source,
    })?;
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    loads_object(path, &text)
}

/// The text of the file at `path`, or `None` when there is no such file (a step that has not run
/// yet); other read errors are errors.
pub fn read_if_exists(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `json.loads(text)` of the metrics file at `path`, which must hold an object: its entries in
/// file order. Errors name `path`.
pub fn loads_object(path: &Path, text: &str) -> Result<Vec<(String, PyJson)>, OutputError> {
    match loads(text) {
        Ok(PyJson::Object(entries)) => Ok(entries),
        Ok(_) => Err(OutputError::NotAnObject {
            path: path.to_owned(),
        }),
        Err(syntax) => Err(OutputError::Parse {
            path: path.to_owned(),
            syntax,
        }),
    }
}

/// Writes the three step-1 files into `output_dir` (created if missing), as LF's `run_sft` did
/// after `trainer.predict`: `predict_results.json`, `all_results.json` (merged), then
/// `generated_predictions.jsonl`.
///
/// `rows` are in dataset order. `metrics` are the text metrics without prefix, e.g.
/// `("rouge-1", 79.36506666666666)` (from `metrics::Summary::metric_pairs()`); `speed` comes from
/// [`SpeedMetrics::new`] with the number of rows and `per_device_eval_batch_size`.
pub fn write_step1<S: AsRef<str>>(
    output_dir: &Path,
    rows: &[PredictionRow],
    metrics: &[(S, f64)],
    speed: &SpeedMetrics,
) -> Result<Step1Files, OutputError> {
    // A stop waits for all three: never new results next to old predictions.
    let _writing = crate::stop::Writing::new();
    let (predict_results, all_results) =
        save_metrics(output_dir, "predict", &predict_metrics(metrics, speed))?;
    let predictions = output_dir.join(GENERATED_PREDICTIONS);
    write_atomic(&predictions, generated_predictions_jsonl(rows).as_bytes())?;
    Ok(Step1Files {
        predictions,
        predict_results,
        all_results,
    })
}
