//! GGUF parity for qwen2: the tiny qwen2 fixture written as llama.cpp lays out a Qwen2 GGUF
//! (scripts/goldens/tiny_gguf.py: q/k not permuted since qwen2 runs half-split RoPE, q/k/v biases
//! as `blk.N.attn_{q,k,v}.bias`, tied head without `output.weight`, F32 tensors) must give the
//! transformers reference logits within 1e-4, for an unpadded sequence and a left-padded batch,
//! whether the weights are kept as they are (dtype auto) or dequantized (f32).

use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp, Tensor};
use evalfleet_worker::models::{
    DTypeChoice, Decoder, ForwardInput, LoadOptions, LogitsAt, SourceKind, load_causal_lm,
};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2")
}

/// `reference.json`'s `key` as rows of u32.
fn rows(json: &Value, key: &str) -> Vec<Vec<u32>> {
    let v: Vec<Vec<u64>> = serde_json::from_value(json[key].clone()).unwrap();
    v.into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

fn t2(rows: &[Vec<u32>]) -> Tensor {
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn check(dtype: DTypeChoice) {
    let dir = fixture_dir();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let want =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype,
    };
    let model = load_causal_lm(&dir.join("model.gguf"), &[], &opts).unwrap();
    assert_eq!(model.source_kind(), SourceKind::Gguf);
    let cfg = model.config();
    assert_eq!(cfg.architecture, "Qwen2ForCausalLM");
    assert!(cfg.qkv_bias, "the attn_q/k/v biases were not picked up");
    assert!(
        cfg.tie_word_embeddings,
        "no output.weight means a tied head"
    );
    assert_eq!((cfg.heads, cfg.kv_heads, cfg.layers), (4, 2, 2));
    assert_eq!(cfg.rope_theta, 1_000_000.0);
    assert_eq!(cfg.rms_norm_eps as f32, 1e-6);

    let single = rows(&json, "single");
    let n = single[0].len();
    let input = ForwardInput {
        tokens: t2(&single),
        positions: Tensor::arange(0u32, n as u32, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap(),
        key_mask: None,
    };
    let got = model
        .forward(&input, &mut model.new_cache(), LogitsAt::All)
        .unwrap();
    let d = max_diff(&got.squeeze(0).unwrap(), &want["single.base"]);
    println!("qwen2 gguf {dtype:?} single: max |diff| {d:e}");
    assert!(d < TOL, "{dtype:?}: single-sequence logits differ by {d}");

    let mask = rows(&json, "batch_mask");
    let batch = ForwardInput {
        tokens: t2(&rows(&json, "batch_ids")),
        positions: t2(&rows(&json, "batch_positions")),
        key_mask: Some(t2(&mask).to_dtype(candle_core::DType::U8).unwrap()),
    };
    let got = model
        .forward(&batch, &mut model.new_cache(), LogitsAt::All)
        .unwrap();
    let want = &want["batch.base"];
    let mut worst = 0f32;
    for (r, m) in mask.iter().enumerate() {
        for (c, _) in m.iter().enumerate().filter(|(_, m)| **m == 1) {
            worst = worst.max(max_diff(&got.i((r, c)).unwrap(), &want.i((r, c)).unwrap()));
        }
    }
    println!("qwen2 gguf {dtype:?} padded batch: max |diff| {worst:e}");
    assert!(
        worst < TOL,
        "{dtype:?}: padded batch logits differ by {worst}"
    );
}

#[test]
fn qwen2_gguf_matches_transformers_with_weights_as_stored() {
    check(DTypeChoice::Auto);
}

#[test]
fn qwen2_gguf_matches_transformers_dequantized_to_f32() {
    check(DTypeChoice::F32);
}
