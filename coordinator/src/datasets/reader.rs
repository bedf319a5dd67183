//! Reading `.json` / `.jsonl` data files into rows, keeping each row's line for messages.
//!
//! HF `datasets`' JSON loader (what LLaMA-Factory used) accepts either JSON lines or one JSON
//! array of objects, whatever the extension says; so does this: a file whose first
//! non-whitespace character is `[` is an array, anything else is JSON lines (blank lines
//! skipped).

use std::path::Path;

use serde_json::{Map, Value};

use super::DatasetError;

/// One object of a data file.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// 1-based line where the row starts.
    pub line: usize,
    /// The object's fields.
    pub fields: Map<String, Value>,
}

/// Parses `text` (the contents of `path`) into rows.
pub(crate) fn parse_rows(path: &Path, text: &str) -> Result<Vec<Row>, DatasetError> {
    // A UTF-8 byte order mark is not JSON; Python's json module refuses it too, but editors on
    // Windows add it, and it cannot change the meaning.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        parse_array(path, text)
    } else {
        parse_lines(path, text)
    }
}

fn json_error(path: &Path, line: usize, column: usize, e: &serde_json::Error) -> DatasetError {
    DatasetError::Json {
        path: path.to_owned(),
        line,
        column,
        message: e.to_string(),
    }
}

fn parse_lines(path: &Path, text: &str) -> Result<Vec<Row>, DatasetError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| json_error(path, i + 1, e.column(), &e))?;
        rows.push(object_row(path, i + 1, value)?);
    }
    Ok(rows)
}

fn parse_array(path: &Path, text: &str) -> Result<Vec<Row>, DatasetError> {
    let values: Vec<Value> =
        serde_json::from_str(text).map_err(|e| json_error(path, e.line(), e.column(), &e))?;
    let starts = element_lines(text);
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| object_row(path, starts.get(i).copied().unwrap_or(0), value))
        .collect()
}

fn object_row(path: &Path, line: usize, value: Value) -> Result<Row, DatasetError> {
    match value {
        Value::Object(fields) => Ok(Row { line, fields }),
        other => Err(DatasetError::Row {
            path: path.to_owned(),
            line,
            message: format!("expected a JSON object per row, found {}", kind(&other)),
        }),
    }
}

/// The 1-based line on which each element of the top-level array starts. Only called on text
/// serde_json already accepted as an array, so a simple scan of strings and brackets suffices.
fn element_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let (mut line, mut depth) = (1usize, 0usize);
    let (mut in_string, mut escaped, mut expecting) = (false, false, false);
    for b in text.bytes() {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if depth == 1 && expecting && !b.is_ascii_whitespace() && b != b']' {
            lines.push(line);
            expecting = false;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                expecting = depth == 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expecting = true,
            _ => {}
        }
    }
    lines
}

/// A short name of a JSON value's type for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_rows_know_their_lines() {
        let text = "[\n  {\"a\": \"x,]{\"},\n\n  {\"b\": [1, {\"c\": 2}]},{\"d\": 3}\n]";
        let rows = parse_rows(Path::new("f.json"), text).expect("valid");
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 4, 4]);
    }

    #[test]
    fn jsonl_errors_name_line_and_column() {
        let err = parse_rows(Path::new("f.jsonl"), "{\"a\": 1}\n\n{\"a\": }\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("f.jsonl: line 3, column 7:"), "{msg}");
    }

    #[test]
    fn array_errors_name_line_and_column() {
        let err = parse_rows(Path::new("f.json"), "[\n {\"a\": 1},\n {\"a\" 2}\n]").unwrap_err();
        assert!(
            err.to_string().starts_with("f.json: line 3, column 7:"),
            "{err}"
        );
        let not_object = parse_rows(Path::new("f.json"), "[{\"a\": 1},\n 5]").unwrap_err();
        assert!(not_object.to_string().contains("line 2"), "{not_object}");
    }
}
