//! The synthetic CharacterEval task (tests/fixtures/train/synthetic.jsonl, made by
//! scripts/goldens/train_rm_synthetic.py from the seed's dialogues; scores are functions of the
//! response text per dimension): CPU training of the tiny reward model raises the held-out
//! Spearman correlation from about chance to well above it, and the trained checkpoint, loaded
//! by the step-4 scorer, reproduces the trainer's own scores. The same for a llama decoder
//! base (tests/fixtures/train/tiny-llama-rm with its score head removed, so the trainer adds
//! one): the checkpoint is a LlamaForCausalLM folder with `score.*` that step 4 loads.

use std::path::Path;

use candle_core::{DType, Device};
use evalfleet_proto::v1 as pb;
use evalfleet_worker::score::reward::RewardScorer;
use evalfleet_worker::tasks::{Executor, ExecutorOptions};
use evalfleet_worker::train::trainer::{group_logits, load_dataset};
use evalfleet_worker::train::{
    AdamWConfig, LossWeights, TrainConfig, TrainableRm, train_data_parallel,
};
use pb::item_result::Outcome;

#[test]
fn training_learns_the_synthetic_task_and_step4_agrees() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    learn_and_score(&root.join("reward/tiny-rm-alibi4"), tmp.path(), 3, 1e-3);
}

/// The llama fixture without its `score.*` tensors, in `dir`.
fn headless_llama(root: &Path, dir: &Path) -> std::path::PathBuf {
    let src = root.join("train/tiny-llama-rm");
    let out = dir.join("tiny-llama-base");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let mut ws =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(ws.remove("score.weight").is_some() && ws.remove("score.bias").is_some());
    candle_core::safetensors::save(&ws, out.join("model.safetensors")).unwrap();
    out
}

#[test]
fn a_llama_base_with_a_new_score_head_learns_the_synthetic_task_and_step4_agrees() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let base = headless_llama(&root, tmp.path());
    let dir = learn_and_score(&base, tmp.path(), 6, 3e-3);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_worker_lease_agrees(&dir);
}

/// A step-4 reward lease on checkpoint `dir`, run by the worker's executor in f32 (texts encoded
/// with eos and cut from the left to `cutoff_len`), gives the trainer's sigmoids.
fn assert_worker_lease_agrees(dir: &Path) {
    let texts = [
        "佟湘玉：额滴神啊，这日子没法过了！",
        "白展堂：掌柜的，您别着急，有我在呢。（笑）这事包在我身上。",
        "short",
    ];
    let cutoff = 12u32;
    let items = texts
        .iter()
        .enumerate()
        .map(|(i, t)| pb::WorkItem {
            item_id: format!("r{i}"),
            payload: Some(pb::work_item::Payload::Reward(pb::RewardItem {
                text: t.to_string(),
            })),
        })
        .collect();
    let lease = pb::Lease {
        lease_id: 3,
        model: Some(pb::ModelSpec {
            key: format!("reward|{}", dir.display()),
            model_path: dir.display().to_string(),
            adapter_paths: Vec::new(),
            dtype: "f32".into(),
        }),
        prompt: Some(pb::PromptSpec {
            cutoff_len: cutoff,
            ..Default::default()
        }),
        items,
        ..Default::default()
    };
    let mut exec = Executor::new(ExecutorOptions::default());
    let mut results = Vec::new();
    exec.run_lease(&lease, &mut |r| results.push(r)).unwrap();
    assert_eq!(results.len(), texts.len());
    let scorer = RewardScorer::load(dir, DType::F32, &Device::Cpu).unwrap();
    let trained = TrainableRm::load(dir, &[], &Device::Cpu).unwrap();
    // The left truncation is exercised.
    assert!(results.iter().any(|r| matches!(
        &r.outcome,
        Some(Outcome::Reward(x)) if x.truncated
    )));
    for r in results {
        let Some(Outcome::Reward(got)) = r.outcome else {
            panic!("{}: {:?}", r.item_id, r.outcome)
        };
        let i: usize = r.item_id[1..].parse().unwrap();
        let input = scorer.encode(texts[i], cutoff as usize).unwrap();
        assert_eq!(got.input_tokens as usize, input.ids.len());
        assert_eq!(got.truncated, input.truncated);
        let logit: f32 = trained
            .logits(&[&input.ids], false)
            .unwrap()
            .to_vec1()
            .unwrap()[0];
        let want = 1.0 / (1.0 + (-logit).exp());
        assert!(
            (got.sigmoid - want).abs() < 1e-5,
            "{}: lease {} vs trainer {want}",
            r.item_id,
            got.sigmoid
        );
    }
}

/// Trains `model` for `epochs` on the synthetic task, checks the held-out metrics rose, and
/// that step 4's scorer on the final checkpoint gives the trainer's scores. Returns the
/// checkpoint.
fn learn_and_score(model: &Path, tmp: &Path, epochs: u64, lr: f64) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cfg = TrainConfig {
        model: model.to_path_buf(),
        train_data: root.join("train/synthetic.jsonl"),
        eval_data: None,
        eval_fraction: 0.2,
        output_dir: tmp.join("out"),
        max_length: 64,
        loss: LossWeights {
            ranking: 1.0,
            regression: 1.0,
        },
        trainable: vec![],
        lora: None,
        adamw: AdamWConfig {
            lr,
            ..AdamWConfig::default()
        },
        warmup_steps: 10,
        epochs,
        max_steps: None,
        batch_groups: 8,
        grad_accum: 1,
        ranks: 1,
        save_every: 0,
        eval_every: 0,
        resume: false,
        seed: 0,
        stop_after: None,
        device: "cpu".into(),
        dtype: "auto".into(),
    };
    let out = train_data_parallel(&cfg).unwrap();
    let text = std::fs::read_to_string(cfg.output_dir.join("metrics.jsonl")).unwrap();
    let evals: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["split"] == "eval")
        .collect();
    let (before, after) = (&evals[0], evals.last().unwrap());
    eprintln!(
        "held-out before: {before}\nheld-out after {} steps: {after}",
        out.steps
    );
    let rho = |m: &serde_json::Value| m["spearman_all"].as_f64().unwrap();
    assert!(
        rho(before).abs() < 0.3,
        "untrained Spearman {}",
        rho(before)
    );
    assert!(rho(after) > 0.6, "trained Spearman {}", rho(after));
    for dim in ["行为一致性", "对话流利度"] {
        let r = after["spearman"][dim].as_f64().unwrap();
        assert!(r > 0.4, "{dim}: Spearman {r}");
    }
    assert!(
        after["pairwise_accuracy"].as_f64().unwrap() > 0.75,
        "{after}"
    );

    let dir = out.checkpoint.unwrap();
    assert_step4_agrees(&cfg, &dir);
    dir
}

/// The step-4 scorer on checkpoint `dir` reproduces the trainer's own held-out scores.
fn assert_step4_agrees(cfg: &TrainConfig, dir: &Path) {
    let data = load_dataset(cfg).unwrap();
    let trained = TrainableRm::load(dir, &[], &Device::Cpu).unwrap();
    let mine: Vec<f32> = group_logits(&trained, &data.eval, 16)
        .unwrap()
        .iter()
        .flatten()
        .map(|r| 1.0 / (1.0 + (-r).exp()))
        .collect();
    let scorer = RewardScorer::load(dir, DType::F32, &Device::Cpu).unwrap();
    let seqs: Vec<Vec<u32>> = data.eval.iter().flat_map(|g| g.seqs.clone()).collect();
    let step4 = scorer.score_batch(&seqs).unwrap();
    let worst = mine
        .iter()
        .zip(&step4)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{} held-out responses, trainer vs step 4 max |Δσ| {worst:e}",
        mine.len()
    );
    assert!(worst < 1e-5, "trainer and step 4 differ by {worst}");
}
