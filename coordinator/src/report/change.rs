//! Is each checkpoint's change on each benchmark against the previous row larger than noise?
//! (issue 7, point 5). Every comparison pairs the two checkpoints' per-sample results
//! ([`super::samples`]) over the units both have:
//!
//! - step 1 (ROUGE-1/2/L, BLEU-4) and step 2 (sem-sim): the mean per-line difference over the
//!   lines with the same number and `label`, with a paired-bootstrap interval;
//! - step 3 (each task's average): the accuracy difference in points over the questions with the
//!   same subject, index and answer, McNemar's exact test for the mark and a paired-bootstrap
//!   interval;
//! - step 4 (each CharacterEval metric and their average): the mean per-dialogue difference over
//!   the shared dialogue ids, bootstrapped over dialogues.
//!
//! A bootstrap change is significant when its 95% interval excludes zero; a step-3 change when
//! McNemar's p < 0.05. Without per-sample files the change is the difference of the table's
//! cells, with no interval and no mark. Each pair uses [`stats::SEED`]: reports are reproducible.

use std::collections::BTreeSet;

use super::ReportError;
use super::read::{Checkpoint, STEP3_TASKS};
use super::samples::{Questions, Samples, read_samples};
use super::stats::{self, ALPHA, Interval, paired_bootstrap, weighted_mean};
use super::table::{CE_AVERAGE, CE_PREFIX, Table, ce_metric_names};

/// The step-1/2 columns compared, with `predict_results.json`'s key for columns the Result
/// table lacks (BLEU-4).
const LINE_COLUMNS: [&str; 5] = ["rouge-1", "rouge-2", "rouge-l", "bleu-4", "sem_sim_score"];

/// One benchmark's change from the previous checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The estimate: mean paired difference over the shared units (current minus previous).
    pub delta: f64,
    /// The 95% interval of `delta`, when per-sample results exist on both sides.
    pub interval: Option<Interval>,
    /// McNemar's exact p-value (step 3 only).
    pub p_value: Option<f64>,
    /// Larger than noise? `None` when it could not be tested.
    pub significant: Option<bool>,
    /// How many units were paired.
    pub shared: usize,
    /// What the units are ("samples", "questions", "dialogues").
    pub unit: &'static str,
    /// How the mark was decided.
    pub method: &'static str,
    /// Why there is no interval.
    pub note: Option<String>,
    /// Decimals to show.
    pub decimals: usize,
}

impl Change {
    /// `+2.10 [0.40, 3.90] *`: the change, its interval, a star when significant.
    pub fn text(&self) -> String {
        let d = self.decimals;
        match self.interval {
            Some(ci) => format!(
                "{:+.d$} [{:.d$}, {:.d$}]{}",
                self.delta,
                ci.lo,
                ci.hi,
                if self.significant == Some(true) {
                    " *"
                } else {
                    ""
                }
            ),
            None => format!("{:+.d$} (no interval)", self.delta),
        }
    }

    /// A sentence for tooltips: the change, interval, test and units.
    pub fn describe(&self, previous: &str) -> String {
        let verdict = match self.significant {
            Some(true) => "significant",
            Some(false) => "within noise",
            None => "not tested",
        };
        let mut s = format!("{} vs {previous}: {verdict}", self.text());
        if let Some(p) = self.p_value {
            s.push_str(&format!(", McNemar exact p = {p:.3e}"));
        }
        match &self.note {
            Some(note) => s.push_str(&format!(" ({note})")),
            None => s.push_str(&format!(
                " ({}, 95% interval, {} shared {})",
                self.method, self.shared, self.unit
            )),
        }
        s
    }
}

/// The changes of every row against the row before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    /// The compared columns (Result-table names, plus `bleu-4`).
    pub columns: Vec<String>,
    /// Per table row: the previous row's model (`None` for the first row) and one cell per
    /// column (`None` where either checkpoint lacks the benchmark).
    pub rows: Vec<(Option<String>, Vec<Option<Change>>)>,
}

impl Changes {
    /// The change of `column` in row `row`.
    pub fn get(&self, row: usize, column: &str) -> Option<&Change> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.1[i].as_ref()
    }
}

/// The compared columns for `checkpoints`.
pub fn change_columns(checkpoints: &[Checkpoint]) -> Vec<String> {
    let mut columns: Vec<String> = LINE_COLUMNS.iter().map(|c| c.to_string()).collect();
    columns.extend(STEP3_TASKS.iter().map(|t| format!("avg_{t}")));
    columns.push(CE_AVERAGE.into());
    let metrics = ce_metric_names(checkpoints);
    columns.extend(metrics.iter().map(|m| format!("{CE_PREFIX}{m}")));
    columns
}

/// Compares each checkpoint with the one before it (reading per-sample files only when there
/// are at least two).
pub fn compare(checkpoints: &[Checkpoint], table: &Table) -> Result<Changes, ReportError> {
    let columns = change_columns(checkpoints);
    let mut rows = vec![(None, vec![None; columns.len()])];
    if checkpoints.len() < 2 {
        rows.truncate(checkpoints.len());
        return Ok(Changes { columns, rows });
    }
    let samples = checkpoints
        .iter()
        .map(|c| read_samples(&c.name, &c.dir))
        .collect::<Result<Vec<_>, _>>()?;
    for i in 1..checkpoints.len() {
        let cells = columns
            .iter()
            .map(|_| None)
            .collect::<Vec<Option<Change>>>();
        let mut pair = Pair {
            columns: &columns,
            cells,
            values: |column: &str| cell_values(checkpoints, table, column, i),
        };
        pair.lines(&samples[i - 1], &samples[i]);
        pair.step3(&samples[i - 1], &samples[i]);
        pair.dialogues(&samples[i - 1], &samples[i]);
        rows.push((Some(checkpoints[i - 1].name.clone()), pair.cells));
    }
    Ok(Changes { columns, rows })
}

/// The (previous, current) values of `column` in the table (or, for `bleu-4`, the metrics
/// files), when both rows have one.
fn cell_values(
    checkpoints: &[Checkpoint],
    table: &Table,
    column: &str,
    i: usize,
) -> Option<(f64, f64)> {
    let value = |row: usize| -> Option<f64> {
        if column == "bleu-4" {
            return checkpoints[row].metric("predict_bleu-4").map(|n| n.value);
        }
        table.column(column)?[row]
    };
    Some((value(i - 1)?, value(i)?))
}

/// The cells of one (previous, current) pair being filled.
struct Pair<'a, F: Fn(&str) -> Option<(f64, f64)>> {
    columns: &'a [String],
    cells: Vec<Option<Change>>,
    values: F,
}

/// Decimals shown for a column: points for ROUGE/BLEU/accuracy, more for cosine and 1-5 scores.
fn decimals(column: &str) -> usize {
    if column == "sem_sim_score" {
        4
    } else if column == CE_AVERAGE || column.starts_with(CE_PREFIX) {
        3
    } else {
        2
    }
}

impl<F: Fn(&str) -> Option<(f64, f64)>> Pair<'_, F> {
    /// Sets `column`'s cell when both checkpoints have the benchmark: from the paired result
    /// when there is one, else the table's difference with `why` as the note.
    fn set(&mut self, column: &str, paired: Result<Change, String>) {
        let Some(i) = self.columns.iter().position(|c| c == column) else {
            return;
        };
        let Some((before, after)) = (self.values)(column) else {
            return;
        };
        self.cells[i] = Some(match paired {
            Ok(change) => change,
            Err(note) => Change {
                delta: after - before,
                interval: None,
                p_value: None,
                significant: None,
                shared: 0,
                unit: "",
                method: "difference of the table's values",
                note: Some(note),
                decimals: decimals(column),
            },
        });
    }

    /// A bootstrap change of `column` from its estimate and interval.
    fn bootstrapped(
        column: &str,
        delta: f64,
        ci: Option<Interval>,
        shared: usize,
        unit: &'static str,
    ) -> Result<Change, String> {
        let ci = ci.ok_or_else(|| format!("no shared {unit} with a value"))?;
        Ok(Change {
            delta,
            interval: Some(ci),
            p_value: None,
            significant: Some(ci.excludes_zero()),
            shared,
            unit,
            method: "paired bootstrap",
            note: None,
            decimals: decimals(column),
        })
    }

    /// Steps 1 and 2: per-line differences over the lines with the same number and label.
    fn lines(&mut self, before: &Samples, after: &Samples) {
        let (a, b) = match (&before.lines, &after.lines) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(why), _) | (_, Err(why)) => {
                for column in LINE_COLUMNS {
                    self.set(column, Err(why.clone()));
                }
                return;
            }
        };
        let shared: Vec<usize> = (0..a.len().min(b.len()))
            .filter(|&i| a[i].label == b[i].label)
            .collect();
        let diffs: Vec<Vec<Option<f64>>> = LINE_COLUMNS
            .iter()
            .map(|column| {
                shared
                    .iter()
                    .map(|&i| {
                        let value = |l: &super::samples::Line| match *column {
                            "rouge-1" => Some(l.scores.rouge1.f),
                            "rouge-2" => Some(l.scores.rouge2.f),
                            "rouge-l" => Some(l.scores.rougel.f),
                            "bleu-4" => Some(l.scores.bleu4),
                            _ => l.sem_sim,
                        };
                        Some(value(&b[i])? - value(&a[i])?)
                    })
                    .collect()
            })
            .collect();
        let (estimates, intervals) = paired_bootstrap(shared.len(), stats::SEED, |w| {
            diffs.iter().map(|d| weighted_mean(w, d)).collect()
        });
        for (k, column) in LINE_COLUMNS.iter().enumerate() {
            let change =
                Self::bootstrapped(column, estimates[k], intervals[k], shared.len(), "samples");
            self.set(column, change);
        }
    }

    /// Step 3: McNemar's exact test and a bootstrap interval per task, over the shared questions.
    fn step3(&mut self, before: &Samples, after: &Samples) {
        for ((task, a), (_, b)) in before.step3.iter().zip(&after.step3) {
            let column = format!("avg_{task}");
            let change = match (a, b) {
                (Ok(a), Ok(b)) => mcnemar_change(a, b, &column),
                (Err(why), _) | (_, Err(why)) => Err(why.clone()),
            };
            self.set(&column, change);
        }
    }

    /// Step 4: per-dialogue differences of each metric, and of their average, bootstrapped over
    /// the shared dialogues.
    fn dialogues(&mut self, before: &Samples, after: &Samples) {
        let metrics: Vec<String> = self
            .columns
            .iter()
            .filter_map(|c| c.strip_prefix(CE_PREFIX).map(str::to_owned))
            .collect();
        let (a, b) = match (&before.dialogues, &after.dialogues) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(why), _) | (_, Err(why)) => {
                self.set(CE_AVERAGE, Err(why.clone()));
                for m in &metrics {
                    self.set(&format!("{CE_PREFIX}{m}"), Err(why.clone()));
                }
                return;
            }
        };
        // Sorted ids: the bootstrap's draws must not depend on hash order.
        let ids: BTreeSet<&String> = a.keys().filter(|id| b.contains_key(*id)).collect();
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
        let diffs: Vec<Vec<Option<f64>>> = metrics
            .iter()
            .map(|m| {
                ids.iter()
                    .map(|id| {
                        let (x, y) = (a[*id].get(m)?, b[*id].get(m)?);
                        (!x.is_empty() && !y.is_empty()).then(|| mean(y) - mean(x))
                    })
                    .collect()
            })
            .collect();
        let (estimates, intervals) = paired_bootstrap(ids.len(), stats::SEED, |w| {
            let per_metric: Vec<f64> = diffs.iter().map(|d| weighted_mean(w, d)).collect();
            let finite: Vec<f64> = per_metric
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            let average = if finite.is_empty() {
                f64::NAN
            } else {
                mean(&finite)
            };
            per_metric.into_iter().chain([average]).collect()
        });
        for (k, m) in metrics.iter().enumerate() {
            let column = format!("{CE_PREFIX}{m}");
            let change =
                Self::bootstrapped(&column, estimates[k], intervals[k], ids.len(), "dialogues");
            self.set(&column, change);
        }
        let k = metrics.len();
        let change = Self::bootstrapped(
            CE_AVERAGE,
            estimates[k],
            intervals[k],
            ids.len(),
            "dialogues",
        );
        self.set(CE_AVERAGE, change);
    }
}

/// The step-3 change of one task: accuracy difference in points over the questions both
/// checkpoints answered (same subject, index and answer), McNemar's exact p-value, bootstrap
/// interval.
fn mcnemar_change(a: &Questions, b: &Questions, column: &str) -> Result<Change, String> {
    let mut keys: Vec<&(String, i128)> = a
        .iter()
        .filter(|(k, (answer, _))| b.get(*k).is_some_and(|(other, _)| other == answer))
        .map(|(k, _)| k)
        .collect();
    if keys.is_empty() {
        return Err("no shared questions".into());
    }
    keys.sort();
    let (mut only_before, mut only_after) = (0u64, 0u64);
    let diffs: Vec<Option<f64>> = keys
        .iter()
        .map(|k| {
            let (x, y) = (a[*k].1, b[*k].1);
            only_before += u64::from(x && !y);
            only_after += u64::from(y && !x);
            Some(100.0 * (f64::from(u8::from(y)) - f64::from(u8::from(x))))
        })
        .collect();
    let (estimate, interval) =
        paired_bootstrap(keys.len(), stats::SEED, |w| vec![weighted_mean(w, &diffs)]);
    let p = stats::mcnemar_exact(only_before, only_after);
    Ok(Change {
        delta: estimate[0],
        interval: interval[0],
        p_value: Some(p),
        significant: Some(p < ALPHA),
        shared: keys.len(),
        unit: "questions",
        method: "McNemar exact test for the mark, paired bootstrap for the interval",
        note: None,
        decimals: decimals(column),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `n` questions of subject `s`, right where `right(i)`.
    fn answers(n: i128, right: impl Fn(i128) -> bool) -> Questions {
        (0..n)
            .map(|i| (("s".to_owned(), i), ("A".to_owned(), right(i))))
            .collect()
    }

    #[test]
    fn step3_change_counts_discordant_questions() {
        // 20 questions: the first checkpoint gets 0..10 right, the second 0..4 and 10..18:
        // b = 6 (only before), c = 8 (only after); accuracy 50% -> 60%, +10 points.
        let a = answers(20, |i| i < 10);
        let b = answers(20, |i| i < 4 || (10..18).contains(&i));
        let change = mcnemar_change(&a, &b, "avg_mmlu").expect("change");
        assert!((change.delta - 10.0).abs() < 1e-12, "{change:?}");
        // 2 * P[X <= 6], X ~ Bin(14, 1/2) = 2 * 6476 / 16384 (1 + 14 + 91 + 364 + 1001 + 2002 + 3003).
        let p = change.p_value.expect("p");
        assert!((p - 2.0 * 6476.0 / 16384.0).abs() < 1e-12, "{p}");
        assert_eq!((change.significant, change.shared), (Some(false), 20));
        let ci = change.interval.expect("interval");
        // Normal approximation: sd of the differences 83.1, se 18.6, so about 10 +- 36.4.
        assert!(
            ci.lo > -35.0 && ci.lo < -15.0 && ci.hi > 35.0 && ci.hi < 55.0,
            "{ci:?}"
        );
        assert!(change.text().starts_with("+10.00 ["), "{}", change.text());
        assert!(!change.text().ends_with('*'));
        // A different answer key makes a question unshared.
        let mut other = b.clone();
        other.insert(("s".to_owned(), 0), ("B".to_owned(), true));
        assert_eq!(
            mcnemar_change(&a, &other, "avg_mmlu").expect("c").shared,
            19
        );
        assert!(mcnemar_change(&a, &HashMap::new(), "avg_mmlu").is_err());
    }

    #[test]
    fn texts_show_interval_and_star() {
        let change = Change {
            delta: 2.104,
            interval: Some(Interval { lo: 0.4, hi: 3.9 }),
            p_value: None,
            significant: Some(true),
            shared: 12,
            unit: "samples",
            method: "paired bootstrap",
            note: None,
            decimals: 2,
        };
        assert_eq!(change.text(), "+2.10 [0.40, 3.90] *");
        assert_eq!(
            change.describe("checkpoint-1"),
            "+2.10 [0.40, 3.90] * vs checkpoint-1: significant (paired bootstrap, 95% interval, 12 shared samples)"
        );
        let bare = Change {
            interval: None,
            significant: None,
            note: Some("no mmlu/results_detail.jsonl".into()),
            delta: -1.5,
            ..change
        };
        assert_eq!(bare.text(), "-1.50 (no interval)");
        assert!(
            bare.describe("c")
                .ends_with("not tested (no mmlu/results_detail.jsonl)")
        );
    }
}
