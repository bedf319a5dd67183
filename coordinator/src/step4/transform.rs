//! Sub-step 2 (docs/FIDELITY.md §4.3, CE `transform_format.py`): for each generated record whose
//! `model_output` is a string other than `"ERROR"`, keep its first line (split on `'\n'` only),
//! and emit one copy per `[metric_en, metric_zh]` of `id2metric[str(id)]`, with `metric_en` and
//! `metric_zh` set (appended after the existing keys). Records without metrics emit nothing.

use std::collections::HashMap;

use super::data::{Metric, id_key};
use super::{ERROR_OUTPUT, Record, get, set};
use crate::output::PyJson;

/// The transformed rows, in record order then metric order.
pub fn transform(records: &[Record], id2metric: &HashMap<String, Vec<Metric>>) -> Vec<Record> {
    records
        .iter()
        .flat_map(|record| transform_one(record, id2metric))
        .collect()
}

/// [`transform`]'s rows, each with the index of its record in `records` and its metric number
/// among that record's rows (how step 4 names the reward item of a row it feeds from a
/// generation before the other records are generated).
pub fn transform_indexed(
    records: &[Record],
    id2metric: &HashMap<String, Vec<Metric>>,
) -> Vec<(usize, usize, Record)> {
    records
        .iter()
        .enumerate()
        .flat_map(|(i, record)| {
            let rows = transform_one(record, id2metric).into_iter().enumerate();
            rows.map(move |(k, row)| (i, k, row))
        })
        .collect()
}

/// The rows of one record: [`transform`] depends on nothing but the record and `id2metric`.
pub fn transform_one(record: &Record, id2metric: &HashMap<String, Vec<Metric>>) -> Vec<Record> {
    let output = match get(record, "model_output") {
        Some(PyJson::Str(s)) if s != ERROR_OUTPUT => s,
        _ => return Vec::new(),
    };
    let first_line = output.split('\n').next().unwrap_or_default().to_owned();
    let Some(metrics) = id_key(record).and_then(|id| id2metric.get(&id)) else {
        return Vec::new();
    };
    let mut data = record.clone();
    set(&mut data, "model_output", PyJson::Str(first_line));
    metrics
        .iter()
        .map(|metric| {
            set(&mut data, "metric_en", PyJson::Str(metric.en.clone()));
            set(&mut data, "metric_zh", PyJson::Str(metric.zh.clone()));
            data.clone()
        })
        .collect()
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
        let indexed = transform_indexed(&records, &id2metric);
        let at: Vec<(usize, usize)> = indexed.iter().map(|(i, k, _)| (*i, *k)).collect();
        assert_eq!(at, [(0, 0), (0, 1), (1, 0)]);
        let same: Vec<Record> = indexed.into_iter().map(|(_, _, r)| r).collect();
        assert_eq!(same, rows);
    }
}
