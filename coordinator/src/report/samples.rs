//! The per-sample results of one checkpoint that the significance tests pair up (issue 7,
//! point 5). Only read when a report compares two or more checkpoints.
//!
//! - Step 1: every line of `generated_predictions.jsonl` scored again with the project's own
//!   metrics ([`crate::metrics::score_row`]: jieba + ROUGE-1/2/L + BLEU-4, stored as the original
//!   tool stores them), keyed by line number and `label`.
//! - Step 2: the same lines' `score`.
//! - Step 3: `<task>/results_detail.jsonl` (evalfleet's per-question file): whether each
//!   question, keyed by subject and index, was answered right.
//! - Step 4: `CharacterEval/step3_evaluation.jsonl`: each dialogue's (`id`) score per metric.
//!
//! A missing file is a comparison without an interval (the reason is kept for the report's
//! notes); a malformed one is an error naming the file and line, as everywhere in the report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ReportError;
use super::read::STEP3_TASKS;
use crate::metrics::RowScores;
use crate::output::{GENERATED_PREDICTIONS, PyJson};

/// Step 4's per-row reward scores, relative to the output directory.
pub const CHARACTER_EVAL_ROWS: &str = "CharacterEval/step3_evaluation.jsonl";
/// Step 3's per-question file in each task folder.
pub const STEP3_DETAIL: &str = crate::step3::results::RESULTS_DETAIL;

/// Data that is either there or missing for a stated reason.
pub type Available<T> = Result<T, String>;

/// Step 3's questions of one task: `(subject, index) -> (answer, answered right)`.
pub type Questions = HashMap<(String, i128), (String, bool)>;
/// Step 4's scores: dialogue id -> metric -> scores.
pub type Dialogues = HashMap<String, HashMap<String, Vec<f64>>>;

/// One line of `generated_predictions.jsonl`.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    /// Step 1's scores of the line, recomputed.
    pub scores: RowScores,
    /// Step 2's score, when step 2 ran.
    pub sem_sim: Option<f64>,
}

/// Everything one checkpoint's folder holds per sample.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Steps 1 and 2, line by line.
    pub lines: Available<Vec<Line>>,
    /// Step 3: per task (in [`STEP3_TASKS`] order), `(subject, index) -> (answer, right)`.
    pub step3: Vec<(String, Available<Questions>)>,
    /// Step 4: per dialogue id, `metric -> scores` (normally one score per metric).
    pub dialogues: Available<Dialogues>,
}

/// Reads the per-sample files of the output directory `dir` of checkpoint `name`.
pub fn read_samples(name: &str, dir: &Path) -> Result<Samples, ReportError> {
    let missing = |file: &str| format!("{name} has no {file}");
    let path = dir.join(GENERATED_PREDICTIONS);
    let lines = match read_optional(&path)? {
        None => Err(missing(GENERATED_PREDICTIONS)),
        Some(text) => prediction_lines(&path, &text)?,
    };
    let mut step3 = Vec::new();
    for task in STEP3_TASKS {
        let path = dir.join(task).join(STEP3_DETAIL);
        let questions = match read_optional(&path)? {
            None => Err(missing(&format!("{task}/{STEP3_DETAIL}"))),
            Some(text) => Ok(questions(&path, &text)?),
        };
        step3.push((task.to_owned(), questions));
    }
    let path = dir.join(CHARACTER_EVAL_ROWS);
    let dialogues = if path.is_file() {
        Ok(dialogues(&path)?)
    } else {
        Err(missing(CHARACTER_EVAL_ROWS))
    };
    Ok(Samples {
        lines,
        step3,
        dialogues,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, ReportError> {
    crate::output::read_if_exists(path).map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The JSON object on line `line` (1-based) of `path`.
fn object(path: &Path, line: usize, text: &str) -> Result<Vec<(String, PyJson)>, ReportError> {
    let bad = |message: String| ReportError::Line {
        path: path.to_owned(),
        line,
        message,
    };
    match crate::output::loads(text) {
        Ok(PyJson::Object(entries)) => Ok(entries),
        Ok(_) => Err(bad("expected a JSON object".into())),
        Err(e) => Err(bad(format!("column {}: invalid JSON", e.column))),
    }
}

fn field<'a>(entries: &'a [(String, PyJson)], key: &str) -> Option<&'a PyJson> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn number(value: Option<&PyJson>) -> Option<f64> {
    match value? {
        PyJson::Float(f) => Some(*f),
        PyJson::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// The lines of `generated_predictions.jsonl`, scored; `Err(reason)` when jieba's data (needed
/// to score step 1) cannot be loaded.
fn prediction_lines(path: &Path, text: &str) -> Result<Available<Vec<Line>>, ReportError> {
    let jieba = match crate::metrics::segmenter() {
        Ok(jieba) => jieba,
        Err(e) => return Ok(Err(format!("step 1 cannot be rescored: {e}"))),
    };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let entries = object(path, i + 1, raw)?;
        let text_of = |key: &str| match field(&entries, key) {
            Some(PyJson::Str(s)) => Ok(s.as_str()),
            _ => Err(ReportError::Line {
                path: path.to_owned(),
                line: i + 1,
                message: format!("expected a string `{key}`"),
            }),
        };
        let (label, predict) = (text_of("label")?, text_of("predict")?);
        out.push(Line {
            label: label.to_owned(),
            scores: crate::metrics::score_row_with(jieba, predict, label),
            sem_sim: number(field(&entries, "score")),
        });
    }
    Ok(Ok(out))
}

/// `results_detail.jsonl`: `(subject, index) -> (answer, prediction == answer)`.
fn questions(path: &Path, text: &str) -> Result<Questions, ReportError> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let entries = object(path, i + 1, raw)?;
        let parsed = match (
            field(&entries, "subject"),
            field(&entries, "index"),
            field(&entries, "answer"),
            field(&entries, "prediction"),
        ) {
            (
                Some(PyJson::Str(subject)),
                Some(PyJson::Int(index)),
                Some(PyJson::Str(answer)),
                Some(PyJson::Str(prediction)),
            ) => Some((subject, *index, answer, prediction)),
            _ => None,
        };
        let Some((subject, index, answer, prediction)) = parsed else {
            return Err(ReportError::Line {
                path: path.to_owned(),
                line: i + 1,
                message: "expected string `subject`, `answer`, `prediction` and integer `index`"
                    .into(),
            });
        };
        let right = prediction == answer;
        out.insert((subject.clone(), index), (answer.clone(), right));
    }
    Ok(out)
}

/// `step3_evaluation.jsonl` (a JSON array): each row's score under its `metric_en`, grouped
/// by dialogue `id`.
fn dialogues(path: &Path) -> Result<Dialogues, ReportError> {
    let rows = crate::step4::data::read_records(path)?;
    let mut out = Dialogues::new();
    for (i, row) in rows.iter().enumerate() {
        let bad = |message: &str| ReportError::Shape {
            path: PathBuf::from(path),
            message: format!("record {i}: {message}"),
        };
        let id = match field(row, "id") {
            Some(PyJson::Int(id)) => id.to_string(),
            Some(PyJson::Str(id)) => id.clone(),
            _ => return Err(bad("expected an integer or string `id`")),
        };
        let Some(PyJson::Str(metric)) = field(row, "metric_en") else {
            return Err(bad("expected a string `metric_en`"));
        };
        let score = number(field(row, metric))
            .ok_or_else(|| bad(&format!("expected a number under `{metric}`")))?;
        out.entry(id)
            .or_default()
            .entry(metric.clone())
            .or_default()
            .push(score);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_keyed_and_checked() {
        let p = Path::new("mmlu/results_detail.jsonl");
        let text = "{\"subject\": \"a\", \"index\": 0, \"answer\": \"B\", \"prediction\": \"B\", \"probabilities\": null}\n{\"subject\": \"a\", \"index\": 1, \"answer\": \"C\", \"prediction\": \"A\"}\n";
        let q = questions(p, text).expect("ok");
        assert_eq!(q[&("a".to_owned(), 0)], ("B".to_owned(), true));
        assert_eq!(q[&("a".to_owned(), 1)], ("C".to_owned(), false));
        let err = questions(p, "{\"subject\": \"a\", \"index\": \"0\"}").expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("mmlu/results_detail.jsonl: line 1: expected string"),
            "{err}"
        );
    }

    #[test]
    fn dialogue_rows_need_their_metric_score() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("step3_evaluation.jsonl");
        std::fs::write(
            &path,
            "[{\"id\": 7, \"metric_en\": \"Fluency\", \"Fluency\": 3.5}, {\"id\": 7, \"metric_en\": \"Empathy\", \"Empathy\": 2}]",
        )
        .expect("write");
        let d = dialogues(&path).expect("ok");
        assert_eq!(d["7"]["Fluency"], vec![3.5]);
        assert_eq!(d["7"]["Empathy"], vec![2.0]);
        std::fs::write(&path, "[{\"id\": 7, \"metric_en\": \"Fluency\"}]").expect("write");
        let err = dialogues(&path).expect_err("no score").to_string();
        assert!(
            err.ends_with("record 0: expected a number under `Fluency`"),
            "{err}"
        );
    }
}
