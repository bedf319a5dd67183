//! Sub-step 2 (PROTOCOL 4.3, CE `transform_format.py`): for each generated record whose
//! `model_output` is a string other than `"ERROR"`, keep its first line (split on `'\n'` only),
//! and emit one copy per `[metric_en, metric_zh]` of `id2metric[str(id)]`, with `metric_en` and
//! `metric_zh` set (appended after the existing keys). Records without metrics emit nothing.

use std::collections::HashMap;

use super::data::{Metric, id_key};
use super::{ERROR_OUTPUT, Record, get, set};
use crate::output::PyJson;

/// The transformed rows, in record order then metric order.
pub fn transform(records: &[Record], id2metric: &HashMap<String, Vec<Metric>>) -> Vec<Record> {
    let mut rows = Vec::new();
    for record in records {
        let output = match get(record, "model_output") {
            Some(PyJson::Str(s)) if s != ERROR_OUTPUT => s,
            _ => continue,
        };
        let first_line = output.split('\n').next().unwrap_or_default().to_owned();
        let Some(metrics) = id_key(record).and_then(|id| id2metric.get(&id)) else {
            continue;
        };
        let mut data = record.clone();
        set(&mut data, "model_output", PyJson::Str(first_line));
        for metric in metrics {
            set(&mut data, "metric_en", PyJson::Str(metric.en.clone()));
            set(&mut data, "metric_zh", PyJson::Str(metric.zh.clone()));
            rows.push(data.clone());
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i128, output: Option<&str>) -> Record {
        let mut r: Record = vec![("id".into(), PyJson::Int(id))];
        if let Some(o) = output {
            r.push(("model_output".into(), PyJson::Str(o.into())));
        }
        r
    }

    #[test]
    fn first_line_and_one_row_per_metric() {
        let metric = |en: &str, zh: &str| Metric {
            en: en.into(),
            zh: zh.into(),
        };
        let id2metric = HashMap::from([
            ("1".to_owned(), vec![metric("A", "甲"), metric("B", "乙")]),
            ("2".to_owned(), vec![metric("C", "丙")]),
            ("3".to_owned(), vec![metric("D", "丁")]),
        ]);
        let records = [
            record(1, Some("x\ny")),
            record(2, Some("\nlater")),
            record(3, Some("ERROR")),
            record(4, Some("no metrics")),
            record(3, None),
        ];
        let rows = transform(&records, &id2metric);
        let shown: Vec<String> = rows
            .iter()
            .map(|r| crate::output::dumps_compact(&PyJson::Object(r.clone()), false))
            .collect();
        assert_eq!(
            shown,
            [
                r#"{"id": 1, "model_output": "x", "metric_en": "A", "metric_zh": "甲"}"#,
                r#"{"id": 1, "model_output": "x", "metric_en": "B", "metric_zh": "乙"}"#,
                r#"{"id": 2, "model_output": "", "metric_en": "C", "metric_zh": "丙"}"#,
            ]
        );
    }
}
