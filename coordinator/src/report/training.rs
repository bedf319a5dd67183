//! Reward-model training curves (issue 10, point 3).
//!
//! `evalfleet train-rm` appends to `<output_dir>/metrics.jsonl` one JSON line per optimizer step
//! (`"split": "train"`: `step`, `lr`, `loss`, `loss_1`, `loss_2`) and one per held-out
//! evaluation (`"split": "eval"`: `step`, `loss`, `loss_1`, `loss_2`, `pearson_all`,
//! `spearman_all`, `pairwise_accuracy`, and `pearson` / `spearman` per dimension; `null` where a
//! correlation is undefined).
//!
//! The report looks for `metrics.jsonl` in the report directory itself and in each of its
//! direct subfolders (so `evalfleet report out/train_rm` and `evalfleet report out/`, with the
//! training run in `out/train_rm/`, both find it). A file counts as a training run when its first
//! line is a JSON object with `step` and `split`; other files of that name are left alone. Once
//! counted, a malformed line is an error naming the file and line.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::ReportError;
use super::chart::fmt_value;
use super::xychart::{XyChart, XySeries, xy_chart};
use crate::output::PyJson;

/// The file `evalfleet train-rm` writes its metrics to.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Held-out evaluations listed in summary.md at most (first, evenly spaced, last).
const MAX_TABLE_ROWS: usize = 11;

/// One metrics line: its step and numeric fields (`None`: null or absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub step: f64,
    pub values: Vec<(String, Option<f64>)>,
}

impl Point {
    /// The value of `key`, if a finite number.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| *v)
            .filter(|v| v.is_finite())
    }
}

/// One training run's metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRun {
    /// The folder name of the run (the report directory's own name for its own file).
    pub name: String,
    /// The metrics file.
    pub path: PathBuf,
    /// Per optimizer step.
    pub train: Vec<Point>,
    /// Per held-out evaluation; per-dimension correlations flattened to `spearman/<dim>`.
    pub eval: Vec<Point>,
}

/// The training runs under `dir` (see the module docs), the report directory's own first, then
/// its subfolders by name.
pub fn find_runs(dir: &Path) -> Result<Vec<TrainingRun>, ReportError> {
    let mut candidates = vec![dir.join(METRICS_FILE)];
    let io = |source| ReportError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut subdirs: Vec<PathBuf> = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_dir() {
                subdirs.push(path);
            }
        }
    }
    subdirs.sort();
    candidates.extend(subdirs.iter().map(|d| d.join(METRICS_FILE)));
    let mut runs = Vec::new();
    for path in candidates {
        let Some(text) =
            crate::output::read_if_exists(&path).map_err(|source| ReportError::Io {
                path: path.clone(),
                source,
            })?
        else {
            continue;
        };
        if let Some(run) = parse_run(&path, &text)? {
            runs.push(run);
        }
    }
    Ok(runs)
}

/// The run in `text`, or `None` when its first line is not a train-rm metrics line.
pub fn parse_run(path: &Path, text: &str) -> Result<Option<TrainingRun>, ReportError> {
    let lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, first)) = lines.clone().next() else {
        return Ok(None);
    };
    if metrics_line(path, 1, first).is_err() {
        return Ok(None);
    }
    let folder = path.parent().map(super::discover::folder_name);
    let mut run = TrainingRun {
        name: folder.unwrap_or_default(),
        path: path.to_owned(),
        train: Vec::new(),
        eval: Vec::new(),
    };
    for (i, line) in lines {
        let (split, point) = metrics_line(path, i + 1, line)?;
        match split.as_str() {
            "train" => run.train.push(point),
            "eval" => run.eval.push(point),
            other => {
                return Err(ReportError::Line {
                    path: path.to_owned(),
                    line: i + 1,
                    message: format!("`split` must be \"train\" or \"eval\", found {other:?}"),
                });
            }
        }
    }
    // A resumed run rewrites steps after its checkpoint; x order keeps the lines drawable.
    run.train.sort_by(|a, b| a.step.total_cmp(&b.step));
    run.eval.sort_by(|a, b| a.step.total_cmp(&b.step));
    Ok(Some(run))
}

/// `(split, point)` of one line; numeric fields kept, objects of numbers flattened to
/// `key/name`.
fn metrics_line(path: &Path, line: usize, text: &str) -> Result<(String, Point), ReportError> {
    let bad = |message: &str| ReportError::Line {
        path: path.to_owned(),
        line,
        message: message.to_owned(),
    };
    let Ok(PyJson::Object(entries)) = crate::output::loads(text) else {
        return Err(bad(
            "expected a JSON object (evalfleet train-rm's metrics line)",
        ));
    };
    let (mut split, mut step, mut values) = (None, None, Vec::new());
    for (key, value) in entries {
        match (key.as_str(), value) {
            ("split", PyJson::Str(s)) => split = Some(s),
            ("step", PyJson::Int(n)) => step = Some(n as f64),
            (_, PyJson::Object(inner)) => {
                for (name, v) in inner {
                    values.push((format!("{key}/{name}"), number(&v)));
                }
            }
            (_, v) => values.push((key, number(&v))),
        }
    }
    match (split, step) {
        (Some(split), Some(step)) => Ok((split, Point { step, values })),
        _ => Err(bad("expected a string `split` and an integer `step`")),
    }
}

fn number(value: &PyJson) -> Option<f64> {
    match value {
        PyJson::Float(f) => Some(*f),
        PyJson::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// `(x, y)` of `key` over `points` (NaN where missing, which breaks the line).
fn curve(points: &[Point], key: &str) -> Vec<(f64, f64)> {
    points
        .iter()
        .map(|p| (p.step, p.get(key).unwrap_or(f64::NAN)))
        .collect()
}

/// The run's charts: `(title, svg)`; `None` where the run has nothing to draw.
pub fn charts(run: &TrainingRun) -> Vec<(String, Option<String>)> {
    let series = |name: &str, points: &[Point], key: &str| XySeries {
        name: name.to_owned(),
        points: curve(points, key),
    };
    let loss = [
        series("training loss", &run.train, "loss"),
        series("held-out loss", &run.eval, "loss"),
    ];
    let quality = [
        series("Spearman (all)", &run.eval, "spearman_all"),
        series("Pearson (all)", &run.eval, "pearson_all"),
        series("pairwise accuracy", &run.eval, "pairwise_accuracy"),
    ];
    let mut dims: Vec<String> = Vec::new();
    for p in &run.eval {
        for (k, _) in &p.values {
            if let Some(d) = k.strip_prefix("spearman/")
                && !dims.iter().any(|x| x == d)
            {
                dims.push(d.to_owned());
            }
        }
    }
    let per_dim: Vec<XySeries> = dims
        .iter()
        .map(|d| series(d, &run.eval, &format!("spearman/{d}")))
        .collect();
    let draw = |title: String, y_label: &str, series: &[XySeries]| {
        let svg = xy_chart(&XyChart {
            title: &title,
            x_label: "optimizer step",
            y_label,
            series,
        });
        (title, svg)
    };
    vec![
        draw(format!("{}: loss", run.name), "loss", &loss),
        draw(
            format!("{}: held-out correlation and ranking accuracy", run.name),
            "value",
            &quality,
        ),
        draw(
            format!("{}: held-out Spearman per dimension", run.name),
            "Spearman",
            &per_dim,
        ),
    ]
}

/// The evaluations shown in the table: all when few, else the first, evenly spaced ones and
/// the last.
fn table_rows(eval: &[Point]) -> Vec<&Point> {
    if eval.len() <= MAX_TABLE_ROWS {
        return eval.iter().collect();
    }
    let last = eval.len() - 1;
    let mut picked: Vec<usize> = (0..MAX_TABLE_ROWS)
        .map(|k| k * last / (MAX_TABLE_ROWS - 1))
        .collect();
    picked.dedup();
    picked.iter().map(|&i| &eval[i]).collect()
}

fn cell(v: Option<f64>) -> String {
    v.map_or(String::new(), fmt_value)
}

/// summary.md's section for `run` (`rel`: its metrics file as shown).
pub fn markdown(run: &TrainingRun, rel: &str) -> String {
    let mut out = format!("## Reward-model training: {} ({rel})\n\n", run.name);
    let losses: Vec<(f64, f64)> = curve(&run.train, "loss")
        .into_iter()
        .filter(|(_, y)| y.is_finite())
        .collect();
    if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
        let tail = &losses[losses.len().saturating_sub(10)..];
        let mean = tail.iter().map(|(_, y)| y).sum::<f64>() / tail.len() as f64;
        let _ = writeln!(
            out,
            "{} optimizer steps; training loss {} at step {} -> {} at step {} (mean of the last {}: {}).\n",
            run.train.len(),
            fmt_value(first.1),
            fmt_value(first.0),
            fmt_value(last.1),
            fmt_value(last.0),
            tail.len(),
            fmt_value(mean)
        );
    }
    if run.eval.is_empty() {
        out.push_str("No held-out evaluations.\n");
        return out;
    }
    let columns = [
        ("loss", "loss"),
        ("loss_1", "loss_1"),
        ("loss_2", "loss_2"),
        ("pearson", "pearson_all"),
        ("spearman", "spearman_all"),
        ("pairwise_accuracy", "pairwise_accuracy"),
    ];
    out.push_str("| step |");
    for (name, _) in columns {
        let _ = write!(out, " held-out {name} |");
    }
    out.push_str("\n| ---: |");
    out.push_str(&" ---: |".repeat(columns.len()));
    out.push('\n');
    for p in table_rows(&run.eval) {
        let _ = write!(out, "| {} |", fmt_value(p.step));
        for (_, key) in columns {
            let _ = write!(out, " {} |", cell(p.get(key)));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_metrics_files_are_left_alone() {
        let p = Path::new("x/metrics.jsonl");
        assert_eq!(parse_run(p, "{\"epoch\": 1}\n").expect("ok"), None);
        assert_eq!(parse_run(p, "").expect("ok"), None);
        let err = parse_run(p, "{\"step\": 1, \"split\": \"train\"}\n{\"step\": 2}\n")
            .expect_err("bad line");
        assert_eq!(
            err.to_string(),
            "x/metrics.jsonl: line 2: expected a string `split` and an integer `step`"
        );
        let err = parse_run(p, "{\"step\": 1, \"split\": \"test\"}").expect_err("split");
        assert!(err.to_string().contains("found \"test\""), "{err}");
    }

    #[test]
    fn long_runs_are_thinned_in_the_table() {
        let eval: Vec<Point> = (0..=40)
            .map(|i| Point {
                step: (i * 5) as f64,
                values: vec![("loss".into(), Some(1.0))],
            })
            .collect();
        let steps: Vec<f64> = table_rows(&eval).iter().map(|p| p.step).collect();
        assert_eq!(steps.len(), MAX_TABLE_ROWS);
        assert_eq!((steps[0], steps[10]), (0.0, 200.0));
        assert_eq!(steps[5], 100.0);
    }
}
