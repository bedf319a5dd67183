//! Rows to conversations, as LLaMA-Factory v0.7.1's `data/aligner.py` (`convert_alpaca`,
//! `convert_sharegpt`) does it.
//!
//! Value rules follow what `datasets` + Python make of a row: a missing or `null` column is
//! `None`; `if value:` treats `""` as absent; text values must be strings (LF would crash on
//! anything else, here the error names the file, line and column name).

use std::path::Path;

use serde_json::Value;

use super::info::{DatasetAttr, Tags};
use super::reader::{Row, kind};
use super::{ChatMessage, DatasetError, Role};

/// One converted row (LF's aligned `prompt`, `response`, `system`, `tools`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Aligned {
    pub prompt: Vec<ChatMessage>,
    pub response: Vec<ChatMessage>,
    pub system: String,
    pub tools: String,
}

/// Reads a row's columns with errors that point at the row.
struct Cells<'a> {
    path: &'a Path,
    row: &'a Row,
}

impl<'a> Cells<'a> {
    fn error(&self, message: String) -> DatasetError {
        DatasetError::Row {
            path: self.path.to_owned(),
            line: self.row.line,
            message,
        }
    }

    /// The value of a mapped column, `None` when unmapped, missing or null.
    fn value(&self, column: &Option<String>) -> Option<&'a Value> {
        let column = column.as_ref()?;
        self.row.fields.get(column).filter(|v| !v.is_null())
    }

    /// A mapped text column, `None` when absent.
    fn text(&self, column: &Option<String>) -> Result<Option<&'a str>, DatasetError> {
        match self.value(column) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.error(format!(
                "column {:?}: expected a string, found {}",
                column.as_deref().unwrap_or_default(),
                kind(other)
            ))),
        }
    }

    fn string_in(&self, what: &str, value: &Value) -> Result<String, DatasetError> {
        match value {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.error(format!("{what}: expected a string, found {}", kind(other)))),
        }
    }
}

fn message(role: Role, content: impl Into<String>) -> ChatMessage {
    ChatMessage {
        role,
        content: content.into(),
    }
}

/// `convert_alpaca` for one row.
pub(crate) fn alpaca(path: &Path, attr: &DatasetAttr, row: &Row) -> Result<Aligned, DatasetError> {
    let cells = Cells { path, row };
    let cols = &attr.columns;
    let mut prompt = Vec::new();
    // Only a list is read as history; LF silently ignores anything else there.
    if let Some(Value::Array(pairs)) = cells.value(&cols.history) {
        for (i, pair) in pairs.iter().enumerate() {
            let what = format!("history[{i}]");
            let (old_prompt, old_response) = match pair.as_array().map(Vec::as_slice) {
                Some([p, r]) => (cells.string_in(&what, p)?, cells.string_in(&what, r)?),
                _ => return Err(cells.error(format!("{what}: expected a [prompt, response] pair"))),
            };
            prompt.push(message(Role::User, old_prompt));
            prompt.push(message(Role::Assistant, old_response));
        }
    }
    let content: Vec<&str> = [cells.text(&cols.prompt)?, cells.text(&cols.query)?]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    prompt.push(message(Role::User, content.join("\n")));

    let response = match cells.value(&cols.response) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| Ok(message(Role::Assistant, cells.string_in("response", item)?)))
            .collect::<Result<Vec<_>, DatasetError>>()?,
        Some(Value::String(s)) => vec![message(Role::Assistant, s.clone())],
        _ => Vec::new(),
    };
    Ok(Aligned {
        prompt,
        response,
        system: cells.text(&cols.system)?.unwrap_or_default().to_owned(),
        tools: String::new(),
    })
}

/// `convert_sharegpt` for one row; `None` when LF drops the row (no complete user/assistant
/// pair once a leading system turn is taken off).
pub(crate) fn sharegpt(
    path: &Path,
    attr: &DatasetAttr,
    row: &Row,
) -> Result<Option<Aligned>, DatasetError> {
    let cells = Cells { path, row };
    let tags = &attr.tags;
    let column = attr.columns.messages.as_deref().unwrap_or_default();
    let turns = match cells.value(&attr.columns.messages) {
        Some(Value::Array(turns)) if !turns.is_empty() => turns,
        // LF indexes messages[0] and crashes on an empty list.
        Some(Value::Array(_)) => {
            return Err(cells.error(format!("column {column:?}: empty conversation")));
        }
        Some(other) => {
            return Err(cells.error(format!(
                "column {column:?}: expected a list of turns, found {}",
                kind(other)
            )));
        }
        None => return Err(cells.error(format!("column {column:?} is missing"))),
    };
    let turns: Vec<Turn> = turns
        .iter()
        .enumerate()
        .map(|(i, turn)| read_turn(&cells, tags, column, i, turn))
        .collect::<Result<_, _>>()?;

    let (system, turns) = match turns.split_first() {
        Some((first, rest)) if tags.system.is_some() && first.role == tags.system => {
            (first.content.clone(), rest)
        }
        _ => {
            let system = cells.text(&attr.columns.system)?.unwrap_or_default();
            (system.to_owned(), &turns[..])
        }
    };
    // LF keeps whole (user, assistant) pairs only; a trailing unanswered turn is dropped.
    let turns = &turns[..turns.len() / 2 * 2];
    if turns.is_empty() {
        return Ok(None);
    }
    let mut aligned = Vec::with_capacity(turns.len());
    for (i, turn) in turns.iter().enumerate() {
        let accepted = if i % 2 == 0 {
            [&tags.user, &tags.observation]
        } else {
            [&tags.assistant, &tags.function]
        };
        let role = turn
            .role
            .as_deref()
            .filter(|r| accepted.iter().any(|t| t.as_deref() == Some(*r)));
        let Some(role) = role else {
            let expected: Vec<&str> = accepted.iter().filter_map(|t| t.as_deref()).collect();
            return Err(cells.error(format!(
                "turn {i} of column {column:?}: role tag {:?} is not accepted there; expected one of {expected:?}",
                turn.role.as_deref().unwrap_or("(none)"),
            )));
        };
        aligned.push(message(role_of(tags, role), turn.content.clone()));
    }
    let response = aligned.split_off(aligned.len() - 1);
    Ok(Some(Aligned {
        prompt: aligned,
        response,
        system,
        tools: cells
            .text(&attr.columns.tools)?
            .unwrap_or_default()
            .to_owned(),
    }))
}

/// A sharegpt turn: its role tag (`None` when it has none) and its content.
struct Turn {
    role: Option<String>,
    content: String,
}

fn read_turn(
    cells: &Cells<'_>,
    tags: &Tags,
    column: &str,
    index: usize,
    turn: &Value,
) -> Result<Turn, DatasetError> {
    let what = format!("turn {index} of column {column:?}");
    let Value::Object(fields) = turn else {
        return Err(cells.error(format!("{what}: expected an object, found {}", kind(turn))));
    };
    let get = |tag: &Option<String>| {
        tag.as_ref()
            .and_then(|t| fields.get(t))
            .filter(|v| !v.is_null())
    };
    let role = match get(&tags.role) {
        None => None,
        Some(v) => Some(cells.string_in(&format!("{what}, role tag"), v)?),
    };
    let content = match get(&tags.content) {
        Some(v) => cells.string_in(&what, v)?,
        None => {
            let key = tags.content.as_deref().unwrap_or_default();
            return Err(cells.error(format!("{what}: missing content key {key:?}")));
        }
    };
    Ok(Turn { role, content })
}

/// LF's `tag_mapping` dict: built user, assistant, observation, function, system, so when two
/// tags are equal the later entry wins.
fn role_of(tags: &Tags, tag: &str) -> Role {
    let mapping = [
        (&tags.system, Role::System),
        (&tags.function, Role::Function),
        (&tags.observation, Role::Observation),
        (&tags.assistant, Role::Assistant),
        (&tags.user, Role::User),
    ];
    mapping
        .into_iter()
        .find(|(t, _)| t.as_deref() == Some(tag))
        .map_or(Role::User, |(_, role)| role)
}
