//! Step-1 metrics against goldens from the reference Python packages (jieba 0.42.1, rouge-chinese
//! 1.0.3, nltk 3.8.1, numpy), written by scripts/goldens/metrics_goldens.py: every token list and
//! every stored per-row value equal, every mean within 1e-9, and the seed's three rows giving the
//! seed's stored `predict_results.json` values exactly.
//!
//! Needs jieba's data files: run scripts/fetch-models.sh (or set EVALFLEET_JIEBA_DIR).

use evalfleet::metrics::{self, RowScores, Summary};
use serde_json::{Map, Value};

fn fixture() -> Map<String, Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics_goldens.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn jieba() -> &'static metrics::Jieba {
    metrics::segmenter().unwrap_or_else(|e| panic!("{e}"))
}

fn text<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key]
        .as_str()
        .unwrap_or_else(|| panic!("fixture row lacks string {key:?}"))
}

fn num(obj: &Value, key: &str) -> f64 {
    obj[key]
        .as_f64()
        .unwrap_or_else(|| panic!("fixture lacks number {key:?}"))
}

/// The stored values of a row under the fixture's keys.
fn row_values(s: &RowScores) -> Vec<(String, f64)> {
    let mut out = vec![("bleu-4".to_owned(), s.bleu4)];
    for (name, prf) in [
        ("rouge-1", s.rouge1),
        ("rouge-2", s.rouge2),
        ("rouge-l", s.rougel),
    ] {
        out.push((name.to_owned(), prf.f));
        out.push((format!("{name}-precision"), prf.p));
        out.push((format!("{name}-recall"), prf.r));
    }
    out
}

fn rows(fx: &Map<String, Value>) -> &Vec<Value> {
    fx["rows"].as_array().expect("fixture has rows")
}

fn score_all(fx: &Map<String, Value>) -> Vec<RowScores> {
    rows(fx)
        .iter()
        .map(|r| metrics::score_row_with(jieba(), text(r, "predict"), text(r, "label")))
        .collect()
}

#[test]
fn tokens_equal_jieba() {
    let fx = fixture();
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for (i, row) in rows(&fx).iter().enumerate() {
        for (side, tokens) in [("label", "label_tokens"), ("predict", "predict_tokens")] {
            let want: Vec<&str> = row[tokens]
                .as_array()
                .expect("token list")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let got = jieba().cut(text(row, side));
            compared += 1;
            if got != want {
                mismatches.push(format!("row {i} {side}: got {got:?}\n  want {want:?}"));
            }
        }
    }
    for (i, entry) in fx["segment_only"]
        .as_array()
        .expect("segment_only")
        .iter()
        .enumerate()
    {
        let want: Vec<&str> = entry["tokens"]
            .as_array()
            .expect("token list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let got = jieba().cut(text(entry, "text"));
        compared += 1;
        if got != want {
            mismatches.push(format!("segment_only {i}: got {got:?}\n  want {want:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {compared} token lists differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(compared >= 1600, "only {compared} token lists");
}

#[test]
fn rows_equal_after_rounding() {
    let fx = fixture();
    let mut mismatches = Vec::new();
    for (i, (row, got)) in rows(&fx).iter().zip(score_all(&fx)).enumerate() {
        for (key, value) in row_values(&got) {
            let want = num(row, &key);
            if value.to_bits() != want.to_bits() && value != want {
                mismatches.push(format!("row {i} {key}: got {value:?}, want {want:?}"));
            }
        }
    }
    assert!(rows(&fx).len() >= 300);
    assert!(
        mismatches.is_empty(),
        "{} values differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Largest |ours - golden| over every key of `summary`, failing above 1e-9.
fn check_means(summary: &Summary, golden: &Value, what: &str) -> f64 {
    let mut max_dev: f64 = 0.0;
    for (key, value) in summary.metric_pairs() {
        let dev = (value - num(golden, &key)).abs();
        assert!(
            dev <= 1e-9,
            "{what} mean {key}: got {value:?}, want {:?}",
            num(golden, &key)
        );
        max_dev = max_dev.max(dev);
    }
    max_dev
}

#[test]
fn means_match_numpy_and_seed() {
    let fx = fixture();
    let scores = score_all(&fx);
    let n_seed = fx["seed_rows"].as_u64().expect("seed_rows") as usize;
    let seed = metrics::summarize(&scores[..n_seed]);
    let all = metrics::summarize(&scores);
    let dev_all = check_means(&all, &fx["means_all"], "all rows");
    let dev_seed = check_means(&seed, &fx["means_seed"], "seed rows");
    eprintln!("max |mean - numpy|: all rows {dev_all:e}, seed rows {dev_seed:e}");
    // The seed's stored predict_results.json values, exactly.
    let stored = &fx["seed_stored_means"];
    for (key, value) in seed.metric_pairs().into_iter().take(4) {
        assert_eq!(value, num(stored, &key), "seed predict_{key}");
    }
    assert_eq!(seed.rouge1.f, 79.36506666666666);
    assert_eq!(seed.bleu4, 68.05863333333333);
    // The original keys come first, in the original order.
    let keys: Vec<String> = all.metric_pairs().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys[..5],
        [
            "rouge-1",
            "rouge-2",
            "rouge-l",
            "bleu-4",
            "rouge-1-precision"
        ]
    );
}

#[test]
fn scoring_from_many_threads_agrees() {
    let fx = fixture();
    let sequential = score_all(&fx);
    let pairs: Vec<(&str, &str)> = rows(&fx)
        .iter()
        .map(|r| (text(r, "predict"), text(r, "label")))
        .collect();
    let parallel: Vec<RowScores> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .chunks(pairs.len().div_ceil(4))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(p, l)| metrics::score_row(p, l).expect("jieba data"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("scoring thread"))
            .collect()
    });
    assert_eq!(parallel, sequential);
}
