//! The Result table of the original tool's README (model | rouge-1 | rouge-2 | rouge-l |
//! samples_per_second | steps_per_second | sem_sim_score | avg_mmlu | avg_cmmlu | avg_ceval), then
//! CharacterEval's 12-metric average and one column per metric (`ce_<metric>`), one row per
//! checkpoint.
//!
//! CSV cells repeat the input text exactly (full precision); Markdown and HTML cells round long
//! fractions to four decimals so the table reads at a glance. A step that did not run is an
//! empty cell.

use super::read::{Checkpoint, Number};

/// The Result table's metric columns: (column, key in `predict_results.json`).
const STEP1_COLUMNS: [(&str, &str); 6] = [
    ("rouge-1", "predict_rouge-1"),
    ("rouge-2", "predict_rouge-2"),
    ("rouge-l", "predict_rouge-l"),
    ("samples_per_second", "predict_samples_per_second"),
    ("steps_per_second", "predict_steps_per_second"),
    ("sem_sim_score", "avg_sem_sim_score"),
];

/// CharacterEval's 12 metrics in the order the original tool's `step4_eval_scores.jsonl` lists
/// them.
pub const CHARACTER_EVAL_METRICS: [&str; 12] = [
    "Accuracy",
    "Communication_skills",
    "Coherence",
    "Diversity",
    "Fluency",
    "Exposure",
    "Utterance",
    "Consistency",
    "Behavior",
    "Hallucination",
    "Empathy",
    "Humanlikeness",
];

/// The column of the CharacterEval average.
pub const CE_AVERAGE: &str = "avg_charactereval";
/// The prefix of the per-metric CharacterEval columns.
pub const CE_PREFIX: &str = "ce_";

/// One row per checkpoint; `columns` excludes the leading `model` column.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

/// A checkpoint's cells, one per column (`None`: the step did not run).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub model: String,
    pub cells: Vec<Option<Number>>,
}

impl Table {
    /// The table of `checkpoints`, in their order.
    pub fn new(checkpoints: &[Checkpoint]) -> Self {
        let metrics = ce_metric_names(checkpoints);
        let mut columns: Vec<String> = STEP1_COLUMNS.iter().map(|(c, _)| c.to_string()).collect();
        columns.extend(super::read::STEP3_TASKS.iter().map(|t| format!("avg_{t}")));
        columns.push(CE_AVERAGE.into());
        columns.extend(metrics.iter().map(|m| format!("{CE_PREFIX}{m}")));
        let rows = checkpoints
            .iter()
            .map(|c| Row {
                model: c.name.clone(),
                cells: cells(c, &metrics),
            })
            .collect();
        Table { columns, rows }
    }

    /// The cells of `column` down the rows.
    pub fn column(&self, column: &str) -> Option<Vec<Option<f64>>> {
        let i = self.columns.iter().position(|c| c == column)?;
        Some(
            self.rows
                .iter()
                .map(|r| r.cells[i].as_ref().map(|n| n.value))
                .collect(),
        )
    }

    /// `summary.md`: a GitHub-flavoured Markdown table.
    pub fn to_markdown(&self) -> String {
        let mut header = vec!["model".to_owned()];
        header.extend(self.columns.iter().cloned());
        let mut out = md_line(&header);
        out.push_str(&md_line(&vec!["---".to_owned(); header.len()]));
        for row in &self.rows {
            let mut line = vec![row.model.clone()];
            line.extend(row.cells.iter().map(display));
            out.push_str(&md_line(&line));
        }
        out
    }

    /// `summary.csv`: RFC 4180 quoting, input text kept exactly, empty cells for missing steps.
    pub fn to_csv(&self) -> String {
        self.to_csv_with(&[], |_| Vec::new())
    }

    /// [`Table::to_csv`] with `extra` columns after the table's, row `i`'s fields from
    /// `extra_cells(i)`.
    pub fn to_csv_with(
        &self,
        extra: &[String],
        extra_cells: impl Fn(usize) -> Vec<String>,
    ) -> String {
        let header = self.columns.iter().chain(extra).map(|c| c.as_str());
        let mut out = csv_line(std::iter::once("model").chain(header));
        for (i, row) in self.rows.iter().enumerate() {
            let more = extra_cells(i);
            let cells = row
                .cells
                .iter()
                .map(|c| c.as_ref().map_or("", |n| n.text.as_str()))
                .chain(more.iter().map(|c| c.as_str()));
            out.push_str(&csv_line(std::iter::once(row.model.as_str()).chain(cells)));
        }
        out
    }
}

/// The CharacterEval metrics that get a column: the 12 known ones, then any other name found,
/// in order of first appearance.
pub fn ce_metric_names(checkpoints: &[Checkpoint]) -> Vec<String> {
    let mut names: Vec<String> = CHARACTER_EVAL_METRICS
        .iter()
        .map(|m| m.to_string())
        .collect();
    for c in checkpoints {
        for (name, _) in c.character_eval.iter().flatten() {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    names
}

/// A checkpoint's cells in column order.
fn cells(c: &Checkpoint, ce_metrics: &[String]) -> Vec<Option<Number>> {
    let mut cells: Vec<Option<Number>> = STEP1_COLUMNS
        .iter()
        .map(|(_, key)| c.metric(key).cloned())
        .collect();
    for task in super::read::STEP3_TASKS {
        cells.push(
            c.task(task)
                .and_then(|cats| super::read::lookup(cats, "Average"))
                .cloned(),
        );
    }
    cells.push(c.character_eval_average());
    for m in ce_metrics {
        let scores = c.character_eval.as_deref();
        cells.push(scores.and_then(|s| super::read::lookup(s, m)).cloned());
    }
    cells
}

/// The cell as shown in Markdown and HTML: the input text, long fractions rounded to 4 places.
pub fn display(cell: &Option<Number>) -> String {
    match cell {
        None => String::new(),
        Some(n) => match n.text.split_once('.') {
            Some((_, frac)) if frac.len() > 4 && n.value.is_finite() => format!("{:.4}", n.value),
            _ => n.text.clone(),
        },
    }
}

/// One Markdown row; `|` in a cell is escaped so it cannot split the row.
fn md_line(cells: &[String]) -> String {
    let escaped: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    format!("| {} |\n", escaped.join(" | "))
}

/// One CSV record: fields with a comma, quote or line break are quoted, quotes doubled.
fn csv_line<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = fields
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.to_owned()
            }
        })
        .collect();
    format!("{}\n", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> Option<Number> {
        Some(Number {
            value: text.parse().expect("number"),
            text: text.into(),
        })
    }

    #[test]
    fn display_rounds_long_fractions_only() {
        assert_eq!(display(&num("79.36506666666666")), "79.3651");
        assert_eq!(display(&num("66.91")), "66.91");
        assert_eq!(display(&num("3")), "3");
        assert_eq!(display(&None), "");
    }

    #[test]
    fn csv_quotes_and_markdown_escapes() {
        assert_eq!(
            csv_line(["a,b", "say \"hi\"", "x"].into_iter()),
            "\"a,b\",\"say \"\"hi\"\"\",x\n"
        );
        assert_eq!(md_line(&["a|b".into(), "".into()]), "| a\\|b |  |\n");
    }
}
