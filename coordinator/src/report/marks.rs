//! How the changes of [`super::change`] are shown: summary.md's "Change against the previous
//! checkpoint" table, summary.csv's extra columns, and report.html's markers in the Result table
//! plus its own change table.

use std::fmt::Write;

use super::change::{Change, Changes};
use super::escape::escape;
use super::stats::{LEVEL, RESAMPLES, SEED};
use crate::output::float_repr;

/// The step-3 columns, which also get McNemar's p-value in the CSV.
fn has_p(column: &str) -> bool {
    matches!(column, "avg_mmlu" | "avg_cmmlu" | "avg_ceval")
}

/// How to read the change cells (summary.md and report.html).
pub fn method_text() -> String {
    format!(
        "Each cell: this row minus the row before, over the samples both have, with its {}% \
         interval; * when the change is larger than noise. Steps 1, 2 and 4: paired bootstrap \
         over shared samples (step 4: dialogues), significant when the interval excludes 0. \
         Step 3: accuracy points over shared questions, McNemar's exact test (p < {:.2}), \
         bootstrap interval. {RESAMPLES} resamples, seed {SEED:#x}.",
        LEVEL * 100.0,
        1.0 - LEVEL
    )
}

/// The columns with at least one change (a step no checkpoint ran is left out).
fn shown_columns(changes: &Changes) -> Vec<usize> {
    (0..changes.columns.len())
        .filter(|&i| changes.rows.iter().any(|(_, cells)| cells[i].is_some()))
        .collect()
}

/// The distinct notes (why a change has no interval), in row and column order.
fn notes(changes: &Changes) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, cells) in &changes.rows {
        for note in cells.iter().flatten().filter_map(|c| c.note.clone()) {
            if !out.contains(&note) {
                out.push(note);
            }
        }
    }
    out
}

/// summary.md's change section; empty with fewer than two rows or nothing to compare.
pub fn markdown(changes: &Changes, models: &[String]) -> String {
    let columns = shown_columns(changes);
    if changes.rows.len() < 2 || columns.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n## Change against the previous checkpoint\n\n{}\n\n| model | vs |",
        method_text()
    );
    for &i in &columns {
        let _ = write!(out, " {} |", changes.columns[i]);
    }
    out.push_str("\n| --- | --- |");
    out.push_str(&" --- |".repeat(columns.len()));
    out.push('\n');
    for ((previous, cells), model) in changes.rows.iter().zip(models).skip(1) {
        let _ = write!(
            out,
            "| {} | {} |",
            model.replace('|', "\\|"),
            previous.as_deref().unwrap_or("").replace('|', "\\|")
        );
        for &i in &columns {
            let _ = write!(
                out,
                " {} |",
                cells[i].as_ref().map_or(String::new(), Change::text)
            );
        }
        out.push('\n');
    }
    let notes = notes(changes);
    if !notes.is_empty() {
        out.push_str("\nNo interval where per-sample results are missing:\n\n");
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

/// The CSV's extra header fields: per compared column `<c>_delta`, `<c>_ci_low`, `<c>_ci_high`,
/// `<c>_significant` (`yes`, `no`, or empty when untested), and `<c>_p` for step 3.
pub fn csv_header(changes: &Changes) -> Vec<String> {
    let mut out = Vec::new();
    for c in &changes.columns {
        for suffix in ["delta", "ci_low", "ci_high", "significant"] {
            out.push(format!("{c}_{suffix}"));
        }
        if has_p(c) {
            out.push(format!("{c}_p"));
        }
    }
    out
}

/// Row `row`'s extra CSV fields, in [`csv_header`] order (full precision, empty when absent).
pub fn csv_cells(changes: &Changes, row: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (i, c) in changes.columns.iter().enumerate() {
        let change = changes
            .rows
            .get(row)
            .and_then(|(_, cells)| cells[i].as_ref());
        let num = |v: Option<f64>| v.map_or(String::new(), float_repr);
        out.push(num(change.map(|c| c.delta)));
        out.push(num(change.and_then(|c| c.interval).map(|ci| ci.lo)));
        out.push(num(change.and_then(|c| c.interval).map(|ci| ci.hi)));
        out.push(
            match change.and_then(|c| c.significant) {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            }
            .to_owned(),
        );
        if has_p(c) {
            out.push(num(change.and_then(|c| c.p_value)));
        }
    }
    out
}

/// The CSS class of a change: significant up or down, within noise, untested.
fn class(change: &Change) -> &'static str {
    match change.significant {
        Some(true) if change.delta > 0.0 => "sig-up",
        Some(true) => "sig-down",
        Some(false) => "noise",
        None => "untested",
    }
}

/// The marker after a Result-table value: ▲ / ▼ for a significant rise or fall, ≈ within noise,
/// nothing when untested.
pub fn marker(change: &Change) -> &'static str {
    match class(change) {
        "sig-up" => "<span class=\"mark sig-up\">\u{25b2}</span>",
        "sig-down" => "<span class=\"mark sig-down\">\u{25bc}</span>",
        "noise" => "<span class=\"mark noise\">\u{2248}</span>",
        _ => "",
    }
}

/// report.html's change table (after a short explanation), or nothing to compare.
pub fn html_table(html: &mut String, changes: &Changes, models: &[String]) {
    let columns = shown_columns(changes);
    if changes.rows.len() < 2 || columns.is_empty() {
        html.push_str("<p class=\"none\">One checkpoint: nothing to compare.</p>\n");
        return;
    }
    let _ = writeln!(html, "<p class=\"meta\">{}</p>", escape(&method_text()));
    html.push_str("<div class=\"scroll\"><table>\n<thead><tr><th>model</th><th>vs</th>");
    for &i in &columns {
        let _ = write!(html, "<th>{}</th>", escape(&changes.columns[i]));
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    for ((previous, cells), model) in changes.rows.iter().zip(models).skip(1) {
        let previous = previous.as_deref().unwrap_or("");
        let _ = write!(
            html,
            "<tr><th>{}</th><td>{}</td>",
            escape(model),
            escape(previous)
        );
        for &i in &columns {
            match &cells[i] {
                Some(c) => {
                    let _ = write!(
                        html,
                        "<td class=\"num {}\" title=\"{}\">{}</td>",
                        class(c),
                        escape(&c.describe(previous)),
                        escape(&c.text())
                    );
                }
                None => html.push_str("<td class=\"empty\"></td>"),
            }
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody>\n</table></div>\n");
    let notes = notes(changes);
    if !notes.is_empty() {
        html.push_str("<p class=\"meta notes\">No interval where per-sample results are missing:</p>\n<ul class=\"meta\">\n");
        for note in notes {
            let _ = writeln!(html, "<li>{}</li>", escape(&note));
        }
        html.push_str("</ul>\n");
    }
}
