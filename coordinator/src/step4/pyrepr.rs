//! Python's `repr()` / `str()` of JSON values (`dict`, `list`, `str`, `int`, `float`, `bool`,
//! `None`), as the original tool puts a role profile into prompts: `str(profile_dict)`
//! (docs/FIDELITY.md §4.2, §4.4).
//!
//! A `str` repr is quoted with `'` unless the text contains `'` and no `"`, then with `"`. Inside,
//! `\\`, the chosen quote, `\t`, `\n`, `\r` get short escapes; every other character that
//! `str.isprintable()` rejects becomes `\xhh`, `\uhhhh` or `\Uhhhhhhhh` (lowercase hex, the
//! shortest of the three that fits). Containers are `[a, b]` and `{k: v}` with `", "` and `": "`.

use super::nonprintable::NON_PRINTABLE;
use crate::output::float_repr;
use crate::output::pyjson::{PyJson, write_one_line};

/// `str(value)`: a string as it is, anything else as its repr.
pub fn py_str(value: &PyJson) -> String {
    match value {
        PyJson::Str(s) => s.clone(),
        other => py_repr(other),
    }
}

/// `repr(value)` as Python 3.11 writes it.
pub fn py_repr(value: &PyJson) -> String {
    let mut out = String::new();
    push_repr(&mut out, value);
    out
}

fn push_repr(out: &mut String, value: &PyJson) {
    write_one_line(out, value, &push_scalar_repr, &push_str_repr);
}

/// The repr of a value that is not a container.
fn push_scalar_repr(out: &mut String, value: &PyJson) {
    match value {
        PyJson::Null => out.push_str("None"),
        PyJson::Bool(true) => out.push_str("True"),
        PyJson::Bool(false) => out.push_str("False"),
        PyJson::Int(i) => out.push_str(&i.to_string()),
        PyJson::Float(x) => out.push_str(&float_repr(*x)),
        PyJson::Str(s) => push_str_repr(out, s),
        // write_one_line writes containers itself.
        PyJson::Array(_) | PyJson::Object(_) => push_repr(out, value),
    }
}

/// Appends `repr(s)` for a Python `str`.
pub fn push_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let cp = u32::from(c);
                let escaped = if cp < 0x100 {
                    format!("\\x{cp:02x}")
                } else if cp < 0x10000 {
                    format!("\\u{cp:04x}")
                } else {
                    format!("\\U{cp:08x}")
                };
                out.push_str(&escaped);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `c.isprintable()` (the Unicode tables of the Python that generated
/// [`NON_PRINTABLE`]).
pub fn is_printable(c: char) -> bool {
    let cp = u32::from(c);
    // The first range whose end is at or after `cp` holds it if it starts at or before `cp`.
    let i = NON_PRINTABLE.partition_point(|&(_, last)| last < cp);
    NON_PRINTABLE.get(i).is_none_or(|&(first, _)| first > cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> PyJson {
        PyJson::Str(text.into())
    }

    #[test]
    fn quotes_follow_python() {
        assert_eq!(py_repr(&s("a")), "'a'");
        assert_eq!(py_repr(&s("it's")), "\"it's\"");
        assert_eq!(py_repr(&s("'\"")), "'\\'\"'");
        assert_eq!(py_str(&s("it's")), "it's");
    }

    #[test]
    fn escapes_follow_python() {
        assert_eq!(py_repr(&s("\\\t\n\r")), "'\\\\\\t\\n\\r'");
        assert_eq!(py_repr(&s("\u{0}\u{7f}\u{a0}")), "'\\x00\\x7f\\xa0'");
        assert_eq!(py_repr(&s("\u{3000}")), "'\\u3000'");
        assert_eq!(py_repr(&s("\u{e0001}")), "'\\U000e0001'");
        assert_eq!(py_repr(&s("中文 😀")), "'中文 😀'");
    }

    #[test]
    fn printable_table_edges() {
        assert!(is_printable(' ') && is_printable('~') && is_printable('\u{a1}'));
        assert!(!is_printable('\u{1f}') && !is_printable('\u{a0}') && !is_printable('\u{10ffff}'));
    }

    #[test]
    fn containers_and_scalars() {
        let v = PyJson::Object(vec![
            ("k".into(), PyJson::Array(vec![s("x"), PyJson::Int(-3)])),
            ("f".into(), PyJson::Float(0.5)),
            ("n".into(), PyJson::Null),
            ("b".into(), PyJson::Bool(true)),
        ]);
        assert_eq!(
            py_repr(&v),
            "{'k': ['x', -3], 'f': 0.5, 'n': None, 'b': True}"
        );
    }
}
