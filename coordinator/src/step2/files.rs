//! Step 2's changes to the step-1 files, byte for byte as the SEED's `semsim_eval.py` made them
//! (PROTOCOL 2): every line of `generated_predictions.jsonl` gains a `score`, and
//! `avg_sem_sim_score` is appended to `predict_results.json`.

use std::path::Path;

use crate::output::pyjson::push_json_string;
use crate::output::{OutputError, PredictionRow, PyJson, dumps_compact, json_float, loads};

/// The body of the scored `generated_predictions.jsonl`: per row
/// `json.dumps({"label", "predict", "score"}, ensure_ascii=False) + "\n"` (so, unlike step 1's
/// file, it ends with a newline). `score` is `float(np.float32)`: the f32 widened to f64.
pub fn scored_predictions_jsonl(rows: &[PredictionRow], scores: &[f32]) -> String {
    let mut out = String::new();
    for (row, &score) in rows.iter().zip(scores) {
        let value = PyJson::Object(vec![
            ("label".to_owned(), PyJson::Str(row.label.clone())),
            ("predict".to_owned(), PyJson::Str(row.predict.clone())),
            ("score".to_owned(), PyJson::Float(f64::from(score))),
        ]);
        out.push_str(&dumps_compact(&value, false));
        out.push('\n');
    }
    out
}

/// `predict_results.json` after step 2: the file's JSON (as `json.load` reads it) with
/// `metrics[key] = value` (a new key goes last, an existing one keeps its place), re-dumped with
/// `json.dumps(..., ensure_ascii=False, indent=4)`: no key sorting, no trailing newline.
pub fn add_metric(path: &Path, text: &str, key: &str, value: f64) -> Result<String, OutputError> {
    let parsed = loads(text).map_err(|e| OutputError::Parse {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        message: e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned(),
    })?;
    let PyJson::Object(mut entries) = parsed else {
        return Err(OutputError::NotAnObject {
            path: path.to_owned(),
        });
    };
    match entries.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = PyJson::Float(value),
        None => entries.push((key.to_owned(), PyJson::Float(value))),
    }
    Ok(dumps_indent4(&PyJson::Object(entries), false))
}

/// `json.dumps(value, ensure_ascii=..., indent=4)` with keys in insertion order; no trailing
/// newline. (The step-1 writer `dumps_pretty_sorted` sorts keys; step 2 does not.)
pub fn dumps_indent4(value: &PyJson, ensure_ascii: bool) -> String {
    let mut out = String::new();
    write_indented(&mut out, value, 0, ensure_ascii);
    out
}

fn write_indented(out: &mut String, value: &PyJson, level: usize, ascii: bool) {
    match value {
        // Python writes empty containers without any newline.
        PyJson::Array(items) if items.is_empty() => out.push_str("[]"),
        PyJson::Object(entries) if entries.is_empty() => out.push_str("{}"),
        PyJson::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                item_break(out, i, level + 1);
                write_indented(out, item, level + 1, ascii);
            }
            newline_indent(out, level);
            out.push(']');
        }
        PyJson::Object(entries) => {
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                item_break(out, i, level + 1);
                push_json_string(out, key, ascii);
                out.push_str(": ");
                write_indented(out, item, level + 1, ascii);
            }
            newline_indent(out, level);
            out.push('}');
        }
        PyJson::Float(x) => out.push_str(&json_float(*x)),
        scalar => out.push_str(&dumps_compact(scalar, ascii)),
    }
}

fn item_break(out: &mut String, index: usize, level: usize) {
    if index > 0 {
        out.push(',');
    }
    newline_indent(out, level);
}

fn newline_indent(out: &mut String, level: usize) {
    out.push('\n');
    out.extend(std::iter::repeat_n(' ', level * 4));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indent4_keeps_key_order_and_writes_nested_values() {
        let v = PyJson::Object(vec![
            ("z".into(), PyJson::Int(1)),
            (
                "a".into(),
                PyJson::Array(vec![PyJson::Float(0.5), PyJson::Null]),
            ),
            ("é".into(), PyJson::Object(vec![])),
            ("n".into(), PyJson::Float(f64::NAN)),
        ]);
        assert_eq!(
            dumps_indent4(&v, false),
            "{\n    \"z\": 1,\n    \"a\": [\n        0.5,\n        null\n    ],\n    \"é\": {},\n    \"n\": NaN\n}"
        );
        assert!(dumps_indent4(&v, true).contains("\"\\u00e9\": {}"));
    }

    #[test]
    fn add_metric_appends_or_replaces_in_place() {
        let p = Path::new("predict_results.json");
        let text = "{\n    \"b\": 2.5,\n    \"a\": 1\n}";
        assert_eq!(
            add_metric(p, text, "c", 0.25).unwrap(),
            "{\n    \"b\": 2.5,\n    \"a\": 1,\n    \"c\": 0.25\n}"
        );
        assert_eq!(
            add_metric(p, text, "b", 0.25).unwrap(),
            "{\n    \"b\": 0.25,\n    \"a\": 1\n}"
        );
        assert!(matches!(
            add_metric(p, "[1]", "c", 0.0),
            Err(OutputError::NotAnObject { .. })
        ));
        let err = add_metric(p, "{\"a\": }", "c", 0.0)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("predict_results.json: line 1, column"),
            "{err}"
        );
    }

    #[test]
    fn scores_are_the_f32_widened() {
        let rows = vec![PredictionRow {
            label: "标签".into(),
            predict: "p\n".into(),
        }];
        assert_eq!(
            scored_predictions_jsonl(&rows, &[0.553_859_8]),
            "{\"label\": \"标签\", \"predict\": \"p\\n\", \"score\": 0.5538597702980042}\n"
        );
    }
}
