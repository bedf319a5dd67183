//! Step 3 result files (docs/FIDELITY.md §3.5): `results.json` and `results.log` exactly as LF's
//! `Evaluator._save_results` writes them, plus (new) `results_detail.jsonl` and
//! `results_subjects.tsv`, a per-subject accuracy table.

use std::path::{Path, PathBuf};

use super::plan::TaskPlan;
use super::{CATEGORIES, Step3Error};
use crate::output::{PyJson, dumps_compact, write_atomic};
use evalfleet_pyfmt::push_json_string;

/// `results.json`: `{subject: {"0": "A", ...}}`.
pub const RESULTS_JSON: &str = "results.json";
/// `results.log`: the category accuracies.
pub const RESULTS_LOG: &str = "results.log";
/// One JSON line per question: subject, index, answer, prediction, choice probabilities.
pub const RESULTS_DETAIL: &str = "results_detail.jsonl";
/// Per-subject accuracies, tab-separated.
pub const RESULTS_SUBJECTS: &str = "results_subjects.tsv";

/// What a worker returns for one question.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemResult {
    /// The softmax over the four choice logits at the last prompt position (float32, as LF).
    pub probabilities: [f32; 4],
}

impl ItemResult {
    /// LF's prediction: the letter of the first maximum (`torch.argmax`).
    pub fn prediction(&self) -> String {
        let mut best = 0;
        for (i, p) in self.probabilities.iter().enumerate() {
            if *p > self.probabilities[best] {
                best = i;
            }
        }
        char::from(b'A' + best as u8).to_string()
    }
}

/// A task's predictions, one per item of the plan, in plan order.
#[derive(Debug, Clone)]
pub struct TaskResults<'a> {
    plan: &'a TaskPlan,
    predictions: Vec<String>,
    probabilities: Option<Vec<[f32; 4]>>,
}

impl<'a> TaskResults<'a> {
    /// From worker results (one per item, in plan order).
    pub fn from_items(plan: &'a TaskPlan, items: &[ItemResult]) -> Result<Self, Step3Error> {
        check_len(plan, items.len())?;
        Ok(Self {
            plan,
            predictions: items.iter().map(ItemResult::prediction).collect(),
            probabilities: Some(items.iter().map(|r| r.probabilities).collect()),
        })
    }

    /// From bare predicted letters (e.g. an earlier `results.json`); no probabilities.
    pub fn from_predictions(
        plan: &'a TaskPlan,
        predictions: Vec<String>,
    ) -> Result<Self, Step3Error> {
        check_len(plan, predictions.len())?;
        Ok(Self {
            plan,
            predictions,
            probabilities: None,
        })
    }

    /// Whether each prediction equals its answer (LF: string comparison).
    pub fn corrects(&self) -> Vec<bool> {
        let items = &self.plan.items;
        items
            .iter()
            .zip(&self.predictions)
            .map(|(i, p)| *p == i.answer)
            .collect()
    }

    /// `json.dump(results, f, indent=2)`: subjects in mapping order, ASCII, no trailing newline.
    pub fn results_json(&self) -> String {
        let mut out = String::from("{");
        let mut start = 0;
        for (s, subject) in self.plan.subjects.iter().enumerate() {
            out.push_str(if s == 0 { "\n  " } else { ",\n  " });
            push_json_string(&mut out, &subject.subject.key, true);
            out.push_str(": {");
            for (i, pred) in self.predictions[start..start + subject.len]
                .iter()
                .enumerate()
            {
                out.push_str(if i == 0 { "\n    \"" } else { ",\n    \"" });
                out.push_str(&i.to_string());
                out.push_str("\": ");
                push_json_string(&mut out, pred, true);
            }
            out.push_str(if subject.len == 0 { "}" } else { "\n  }" });
            start += subject.len;
        }
        out.push_str(if self.plan.subjects.is_empty() {
            "}"
        } else {
            "\n}"
        });
        out
    }

    /// `"{:>15}: {:.2f}".format(category, 100 * np.mean(bools))` per non-empty category, joined by
    /// newlines, no trailing newline.
    pub fn results_log(&self) -> String {
        let corrects = self.corrects();
        let mut lines = Vec::new();
        for category in CATEGORIES {
            let (mut n, mut k) = (0usize, 0usize);
            for (item, ok) in self.plan.items.iter().zip(&corrects) {
                let in_category = category == "Average"
                    || self.plan.subjects[item.subject].subject.category == category;
                if in_category {
                    n += 1;
                    k += usize::from(*ok);
                }
            }
            if n > 0 {
                lines.push(format!("{category:>15}: {}", percent(k, n)));
            }
        }
        lines.join("\n")
    }

    /// One line per question: `{"subject", "index", "answer", "prediction", "probabilities"}`
    /// (probabilities `null` when only letters are known), non-ASCII written as is.
    pub fn results_detail(&self) -> String {
        let mut out = String::new();
        for (n, item) in self.plan.items.iter().enumerate() {
            let probabilities = match &self.probabilities {
                Some(all) => {
                    PyJson::Array(all[n].iter().map(|p| PyJson::Float(*p as f64)).collect())
                }
                None => PyJson::Null,
            };
            let line = PyJson::Object(vec![
                (
                    "subject".into(),
                    PyJson::Str(self.plan.subjects[item.subject].subject.key.clone()),
                ),
                ("index".into(), PyJson::Int(item.index as i128)),
                ("answer".into(), PyJson::Str(item.answer.clone())),
                (
                    "prediction".into(),
                    PyJson::Str(self.predictions[n].clone()),
                ),
                ("probabilities".into(), probabilities),
            ]);
            out.push_str(&dumps_compact(&line, false));
            out.push('\n');
        }
        out
    }

    /// `subject, name, category, questions, correct, accuracy` (accuracy as in results.log).
    pub fn subject_table(&self) -> String {
        let corrects = self.corrects();
        let mut out = String::from("subject\tname\tcategory\tquestions\tcorrect\taccuracy\n");
        let mut start = 0;
        for plan in &self.plan.subjects {
            let k = corrects[start..start + plan.len]
                .iter()
                .filter(|c| **c)
                .count();
            let accuracy = if plan.len == 0 {
                "nan".into()
            } else {
                percent(k, plan.len)
            };
            let s = &plan.subject;
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{k}\t{accuracy}\n",
                s.key, s.name, s.category, plan.len
            ));
            start += plan.len;
        }
        out
    }

    /// Writes the four files into `dir` (`<save_dir>/<task>`), each atomically.
    /// Writes the files into `dir` in place of an earlier run's (the original tool removed the
    /// folder before its run; here the earlier results stay until the new ones are all written):
    /// into a sibling folder first, which then takes `dir`'s place. A failure before that leaves
    /// `dir` as it was; a crash between the two renames leaves the earlier results in
    /// `.<name>.old` beside it.
    pub fn replace(&self, dir: &Path) -> Result<Vec<PathBuf>, Step3Error> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let new = dir.with_file_name(format!(".{name}.new"));
        let old = dir.with_file_name(format!(".{name}.old"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Step3Error::Io { path, source }
        };
        remove_all(&new).map_err(io(&new))?;
        remove_all(&old).map_err(io(&old))?;
        // A stop (SIGTERM) waits for the swap: never between the two renames.
        let _writing = crate::stop::Writing::new();
        let written = self.write(&new)?;
        match std::fs::rename(dir, &old) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(dir)(e)),
            _ => {}
        }
        std::fs::rename(&new, dir).map_err(io(dir))?;
        remove_all(&old).map_err(io(&old))?;
        Ok(written
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| dir.join(n))
            .collect())
    }

    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, Step3Error> {
        let mut files = vec![
            (RESULTS_JSON, self.results_json()),
            (RESULTS_LOG, self.results_log()),
            (RESULTS_SUBJECTS, self.subject_table()),
        ];
        files.push((RESULTS_DETAIL, self.results_detail()));
        let mut written = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            write_atomic(&path, text.as_bytes())?;
            written.push(path);
        }
        Ok(written)
    }
}

fn check_len(plan: &TaskPlan, got: usize) -> Result<(), Step3Error> {
    if got == plan.items.len() {
        return Ok(());
    }
    Err(Step3Error::Config(format!(
        "{got} results for {} planned questions",
        plan.items.len()
    )))
}

/// `"{:.2f}".format(100 * np.mean(bools))`: `k / n` and `100 * x` rounded in float64, then the
/// exact binary value rounded half-even to two decimals (as Python's `format`).
pub fn percent(k: usize, n: usize) -> String {
    let value = 100.0 * (k as f64 / n as f64);
    format_fixed2(value)
}

/// Python's `format(x, ".2f")` for a finite `x`: correctly rounded from the exact binary value,
/// ties to even. That is CPython's `round(x, 2)`, whose result Rust's `{:.2}` prints exactly.
fn format_fixed2(x: f64) -> String {
    format!("{:.2}", crate::metrics::python_round(x, 2))
}

/// Removes `dir` and everything in it; a missing one is fine.
fn remove_all(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_matches_python() {
        // Python: "{:.2f}".format(100 * np.mean(...)) for these counts.
        assert_eq!(percent(9396, 14042), "66.91");
        assert_eq!(percent(1, 8), "12.50");
        assert_eq!(format_fixed2(0.125), "0.12");
        assert_eq!(format_fixed2(0.375), "0.38");
        assert_eq!(format_fixed2(2.675), "2.67");
        assert_eq!(format_fixed2(12.125), "12.12");
        assert_eq!(format_fixed2(100.0), "100.00");
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        let r = ItemResult {
            probabilities: [0.1, 0.4, 0.4, 0.1],
        };
        assert_eq!(r.prediction(), "B");
    }
}
