//! A JSON value and the two ways the original tool serialised it with Python's `json` module:
//!
//! - [`dumps_pretty_sorted`]: `json.dump(obj, f, indent=4, sort_keys=True)` (HF `save_metrics`):
//!   ASCII only (`\uXXXX`, surrogate pairs above the BMP), `","` between items, `": "` after keys.
//!   [`dumps_pretty`] is the same printer with `sort_keys` and `ensure_ascii` chosen (step 2's
//!   `json.dumps(..., ensure_ascii=False, indent=4)` keeps insertion order).
//! - [`dumps_compact`]: `json.dumps(obj, ensure_ascii=...)` with the default separators `", "` and
//!   `": "`, keys in insertion order (LF `save_predictions` uses `ensure_ascii=False`).
//!
//! Floats are written as `repr(float)` ([`json_float`]); integers stay integers, as in Python.

use evalfleet_pyfmt::{json_float, push_json_string};

/// A JSON value that keeps Python's int/float distinction and non-finite floats, which
/// `serde_json::Value` cannot hold.
#[derive(Debug, Clone, PartialEq)]
pub enum PyJson {
    /// `None` / `null`.
    Null,
    /// `True` / `false`.
    Bool(bool),
    /// A Python `int` (within i64/u64 range here).
    Int(i128),
    /// A Python `float`, possibly NaN or infinite.
    Float(f64),
    /// A Python `str`.
    Str(String),
    /// A Python `list`.
    Array(Vec<PyJson>),
    /// A Python `dict`, in insertion order.
    Object(Vec<(String, PyJson)>),
}

impl From<&serde_json::Value> for PyJson {
    fn from(value: &serde_json::Value) -> Self {
        use serde_json::Value;
        match value {
            Value::Null => PyJson::Null,
            Value::Bool(b) => PyJson::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    PyJson::Int(i.into())
                } else if let Some(u) = n.as_u64() {
                    PyJson::Int(u.into())
                } else {
                    PyJson::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => PyJson::Str(s.clone()),
            Value::Array(items) => PyJson::Array(items.iter().map(PyJson::from).collect()),
            Value::Object(map) => PyJson::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), PyJson::from(v)))
                    .collect(),
            ),
        }
    }
}

/// Marks the non-finite constants while parsing: a noncharacter that no metric name or value
/// contains.
const NON_FINITE_MARK: char = '\u{10FFFF}';

/// Why a text is not JSON: where (1-based line and column) and serde_json's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: invalid JSON: {message}")]
pub struct JsonSyntax {
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column of the error.
    pub column: usize,
    /// The reason, without the position.
    pub message: String,
}

impl From<&serde_json::Error> for JsonSyntax {
    fn from(e: &serde_json::Error) -> Self {
        // serde_json appends " at line L column C", which the fields already say.
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or_default();
        JsonSyntax {
            line: e.line(),
            column: e.column(),
            message: message.to_owned(),
        }
    }
}

/// `json.loads(text)`: standard JSON plus Python's `NaN`, `Infinity` and `-Infinity`, which
/// `json.dump` writes for non-finite floats and serde_json alone refuses.
pub fn loads(text: &str) -> Result<PyJson, JsonSyntax> {
    let value: serde_json::Value =
        serde_json::from_str(&mark_non_finite(text)).map_err(|e| JsonSyntax::from(&e))?;
    Ok(unmark(PyJson::from(&value)))
}

/// Replaces the bare tokens `NaN`, `Infinity`, `-Infinity` (outside strings) by marked strings.
fn mark_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            let token = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            if let Some(token) = token {
                out.push_str(&format!("\"{NON_FINITE_MARK}{token}\""));
                rest = &rest[token.len()..];
                continue;
            }
        }
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => in_string = !in_string,
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Turns the marked strings of [`mark_non_finite`] back into floats.
fn unmark(value: PyJson) -> PyJson {
    match value {
        PyJson::Str(s) if s.starts_with(NON_FINITE_MARK) => {
            match &s[NON_FINITE_MARK.len_utf8()..] {
                "NaN" => PyJson::Float(f64::NAN),
                "Infinity" => PyJson::Float(f64::INFINITY),
                "-Infinity" => PyJson::Float(f64::NEG_INFINITY),
                _ => PyJson::Str(s),
            }
        }
        PyJson::Array(items) => PyJson::Array(items.into_iter().map(unmark).collect()),
        PyJson::Object(entries) => {
            PyJson::Object(entries.into_iter().map(|(k, v)| (k, unmark(v))).collect())
        }
        other => other,
    }
}

/// `json.dumps(value, ensure_ascii=ensure_ascii)`: one line, separators `", "` and `": "`, keys
/// in insertion order.
pub fn dumps_compact(value: &PyJson, ensure_ascii: bool) -> String {
    let mut out = String::new();
    write_compact(&mut out, value, ensure_ascii);
    out
}

/// `json.dump(value, f, indent=4, sort_keys=True)` with the default `ensure_ascii=True`; no
/// trailing newline.
pub fn dumps_pretty_sorted(value: &PyJson) -> String {
    dumps_pretty(value, true, true)
}

/// `json.dumps(value, indent=4, sort_keys=..., ensure_ascii=...)`: separators `","` and `": "`;
/// without `sort_keys` keys stay in insertion order. No trailing newline.
pub fn dumps_pretty(value: &PyJson, sort_keys: bool, ensure_ascii: bool) -> String {
    let mut out = String::new();
    let options = Pretty {
        sort_keys,
        ensure_ascii,
    };
    write_pretty(&mut out, value, 0, options);
    out
}

/// The `json.dumps` options of the indented printer.
#[derive(Clone, Copy)]
struct Pretty {
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_scalar(out: &mut String, value: &PyJson, ensure_ascii: bool) {
    match value {
        PyJson::Null => out.push_str("null"),
        PyJson::Bool(true) => out.push_str("true"),
        PyJson::Bool(false) => out.push_str("false"),
        PyJson::Int(i) => out.push_str(&i.to_string()),
        PyJson::Float(x) => out.push_str(&json_float(*x)),
        PyJson::Str(s) => push_json_string(out, s, ensure_ascii),
        // Containers are handled by the callers; reaching here is a programming error, so write
        // them compactly rather than panic.
        PyJson::Array(_) | PyJson::Object(_) => write_compact(out, value, ensure_ascii),
    }
}

fn write_compact(out: &mut String, value: &PyJson, ensure_ascii: bool) {
    write_one_line(
        out,
        value,
        &|out, scalar| write_scalar(out, scalar, ensure_ascii),
        &|out, key| push_json_string(out, key, ensure_ascii),
    );
}

/// Writes `value` on one line with Python's container layout, `[a, b]` and `{k: v}` (the
/// separators of both `json.dumps` and `repr()`): `scalar` writes every value that is not a
/// container and `key` every object key, which is where the two differ.
pub fn write_one_line(
    out: &mut String,
    value: &PyJson,
    scalar: &dyn Fn(&mut String, &PyJson),
    key: &dyn Fn(&mut String, &str),
) {
    match value {
        PyJson::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_one_line(out, item, scalar, key);
            }
            out.push(']');
        }
        PyJson::Object(entries) => {
            out.push('{');
            for (i, (k, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                key(out, k);
                out.push_str(": ");
                write_one_line(out, item, scalar, key);
            }
            out.push('}');
        }
        other => scalar(out, other),
    }
}

fn write_pretty(out: &mut String, value: &PyJson, level: usize, options: Pretty) {
    match value {
        // Python writes empty containers without any newline.
        PyJson::Array(items) if items.is_empty() => out.push_str("[]"),
        PyJson::Object(entries) if entries.is_empty() => out.push_str("{}"),
        PyJson::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                push_item_break(out, i, level + 1);
                write_pretty(out, item, level + 1, options);
            }
            push_newline_indent(out, level);
            out.push(']');
        }
        PyJson::Object(entries) => {
            let mut ordered: Vec<&(String, PyJson)> = entries.iter().collect();
            if options.sort_keys {
                // Python sorts str keys by code point; UTF-8 byte order is the same order. A
                // stable sort keeps Python's behaviour for duplicate keys (the later one is
                // written last).
                ordered.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (key, item)) in ordered.into_iter().enumerate() {
                push_item_break(out, i, level + 1);
                push_json_string(out, key, options.ensure_ascii);
                out.push_str(": ");
                write_pretty(out, item, level + 1, options);
            }
            push_newline_indent(out, level);
            out.push('}');
        }
        scalar => write_scalar(out, scalar, options.ensure_ascii),
    }
}

fn push_item_break(out: &mut String, index: usize, level: usize) {
    if index > 0 {
        out.push(',');
    }
    push_newline_indent(out, level);
}

fn push_newline_indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level * 4 {
        out.push(' ');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(entries: &[(&str, PyJson)]) -> PyJson {
        PyJson::Object(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn pretty_sorts_and_indents_nested_values() {
        let value = obj(&[
            ("b", PyJson::Array(vec![PyJson::Int(1), PyJson::Null])),
            (
                "a",
                obj(&[("z", PyJson::Float(1.0)), ("e", PyJson::Array(vec![]))]),
            ),
            ("c", obj(&[])),
        ]);
        let want = "{\n    \"a\": {\n        \"e\": [],\n        \"z\": 1.0\n    },\n    \"b\": [\n        1,\n        null\n    ],\n    \"c\": {}\n}";
        assert_eq!(dumps_pretty_sorted(&value), want);
    }

    #[test]
    fn pretty_unsorted_keeps_key_order_and_can_write_unicode() {
        let v = obj(&[
            ("z", PyJson::Int(1)),
            ("a", PyJson::Array(vec![PyJson::Float(0.5), PyJson::Null])),
            ("é", obj(&[])),
            ("n", PyJson::Float(f64::NAN)),
        ]);
        assert_eq!(
            dumps_pretty(&v, false, false),
            "{\n    \"z\": 1,\n    \"a\": [\n        0.5,\n        null\n    ],\n    \"é\": {},\n    \"n\": NaN\n}"
        );
        assert!(dumps_pretty(&v, false, true).contains("\"\\u00e9\": {}"));
    }

    #[test]
    fn compact_keeps_insertion_order_and_python_separators() {
        let value = obj(&[
            ("label", PyJson::Str("é\"x".into())),
            (
                "predict",
                PyJson::Array(vec![PyJson::Bool(true), PyJson::Float(f64::NAN)]),
            ),
        ]);
        assert_eq!(
            dumps_compact(&value, false),
            "{\"label\": \"é\\\"x\", \"predict\": [true, NaN]}"
        );
        assert_eq!(
            dumps_compact(&value, true),
            "{\"label\": \"\\u00e9\\\"x\", \"predict\": [true, NaN]}"
        );
    }

    #[test]
    fn loads_reads_python_non_finite_constants() {
        let value =
            loads("{\"a\": NaN, \"b\": [Infinity, -Infinity], \"NaN\": \"x NaN \\\" NaN\"}")
                .expect("parses");
        let PyJson::Object(entries) = value else {
            panic!("object")
        };
        assert!(matches!(entries[0].1, PyJson::Float(x) if x.is_nan()));
        assert_eq!(
            entries[1].1,
            PyJson::Array(vec![
                PyJson::Float(f64::INFINITY),
                PyJson::Float(f64::NEG_INFINITY)
            ])
        );
        assert_eq!(
            entries[2],
            ("NaN".to_owned(), PyJson::Str("x NaN \" NaN".to_owned()))
        );
        let err = loads("{\"a\": Nan}").unwrap_err();
        assert_eq!((err.line, err.column), (1, 7), "{err}");
        assert!(!err.message.contains(" at line "), "{err}");
    }
}
