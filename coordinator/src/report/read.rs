//! One checkpoint's result files, read tolerantly: a missing file is a step that did not run
//! (empty cells), a malformed one is an error naming the file, line and what was expected.
//!
//! - `predict_results.json` (its keys override `all_results.json`'s): ROUGE, speed, sem-sim.
//! - `generated_predictions.jsonl`: step 2's per-row `score`, when step 2 ran.
//! - `<task>/results.log` for mmlu, cmmlu and ceval: `{category:>15}: {accuracy:.2f}` lines.
//! - `CharacterEval/step4_eval_scores.jsonl`: the same aligned `name: value` lines (plain text
//!   despite the name, docs/FIDELITY.md §4.6).

use std::path::{Path, PathBuf};

use super::ReportError;
use crate::output::{ALL_RESULTS, GENERATED_PREDICTIONS, PREDICT_RESULTS, PyJson, float_repr};

/// The step-3 tasks, each a folder of the output directory.
pub const STEP3_TASKS: [&str; 3] = ["mmlu", "cmmlu", "ceval"];
/// The step-3 file with the category accuracies.
pub const STEP3_LOG: &str = "results.log";
/// Step 4's score file, relative to the output directory.
pub const CHARACTER_EVAL_SCORES: &str = "CharacterEval/step4_eval_scores.jsonl";

/// A number read from a result file, with the text it was written as (so tables repeat the
/// input exactly).
#[derive(Debug, Clone, PartialEq)]
pub struct Number {
    pub value: f64,
    pub text: String,
}

impl Number {
    /// A computed number, written as Python's `repr(float)`.
    pub fn computed(value: f64) -> Self {
        Number {
            value,
            text: float_repr(value),
        }
    }
}

/// A list of named numbers in file order.
pub type Named = Vec<(String, Number)>;

/// Looks `key` up in `entries`.
pub fn lookup<'a>(entries: &'a [(String, Number)], key: &str) -> Option<&'a Number> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Everything read from one output directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The row label: the folder name.
    pub name: String,
    /// The output directory.
    pub dir: PathBuf,
    /// The numeric entries of `all_results.json` then `predict_results.json` (later wins).
    pub metrics: Named,
    /// Step 2's scores in file order; `None` when no line has a `score`.
    pub scores: Option<Vec<f32>>,
    /// `(task, categories)` for each step-3 task with a `results.log`, in [`STEP3_TASKS`] order.
    pub step3: Vec<(String, Named)>,
    /// Step 4's per-metric means, when its file exists.
    pub character_eval: Option<Named>,
}

impl Checkpoint {
    /// The metric `key` (e.g. `predict_rouge-1`).
    pub fn metric(&self, key: &str) -> Option<&Number> {
        lookup(&self.metrics, key)
    }

    /// The categories of step-3 `task`, if it ran.
    pub fn task(&self, task: &str) -> Option<&Named> {
        self.step3.iter().find(|(t, _)| t == task).map(|(_, c)| c)
    }

    /// The mean of the CharacterEval metrics (the file holds no average of its own).
    pub fn character_eval_average(&self) -> Option<Number> {
        let metrics = self.character_eval.as_ref().filter(|m| !m.is_empty())?;
        let sum: f64 = metrics.iter().map(|(_, n)| n.value).sum();
        Some(Number::computed(sum / metrics.len() as f64))
    }
}

/// Reads the output directory `dir` as the checkpoint `name`.
pub fn read_checkpoint(name: String, dir: &Path) -> Result<Checkpoint, ReportError> {
    let mut metrics = Named::new();
    for file in [ALL_RESULTS, PREDICT_RESULTS] {
        if let Some(text) = read_optional(&dir.join(file))? {
            for (key, value) in metrics_object(&dir.join(file), &text)? {
                match metrics.iter_mut().find(|(k, _)| *k == key) {
                    Some(entry) => entry.1 = value,
                    None => metrics.push((key, value)),
                }
            }
        }
    }
    let path = dir.join(GENERATED_PREDICTIONS);
    let scores = match read_optional(&path)? {
        Some(text) => scores(&path, &text)?,
        None => None,
    };
    let mut step3 = Vec::new();
    for task in STEP3_TASKS {
        let path = dir.join(task).join(STEP3_LOG);
        if let Some(text) = read_optional(&path)? {
            step3.push((task.to_owned(), aligned_lines(&path, &text)?));
        }
    }
    let path = dir.join(CHARACTER_EVAL_SCORES);
    let character_eval = match read_optional(&path)? {
        Some(text) => Some(aligned_lines(&path, &text)?),
        None => None,
    };
    Ok(Checkpoint {
        name,
        dir: dir.to_owned(),
        metrics,
        scores,
        step3,
        character_eval,
    })
}

/// The file's text, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, ReportError> {
    crate::output::read_if_exists(path).map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Python's `json.loads` of `text` (NaN allowed), errors naming `path`.
fn parse_json(path: &Path, text: &str) -> Result<PyJson, ReportError> {
    crate::output::loads(text).map_err(|syntax| ReportError::Json {
        path: path.to_owned(),
        syntax,
    })
}

/// The numeric entries of a metrics file (`{"predict_rouge-1": 79.3, ...}`); other values are
/// skipped, as they are not table cells.
fn metrics_object(path: &Path, text: &str) -> Result<Named, ReportError> {
    let PyJson::Object(entries) = parse_json(path, text)? else {
        return Err(ReportError::Shape {
            path: path.to_owned(),
            message: "expected a JSON object of metrics at the top level".into(),
        });
    };
    Ok(entries
        .into_iter()
        .filter_map(|(key, value)| Some((key, json_number(&value)?)))
        .collect())
}

/// A JSON int or float as a [`Number`] (floats written as Python would).
fn json_number(value: &PyJson) -> Option<Number> {
    match value {
        PyJson::Float(f) => Some(Number::computed(*f)),
        PyJson::Int(i) => Some(Number {
            value: *i as f64,
            text: i.to_string(),
        }),
        _ => None,
    }
}

/// Step 2's `score` of every line of `generated_predictions.jsonl`; `None` when no line has one
/// (step 2 has not run). A line without a score while others have one is an error.
fn scores(path: &Path, text: &str) -> Result<Option<Vec<f32>>, ReportError> {
    let mut found: Vec<(usize, Option<f32>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| ReportError::Line {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let value = crate::output::loads(line)
            .map_err(|e| bad(format!("column {}: invalid JSON", e.column)))?;
        let PyJson::Object(entries) = value else {
            return Err(bad("expected a JSON object".into()));
        };
        let score = match entries.iter().find(|(k, _)| k == "score") {
            None => None,
            // Step 2 writes the float32 score widened to float64; narrowing is exact.
            Some((_, v)) => Some(
                json_number(v)
                    .ok_or_else(|| bad("`score` must be a number".into()))?
                    .value as f32,
            ),
        };
        found.push((i + 1, score));
    }
    if found.iter().all(|(_, s)| s.is_none()) {
        return Ok(None);
    }
    if let Some((line, _)) = found.iter().find(|(_, s)| s.is_none()) {
        return Err(ReportError::Line {
            path: path.to_owned(),
            line: *line,
            message: "missing `score` (other lines have one: step 2 was interrupted?)".into(),
        });
    }
    Ok(Some(found.into_iter().filter_map(|(_, s)| s).collect()))
}

/// `name: value` lines right-aligned on the colon (`results.log`, `step4_eval_scores.jsonl`).
fn aligned_lines(path: &Path, text: &str) -> Result<Named, ReportError> {
    let mut out = Named::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = line.rsplit_once(':').and_then(|(name, value)| {
            let (name, value) = (name.trim(), value.trim());
            let number: f64 = value.parse().ok()?;
            (!name.is_empty()).then(|| {
                (
                    name.to_owned(),
                    Number {
                        value: number,
                        text: value.to_owned(),
                    },
                )
            })
        });
        match parsed {
            Some(entry) => out.push(entry),
            None => {
                return Err(ReportError::Line {
                    path: path.to_owned(),
                    line: i + 1,
                    message: format!("expected `<name>: <number>`, found {line:?}"),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_lines_keep_the_text() {
        let p = Path::new("mmlu/results.log");
        let got = aligned_lines(p, "        Average: 66.91\nSocial Sciences: 76.08").expect("ok");
        assert_eq!(got[1].0, "Social Sciences");
        assert_eq!((got[0].1.value, got[0].1.text.as_str()), (66.91, "66.91"));
        let err = aligned_lines(p, "Average: 1\nSTEM 59.58").expect_err("bad");
        assert_eq!(
            err.to_string(),
            "mmlu/results.log: line 2: expected `<name>: <number>`, found \"STEM 59.58\""
        );
    }

    #[test]
    fn scores_all_or_none() {
        let p = Path::new("g.jsonl");
        let none = scores(p, "{\"label\": \"a\", \"predict\": \"b\"}\n").expect("ok");
        assert_eq!(none, None);
        let some = scores(p, "{\"score\": 0.5}\n\n{\"score\": NaN}\n").expect("ok");
        assert_eq!(some.as_ref().map(Vec::len), Some(2));
        let err = scores(p, "{\"score\": 0.5}\n{\"label\": \"x\"}").expect_err("mixed");
        assert!(
            err.to_string()
                .starts_with("g.jsonl: line 2: missing `score`")
        );
        let err = scores(p, "{\"score\": \"high\"}").expect_err("type");
        assert!(err.to_string().contains("line 1: `score` must be a number"));
        let err = scores(p, "{\"score\": ").expect_err("json");
        assert!(err.to_string().contains("line 1: column"), "{err}");
    }

    #[test]
    fn metrics_must_be_an_object() {
        let err = metrics_object(Path::new("p.json"), "[1]").expect_err("array");
        assert!(err.to_string().contains("expected a JSON object"));
        let err = metrics_object(Path::new("p.json"), "{\"a\": 1,}").expect_err("json");
        assert!(
            err.to_string().starts_with("p.json: line 1, column"),
            "{err}"
        );
    }
}
