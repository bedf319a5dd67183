//! `generated_predictions.jsonl`: LF's `save_predictions` layout, and reading such a file back
//! (for `evalfleet score`, also from the original tool or after step 2 added its `score` key).

use std::path::Path;

use super::OutputError;
use super::pyjson::{JsonSyntax, PyJson, dumps_compact};

/// One line of `generated_predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictionRow {
    /// The reference answer (the dataset's response).
    pub label: String,
    /// The generated answer.
    pub predict: String,
}

/// The body of `generated_predictions.jsonl`: one `json.dumps({"label", "predict"},
/// ensure_ascii=False)` per row, joined by `"\n"`, no trailing newline (LF `save_predictions`).
pub fn generated_predictions_jsonl(rows: &[PredictionRow]) -> String {
    rows.iter()
        .map(|row| {
            let value = PyJson::Object(vec![
                ("label".to_owned(), PyJson::Str(row.label.clone())),
                ("predict".to_owned(), PyJson::Str(row.predict.clone())),
            ]);
            dumps_compact(&value, false)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads a `generated_predictions.jsonl` (ours or the original tool's): one JSON object per
/// non-blank line with string `label` and `predict`; other keys (step 2's `score`) are ignored.
pub fn read_generated_predictions(path: &Path) -> Result<Vec<PredictionRow>, OutputError> {
    let text = std::fs::read_to_string(path).map_err(|source| OutputError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| OutputError::BadLine {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            let syntax = JsonSyntax::from(&e);
            bad(format!(
                "column {}: invalid JSON: {}",
                syntax.column, syntax.message
            ))
        })?;
        let field = |key: &str| match value.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad(format!("`{key}` must be a string"))),
            None => Err(bad(format!("missing key `{key}`"))),
        };
        rows.push(PredictionRow {
            label: field("label")?,
            predict: field("predict")?,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_extra_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("p.jsonl");
        let rows = vec![
            PredictionRow {
                label: "a\n\"b\"".into(),
                predict: "中文 😀".into(),
            },
            PredictionRow {
                label: String::new(),
                predict: "x".into(),
            },
        ];
        std::fs::write(&path, generated_predictions_jsonl(&rows)).expect("write");
        assert_eq!(read_generated_predictions(&path).expect("read"), rows);
        std::fs::write(
            &path,
            "{\"label\": \"l\", \"predict\": \"p\", \"score\": 1.0}\n",
        )
        .expect("write");
        assert_eq!(read_generated_predictions(&path).expect("read").len(), 1);
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("p.jsonl");
        std::fs::write(
            &path,
            "{\"label\": \"l\", \"predict\": \"p\"}\n{\"label\": 1, \"predict\": \"p\"}",
        )
        .expect("write");
        let msg = read_generated_predictions(&path)
            .expect_err("bad")
            .to_string();
        assert!(
            msg.ends_with("p.jsonl: line 2: `label` must be a string"),
            "{msg}"
        );
        std::fs::write(&path, "{\"label\": \"l\"").expect("write");
        let msg = read_generated_predictions(&path)
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("line 1: column"), "{msg}");
    }
}
