//! The engine on a tiny deterministic decoder: batched generation equals unbatched, cache-free
//! generation; sampling does not depend on batch size or order; stops and limits per row.

mod engine_common;

use std::collections::HashSet;

use engine_common::{TinyLm, VOCAB, reference_greedy, requests};
use evalfleet_worker::engine::{
    FinishReason, GenOptions, GenOutput, GenRequest, SamplingParams, generate, generate_each,
};

fn opts(max_batch: usize) -> GenOptions {
    GenOptions {
        max_batch,
        max_batch_tokens: 0,
    }
}

fn sampled() -> SamplingParams {
    SamplingParams {
        do_sample: true,
        temperature: 0.95,
        top_p: 0.7,
        top_k: 20,
        repetition_penalty: 1.1,
    }
}

#[test]
fn greedy_batches_equal_the_cache_free_reference() {
    let lm = TinyLm::new(1);
    let reqs = requests(11, SamplingParams::greedy(), 12);
    let batched = generate(&lm, &reqs, &opts(8)).expect("generate");
    for (r, out) in reqs.iter().zip(&batched) {
        let want =
            reference_greedy(&lm, &r.prompt_ids, &r.stop_ids, r.max_new_tokens).expect("reference");
        assert_eq!(out.tokens, want, "{}", r.item_id);
        assert_eq!(out.finish, FinishReason::Length);
    }
    let distinct: HashSet<&Vec<u32>> = batched.iter().map(|o| &o.tokens).collect();
    assert!(
        distinct.len() > 5,
        "the test model should not collapse to one continuation"
    );
}

#[test]
fn greedy_and_sampled_do_not_depend_on_batch_size() {
    let lm = TinyLm::new(2);
    for sampling in [SamplingParams::greedy(), sampled()] {
        let reqs = requests(13, sampling, 10);
        let one = generate(&lm, &reqs, &opts(1)).expect("batch 1");
        for max_batch in [3, 8, 32] {
            assert_eq!(
                generate(&lm, &reqs, &opts(max_batch)).expect("batched"),
                one,
                "{sampling:?} batch {max_batch}"
            );
        }
        let tight = GenOptions {
            max_batch: 8,
            max_batch_tokens: 20,
        };
        assert_eq!(generate(&lm, &reqs, &tight).expect("token-limited"), one);
    }
}

#[test]
fn sampled_items_do_not_depend_on_their_neighbours() {
    let lm = TinyLm::new(3);
    let reqs = requests(12, sampled(), 10);
    let all = generate(&lm, &reqs, &opts(8)).expect("all");
    // Reversed order and a subset (what another worker would get) give the same per item.
    let reversed: Vec<GenRequest> = reqs.iter().rev().cloned().collect();
    let mut back = generate(&lm, &reversed, &opts(4)).expect("reversed");
    back.reverse();
    assert_eq!(back, all);
    let odd: Vec<GenRequest> = reqs.iter().skip(1).step_by(2).cloned().collect();
    let odd_out = generate(&lm, &odd, &opts(8)).expect("subset");
    assert_eq!(
        odd_out,
        all.iter().skip(1).step_by(2).cloned().collect::<Vec<_>>()
    );
    // A different seed changes the samples.
    let reseeded: Vec<GenRequest> = reqs
        .iter()
        .cloned()
        .map(|r| GenRequest { seed: 7, ..r })
        .collect();
    assert_ne!(generate(&lm, &reseeded, &opts(8)).expect("reseeded"), all);
}

#[test]
fn rows_stop_at_their_own_stop_ids_and_limits() {
    let lm = TinyLm::new(4);
    let free =
        generate(&lm, &requests(10, SamplingParams::greedy(), 12), &opts(8)).expect("free run");
    // Give each request a stop id taken from its own free continuation, at different depths,
    // and different limits, so rows leave the batch at different steps.
    let mut reqs = requests(10, SamplingParams::greedy(), 12);
    let mut want = Vec::new();
    for (i, (r, f)) in reqs.iter_mut().zip(&free).enumerate() {
        r.max_new_tokens = 4 + i % 9;
        // Every third request only has a stop id the model never produces.
        let stop = if i % 3 == 2 {
            VOCAB as u32 + 5
        } else {
            f.tokens[i % 6]
        };
        r.stop_ids = HashSet::from([stop, VOCAB as u32 + 5]);
        let cut = f
            .tokens
            .iter()
            .position(|&t| t == stop)
            .map_or(usize::MAX, |p| p + 1);
        want.push(if cut <= r.max_new_tokens {
            GenOutput {
                tokens: f.tokens[..cut].to_vec(),
                finish: FinishReason::Stop,
            }
        } else {
            GenOutput {
                tokens: f.tokens[..r.max_new_tokens].to_vec(),
                finish: FinishReason::Length,
            }
        });
    }
    assert!(want.iter().any(|w| w.finish == FinishReason::Stop));
    assert!(want.iter().any(|w| w.finish == FinishReason::Length));
    for max_batch in [1, 4, 10] {
        assert_eq!(
            generate(&lm, &reqs, &opts(max_batch)).expect("generate"),
            want,
            "batch {max_batch}"
        );
    }
}

#[test]
fn each_request_is_reported_once_and_edge_cases() {
    let lm = TinyLm::new(5);
    let mut reqs = requests(6, SamplingParams::greedy(), 5);
    reqs[2].max_new_tokens = 0;
    let mut seen = Vec::new();
    generate_each(&lm, &reqs, &opts(4), &mut |i, out| seen.push((i, out))).expect("generate_each");
    let mut indices: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
    indices.sort();
    assert_eq!(indices, (0..6).collect::<Vec<_>>());
    let zero = &seen.iter().find(|(i, _)| *i == 2).expect("request 2").1;
    assert_eq!(
        zero,
        &GenOutput {
            tokens: vec![],
            finish: FinishReason::Length
        }
    );

    reqs[4].prompt_ids.clear();
    let err = generate(&lm, &reqs, &opts(4)).expect_err("empty prompt");
    assert!(
        err.to_string().contains("item-4") && err.to_string().contains("empty"),
        "{err}"
    );
}
