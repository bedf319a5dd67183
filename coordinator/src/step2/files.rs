//! Step 2's changes to the step-1 files, byte for byte as the original tool's `semsim_eval.py` made
//! them (docs/FIDELITY.md §2): every line of `generated_predictions.jsonl` gains a `score`, and
//! `avg_sem_sim_score` is appended to `predict_results.json`.

use std::path::Path;

use crate::output::{
    OutputError, PredictionRow, PyJson, dumps_compact, dumps_pretty, loads_object,
};

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
    let mut entries = loads_object(path, text)?;
    match entries.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = PyJson::Float(value),
        None => entries.push((key.to_owned(), PyJson::Float(value))),
    }
    Ok(dumps_pretty(&PyJson::Object(entries), false, false))
}

#[cfg(test)]
mod tests {
    use super::*;

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
