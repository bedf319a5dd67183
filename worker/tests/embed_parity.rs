//! Parity of the embedder with sentence-transformers (goldens from
//! scripts/goldens/embed_goldens.py): the original tool's per-pair score `cos_sim(encode([label,
//! predict]))` within 1e-5 on 509 pairs (Chinese, English, mixed, empty, emoji, texts past
//! max_seq_length), and full embeddings within 1e-5, for the real all-MiniLM-L6-v2 (mean pooling +
//! Normalize) and a tiny random BERT with CLS pooling.

use std::path::{Path, PathBuf};

use candle_core::Device;
use evalfleet_worker::embed::{Embedder, cosine};
use serde_json::Value;

const TOL: f32 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_json(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn models_dir() -> PathBuf {
    std::env::var_os("EVALFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models"))
}

fn minilm_dir() -> PathBuf {
    let dir = models_dir().join("all-minilm-l6-v2");
    assert!(
        dir.join("modules.json").exists(),
        "{} is missing: run scripts/fetch-models.sh (or set EVALFLEET_MODELS)",
        dir.display()
    );
    dir
}

fn pairs() -> Vec<(String, String)> {
    read_json("embed_pairs.json")["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Scores of every pair: all texts embedded in one call (sorted, batched by 32, padded), as
/// a worker does with a shard, then the original tool's cosine per pair.
fn scores(embedder: &Embedder, pairs: &[(String, String)]) -> Vec<f32> {
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    embedder.score_pairs(&pairs).unwrap()
}

fn max_deviation(got: &[f32], want: &[f32]) -> (f32, usize) {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .enumerate()
        .fold(
            (0f32, 0),
            |(m, at), (i, d)| if d > m { (d, i) } else { (m, at) },
        )
}

fn check_model(dir: &Path, golden_name: &str) {
    let golden = read_json(golden_name);
    let embedder = Embedder::load(dir, &Device::Cpu).unwrap();
    assert_eq!(
        embedder.max_seq_length() as u64,
        golden["max_seq_length"].as_u64().unwrap()
    );
    let pairs = pairs();
    assert!(pairs.len() >= 500);
    let want = floats(&golden["scores"]);
    let got = scores(&embedder, &pairs);
    let (dev, at) = max_deviation(&got, &want);
    eprintln!(
        "{golden_name}: {} pairs, max |score - sentence-transformers| = {dev:e} (pair {at})",
        pairs.len()
    );
    assert!(
        dev <= TOL,
        "pair {at} {:?}: got {} want {}",
        pairs[at],
        got[at],
        want[at]
    );

    // The original tool's own batching: one encode([label, predict]) per row, on a sample of rows.
    for (i, (a, b)) in pairs.iter().enumerate().step_by(25) {
        let e = embedder.embed(&[a, b]).unwrap();
        let d = (cosine(&e[0], &e[1]) - want[i]).abs();
        assert!(d <= TOL, "pair {i} alone: deviation {d}");
    }

    let texts: Vec<&str> = golden["embedding_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let embs = embedder.embed(&texts).unwrap();
    let mut worst = 0f32;
    for (i, (got, want)) in embs
        .iter()
        .zip(golden["embeddings"].as_array().unwrap())
        .enumerate()
    {
        let want = floats(want);
        assert_eq!(got.len(), want.len(), "embedding {i}: dimension");
        let (d, _) = max_deviation(got, &want);
        worst = worst.max(d);
        assert!(
            d <= TOL,
            "embedding {i} ({:?}): max element deviation {d}",
            texts[i]
        );
    }
    eprintln!(
        "{golden_name}: {} embeddings, max element deviation {worst:e}",
        embs.len()
    );
}

#[test]
fn minilm_matches_sentence_transformers() {
    check_model(&minilm_dir(), "embed_minilm_goldens.json");
}

#[test]
fn tiny_cls_bert_matches_sentence_transformers() {
    check_model(
        &fixtures().join("embed_tiny_bert_cls"),
        "embed_tiny_cls_goldens.json",
    );
}

#[test]
fn minilm_folder_is_read_as_sentence_transformers_does() {
    let embedder = Embedder::load(&minilm_dir(), &Device::Cpu).unwrap();
    assert_eq!(embedder.dim(), 384);
    assert!(embedder.folder().normalize);
    // Normalize module: every embedding has unit length.
    let e = embedder.embed(&["a text", ""]).unwrap();
    for v in e {
        let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "norm {n}");
    }
}
