//! Sub-step 4 (docs/FIDELITY.md §4.6): the scores of `step3_evaluation.jsonl` grouped by
//! `metric_en` in order of first appearance, each mean `sum(vals) / len(vals)` (Python's
//! left-to-right float sum), written as the original tool's right-aligned log
//! ([`format_log_data`]); plus evalfleet's summary ([`Summary`], `step4_eval_scores.json`): per
//! metric the mean, count and population standard deviation, per character the metric means, and
//! the average of the metric means.

use super::{Record, get, get_str};
use crate::metrics::python_round;
use crate::output::PyJson;

/// The scores of one group, in row order.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub scores: Vec<f64>,
}

/// Python's `sum(xs)` of floats: from 0, left to right, one rounding per addition.
fn py_sum(xs: impl IntoIterator<Item = f64>) -> f64 {
    let mut total = 0.0;
    for x in xs {
        total += x;
    }
    total
}

impl Group {
    /// `sum(vals) / len(vals)`, summed left to right as Python's `sum`.
    pub fn mean(&self) -> f64 {
        py_sum(self.scores.iter().copied()) / self.scores.len() as f64
    }

    /// The population standard deviation (numpy's `std` with `ddof=0`), two-pass.
    pub fn std(&self) -> f64 {
        let mean = self.mean();
        let var =
            py_sum(self.scores.iter().map(|x| (x - mean) * (x - mean))) / self.scores.len() as f64;
        var.sqrt()
    }
}

/// Groups `(key, score)` pairs by key in order of first appearance.
fn group(pairs: impl IntoIterator<Item = (String, f64)>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (name, score) in pairs {
        match groups.iter_mut().find(|g| g.name == name) {
            Some(g) => g.scores.push(score),
            None => groups.push(Group {
                name,
                scores: vec![score],
            }),
        }
    }
    groups
}

/// One row's `(role, metric_en, record[metric_en])`; errors name the row (0-based).
fn row_score(row: &Record, row_no: usize) -> Result<(String, String, f64), String> {
    let metric =
        get_str(row, "metric_en").ok_or_else(|| format!("row {row_no}: no string `metric_en`"))?;
    let score = match get(row, metric) {
        Some(PyJson::Float(x)) => *x,
        Some(PyJson::Int(i)) => *i as f64,
        _ => return Err(format!("row {row_no}: no number under `{metric}`")),
    };
    let role = get_str(row, "role").unwrap_or_default();
    Ok((role.to_owned(), metric.to_owned(), score))
}

/// The per-metric groups of the scored rows, in order of first appearance.
pub fn metric_groups(rows: &[Record]) -> Result<Vec<Group>, String> {
    let scores = rows
        .iter()
        .enumerate()
        .map(|(i, row)| row_score(row, i).map(|(_, metric, score)| (metric, score)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(group(scores))
}

/// The original tool's `format_log_data`: `f"{key:>{K}}: {value:>{V}.2f}"` per metric with `K` the
/// longest name and `V` the longest formatted value (in characters), joined by `"\n"`, no
/// trailing newline.
pub fn format_log_data(means: &[(String, f64)]) -> String {
    let width = means
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let values: Vec<String> = means.iter().map(|(_, v)| fixed2(*v)).collect();
    let value_width = values.iter().map(String::len).max().unwrap_or(0);
    means
        .iter()
        .zip(&values)
        .map(|((k, _), v)| {
            let pad = width - k.chars().count();
            format!("{}{k}: {v:>value_width$}", " ".repeat(pad))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Python's `format(x, ".2f")`: correctly rounded, ties to even (`python_round` then printed).
fn fixed2(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}", python_round(x, 2))
    } else {
        crate::output::float_repr(x)
    }
}

/// Per-metric statistics of [`Summary`].
#[derive(Debug, Clone, PartialEq)]
pub struct MetricStats {
    pub metric: String,
    pub mean: f64,
    pub count: usize,
    pub std: f64,
}

/// evalfleet's `step4_eval_scores.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// In order of first appearance.
    pub metrics: Vec<MetricStats>,
    /// The mean of the metric means (the 12 CharacterEval metrics on the full set).
    pub average: f64,
    /// Per role (first appearance): its metric means (first appearance within the role).
    pub characters: Vec<(String, Vec<(String, f64)>)>,
}

impl Summary {
    /// Computes the summary of the scored rows.
    pub fn of(rows: &[Record]) -> Result<Self, String> {
        let scored = rows
            .iter()
            .enumerate()
            .map(|(i, row)| row_score(row, i))
            .collect::<Result<Vec<_>, _>>()?;
        let metrics: Vec<MetricStats> = group(scored.iter().map(|(_, m, s)| (m.clone(), *s)))
            .into_iter()
            .map(|g| MetricStats {
                mean: g.mean(),
                count: g.scores.len(),
                std: g.std(),
                metric: g.name,
            })
            .collect();
        let average = py_sum(metrics.iter().map(|m| m.mean)) / metrics.len().max(1) as f64;
        let roles = group(scored.iter().map(|(r, _, _)| (r.clone(), 0.0)));
        let characters = roles
            .into_iter()
            .map(|role| {
                let of_role = scored.iter().filter(|(r, _, _)| *r == role.name);
                let means = group(of_role.map(|(_, m, s)| (m.clone(), *s)))
                    .into_iter()
                    .map(|g| (g.name.clone(), g.mean()))
                    .collect();
                (role.name, means)
            })
            .collect();
        Ok(Summary {
            metrics,
            average,
            characters,
        })
    }

    /// The JSON object written to `step4_eval_scores.json`.
    pub fn to_json(&self) -> PyJson {
        let metrics = self
            .metrics
            .iter()
            .map(|m| {
                let stats = vec![
                    ("mean".to_owned(), PyJson::Float(m.mean)),
                    ("count".to_owned(), PyJson::Int(m.count as i128)),
                    ("std".to_owned(), PyJson::Float(m.std)),
                ];
                (m.metric.clone(), PyJson::Object(stats))
            })
            .collect();
        let characters = self
            .characters
            .iter()
            .map(|(role, means)| {
                let means = means
                    .iter()
                    .map(|(m, v)| (m.clone(), PyJson::Float(*v)))
                    .collect();
                (role.clone(), PyJson::Object(means))
            })
            .collect();
        PyJson::Object(vec![
            ("metrics".into(), PyJson::Object(metrics)),
            ("average".into(), PyJson::Float(self.average)),
            (
                "metric_count".into(),
                PyJson::Int(self.metrics.len() as i128),
            ),
            ("characters".into(), PyJson::Object(characters)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(role: &str, metric: &str, score: f64) -> Record {
        vec![
            ("role".into(), PyJson::Str(role.into())),
            ("metric_en".into(), PyJson::Str(metric.into())),
            (metric.into(), PyJson::Float(score)),
        ]
    }

    #[test]
    fn log_lines_are_right_aligned() {
        let means = [
            ("Accuracy".to_owned(), 2.695),
            ("Communication_skills".to_owned(), 10.0),
        ];
        assert_eq!(
            format_log_data(&means),
            "            Accuracy:  2.69\nCommunication_skills: 10.00"
        );
        assert_eq!(format_log_data(&[]), "");
    }

    #[test]
    fn summary_groups_metrics_and_roles() {
        let rows = [
            row("甲", "B", 2.0),
            row("乙", "A", 3.0),
            row("甲", "A", 5.0),
            row("甲", "B", 4.0),
        ];
        let s = Summary::of(&rows).unwrap();
        let names: Vec<(&str, f64, usize, f64)> = s
            .metrics
            .iter()
            .map(|m| (m.metric.as_str(), m.mean, m.count, m.std))
            .collect();
        assert_eq!(names, [("B", 3.0, 2, 1.0), ("A", 4.0, 2, 1.0)]);
        assert_eq!(s.average, 3.5);
        assert_eq!(s.characters[0].0, "甲");
        assert_eq!(
            s.characters[0].1,
            [("B".to_owned(), 3.0), ("A".to_owned(), 5.0)]
        );
        assert_eq!(s.characters[1].1, [("A".to_owned(), 3.0)]);
        let err = Summary::of(&[vec![("metric_en".into(), PyJson::Str("X".into()))]]);
        assert_eq!(err.unwrap_err(), "row 0: no number under `X`");
    }
}
