//! Architecture parity with transformers: tiny random llama / qwen2 / mistral checkpoints (see
//! scripts/goldens/tiny_models.py) must give the reference logits at every position within 1e-4,
//! with and without merged LoRA adapters, for an unpadded sequence and a left-padded batch, in one
//! pass or step by step through the KV cache, and after dropping rows from the cache; the qwen2
//! checkpoint also as a GGUF file in llama.cpp's layout.

use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp, Tensor};
use evalfleet_worker::models::{
    DTypeChoice, Decoder, ForwardInput, LoadOptions, LoadedModel, LogitsAt, SourceKind,
    load_causal_lm,
};
use serde_json::Value;

const TOL: f32 = 1e-4;

struct Fixture {
    dir: PathBuf,
    single: Vec<u32>,
    ids: Vec<Vec<u32>>,
    mask: Vec<Vec<u8>>,
    positions: Vec<Vec<u32>>,
    logits: std::collections::HashMap<String, Tensor>,
}

fn fixture(arch: &str) -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("tiny-{arch}"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let rows = |k: &str| -> Vec<Vec<u64>> { serde_json::from_value(json[k].clone()).unwrap() };
    let to_u32 = |v: Vec<Vec<u64>>| -> Vec<Vec<u32>> {
        v.into_iter()
            .map(|r| r.into_iter().map(|x| x as u32).collect())
            .collect()
    };
    let logits =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    Fixture {
        single: to_u32(rows("single")).remove(0),
        ids: to_u32(rows("batch_ids")),
        mask: rows("batch_mask")
            .into_iter()
            .map(|r| r.into_iter().map(|x| x as u8).collect())
            .collect(),
        positions: to_u32(rows("batch_positions")),
        logits,
        dir,
    }
}

fn load(fx: &Fixture, adapters: &[&str]) -> LoadedModel {
    let adapters: Vec<PathBuf> = adapters.iter().map(|a| fx.dir.join(a)).collect();
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: DTypeChoice::Auto,
        ..LoadOptions::default()
    };
    load_causal_lm(&fx.dir.join("model"), &adapters, &opts).unwrap()
}

fn t2<T: candle_core::WithDType>(rows: &[Vec<T>], cols: std::ops::Range<usize>) -> Tensor {
    let flat: Vec<T> = rows
        .iter()
        .flat_map(|r| r[cols.clone()].iter().copied())
        .collect();
    Tensor::from_vec(flat, (rows.len(), cols.len()), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest difference between `got` `(rows, seq, vocab)` and `want` over the non-padding cells;
/// `rows` maps got's rows to the reference batch rows, `col0` is got's first column.
fn diff_unpadded(fx: &Fixture, got: &Tensor, want: &Tensor, rows: &[usize], col0: usize) -> f32 {
    let (_, s, _) = got.dims3().unwrap();
    let mut worst = 0f32;
    for (gi, &r) in rows.iter().enumerate() {
        for c in 0..s {
            if fx.mask[r][col0 + c] == 1 {
                worst = worst.max(max_diff(
                    &got.i((gi, c)).unwrap(),
                    &want.i((r, col0 + c)).unwrap(),
                ));
            }
        }
    }
    worst
}

fn check_variant(arch: &str, fx: &Fixture, adapters: &[&str], key: &str) {
    check_model(arch, fx, &load(fx, adapters), key);
}

/// `model`'s logits against the fixture's reference `key`: one sequence, `LogitsAt::Last`, the
/// left-padded batch, cached decoding and decoding after `retain_rows`.
fn check_model(arch: &str, fx: &Fixture, model: &LoadedModel, key: &str) {
    let n = fx.single.len();
    let single = Tensor::from_vec(fx.single.clone(), (1, n), &Device::Cpu).unwrap();
    let positions = Tensor::arange(0u32, n as u32, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let input = ForwardInput {
        tokens: single,
        positions,
        key_mask: None,
    };
    let mut cache = model.new_cache();
    let all = model.forward(&input, &mut cache, LogitsAt::All).unwrap();
    let want = &fx.logits[&format!("single.{key}")];
    let d = max_diff(&all.squeeze(0).unwrap(), want);
    println!("{arch} {key} single: max |diff| {d:e}");
    assert!(
        d < TOL,
        "{arch} {key}: single-sequence logits differ by {d}"
    );

    let last = model
        .forward(&input, &mut model.new_cache(), LogitsAt::Last)
        .unwrap();
    assert_eq!(last.dims(), &[1, 1, model.vocab_size()]);
    let d = max_diff(&last.i((0, 0)).unwrap(), &all.i((0, n - 1)).unwrap());
    assert!(
        d < 1e-5,
        "{arch} {key}: LogitsAt::Last differs from the last row of All by {d}"
    );

    // The left-padded batch in one pass.
    let (b, s) = (fx.ids.len(), fx.ids[0].len());
    let want = &fx.logits[&format!("batch.{key}")];
    let full = ForwardInput {
        tokens: t2(&fx.ids, 0..s),
        positions: t2(&fx.positions, 0..s),
        key_mask: Some(t2(&fx.mask, 0..s)),
    };
    let got = model
        .forward(&full, &mut model.new_cache(), LogitsAt::All)
        .unwrap();
    let d = diff_unpadded(fx, &got, want, &(0..b).collect::<Vec<_>>(), 0);
    println!("{arch} {key} padded batch: max |diff| {d:e}");
    assert!(d < TOL, "{arch} {key}: padded batch logits differ by {d}");

    // Prefill 8 columns, then one column per step through the cache.
    let prefill = 8;
    let mut cache = model.new_cache();
    let step = |cache: &mut _, rows: &[usize], cols: std::ops::Range<usize>, at| {
        let pick = |v: &Vec<Vec<u32>>| rows.iter().map(|&r| v[r].clone()).collect::<Vec<_>>();
        let mask: Vec<Vec<u8>> = rows.iter().map(|&r| fx.mask[r].clone()).collect();
        let input = ForwardInput {
            tokens: t2(&pick(&fx.ids), cols.clone()),
            positions: t2(&pick(&fx.positions), cols.clone()),
            key_mask: Some(t2(&mask, 0..cols.end)),
        };
        model.forward(&input, cache, at).unwrap()
    };
    let all_rows: Vec<usize> = (0..b).collect();
    let got = step(&mut cache, &all_rows, 0..prefill, LogitsAt::All);
    let mut worst = diff_unpadded(fx, &got, want, &all_rows, 0);
    for c in prefill..prefill + 2 {
        let got = step(&mut cache, &all_rows, c..c + 1, LogitsAt::Last);
        worst = worst.max(diff_unpadded(fx, &got, want, &all_rows, c));
    }
    println!("{arch} {key} incremental: max |diff| {worst:e}");
    assert!(
        worst < TOL,
        "{arch} {key}: cached decoding differs from the reference by {worst}"
    );

    // Drop the middle row and reorder; the remaining rows must continue unchanged.
    let kept = [2usize, 0];
    model.retain_rows(&mut cache, &kept).unwrap();
    let mut worst = 0f32;
    for c in prefill + 2..s {
        let got = step(&mut cache, &kept, c..c + 1, LogitsAt::Last);
        worst = worst.max(diff_unpadded(fx, &got, want, &kept, c));
    }
    println!("{arch} {key} after retain_rows: max |diff| {worst:e}");
    assert!(
        worst < TOL,
        "{arch} {key}: decoding after retain_rows differs by {worst}"
    );
}

#[test]
fn llama_matches_transformers_with_sharded_weights_llama3_rope_and_two_adapters() {
    let fx = fixture("llama");
    check_variant("llama", &fx, &[], "base");
    check_variant("llama", &fx, &["lora"], "lora");
    check_variant("llama", &fx, &["lora", "lora2"], "lora2");
}

#[test]
fn qwen2_matches_transformers_with_qkv_bias_and_tied_embeddings() {
    let fx = fixture("qwen2");
    check_variant("qwen2", &fx, &[], "base");
    check_variant("qwen2", &fx, &["lora"], "lora");
}

#[test]
fn mistral_matches_transformers_with_a_sliding_window_shorter_than_the_input() {
    let fx = fixture("mistral");
    check_variant("mistral", &fx, &[], "base");
    check_variant("mistral", &fx, &["lora"], "lora");
}

#[test]
fn bf16_weights_stay_close_to_f32() {
    let fx = fixture("qwen2");
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: DTypeChoice::BF16,
        ..LoadOptions::default()
    };
    let model = load_causal_lm(&fx.dir.join("model"), &[], &opts).unwrap();
    let n = fx.single.len();
    let input = ForwardInput {
        tokens: Tensor::from_vec(fx.single.clone(), (1, n), &Device::Cpu).unwrap(),
        positions: Tensor::arange(0u32, n as u32, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap(),
        key_mask: None,
    };
    let got = model
        .forward(&input, &mut model.new_cache(), LogitsAt::All)
        .unwrap();
    assert_eq!(
        got.dtype(),
        candle_core::DType::F32,
        "logits are returned as f32"
    );
    let want = &fx.logits["single.base"];
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_diff(&got.squeeze(0).unwrap(), want);
    println!("bf16 vs f32 reference: max |diff| {d} (logit scale {scale})");
    assert!(
        d < 0.1 * scale,
        "bf16 logits are far from the f32 reference: {d}"
    );
}

#[test]
fn retain_rows_can_expand_a_shared_prefix_into_a_batch() {
    let fx = fixture("llama");
    let model = load(&fx, &[]);
    let n = fx.single.len();
    let dev = Device::Cpu;
    let input = |toks: &[u32], pos0: u32, rows: usize| ForwardInput {
        tokens: Tensor::from_vec(toks.repeat(rows), (rows, toks.len()), &dev).unwrap(),
        positions: Tensor::arange(pos0, pos0 + toks.len() as u32, &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .repeat((rows, 1))
            .unwrap(),
        key_mask: None,
    };
    let mut cache = model.new_cache();
    model
        .forward(
            &input(&fx.single[..n - 1], 0, 1),
            &mut cache,
            LogitsAt::Last,
        )
        .unwrap();
    model.retain_rows(&mut cache, &[0, 0, 0]).unwrap();
    assert_eq!(cache.batch(), Some(3));
    let got = model
        .forward(
            &input(&fx.single[n - 1..], (n - 1) as u32, 3),
            &mut cache,
            LogitsAt::Last,
        )
        .unwrap();
    let want = fx.logits["single.base"].i(n - 1).unwrap();
    for r in 0..3 {
        let d = max_diff(&got.i((r, 0)).unwrap(), &want);
        assert!(d < TOL, "row {r} of the expanded prefix differs by {d}");
    }
}

/// tiny-qwen2 written as a GGUF the way llama.cpp converts Qwen2 (scripts/goldens/tiny_gguf.py):
/// unpermuted q/k (half-split rope), q/k/v biases, no output.weight (tied head).
fn check_qwen2_gguf(dtype: DTypeChoice) {
    let fx = fixture("qwen2");
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype,
        ..LoadOptions::default()
    };
    let model = load_causal_lm(&fx.dir.join("model.gguf"), &[], &opts).unwrap();
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
    check_model(&format!("qwen2 gguf {dtype:?}"), &fx, &model, "base");
}

#[test]
fn qwen2_gguf_matches_transformers_with_weights_as_stored() {
    check_qwen2_gguf(DTypeChoice::Auto);
}

#[test]
fn qwen2_gguf_matches_transformers_dequantized_to_f32() {
    check_qwen2_gguf(DTypeChoice::F32);
}
