//! The output writers against Python itself: goldens written by
//! `scripts/goldens/output_json.py` (repr, json.dumps escaping and layout, round, speed_metrics)
//! and the original tool's own step-1 files (`scripts/goldens/seed_step1_outputs.py`).

use std::fs;
use std::path::PathBuf;

use evalfleet::output::{
    self, PredictionRow, PyJson, SpeedMetrics, dumps_compact, dumps_pretty_sorted, float_repr,
    json_float,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn goldens() -> Value {
    let path = fixtures().join("python_json_goldens.json");
    let text = fs::read_to_string(&path).expect("golden fixture readable");
    serde_json::from_str(&text).expect("golden fixture is JSON")
}

fn f64_from_hex(value: &Value) -> f64 {
    let hex = value.as_str().expect("hex string");
    f64::from_bits(u64::from_str_radix(hex, 16).expect("hex bits"))
}

fn str_of(value: &Value) -> &str {
    value.as_str().expect("string")
}

#[test]
fn float_repr_matches_python_for_every_golden() {
    let goldens = goldens();
    let cases = goldens["floats"].as_array().expect("floats");
    assert!(cases.len() > 250);
    for case in cases {
        let x = f64_from_hex(&case["bits"]);
        assert_eq!(
            float_repr(x),
            str_of(&case["repr"]),
            "repr of bits {}",
            case["bits"]
        );
        assert_eq!(
            json_float(x),
            str_of(&case["json"]),
            "json of bits {}",
            case["bits"]
        );
    }
}

#[test]
fn string_escaping_matches_python_in_both_modes() {
    let goldens = goldens();
    for case in goldens["strings"].as_array().expect("strings") {
        let s = PyJson::Str(str_of(&case["s"]).to_owned());
        assert_eq!(
            dumps_compact(&s, true),
            str_of(&case["ascii"]),
            "ascii: {:?}",
            case["s"]
        );
        assert_eq!(
            dumps_compact(&s, false),
            str_of(&case["raw"]),
            "raw: {:?}",
            case["s"]
        );
    }
}

#[test]
fn pretty_and_compact_layouts_match_python() {
    let goldens = goldens();
    for case in goldens["pretty"].as_array().expect("pretty") {
        // serde_json keeps the fixture's key order (preserve_order), which is Python's insertion
        // order, so the compact form is comparable too.
        let value = PyJson::from(&case["value"]);
        assert_eq!(dumps_pretty_sorted(&value), str_of(&case["pretty"]));
        assert_eq!(dumps_compact(&value, false), str_of(&case["compact"]));
    }
}

#[test]
fn speed_metrics_match_hf_speed_metrics() {
    let goldens = goldens();
    for case in goldens["speed"].as_array().expect("speed") {
        let n = case["n"].as_u64().expect("n") as usize;
        let bs = case["bs"].as_u64().expect("bs") as usize;
        let t = f64_from_hex(&case["t"]);
        let speed = SpeedMetrics::new(n, bs, t);
        let written = dumps_pretty_sorted(&PyJson::Object(speed.pairs("predict")));
        assert_eq!(written, str_of(&case["pretty"]), "n={n} bs={bs} t={t}");
    }
}

#[test]
fn python_round_matches_for_speed_digits() {
    let goldens = goldens();
    for case in goldens["round"].as_array().expect("round") {
        let x = f64_from_hex(&case["x"]);
        let n = case["n"].as_i64().expect("n") as i32;
        let want = f64_from_hex(&case["round"]);
        assert_eq!(
            evalfleet::metrics::python_round(x, n).to_bits(),
            want.to_bits(),
            "round({x}, {n})"
        );
    }
}

/// The seed's three rows and numbers must give the seed's step-1 files byte for byte.
#[test]
fn step1_files_equal_the_original_tools_bytes() {
    let seed = fixtures().join("seed_step1");
    let expected_jsonl =
        fs::read_to_string(seed.join("generated_predictions.jsonl")).expect("seed jsonl");
    let rows: Vec<PredictionRow> = expected_jsonl
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("seed line");
            PredictionRow {
                label: str_of(&v["label"]).to_owned(),
                predict: str_of(&v["predict"]).to_owned(),
            }
        })
        .collect();
    assert_eq!(rows.len(), 3);
    // Summary::metric_pairs() order: the F scores first, in the original tool's order.
    let metrics = [
        ("rouge-1", 79.36506666666666),
        ("rouge-2", 70.17543333333333),
        ("rouge-l", 79.36506666666666),
        ("bleu-4", 68.05863333333333),
    ];
    let speed = SpeedMetrics::new(rows.len(), 1, 3.9457);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("nested").join("output");
    let files = output::write_step1(&out, &rows, &metrics, &speed).expect("write step 1");

    for (written, name) in [
        (&files.predict_results, "predict_results.json"),
        (&files.all_results, "all_results.json"),
        (&files.predictions, "generated_predictions.jsonl"),
    ] {
        let want = fs::read(seed.join(name)).expect("seed file");
        let got = fs::read(written).expect("written file");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{name}"
        );
    }
}

/// HF merges into all_results.json: keys from an earlier run survive, shared keys are replaced.
#[test]
fn all_results_keeps_keys_of_earlier_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all = dir.path().join("all_results.json");
    fs::write(
        &all,
        "{\"eval_loss\": 1.5, \"predict_runtime\": 9.0, \"epoch\": 3}",
    )
    .expect("seed file");
    let speed = SpeedMetrics::new(2, 8, 1.0);
    output::write_step1(dir.path(), &[], &[("bleu-4".to_owned(), 1e-05)], &speed).expect("write");
    let text = fs::read_to_string(&all).expect("read back");
    assert_eq!(
        text,
        "{\n    \"epoch\": 3,\n    \"eval_loss\": 1.5,\n    \"predict_bleu-4\": 1e-05,\n    \"predict_runtime\": 1.0,\n    \"predict_samples_per_second\": 2.0,\n    \"predict_steps_per_second\": 1.0\n}"
    );
    // No prediction rows: an empty file, as "\n".join([]) is.
    assert_eq!(
        fs::read(dir.path().join("generated_predictions.jsonl")).expect("jsonl"),
        b""
    );
    // No temporary files left behind.
    let names: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn broken_all_results_names_the_file_and_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("all_results.json"), "{\n  \"a\": ,\n}").expect("write");
    let speed = SpeedMetrics::new(1, 1, 1.0);
    let err = output::write_step1(dir.path(), &[], &[("bleu-4", 1.0)], &speed).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("all_results.json") && msg.contains("line 2"),
        "{msg}"
    );
}
