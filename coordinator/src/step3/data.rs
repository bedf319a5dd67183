//! The benchmark data as LF's task scripts hand it to the evaluator: `mapping.json` (subjects in
//! file order) and, per subject and split, the examples with their cells rendered by
//! [`super::pandas`] (docs/FIDELITY.md §3.2).
//!
//! Three CSV layouts, told apart by which dev file exists for the first subject:
//! - MMLU: `data/{dev,val,test}/<s>_{dev,val,test}.csv`, no header, `question,A,B,C,D,answer`.
//!   Read with `header=None` as LF's script does since 14ab14a0 ("fix #3837"); v0.7.1's own
//!   `mmlu.py` took each file's first row as a header, but the original tool's outputs (14042
//!   answers, 100 for abstract_algebra) show the original tool read every row.
//! - CMMLU: `{dev,test}/<s>.csv`, header `,Question,A,B,C,D,Answer` with an index column.
//! - C-Eval: `{dev,val,test}/<s>_{dev,val,test}.csv`, header `id,question,A,B,C,D[,answer[,...]]`.
//!
//! In every layout the `train` split is the dev set.

use std::path::Path;

use super::csvtok::{Record, records};
use super::pandas::render_column;
use super::source::TaskSource;
use super::{CATEGORIES, Step3Error};

/// One subject of `mapping.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// The key (file stem), e.g. `abstract_algebra`.
    pub key: String,
    /// The display name put into the system prompt, e.g. `abstract algebra`.
    pub name: String,
    /// One of [`CATEGORIES`] other than `Average`.
    pub category: String,
}

/// One question as the evaluator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The question text.
    pub question: String,
    /// The contents of choices A, B, C, D.
    pub choices: [String; 4],
    /// The answer letter (`A`–`D`).
    pub answer: String,
    /// The line of the CSV file where the row starts (1-based), for error messages.
    pub line: usize,
}

/// Defined with the step-3 settings, which name it.
pub use crate::config::Split;

/// The CSV layout of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// MMLU: no header.
    Mmlu,
    /// CMMLU: header with an index column, `Question` / `Answer`.
    Cmmlu,
    /// C-Eval: header with an `id` column.
    Ceval,
}

impl Layout {
    /// The member path of a subject's split, or None where the layout has no such split.
    pub fn member(self, subject: &str, split: Split) -> Option<String> {
        let (mmlu_dir, cmmlu_dir) = match split {
            Split::Train => ("dev", Some("dev")),
            Split::Validation => ("val", None),
            Split::Test => ("test", Some("test")),
        };
        match self {
            Self::Mmlu => Some(format!("data/{mmlu_dir}/{subject}_{mmlu_dir}.csv")),
            Self::Cmmlu => cmmlu_dir.map(|d| format!("{d}/{subject}.csv")),
            Self::Ceval => Some(format!("{mmlu_dir}/{subject}_{mmlu_dir}.csv")),
        }
    }

    /// The layout whose dev file for `subject` exists in `source`.
    pub fn detect(source: &TaskSource, subject: &str) -> Result<Self, Step3Error> {
        let candidates = [Self::Mmlu, Self::Ceval, Self::Cmmlu];
        candidates
            .into_iter()
            .find(|l| {
                l.member(subject, Split::Train)
                    .is_some_and(|m| source.contains(&m))
            })
            .ok_or_else(|| Step3Error::MissingFile {
                file: source.display(""),
                message: format!(
                    "no dev file for subject `{subject}`: expected one of {}",
                    candidates
                        .iter()
                        .filter_map(|l| l.member(subject, Split::Train))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

/// Reads `mapping.json`: subject key → `{"name", "category"}`, in file order.
pub fn read_mapping(path: &Path) -> Result<Vec<Subject>, Step3Error> {
    let bad = |message: String| Step3Error::Mapping {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| Step3Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("expected an object of subjects".into()))?;
    let mut subjects = Vec::with_capacity(object.len());
    for (key, entry) in object {
        let field = |name: &str| {
            entry
                .get(name)
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad(format!("subject `{key}`: expected a string `{name}`")))
        };
        let category = field("category")?;
        if !CATEGORIES[1..].contains(&category) {
            return Err(bad(format!(
                "subject `{key}`: category `{category}` is not one of {:?}",
                &CATEGORIES[1..]
            )));
        }
        subjects.push(Subject {
            key: key.clone(),
            name: field("name")?.to_owned(),
            category: category.to_owned(),
        });
    }
    if subjects.is_empty() {
        return Err(bad("no subjects".into()));
    }
    Ok(subjects)
}

/// The examples of one subject's split, cells rendered as pandas + datasets render them.
pub fn load_split(
    source: &mut TaskSource,
    layout: Layout,
    subject: &str,
    split: Split,
) -> Result<Vec<Example>, Step3Error> {
    let member = layout
        .member(subject, split)
        .ok_or_else(|| Step3Error::MissingFile {
            file: source.display(""),
            message: format!("the {layout:?} layout has no {split:?} split"),
        })?;
    if !source.contains(&member) {
        return Err(Step3Error::MissingFile {
            file: source.display(&member),
            message: format!(
                "subject `{subject}`: file not found (expected for every subject mapping.json \
                 lists)"
            ),
        });
    }
    let shown = source.display(&member);
    let text = source.read(&member)?;
    parse_csv(&text, layout, &shown)
}

/// One CSV file's six used columns (question, A, B, C, D, answer): the cells as written and as
/// rendered, None for a column the file lacks (C-Eval test answers).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The line each data row starts on.
    pub lines: Vec<usize>,
    /// Per column, the cells as written.
    pub raw: [Option<Vec<String>>; 6],
    /// Per column, the cells as the evaluator sees them ([`render_column`]).
    pub rendered: [Option<Vec<String>>; 6],
}

/// Reads one CSV file of `layout` into a [`Table`]; `file` names it in errors.
pub fn read_table(text: &str, layout: Layout, file: &str) -> Result<Table, Step3Error> {
    let mut rows = records(text);
    let err = |line: usize, message: String| Step3Error::Csv {
        file: file.to_owned(),
        line,
        message,
    };
    // Column positions of question, A, B, C, D, answer (None: answer missing).
    let (columns, width): ([Option<usize>; 6], usize) = match layout {
        Layout::Mmlu => ([0, 1, 2, 3, 4, 5].map(Some), 6),
        Layout::Cmmlu | Layout::Ceval => {
            if rows.is_empty() {
                return Err(err(1, "empty file: expected a header row".into()));
            }
            let header = rows.remove(0);
            let names = match layout {
                Layout::Cmmlu => ["Question", "A", "B", "C", "D", "Answer"],
                _ => ["question", "A", "B", "C", "D", "answer"],
            };
            let find = |n: &str| header.fields.iter().position(|h| h == n);
            let columns = names.map(find);
            if let Some(i) = columns[..5].iter().position(Option::is_none) {
                return Err(err(
                    header.line,
                    format!("header lacks the column `{}`", names[i]),
                ));
            }
            (columns, header.fields.len())
        }
    };
    for row in &rows {
        if row.fields.len() != width {
            return Err(err(
                row.line,
                format!("expected {width} fields, found {}", row.fields.len()),
            ));
        }
    }
    let raw = columns.map(|c| c.map(|c| column(&rows, c)));
    let rendered = raw.clone().map(|col| {
        col.map(|cells| render_column(&cells.iter().map(String::as_str).collect::<Vec<_>>()))
    });
    Ok(Table {
        lines: rows.iter().map(|r| r.line).collect(),
        raw,
        rendered,
    })
}

/// Parses one CSV file of `layout` into examples; `file` names it in errors. Every row needs an
/// answer among A–D.
pub fn parse_csv(text: &str, layout: Layout, file: &str) -> Result<Vec<Example>, Step3Error> {
    let table = read_table(text, layout, file)?;
    let err = |line: usize, message: String| Step3Error::Csv {
        file: file.to_owned(),
        line,
        message,
    };
    (0..table.lines.len())
        .map(|i| example(&table.rendered, i, table.lines[i], &err))
        .collect()
}

fn column(rows: &[Record], index: usize) -> Vec<String> {
    rows.iter().map(|r| r.fields[index].clone()).collect()
}

/// Row `i` from the rendered columns; the answer must be one of A–D.
fn example(
    rendered: &[Option<Vec<String>>],
    i: usize,
    line: usize,
    err: &dyn Fn(usize, String) -> Step3Error,
) -> Result<Example, Step3Error> {
    let cell = |c: usize| rendered[c].as_ref().map(|col| col[i].clone());
    let answer = cell(5).ok_or_else(|| err(line, "the split has no answers".into()))?;
    if !matches!(answer.as_str(), "A" | "B" | "C" | "D") {
        return Err(err(
            line,
            format!("answer `{answer}` is not one of A, B, C, D"),
        ));
    }
    let text = |c: usize| cell(c).unwrap_or_default();
    Ok(Example {
        question: text(0),
        choices: [text(1), text(2), text(3), text(4)],
        answer,
        line,
    })
}
