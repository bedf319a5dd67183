//! Helpers shared by the report tests: fixtures, file I/O, a strict CSV parser and the
//! Markdown table reader.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// RFC 4180 records (quoted fields, doubled quotes); panics on a malformed file.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                assert!(
                    matches!(chars.peek(), Some(',' | '\n') | None),
                    "text after a quote"
                );
            }
            (true, c) => field.push(c),
            (false, '"') => {
                assert!(field.is_empty(), "quote inside an unquoted field");
                quoted = true;
            }
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted, "unterminated quote");
    assert!(
        field.is_empty() && record.is_empty(),
        "no newline at the end"
    );
    let width = records[0].len();
    assert!(
        records.iter().all(|r| r.len() == width),
        "ragged CSV: {records:?}"
    );
    records
}

/// The Markdown Result table's rows (header first, separator dropped), cells trimmed: the
/// lines up to the first blank one (the change section follows).
pub fn parse_markdown(text: &str) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = text
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let inner = l.strip_prefix("| ").and_then(|l| l.strip_suffix(" |"));
            let inner = inner.unwrap_or_else(|| panic!("not a table row: {l:?}"));
            inner.split(" | ").map(|c| c.trim().to_owned()).collect()
        })
        .collect();
    assert!(rows[1].iter().all(|c| c == "---"), "separator row");
    rows.remove(1);
    rows
}

/// The cell of `column` in data row `row` (0-based, header excluded).
pub fn cell<'a>(table: &'a [Vec<String>], row: usize, column: &str) -> &'a str {
    let i = table[0].iter().position(|c| c == column).expect("column");
    &table[row + 1][i]
}

/// `name: value` pairs of an aligned log file.
pub fn aligned(path: &Path) -> Vec<(String, String)> {
    read(path)
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(':').expect("colon");
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

pub fn svg_count(html: &str) -> usize {
    html.matches("<svg ").count()
}
