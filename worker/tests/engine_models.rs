//! The engine on the real decoders: the tiny random llama / qwen2 / mistral checkpoints and
//! SmolLM2-135M-Instruct (fetched by scripts/fetch-models.sh; its GGUF and the HF folder our
//! converter makes from it). Batched generation must give the same tokens as batch 1, greedy and
//! seeded sampling, and greedy must reproduce transformers' reference continuations.

mod models_common;

use std::collections::HashSet;

use evalfleet_worker::engine::{
    GenOptions, GenOutput, GenRequest, SamplingParams, generate, item_rng,
};
use evalfleet_worker::models::{LoadOptions, LoadedModel, convert_gguf_to_hf, load_causal_lm};
use models_common::{fixtures, smollm2_gguf};
use rand_chacha::rand_core::Rng;
use serde_json::Value;

/// LLaMA-Factory's default sampling (docs/FIDELITY.md, decision 5) with a repetition penalty on
/// top.
fn lf_sampling() -> SamplingParams {
    SamplingParams {
        do_sample: true,
        temperature: 0.95,
        top_p: 0.7,
        top_k: 50,
        repetition_penalty: 1.1,
    }
}

fn request(i: usize, prompt: Vec<u32>, sampling: SamplingParams, max_new: usize) -> GenRequest {
    GenRequest {
        item_id: format!("item-{i}"),
        prompt_ids: prompt,
        stop_ids: HashSet::new(),
        max_new_tokens: max_new,
        sampling,
        seed: 42,
    }
}

fn run(model: &LoadedModel, reqs: &[GenRequest], max_batch: usize) -> Vec<GenOutput> {
    generate(
        model,
        reqs,
        &GenOptions {
            max_batch,
            max_batch_tokens: 0,
        },
    )
    .expect("generate")
}

/// Asserts that every batch size gives the outputs of batch 1; returns them.
fn assert_batch_invariant(
    model: &LoadedModel,
    reqs: &[GenRequest],
    sizes: &[usize],
    what: &str,
) -> Vec<GenOutput> {
    let one = run(model, reqs, 1);
    for &size in sizes {
        let got = run(model, reqs, size);
        for (i, (g, o)) in got.iter().zip(&one).enumerate() {
            assert_eq!(
                g, o,
                "{what}: item {i} differs between batch {size} and batch 1"
            );
        }
    }
    one
}

#[test]
fn tiny_checkpoints_are_batch_invariant() {
    for arch in ["tiny-llama", "tiny-qwen2", "tiny-mistral"] {
        let model = load_causal_lm(
            &fixtures().join(arch).join("model"),
            &[],
            &LoadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{arch}: {e}"));
        // Prompt lengths 1..=30 (the checkpoints have 64 positions): plenty of padding.
        let mut rng = item_rng(7, arch);
        let prompts: Vec<Vec<u32>> = (0..12)
            .map(|i| {
                (0..1 + (i * 11) % 30)
                    .map(|_| 3 + rng.next_u32() % 250)
                    .collect()
            })
            .collect();
        for (label, sampling) in [
            ("greedy", SamplingParams::greedy()),
            ("sampled", lf_sampling()),
        ] {
            let reqs: Vec<GenRequest> = prompts
                .iter()
                .enumerate()
                .map(|(i, p)| request(i, p.clone(), sampling, 20))
                .collect();
            let out = assert_batch_invariant(&model, &reqs, &[4, 12], &format!("{arch} {label}"));
            let distinct: HashSet<&Vec<u32>> = out.iter().map(|o| &o.tokens).collect();
            assert!(
                distinct.len() > 6,
                "{arch} {label}: outputs should differ between prompts"
            );
        }
    }
}

struct Case {
    prompt: Vec<u32>,
    reference: Vec<u32>,
}

/// The fixed chat prompts and transformers' greedy continuations (scripts/goldens/smollm2_reference.py).
fn reference_cases() -> Vec<Case> {
    let path = fixtures().join("smollm2-reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).expect("reference json");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .expect("id list")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            prompt: ids(&c["prompt_ids"]),
            reference: ids(&c["reference"]),
        })
        .collect()
}

/// Eight prompts: the reference cases, then prefixes of them (other lengths, more padding).
fn smollm2_prompts(cases: &[Case]) -> Vec<Vec<u32>> {
    let mut prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt.clone()).collect();
    prompts.extend(
        cases
            .iter()
            .take(3)
            .enumerate()
            .map(|(i, c)| c.prompt[..c.prompt.len() / (i + 2)].to_vec()),
    );
    prompts
}

#[test]
fn smollm2_batches_match_transformers_and_batch_one() {
    let gguf = smollm2_gguf();
    let cases = reference_cases();
    let steps = cases[0].reference.len();
    let prompts = smollm2_prompts(&cases);
    let requests = |sampling: SamplingParams, max_new: usize| -> Vec<GenRequest> {
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| request(i, p.clone(), sampling, max_new))
            .collect()
    };

    let dir = tempfile::tempdir().expect("tempdir");
    convert_gguf_to_hf(&gguf, dir.path()).expect("convert GGUF to an HF folder");
    let hf = load_causal_lm(dir.path(), &[], &LoadOptions::default()).expect("load HF folder");
    // Greedy in one left-padded batch of 8 reproduces transformers token for token.
    let greedy = run(&hf, &requests(SamplingParams::greedy(), steps), 8);
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(
            greedy[i].tokens, case.reference,
            "HF folder, case {i}: batch 8 differs from transformers"
        );
    }
    assert_batch_invariant(&hf, &requests(lf_sampling(), 12), &[8], "HF folder sampled");
    drop(hf);

    // The quantized GGUF is exactly batch-invariant too: candle's quantized matmul computes each
    // row on its own, and the CPU attention reduces over visible keys only, so left padding
    // cannot change a row's rounding (which Q8_0 activation quantization would amplify).
    let q = load_causal_lm(&gguf, &[], &LoadOptions::default()).expect("load GGUF");
    assert_batch_invariant(
        &q,
        &requests(SamplingParams::greedy(), 12),
        &[3, 8],
        "GGUF greedy",
    );
    assert_batch_invariant(&q, &requests(lf_sampling(), 12), &[3, 8], "GGUF sampled");
}
