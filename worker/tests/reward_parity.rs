//! BaichuanCharRM-style reward model parity (docs/FIDELITY.md §4.4, §4.5) against
//! scripts/goldens/reward_goldens.py's own PyTorch implementation, on tiny random checkpoints:
//! ALiBi with 4 heads (safetensors), ALiBi with 5 heads (PyTorch .bin shards with an index) and
//! rotary (safetensors shards). Inputs include texts longer than 4096 tokens (left truncation).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use evalfleet_worker::score::reward::RewardScorer;
use serde::Deserialize;

const MODELS: [&str; 3] = ["tiny-rm-alibi4", "tiny-rm-alibi5", "tiny-rm-rope"];

#[derive(Deserialize)]
struct Goldens {
    cutoff_len: usize,
    eos_id: u32,
    texts: Vec<GoldenText>,
}

#[derive(Deserialize)]
struct GoldenText {
    name: String,
    text: String,
    full_len: usize,
    ids: Vec<u32>,
    truncated: bool,
    sigmoid: std::collections::HashMap<String, Sigmoids>,
}

#[derive(Deserialize)]
struct Sigmoids {
    f32: f64,
    bf16: f64,
}

fn reward_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward")
}

fn goldens() -> Goldens {
    let path = reward_dir().join("goldens.json");
    let text = std::fs::read_to_string(&path).expect("reward goldens.json");
    serde_json::from_str(&text).expect("valid goldens.json")
}

fn scorer(model: &str, dtype: DType) -> RewardScorer {
    RewardScorer::load(&reward_dir().join(model), dtype, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{model}: {e}"))
}

#[test]
fn encoding_appends_eos_and_keeps_the_last_4096_ids() {
    let g = goldens();
    let s = scorer(MODELS[0], DType::F32);
    assert_eq!(s.eos_id(), g.eos_id);
    let mut truncated = 0;
    for t in &g.texts {
        let input = s.encode(&t.text, g.cutoff_len).unwrap();
        assert_eq!(input.ids, t.ids, "{}", t.name);
        assert_eq!(input.truncated, t.truncated, "{}", t.name);
        assert_eq!(*input.ids.last().unwrap(), g.eos_id, "{}", t.name);
        truncated += usize::from(t.truncated);
        // Without a limit every id is kept.
        assert_eq!(
            s.encode(&t.text, 0).unwrap().ids.len(),
            t.full_len,
            "{}",
            t.name
        );
    }
    assert!(
        truncated >= 2,
        "the goldens must include inputs over the limit"
    );
}

/// f32 within 1e-4 and bf16 within one bf16 step of the score (0.0156 after *4+1) of the
/// reference, each text alone and all texts as one batch (which must agree bit for bit).
fn check_model(model: &str, dtype: DType) {
    let g = goldens();
    let s = scorer(model, dtype);
    let inputs: Vec<Vec<u32>> = g.texts.iter().map(|t| t.ids.clone()).collect();
    let batched = s.score_batch(&inputs).unwrap();
    let mut worst = 0f64;
    for (t, &b) in g.texts.iter().zip(&batched) {
        let alone = s.score_batch(std::slice::from_ref(&t.ids)).unwrap()[0];
        assert_eq!(
            alone.to_bits(),
            b.to_bits(),
            "{model} {dtype:?} {}: alone {alone} vs batched {b}",
            t.name
        );
        let want = &t.sigmoid[model];
        let (want, tol) = match dtype {
            DType::F32 => (want.f32, 1e-4),
            _ => (want.bf16, 0.0156 / 4.0),
        };
        let diff = ((alone as f64) * 4.0 + 1.0 - (want * 4.0 + 1.0)).abs() / 4.0;
        worst = worst.max(diff);
        eprintln!(
            "{model} {dtype:?} {:<16} got {alone:.6} want {want:.6}",
            t.name
        );
        assert!(
            diff <= tol + 1e-12,
            "{model} {dtype:?} {}: sigmoid {alone} vs reference {want}",
            t.name
        );
    }
    eprintln!("{model} {dtype:?}: worst sigmoid difference {worst:e}");
}

#[test]
fn alibi4_safetensors_f32() {
    check_model("tiny-rm-alibi4", DType::F32);
}

#[test]
fn alibi4_safetensors_bf16() {
    check_model("tiny-rm-alibi4", DType::BF16);
}

#[test]
fn alibi5_bin_shards_f32() {
    check_model("tiny-rm-alibi5", DType::F32);
}

#[test]
fn alibi5_bin_shards_bf16() {
    check_model("tiny-rm-alibi5", DType::BF16);
}

#[test]
fn rope_safetensors_shards_f32() {
    check_model("tiny-rm-rope", DType::F32);
}

#[test]
fn rope_safetensors_shards_bf16() {
    check_model("tiny-rm-rope", DType::BF16);
}
