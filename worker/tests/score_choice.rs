//! Step-3 choice scoring (score::choice): on the tiny random llama / qwen2 checkpoints, every
//! item's probabilities are bit-identical for any batch size, batch token limit, item order and
//! lease split, and the prefix-cached probabilities equal a plain full-prompt forward within
//! 1e-5; the prefix LRU keeps its bounds. On SmolLM2-135M-Instruct's GGUF (scripts/fetch-models.sh),
//! whole leases through the executor: the prompt is PromptBuilder's, the choice ids are " A".."D",
//! batch 1 and batch 8 agree bit for bit (quantized and f32), a chat template whose pairs are not
//! a token prefix shares nothing, and errors are per item and clear.

mod models_common;

use std::path::Path;

use candle_core::{Device, IndexOp, Tensor};
use evalfleet_proto::v1 as pb;
use evalfleet_worker::models::{
    DTypeChoice, Decoder, ForwardInput, LoadOptions, LoadedModel, LogitsAt, load_causal_lm,
};
use evalfleet_worker::score::choice::{
    ChoiceJob, PrefixCache, ScoreOptions, choice_ids, prepare_job, probabilities, score_jobs,
};
use evalfleet_worker::tasks::{Executor, ExecutorOptions};
use evalfleet_worker::tokenize::text::SpecialTokenSpec;
use evalfleet_worker::tokenize::{
    ChatMessage, PromptBuilder, PromptStyle, TextTokenizer, get_template,
};
use models_common::{fixtures, smollm2_gguf};
use pb::item_result::Outcome;

// ---------------------------------------------------------------------------------------------
// Tiny random checkpoints, token level.

fn tiny(arch: &str) -> LoadedModel {
    let dir = fixtures().join(format!("tiny-{arch}/model"));
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: DTypeChoice::F32,
        ..LoadOptions::default()
    };
    load_causal_lm(&dir, &[], &opts).expect("tiny model loads")
}

/// Deterministic ids below the tiny vocabulary (256).
fn ids(n: usize, seed: usize) -> Vec<u32> {
    (0..n)
        .map(|j| ((seed * 131 + j * 37 + j * j * 7) % 251) as u32 + 3)
        .collect()
}

/// Few-shot "pairs" of 7, 8, 5 and 9 tokens.
fn pair(name: usize) -> Vec<u32> {
    ids([7, 8, 5, 9][name], 1000 * (name + 1))
}

/// The prefix chains of [`tiny_jobs`]: pairs (a, b), (a, b, c), (c, d), none.
const CHAINS: [&[usize]; 4] = [&[0, 1], &[0, 1, 2], &[2, 3], &[]];

/// 22 questions, question i after the pairs of `CHAINS[i % 4]`: nested prefixes (a, b) and
/// (a, b, c), another one, and none; suffixes of 1 to 19 tokens (one-token suffixes included);
/// at most 39 tokens (the tiny models hold 64).
fn tiny_jobs() -> Vec<ChoiceJob> {
    (0..22)
        .map(|i| {
            let mut prompt_ids = Vec::new();
            let mut prefix_ends = Vec::new();
            for &p in CHAINS[i % 4] {
                prompt_ids.extend(pair(p));
                prefix_ends.push(prompt_ids.len());
            }
            prompt_ids.extend(ids(1 + (i * 7) % 19, i));
            ChoiceJob {
                item_id: format!("q{i}"),
                prompt_ids,
                prefix_ends,
                choice_ids: vec![7, 19 + i as u32 % 5, 101, 250],
            }
        })
        .collect()
}

/// Scores `jobs` in the lease `chunks` (index ranges) with one prefix cache across them;
/// returns the probabilities by job index.
fn score(
    model: &LoadedModel,
    jobs: &[ChoiceJob],
    opts: ScoreOptions,
    order: &[usize],
    chunks: usize,
    prefixes: &mut PrefixCache,
) -> Vec<Vec<f32>> {
    let mut out = vec![Vec::new(); jobs.len()];
    for lease in order.chunks(order.len().div_ceil(chunks)) {
        let lease_jobs: Vec<ChoiceJob> = lease.iter().map(|&i| jobs[i].clone()).collect();
        score_jobs(model, &lease_jobs, &opts, prefixes, &mut |i, p| {
            out[lease[i]] = p
        })
        .expect("score_jobs");
    }
    assert!(order.iter().all(|&i| out[i].len() == 4), "every job scored");
    out
}

fn bits(p: &[Vec<f32>]) -> Vec<Vec<u32>> {
    p.iter()
        .map(|r| r.iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn opts(max_batch: usize, max_batch_tokens: usize) -> ScoreOptions {
    ScoreOptions {
        max_batch,
        max_batch_tokens,
    }
}

#[test]
fn tiny_models_give_the_same_bits_for_any_batching_and_lease_split() {
    for arch in ["llama", "qwen2"] {
        let model = tiny(arch);
        let jobs = tiny_jobs();
        let forward: Vec<usize> = (0..jobs.len()).collect();
        let reversed: Vec<usize> = forward.iter().rev().copied().collect();
        let shuffled: Vec<usize> = (0..jobs.len()).map(|i| (i * 9) % jobs.len()).collect();
        let one = score(
            &model,
            &jobs,
            opts(1, 0),
            &forward,
            1,
            &mut PrefixCache::default(),
        );
        let runs = [
            (opts(8, 0), &forward, 1),
            (opts(8, 0), &reversed, 3),
            (opts(3, 40), &shuffled, 2),
            (opts(22, 0), &shuffled, 1),
            (opts(5, 0), &forward, 7),
        ];
        for (o, order, chunks) in runs {
            // A small cache across the leases: prefixes are dropped and computed again.
            let got = score(&model, &jobs, o, order, chunks, &mut PrefixCache::new(1, 0));
            assert_eq!(
                bits(&got),
                bits(&one),
                "{arch}: {o:?} in {chunks} leases differs from batch 1"
            );
            let mut cache = PrefixCache::default();
            let got = score(&model, &jobs, o, order, chunks, &mut cache);
            assert_eq!(bits(&got), bits(&one), "{arch}: {o:?}, default cache");
        }
        // The probabilities are not degenerate (the test would pass on constants otherwise).
        assert!(one.iter().any(|p| p[0] != one[0][0]), "{arch}: {one:?}");
    }
}

/// The reference: the whole prompt in one unpadded forward pass, logits at every position.
fn full_forward(model: &LoadedModel, job: &ChoiceJob) -> Vec<f32> {
    let n = job.prompt_ids.len();
    let input = ForwardInput {
        tokens: Tensor::from_vec(job.prompt_ids.clone(), (1, n), &Device::Cpu).unwrap(),
        positions: Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), (1, n), &Device::Cpu)
            .unwrap(),
        key_mask: None,
    };
    let logits = model
        .forward(&input, &mut model.new_cache(), LogitsAt::All)
        .unwrap();
    let last: Vec<f32> = logits.i((0, n - 1)).unwrap().to_vec1().unwrap();
    probabilities(
        &job.choice_ids
            .iter()
            .map(|&c| last[c as usize])
            .collect::<Vec<_>>(),
    )
}

#[test]
fn prefix_cached_probabilities_equal_a_full_prompt_forward() {
    for arch in ["llama", "qwen2"] {
        let model = tiny(arch);
        let jobs = tiny_jobs();
        let order: Vec<usize> = (0..jobs.len()).collect();
        let cached = score(
            &model,
            &jobs,
            opts(8, 0),
            &order,
            1,
            &mut PrefixCache::default(),
        );
        let plain_jobs: Vec<ChoiceJob> = jobs
            .iter()
            .map(|j| ChoiceJob {
                prefix_ends: Vec::new(),
                ..j.clone()
            })
            .collect();
        let plain = score(
            &model,
            &plain_jobs,
            opts(8, 0),
            &order,
            1,
            &mut PrefixCache::default(),
        );
        let mut worst = 0f32;
        for (i, job) in jobs.iter().enumerate() {
            let want = full_forward(&model, job);
            for ((c, p), w) in cached[i].iter().zip(&plain[i]).zip(&want) {
                worst = worst.max((c - w).abs()).max((p - w).abs());
            }
        }
        assert!(worst <= 1e-5, "{arch}: max difference {worst}");
    }
}

#[test]
fn prefix_cache_computes_levels_once_and_keeps_its_bounds() {
    let model = tiny("llama");
    let jobs = tiny_jobs();
    let all: Vec<usize> = (0..jobs.len()).collect();
    let of = |chains: &[usize]| -> Vec<usize> {
        all.iter()
            .copied()
            .filter(|i| chains.contains(&(i % 4)))
            .collect()
    };
    let run = |order: &[usize], cache: &mut PrefixCache| {
        score(&model, &jobs, opts(8, 0), order, 1, cache);
        (cache.stats(), cache.len())
    };
    // Levels a, ab, then abc from ab, then c, cd: five computed, all held.
    let mut cache = PrefixCache::default();
    assert_eq!(run(&all, &mut cache), ((0, 5), 5));
    assert_eq!(run(&of(&[0, 1]), &mut cache), ((2, 5), 5));
    // Two levels held: the chain (a, b, c) is built again from scratch, then (a, b) is held.
    let mut small = PrefixCache::new(2, usize::MAX);
    assert_eq!(run(&all, &mut small), ((0, 5), 2));
    assert_eq!(run(&of(&[1]), &mut small), ((0, 8), 2));
    assert_eq!(run(&of(&[0]), &mut small), ((1, 8), 2));
    // A byte budget of one and a half levels keeps only the latest one (the tiny levels all
    // have one buffer capacity).
    let level = cache.bytes() / cache.len();
    assert!(
        level > 0 && cache.bytes() == 5 * level,
        "{} bytes",
        cache.bytes()
    );
    let mut tight = PrefixCache::new(12, level * 3 / 2);
    assert_eq!(run(&all, &mut tight), ((0, 5), 1));
    assert_eq!(tight.bytes(), level);
}

// ---------------------------------------------------------------------------------------------
// SmolLM2 GGUF, whole leases.

fn message(role: &str, content: &str) -> pb::ChatMessage {
    pb::ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

const SUBJECTS: [&str; 2] = ["abstract algebra", "astronomy"];

/// LF's en eval template: the subject line is prepended to the first shot's user turn.
fn question(i: usize) -> String {
    format!(
        "Question {i}: what is {} plus {}?\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer: ",
        i + 2,
        i * 3,
        i + 1,
        4 * i + 2,
        i * 5,
        i + 7
    )
}

/// Items of two subjects sharing each a two-shot prefix (`pairs` = 2), and with `pairs` = 0.
fn choice_items(pairs: u32, count: usize) -> Vec<pb::WorkItem> {
    (0..count)
        .map(|i| {
            let subject = SUBJECTS[i % 2];
            let system = format!(
                "The following are multiple choice questions (with answers) about {subject}.\n\n"
            );
            let shots = [100 + i % 2, 200 + i % 2];
            let mut messages = vec![
                message("user", &format!("{system}{}", question(shots[0]))),
                message("assistant", "B"),
                message("user", &question(shots[1])),
                message("assistant", "D"),
            ];
            // Questions of different lengths (batches need padding).
            messages.push(message("user", &question(i).repeat(1 + i % 2)));
            pb::WorkItem {
                item_id: format!("q{i}"),
                payload: Some(pb::work_item::Payload::Choice(pb::ChoiceItem {
                    messages,
                    system: String::new(),
                    choice_texts: [" A", " B", " C", " D"].map(String::from).to_vec(),
                    shared_prefix_pairs: pairs,
                })),
            }
        })
        .collect()
}

fn choice_lease(template: &str, dtype: &str, items: Vec<pb::WorkItem>) -> pb::Lease {
    pb::Lease {
        lease_id: 3,
        task: "mmlu".into(),
        model: Some(pb::ModelSpec {
            key: format!("smollm2-{dtype}"),
            model_path: smollm2_gguf().display().to_string(),
            adapter_paths: vec![],
            dtype: dtype.into(),
        }),
        prompt: Some(pb::PromptSpec {
            template: template.into(),
            cutoff_len: 0,
            reserved_label_len: 0,
        }),
        generation: None,
        items,
        ..Default::default()
    }
}

fn executor(max_batch: usize) -> Executor {
    Executor::new(ExecutorOptions {
        max_batch,
        ..Default::default()
    })
}

/// Runs the lease's items in `chunks` leases; results by item id.
fn run_choice(
    executor: &mut Executor,
    lease: &pb::Lease,
    chunks: usize,
) -> std::collections::BTreeMap<String, Outcome> {
    let mut out = std::collections::BTreeMap::new();
    for part in lease.items.chunks(lease.items.len().div_ceil(chunks)) {
        let sub = pb::Lease {
            items: part.to_vec(),
            ..lease.clone()
        };
        executor
            .run_lease(&sub, &mut |r| {
                assert_eq!(r.lease_id, 3);
                let old = out.insert(r.item_id.clone(), r.outcome.expect("an outcome"));
                assert!(old.is_none(), "{} answered twice", r.item_id);
            })
            .expect("run_lease");
    }
    assert_eq!(out.len(), lease.items.len(), "one result per item");
    out
}

fn probs(results: &std::collections::BTreeMap<String, Outcome>) -> Vec<Vec<f32>> {
    results
        .values()
        .map(|o| match o {
            Outcome::Choice(c) => c.probabilities.clone(),
            other => panic!("expected a choice result, got {other:?}"),
        })
        .collect()
}

#[test]
fn smollm2_choice_ids_are_the_spaced_letters() {
    let tok = TextTokenizer::from_model_path(&smollm2_gguf()).unwrap();
    let texts = [" A", " B", " C", " D"].map(String::from);
    assert_eq!(
        choice_ids(&tok, &texts, 49152).unwrap(),
        [330, 389, 340, 422]
    );
    let err = choice_ids(&tok, &[" A".into(), String::new()], 49152).unwrap_err();
    assert!(err.contains("\"\"") && err.contains("no token"), "{err}");
}

#[test]
fn smollm2_prompt_is_the_prompt_builders_and_the_prefix_ends_at_the_second_answer() {
    let tok = TextTokenizer::from_model_path(&smollm2_gguf()).unwrap();
    let items = choice_items(2, 2);
    let Some(pb::work_item::Payload::Choice(item)) = &items[0].payload else {
        unreachable!()
    };
    let messages: Vec<ChatMessage> = item
        .messages
        .iter()
        .map(|m| ChatMessage::new(&m.role, &m.content))
        .collect();
    for style in [
        PromptStyle::LlamaFactory(get_template("qwen").unwrap()),
        PromptStyle::ModelChatTemplate,
    ] {
        let builder = PromptBuilder::new(style.clone(), &tok).unwrap();
        let job = prepared(item, &builder);
        let want = builder.build(&messages, "", 1_000_000, 1).unwrap();
        assert_eq!(job.prompt_ids, want.prompt_ids, "{style:?}");
        assert_eq!(job.prefix_ends.len(), 2, "{style:?}: no prefix found");
        let t = builder.tokenizer();
        let prefix = t
            .decode(&job.prompt_ids[..job.prefix_len()], false, Some(false))
            .unwrap();
        let rest = t
            .decode(&job.prompt_ids[job.prefix_len()..], false, Some(false))
            .unwrap();
        // LF puts the separator "\n" before the next user turn, inside that turn's elements.
        let (end, start) = match style {
            PromptStyle::LlamaFactory(_) => ("D<|im_end|>", "\n<|im_start|>user\nQuestion 0"),
            PromptStyle::ModelChatTemplate => ("D<|im_end|>\n", "<|im_start|>user\nQuestion 0"),
        };
        assert!(prefix.ends_with(end), "{style:?}: {prefix:?}");
        let first = t
            .decode(&job.prompt_ids[..job.prefix_ends[0]], false, Some(false))
            .unwrap();
        assert!(
            first.ends_with(&end.replace('D', "B")),
            "{style:?}: {first:?}"
        );
        assert!(rest.starts_with(start), "{style:?}: {rest:?}");
        assert!(
            rest.ends_with("<|im_start|>assistant\n"),
            "{style:?}: {rest:?}"
        );
        if matches!(style, PromptStyle::LlamaFactory(_)) {
            // The LF default system of `qwen` when the item gives none.
            assert!(prefix.starts_with("<|im_start|>system\nYou are a helpful assistant."));
        }
    }
}

#[test]
fn a_chat_template_that_renders_pairs_otherwise_shares_nothing() {
    let tok = TextTokenizer::from_model_path(&smollm2_gguf()).unwrap();
    // The last message rendered gets a mark: the pairs rendered alone end otherwise than they
    // do inside the whole prompt, so they are not a token prefix of it.
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\
        {% if loop.last %} (last){% endif %}<|im_end|>\n{% endfor %}\
        {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let spec = SpecialTokenSpec {
        eos: Some("<|im_end|>".into()),
        chat_template: Some(template.into()),
        ..Default::default()
    };
    let marked =
        TextTokenizer::from_parts(tok.inner().unwrap().clone(), spec, Path::new("marked")).unwrap();
    let builder = PromptBuilder::new(PromptStyle::ModelChatTemplate, &marked).unwrap();
    let items = choice_items(2, 1);
    let Some(pb::work_item::Payload::Choice(item)) = &items[0].payload else {
        unreachable!()
    };
    let job = prepared(item, &builder);
    assert!(job.prefix_ends.is_empty(), "{:?}", job.prefix_ends);
    let text = marked.decode(&job.prompt_ids, false, Some(false)).unwrap();
    assert!(text.contains("Answer:  (last)<|im_end|>"), "{text:?}");
}

#[test]
fn smollm2_leases_agree_bit_for_bit_across_batch_sizes_and_with_the_full_prompt() {
    for dtype in ["auto", "f32"] {
        let lease = choice_lease("qwen", dtype, choice_items(2, 6));
        let one = run_choice(&mut executor(1), &lease, 1);
        let mut exec8 = executor(8);
        let eight = run_choice(&mut exec8, &lease, 1);
        let split = run_choice(&mut exec8, &lease, 3);
        assert_eq!(
            bits(&probs(&one)),
            bits(&probs(&eight)),
            "{dtype}: batch 1 vs 8"
        );
        assert_eq!(
            bits(&probs(&one)),
            bits(&probs(&split)),
            "{dtype}: 3 leases"
        );
        let plain = run_choice(
            &mut exec8,
            &choice_lease("qwen", dtype, choice_items(0, 6)),
            1,
        );
        let worst = probs(&one)
            .iter()
            .flatten()
            .zip(probs(&plain).iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "{dtype}: prefix vs full prompt differ by {worst}"
        );
        for (id, outcome) in &one {
            let Outcome::Choice(c) = outcome else {
                unreachable!()
            };
            let sum: f32 = c.probabilities.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{id}: {:?}", c.probabilities);
            assert!(
                c.prompt_tokens > 60,
                "{id}: {} prompt tokens",
                c.prompt_tokens
            );
        }
    }
}

#[test]
fn smollm2_model_chat_template_leases_share_prefixes_too() {
    let lease = choice_lease("", "auto", choice_items(2, 4));
    let one = run_choice(&mut executor(1), &lease, 1);
    let four = run_choice(&mut executor(4), &lease, 2);
    assert_eq!(bits(&probs(&one)), bits(&probs(&four)));
}

fn error_of<'a>(results: &'a std::collections::BTreeMap<String, Outcome>, id: &str) -> &'a str {
    match &results[id] {
        Outcome::Error(e) => {
            assert!(!e.retryable, "{id}: {e:?}");
            &e.message
        }
        other => panic!("{id}: expected an error, got {other:?}"),
    }
}

#[test]
fn smollm2_bad_items_and_unknown_templates_are_clear_item_errors() {
    let mut items = choice_items(2, 3);
    if let Some(pb::work_item::Payload::Choice(c)) = &mut items[1].payload {
        c.shared_prefix_pairs = 3;
    }
    if let Some(pb::work_item::Payload::Choice(c)) = &mut items[2].payload {
        c.choice_texts[2] = String::new();
    }
    items.push(pb::WorkItem {
        item_id: "gen".into(),
        payload: Some(pb::work_item::Payload::Generate(pb::GenerateItem::default())),
    });
    let mut exec = executor(4);
    let results = run_choice(&mut exec, &choice_lease("qwen", "auto", items.clone()), 1);
    assert!(matches!(results["q0"], Outcome::Choice(_)));
    let e = error_of(&results, "q1");
    assert!(
        e.contains("q1") && e.contains("shared_prefix_pairs 3"),
        "{e}"
    );
    let e = error_of(&results, "q2");
    assert!(e.contains("q2") && e.contains("choice text \"\""), "{e}");
    let e = error_of(&results, "gen");
    assert!(e.contains("only choice items"), "{e}");

    let results = run_choice(
        &mut exec,
        &choice_lease("no-such-template", "auto", items),
        1,
    );
    for id in ["q0", "q1", "q2", "gen"] {
        let e = error_of(&results, id);
        assert!(e.contains("no-such-template"), "{id}: {e}");
    }
}

/// `item` (a protobuf choice item, as leases carry it) prepared as question "q0" for a model of
/// SmolLM2's vocabulary.
fn prepared(
    item: &pb::ChoiceItem,
    builder: &PromptBuilder,
) -> evalfleet_worker::score::choice::ChoiceJob {
    let question = evalfleet_worker::runners::choice::question(item);
    prepare_job("q0", &question, builder, 49152).unwrap()
}
