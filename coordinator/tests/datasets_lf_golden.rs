//! Dataset loading against LLaMA-Factory v0.7.1 itself: the cases and the samples LF made of
//! them were written by `scripts/goldens/datasets_lf.py` (LF's parser and converters on HF
//! `datasets` 2.16.0).

use std::fs;
use std::path::PathBuf;

use evalfleet::datasets::{DATASET_INFO, Sample, load_samples};
use serde_json::Value;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases() -> Vec<Value> {
    let path = manifest_dir().join("tests/fixtures/datasets_lf_goldens.json");
    let text = fs::read_to_string(path).expect("fixture readable");
    serde_json::from_str::<Value>(&text)
        .expect("fixture is JSON")
        .as_array()
        .expect("a list of cases")
        .clone()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v.as_str().expect("string").to_owned())
        .collect()
}

/// A sample as the fixture writes it. LF leaves a null system column as `None`, which its
/// templates treat like `""`; evalfleet stores `""`.
fn as_fixture(sample: &Sample) -> Value {
    let messages: Vec<Value> = sample
        .messages
        .iter()
        .map(|m| serde_json::json!([m.role.as_str(), m.content]))
        .collect();
    serde_json::json!({"messages": messages, "system": sample.system, "tools": sample.tools})
}

fn normalise(expected: &Value) -> Value {
    let mut e = expected.clone();
    if e["system"].is_null() {
        e["system"] = Value::String(String::new());
    }
    e
}

#[test]
fn samples_equal_llamafactory_v071() {
    let cases = cases();
    assert_eq!(cases.len(), 7);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let _tmp;
        let dir = match case["repo_dir"].as_str() {
            Some(rel) => manifest_dir().join("..").join(rel),
            None => {
                _tmp = tempfile::tempdir().expect("temp dir");
                for (file, text) in case["files"].as_object().expect("files") {
                    let path = _tmp.path().join(file);
                    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                    fs::write(path, text.as_str().expect("text")).expect("write");
                }
                fs::write(_tmp.path().join(DATASET_INFO), case["info"].to_string()).expect("info");
                _tmp.path().to_owned()
            }
        };
        let max = case["max_samples"].as_u64().map(|n| n as usize);
        let samples = load_samples(&dir, &strings(&case["dataset"]), max)
            .unwrap_or_else(|e| panic!("case {name}: {e}"));
        let expected = case["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), expected.len(), "case {name}: sample count");
        for (i, (got, want)) in samples.iter().zip(expected).enumerate() {
            assert_eq!(as_fixture(got), normalise(want), "case {name}, sample {i}");
            assert_eq!(got.index, i, "case {name}: index");
        }
    }
}
