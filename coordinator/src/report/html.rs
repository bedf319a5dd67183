//! `report.html`: one self-contained page (inline CSS, inline SVG, no script) with the Result
//! table (each change against the previous row marked: ▲ / ▼ significant, ≈ within noise, the
//! interval in the tooltip), the change table, trend lines over checkpoints, throughput, step-3
//! category bars, the step-2 score histograms and reward-model training curves. With a single
//! checkpoint the "trends" are drawn as bars, since a line needs two points.

use std::fmt::Write;
use std::path::Path;

use super::change::Changes;
use super::chart::{Chart, Series, bar_chart, line_chart};
use super::escape::escape;
use super::read::{Checkpoint, STEP3_TASKS, lookup};
use super::table::{CE_AVERAGE, CE_PREFIX, Table, display};
use super::training::TrainingRun;
use crate::step2::{Distribution, svg::histogram_svg};

/// The rendered page and how many charts (inline SVGs) it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub html: String,
    pub charts: usize,
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1480px;padding:0 16px;color:#222}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;margin-top:0}.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;white-space:nowrap}
th,td{border:1px solid #d0d0d0;padding:4px 8px}th{background:#f0f3f7;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.empty{background:#fafafa}
tbody tr:nth-child(even){background:#f8f9fb}
.grid{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;flex:1 1 600px;max-width:720px}
figcaption{font-size:13px;color:#555;margin-bottom:4px}svg{max-width:100%;height:auto;border:1px solid #eee}
.none{color:#888;font-style:italic}.notes{margin-top:10px}
.mark{margin-left:4px;font-size:11px}.sig-up{color:#1a7f37}.sig-down{color:#c62828}.noise{color:#999}
td.sig-up{background:#e6f4ea;color:#222}td.sig-down{background:#fdecea;color:#222}td.untested{color:#777}";

/// What the page shows.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    pub checkpoints: &'a [Checkpoint],
    pub table: &'a Table,
    pub changes: &'a Changes,
    pub training: &'a [TrainingRun],
}

/// Renders the page for the results read from `dir`.
pub fn render(dir: &Path, content: Content) -> Page {
    let Content {
        checkpoints,
        table,
        changes,
        training,
    } = content;
    let mut page = Builder::default();
    let title = format!("evalfleet report: {}", dir.display());
    let _ = write!(
        page.html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n<h1>evalfleet report</h1>\n<p class=\"meta\">{} · {} checkpoint(s)</p>\n",
        escape(&title),
        escape(&dir.display().to_string()),
        checkpoints.len()
    );
    if !checkpoints.is_empty() {
        page.section("Results");
        results_table(&mut page.html, table, changes);
        page.section("Change against the previous checkpoint");
        let models: Vec<String> = table.rows.iter().map(|r| r.model.clone()).collect();
        super::marks::html_table(&mut page.html, changes, &models);
        trends(&mut page, table, changes);
        page.section("Step 3: accuracy by category");
        step3_bars(&mut page, checkpoints);
        page.section("Step 2: semantic similarity distribution");
        histograms(&mut page, checkpoints);
    }
    for run in training {
        page.section(&format!("Reward-model training: {}", run.name));
        let _ = writeln!(
            page.html,
            "<p class=\"meta\">{} ({} optimizer steps, {} held-out evaluations)</p>",
            escape(&run.path.display().to_string()),
            run.train.len(),
            run.eval.len()
        );
        for (title, svg) in super::training::charts(run) {
            page.figure("", svg, &format!("{title}: nothing to draw."));
        }
        page.close_grid();
    }
    page.html.push_str("</body>\n</html>\n");
    Page {
        html: page.html,
        charts: page.charts,
    }
}

/// The page being written and its chart count.
#[derive(Default)]
struct Builder {
    html: String,
    charts: usize,
    /// Whether a `<div class="grid">` is open.
    in_grid: bool,
}

impl Builder {
    fn section(&mut self, title: &str) {
        self.close_grid();
        let _ = writeln!(self.html, "<h2>{}</h2>", escape(title));
    }

    /// A figure holding `svg` (captioned unless `caption` is empty: charts carry their own
    /// title), or the note `none` when there is nothing to draw.
    fn figure(&mut self, caption: &str, svg: Option<String>, none: &str) {
        if !self.in_grid {
            self.html.push_str("<div class=\"grid\">\n");
            self.in_grid = true;
        }
        match svg {
            Some(svg) => {
                self.charts += 1;
                self.html.push_str("<figure>\n");
                if !caption.is_empty() {
                    let _ = writeln!(self.html, "<figcaption>{}</figcaption>", escape(caption));
                }
                let _ = writeln!(self.html, "{svg}</figure>");
            }
            None => {
                let _ = writeln!(self.html, "<p class=\"none\">{}</p>", escape(none));
            }
        }
    }

    fn close_grid(&mut self) {
        if self.in_grid {
            self.html.push_str("</div>\n");
            self.in_grid = false;
        }
    }
}

/// The Result table; the full input text is each cell's tooltip, with the change against the
/// previous row (its marker after the value).
fn results_table(html: &mut String, table: &Table, changes: &Changes) {
    html.push_str("<div class=\"scroll\"><table>\n<thead><tr><th>model</th>");
    for c in &table.columns {
        let _ = write!(html, "<th>{}</th>", escape(c));
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    for (r, row) in table.rows.iter().enumerate() {
        let _ = write!(html, "<tr><th>{}</th>", escape(&row.model));
        let previous = changes.rows.get(r).and_then(|(p, _)| p.as_deref());
        for (column, cell) in table.columns.iter().zip(&row.cells) {
            match cell {
                Some(n) => {
                    let change = changes.get(r, column);
                    let mut title = n.text.clone();
                    if let (Some(c), Some(p)) = (change, previous) {
                        title.push_str(&format!("\nchange: {}", c.describe(p)));
                    }
                    let _ = write!(
                        html,
                        "<td class=\"num\" title=\"{}\">{}{}</td>",
                        escape(&title),
                        escape(&display(cell)),
                        change.map_or("", super::marks::marker)
                    );
                }
                None => html.push_str("<td class=\"empty\"></td>"),
            }
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody>\n</table></div>\n");
}

/// The trend charts: each a set of table columns over the checkpoints; a ring marks a point
/// whose change from the previous checkpoint is larger than noise.
fn trends(page: &mut Builder, table: &Table, changes: &Changes) {
    let models: Vec<String> = table.rows.iter().map(|r| r.model.clone()).collect();
    let ce: Vec<&str> = table
        .columns
        .iter()
        .filter(|c| c.as_str() == CE_AVERAGE || c.starts_with(CE_PREFIX))
        .map(String::as_str)
        .collect();
    let groups: [(&str, &str, &str, Vec<&str>); 5] = [
        (
            "Trends over checkpoints",
            "ROUGE (step 1)",
            "score",
            vec!["rouge-1", "rouge-2", "rouge-l"],
        ),
        (
            "",
            "Semantic similarity (step 2)",
            "avg cosine",
            vec!["sem_sim_score"],
        ),
        (
            "",
            "MMLU / CMMLU / C-Eval average (step 3)",
            "accuracy %",
            vec!["avg_mmlu", "avg_cmmlu", "avg_ceval"],
        ),
        ("", "CharacterEval (step 4)", "score (1-5)", ce),
        (
            "Throughput (step 1)",
            "Prediction throughput",
            "per second",
            vec!["samples_per_second", "steps_per_second"],
        ),
    ];
    for (section, title, y_label, columns) in groups {
        if !section.is_empty() {
            page.section(section);
            if section.starts_with("Trends") && models.len() > 1 {
                page.html.push_str(
                    "<p class=\"meta\">A ring marks a change larger than noise against the previous checkpoint.</p>\n",
                );
            }
        }
        let series: Vec<Series> = columns
            .iter()
            .filter_map(|c| {
                Some(Series {
                    name: c.strip_prefix(CE_PREFIX).unwrap_or(c).to_owned(),
                    values: table.column(c)?,
                    significant: (0..models.len())
                        .map(|r| {
                            changes
                                .get(r, c)
                                .is_some_and(|ch| ch.significant == Some(true))
                        })
                        .collect(),
                })
            })
            .collect();
        let chart = Chart {
            title,
            y_label,
            x_labels: &models,
            series: &series,
        };
        // A single checkpoint has no trend: bars show its values instead.
        let svg = if models.len() > 1 {
            line_chart(&chart)
        } else {
            bar_chart(&chart)
        };
        page.figure("", svg, &format!("{title}: no results."));
    }
}

/// One grouped-bar chart per step-3 task: categories on x, one bar per checkpoint.
fn step3_bars(page: &mut Builder, checkpoints: &[Checkpoint]) {
    let models: Vec<String> = checkpoints.iter().map(|c| c.name.clone()).collect();
    for task in STEP3_TASKS {
        let mut categories: Vec<String> = Vec::new();
        for c in checkpoints {
            for (name, _) in c.task(task).into_iter().flatten() {
                if !categories.contains(name) {
                    categories.push(name.clone());
                }
            }
        }
        let series: Vec<Series> = checkpoints
            .iter()
            .zip(&models)
            .map(|(c, name)| Series {
                significant: Vec::new(),
                name: name.clone(),
                values: categories
                    .iter()
                    .map(|cat| c.task(task).and_then(|t| lookup(t, cat)).map(|n| n.value))
                    .collect(),
            })
            .collect();
        let title = format!("{task}: accuracy % by category");
        let chart = Chart {
            title: &title,
            y_label: "accuracy %",
            x_labels: &categories,
            series: &series,
        };
        page.figure("", bar_chart(&chart), &format!("{task}: no results.log."));
    }
}

/// Step 2's histogram (the same SVG step 2 writes) for each checkpoint with scores.
fn histograms(page: &mut Builder, checkpoints: &[Checkpoint]) {
    let mut any = false;
    for c in checkpoints {
        if let Some(scores) = &c.scores {
            any = true;
            let svg = histogram_svg(&Distribution::new(scores));
            page.figure(&c.name, Some(svg), "");
        }
    }
    if !any {
        page.figure("", None, "No step-2 scores in generated_predictions.jsonl.");
    }
    page.close_grid();
}
