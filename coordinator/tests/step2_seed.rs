//! Step 2's files against the original tool: its step-1 output plus its three stored scores must
//! give its step-2 `generated_predictions.jsonl` and `predict_results.json` byte for byte, with
//! `all_results.json` untouched; the float32 mean equals NumPy's on the 509 embedder goldens.

use std::path::{Path, PathBuf};

use evalfleet::metrics::numpy_mean_f32;
use evalfleet::output::{ALL_RESULTS, GENERATED_PREDICTIONS, PREDICT_RESULTS};
use evalfleet::step2::{self, DISTRIBUTION_JSON, HISTOGRAM_SVG, Step2Error};

const FILES: [&str; 3] = [GENERATED_PREDICTIONS, PREDICT_RESULTS, ALL_RESULTS];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A temporary output dir holding the original tool's step-1 files.
fn seed_step1_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in FILES {
        std::fs::copy(fixture("seed_step1").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// The original tool's stored scores (`float(np.float32)`), back to the float32 they were.
fn seed_scores() -> Vec<f32> {
    ["0.9999998807907104", "0.5538597702980042", "1.0"]
        .iter()
        .map(|s| s.parse::<f64>().unwrap() as f32)
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn seed_step2_files_reproduced_byte_for_byte() {
    let dir = seed_step1_dir();
    let rows = step2::read_step1_rows(dir.path()).unwrap();
    assert_eq!(rows.len(), 3);
    let out = step2::write_step2(dir.path(), &rows, &seed_scores()).unwrap();
    for f in FILES {
        assert_eq!(
            String::from_utf8(read(&dir.path().join(f))).unwrap(),
            String::from_utf8(read(&fixture("seed_step2").join(f))).unwrap(),
            "{f}"
        );
    }
    assert_eq!(out.distribution.mean, 0.8512865900993347);
    let json = String::from_utf8(read(&dir.path().join(DISTRIBUTION_JSON))).unwrap();
    assert!(
        json.starts_with("{\n    \"count\": 3,\n    \"mean\": 0.8512865900993347,"),
        "{json}"
    );
    assert!(read(&dir.path().join(HISTOGRAM_SVG)).starts_with(b"<svg "));
    assert!(
        out.summary.contains("3 pairs, avg_sem_sim_score 0.8513"),
        "{}",
        out.summary
    );

    // Running step 2 again on its own output reads the rows back and writes the same bytes.
    let again = step2::read_step1_rows(dir.path()).unwrap();
    assert_eq!(again, rows);
    step2::write_step2(dir.path(), &again, &seed_scores()).unwrap();
    for f in FILES {
        assert_eq!(
            read(&dir.path().join(f)),
            read(&fixture("seed_step2").join(f)),
            "second run: {f}"
        );
    }
}

#[test]
fn float32_mean_equals_numpy_on_the_embedder_goldens() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../worker/tests/fixtures/embed_minilm_goldens.json");
    let golden: serde_json::Value = serde_json::from_slice(&read(&path)).unwrap();
    let scores: Vec<f32> = golden["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap() as f32)
        .collect();
    assert!(scores.len() >= 500);
    let want = golden["mean_f32"].as_f64().unwrap();
    assert_eq!(f64::from(numpy_mean_f32(&scores)), want);
    assert_eq!(step2::Distribution::new(&scores).mean, want);
}

#[test]
fn nothing_is_written_when_predict_results_is_missing_or_broken() {
    let dir = seed_step1_dir();
    let rows = step2::read_step1_rows(dir.path()).unwrap();
    let jsonl = dir.path().join(GENERATED_PREDICTIONS);

    std::fs::write(dir.path().join(PREDICT_RESULTS), "{\"a\": ").unwrap();
    let err = step2::write_step2(dir.path(), &rows, &seed_scores())
        .unwrap_err()
        .to_string();
    assert!(err.contains("predict_results.json: line 1"), "{err}");
    assert_eq!(
        read(&jsonl),
        read(&fixture("seed_step1").join(GENERATED_PREDICTIONS))
    );

    std::fs::remove_file(dir.path().join(PREDICT_RESULTS)).unwrap();
    let err = step2::write_step2(dir.path(), &rows, &seed_scores()).unwrap_err();
    assert!(matches!(err, Step2Error::MissingStep1 { .. }), "{err}");
    assert!(err.to_string().contains("run step 1 first"));
    assert_eq!(
        read(&jsonl),
        read(&fixture("seed_step1").join(GENERATED_PREDICTIONS))
    );
    assert!(!dir.path().join(DISTRIBUTION_JSON).exists());
}

#[test]
fn score_count_must_match_and_step1_must_exist() {
    let dir = seed_step1_dir();
    let rows = step2::read_step1_rows(dir.path()).unwrap();
    let err = step2::write_step2(dir.path(), &rows, &[0.5])
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("generated_predictions.jsonl: 3 rows but 1 scores"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let err = step2::read_step1_rows(empty.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("generated_predictions.jsonl: missing: run step 1 first"),
        "{err}"
    );
}
