//! SmolLM2-135M-Instruct (fetched by scripts/fetch-models.sh): the HF folder our converter makes
//! from its GGUF must reproduce transformers' greedy continuations exactly (see
//! scripts/goldens/smollm2_reference.py); the GGUF itself, with quantized matmuls, must agree on
//! most tokens. One test function so the model is converted and loaded once.

mod models_common;

use candle_core::{Device, IndexOp, Tensor};
use evalfleet_worker::models::{
    Decoder, ForwardInput, LoadOptions, LoadedModel, LogitsAt, SourceKind, convert_gguf_to_hf,
    load_causal_lm,
};
use models_common::{fixtures, smollm2_gguf};
use serde_json::Value;

struct Case {
    prompt: Vec<u32>,
    reference: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let path = fixtures().join("smollm2-reference.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: ids(&c["prompt_ids"]),
            reference: ids(&c["reference"]),
        })
        .collect()
}

fn argmax(logits: &Tensor) -> u32 {
    logits
        .flatten_all()
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap()
}

fn row(tokens: &[u32], pos0: u32) -> ForwardInput {
    let n = tokens.len();
    ForwardInput {
        tokens: Tensor::from_vec(tokens.to_vec(), (1, n), &Device::Cpu).unwrap(),
        positions: Tensor::arange(pos0, pos0 + n as u32, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap(),
        key_mask: None,
    }
}

/// Plain greedy decoding of one prompt through the KV cache.
fn greedy(model: &LoadedModel, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut next = argmax(
        &model
            .forward(&row(prompt, 0), &mut cache, LogitsAt::Last)
            .unwrap(),
    );
    let mut out = vec![next];
    while out.len() < steps {
        let pos = (prompt.len() + out.len() - 1) as u32;
        next = argmax(
            &model
                .forward(&row(&[next], pos), &mut cache, LogitsAt::Last)
                .unwrap(),
        );
        out.push(next);
    }
    out
}

/// Teacher-forced agreement: fraction of steps where the model's argmax after the prompt and
/// the reference prefix is the reference token (one pass over prompt + reference).
fn forced_agreement(model: &LoadedModel, case: &Case) -> (usize, usize) {
    let mut seq = case.prompt.clone();
    seq.extend(&case.reference[..case.reference.len() - 1]);
    let logits = model
        .forward(&row(&seq, 0), &mut model.new_cache(), LogitsAt::All)
        .unwrap();
    let p = case.prompt.len();
    let hits = (0..case.reference.len())
        .filter(|&i| argmax(&logits.i((0, p - 1 + i)).unwrap()) == case.reference[i])
        .count();
    (hits, case.reference.len())
}

/// All prompts as one left-padded batch, greedy, through the cache.
fn greedy_batch(model: &LoadedModel, cases: &[Case], steps: usize) -> Vec<Vec<u32>> {
    let b = cases.len();
    let width = cases.iter().map(|c| c.prompt.len()).max().unwrap();
    let (mut ids, mut pos, mut mask) = (vec![], vec![], vec![]);
    for c in cases {
        let pad = width - c.prompt.len();
        ids.extend(std::iter::repeat_n(0u32, pad).chain(c.prompt.iter().copied()));
        pos.extend(std::iter::repeat_n(1u32, pad).chain(0..c.prompt.len() as u32));
        mask.extend(std::iter::repeat_n(0u8, pad).chain(std::iter::repeat_n(1u8, c.prompt.len())));
    }
    let dev = Device::Cpu;
    let mut input = ForwardInput {
        tokens: Tensor::from_vec(ids, (b, width), &dev).unwrap(),
        positions: Tensor::from_vec(pos, (b, width), &dev).unwrap(),
        key_mask: Some(Tensor::from_vec(mask.clone(), (b, width), &dev).unwrap()),
    };
    let mut cache = model.new_cache();
    let mut out = vec![vec![]; b];
    let mut next_pos: Vec<u32> = cases.iter().map(|c| c.prompt.len() as u32).collect();
    let mut key_mask = Tensor::from_vec(mask, (b, width), &dev).unwrap();
    for _ in 0..steps {
        let logits = model.forward(&input, &mut cache, LogitsAt::Last).unwrap();
        let next: Vec<u32> = (0..b).map(|r| argmax(&logits.i(r).unwrap())).collect();
        for (o, &t) in out.iter_mut().zip(&next) {
            o.push(t);
        }
        key_mask = Tensor::cat(
            &[
                &key_mask,
                &Tensor::ones((b, 1), candle_core::DType::U8, &dev).unwrap(),
            ],
            1,
        )
        .unwrap();
        input = ForwardInput {
            tokens: Tensor::from_vec(next, (b, 1), &dev).unwrap(),
            positions: Tensor::from_vec(next_pos.clone(), (b, 1), &dev).unwrap(),
            key_mask: Some(key_mask.clone()),
        };
        next_pos.iter_mut().for_each(|p| *p += 1);
    }
    out
}

#[test]
fn smollm2_converted_folder_matches_transformers_and_gguf_mostly_agrees() {
    let gguf = smollm2_gguf();
    let cases = cases();
    let steps = cases[0].reference.len();
    let opts = LoadOptions::default();

    let dir = tempfile::tempdir().unwrap();
    let cfg = convert_gguf_to_hf(&gguf, dir.path()).unwrap();
    assert_eq!(cfg.architecture, "LlamaForCausalLM");
    let hf = load_causal_lm(dir.path(), &[], &opts).unwrap();
    assert_eq!(hf.source_kind(), SourceKind::HfFolder);
    for (i, case) in cases.iter().enumerate() {
        let got = greedy(&hf, &case.prompt, steps);
        assert_eq!(
            got, case.reference,
            "case {i}: converted HF folder differs from transformers"
        );
    }
    let batched = greedy_batch(&hf, &cases, steps);
    for (i, (got, case)) in batched.iter().zip(&cases).enumerate() {
        assert_eq!(
            got, &case.reference,
            "case {i}: left-padded batch differs from transformers"
        );
    }
    drop(hf);

    // The GGUF dequantized to f32 runs the interleaved-RoPE path on llama.cpp's permuted q/k:
    // the same numbers as the converted folder, so it must match the reference exactly too.
    let f32_opts = LoadOptions {
        dtype: evalfleet_worker::models::DTypeChoice::F32,
        ..LoadOptions::default()
    };
    let deq = load_causal_lm(&gguf, &[], &f32_opts).unwrap();
    for (i, case) in cases.iter().enumerate() {
        let got = greedy(&deq, &case.prompt, steps);
        assert_eq!(
            got, case.reference,
            "case {i}: dequantized GGUF (interleaved RoPE) differs from transformers"
        );
    }
    drop(deq);

    let q = load_causal_lm(&gguf, &[], &opts).unwrap();
    assert_eq!(q.source_kind(), SourceKind::Gguf);
    let md = &q.gguf_content().expect("GGUF metadata is exposed").metadata;
    assert!(
        md.contains_key("tokenizer.ggml.tokens"),
        "the vocabulary is in the exposed metadata"
    );
    let (mut hits, mut total, mut prefix) = (0, 0, 0);
    for case in &cases {
        let (h, t) = forced_agreement(&q, case);
        hits += h;
        total += t;
        let free = greedy(&q, &case.prompt, steps);
        prefix += free
            .iter()
            .zip(&case.reference)
            .take_while(|(a, b)| a == b)
            .count();
    }
    let rate = hits as f64 / total as f64;
    println!(
        "GGUF Q4_1 vs f32 reference: teacher-forced agreement {hits}/{total} = {:.1}%, \
         free-running greedy matches the first {prefix}/{total} tokens",
        100.0 * rate
    );
    assert!(
        rate >= 0.75,
        "GGUF path agrees with the f32 reference on only {:.1}% of tokens",
        100.0 * rate
    );
}

#[test]
fn lora_on_a_gguf_model_is_refused_with_a_reason() {
    let gguf = smollm2_gguf();
    let adapter = fixtures().join("tiny-llama/lora");
    let err = load_causal_lm(&gguf, &[adapter], &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("quantized"), "{err}");
}
