//! The reward-model training run on a tiny model (tests/fixtures/reward/tiny-rm-alibi4): resume
//! after a simulated kill gives the same final weights as an uninterrupted run; 2 in-process
//! data-parallel ranks and gradient accumulation give the same weights as 1 rank with the whole
//! batch; a checkpoint loaded by the step-4 scorer reproduces the trainer's scores; the
//! metrics JSONL holds train and held-out lines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use evalfleet_worker::score::reward::RewardScorer;
use evalfleet_worker::train::trainer::{group_logits, load_dataset};
use evalfleet_worker::train::{
    AdamWConfig, LoraConfig, LossWeights, TrainConfig, TrainableRm, train_data_parallel,
};

const RESPONSES: [&str; 6] = [
    "额滴神啊，这日子没法过了！",
    "掌柜的，您别着急，有我在呢。",
    "子曾经曰过，学而时习之，不亦说乎？",
    "The quick brown fox.",
    "排山倒海！",
    "好的。",
];

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward/tiny-rm-alibi4")
}

/// 8 contexts × 2 dimensions × 3 responses, scores from the response (learnable, with ties).
fn write_data(dir: &Path) -> PathBuf {
    let mut lines = String::new();
    for c in 0..8 {
        for dim in ["知识准确率", "对话流利度"] {
            for r in 0..3 {
                let resp = RESPONSES[(c + r) % RESPONSES.len()];
                let score = 1 + (resp.chars().count() + r) % 5;
                let rec = serde_json::json!({"id": c, "role": "佟湘玉", "context": format!("白展堂：第{c}句"),
                    "response": resp, "dimension": dim, "score": score});
                lines.push_str(&format!("{rec}\n"));
            }
        }
    }
    let path = dir.join("train.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

fn config(dir: &Path, out: &str) -> TrainConfig {
    TrainConfig {
        model: base(),
        train_data: write_data(dir),
        eval_data: None,
        eval_fraction: 0.25,
        output_dir: dir.join(out),
        max_length: 48,
        loss: LossWeights {
            ranking: 1.0,
            regression: 1.0,
        },
        trainable: vec![],
        lora: None,
        adamw: AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
        warmup_steps: 2,
        epochs: 2,
        max_steps: None,
        batch_groups: 4,
        grad_accum: 1,
        ranks: 1,
        save_every: 2,
        eval_every: 3,
        resume: true,
        seed: 1,
        stop_after: None,
        device: "cpu".into(),
        dtype: "auto".into(),
    }
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn max_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, t)| {
            (t - &b[k])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0.0, f32::max)
}

#[test]
fn resume_after_a_kill_gives_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let full = train_data_parallel(&config(tmp.path(), "full")).unwrap();
    // 12 training groups (2 of 8 contexts held out), 4 per step: 3 steps per epoch, 6 in all.
    assert_eq!(full.steps, 6);
    let mut cfg = config(tmp.path(), "killed");
    cfg.stop_after = Some(3);
    let stopped = train_data_parallel(&cfg).unwrap();
    assert_eq!(stopped.steps, 3);
    assert!(
        stopped
            .checkpoint
            .as_ref()
            .unwrap()
            .ends_with("checkpoint-2")
    );
    cfg.stop_after = None;
    let resumed = train_data_parallel(&cfg).unwrap();
    let (a, b) = (full.checkpoint.unwrap(), resumed.checkpoint.unwrap());
    assert!(a.ends_with("checkpoint-6") && b.ends_with("checkpoint-6"));
    let (wa, wb) = (weights(&a), weights(&b));
    assert_eq!(max_diff(&wa, &wb), 0.0, "resumed run differs");
    let w0: HashMap<String, Tensor> =
        candle_core::safetensors::load(base().join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(DType::F32).unwrap()))
            .collect();
    assert!(
        max_diff(&wa, &w0) > 1e-3,
        "training did not move the weights"
    );
    // The metrics of the resumed run: one train line per step, eval lines at 0, 3 and 6.
    let text = std::fs::read_to_string(tmp.path().join("killed/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps = |split: &str| -> Vec<u64> {
        lines
            .iter()
            .filter(|l| l["split"] == split)
            .map(|l| l["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(steps("train"), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(steps("eval"), vec![0, 3, 6]);
    let last = lines.iter().rev().find(|l| l["split"] == "eval").unwrap();
    assert!(
        last["spearman"]["知识准确率"].is_number() && last["pairwise_accuracy"].is_number(),
        "{last}"
    );
}

#[test]
fn two_ranks_and_accumulation_equal_one_rank_with_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, ranks: usize, accum: usize| {
        let mut cfg = config(tmp.path(), name);
        cfg.ranks = ranks;
        cfg.grad_accum = accum;
        cfg.max_steps = Some(4);
        cfg.save_every = 0;
        cfg.eval_every = 0;
        weights(&train_data_parallel(&cfg).unwrap().checkpoint.unwrap())
    };
    let one = run("one", 1, 1);
    let two = run("two", 2, 1);
    let accum = run("accum", 1, 2);
    let d2 = max_diff(&one, &two);
    let da = max_diff(&one, &accum);
    eprintln!("2 ranks vs 1: {d2:e}; accumulation 2 vs 1: {da:e}");
    assert!(d2 < 1e-5, "2 ranks differ by {d2}");
    assert!(da < 1e-5, "accumulation differs by {da}");
}

#[test]
fn checkpoint_scores_in_step4_as_in_the_trainer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), "ckpt");
    cfg.max_steps = Some(2);
    cfg.trainable = vec![
        "score.".into(),
        "model.norm.".into(),
        "model.layers.1.".into(),
    ];
    let out = train_data_parallel(&cfg).unwrap();
    let dir = out.checkpoint.unwrap();
    // Frozen layers kept their values.
    let w = weights(&dir);
    let w0 =
        candle_core::safetensors::load(base().join("model.safetensors"), &Device::Cpu).unwrap();
    let name = "model.layers.0.self_attn.W_pack.weight";
    assert_eq!(
        max_diff(
            &HashMap::from([(name.to_string(), w[name].clone())]),
            &HashMap::from([(name.to_string(), w0[name].to_dtype(DType::F32).unwrap())])
        ),
        0.0
    );
    let data = load_dataset(&cfg).unwrap();
    let trained = TrainableRm::load(&dir, &[], &Device::Cpu).unwrap();
    let logits = group_logits(&trained, &data.eval, 8).unwrap();
    let scorer = RewardScorer::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let seqs: Vec<Vec<u32>> = data.eval.iter().flat_map(|g| g.seqs.clone()).collect();
    let step4 = scorer.score_batch(&seqs).unwrap();
    let mine: Vec<f32> = logits
        .iter()
        .flatten()
        .map(|r| 1.0 / (1.0 + (-r).exp()))
        .collect();
    assert_eq!(mine.len(), step4.len());
    assert!(!mine.is_empty());
    for (a, b) in mine.iter().zip(&step4) {
        assert!((a - b).abs() < 1e-6, "trainer {a} vs step 4 {b}");
    }
}

#[test]
fn lora_trains_adapter_and_head_resumes_and_scores_in_step4() {
    let tmp = tempfile::tempdir().unwrap();
    let lora_cfg = |name: &str| {
        let mut cfg = config(tmp.path(), name);
        cfg.lora = Some(LoraConfig {
            rank: 4,
            alpha: 8.0,
            target_modules: vec!["W_pack".into(), "down_proj".into()],
        });
        cfg.max_steps = Some(4);
        cfg
    };
    let full = train_data_parallel(&lora_cfg("lora")).unwrap();
    let mut cfg = lora_cfg("lora-killed");
    cfg.stop_after = Some(3);
    train_data_parallel(&cfg).unwrap();
    cfg.stop_after = None;
    let resumed = train_data_parallel(&cfg).unwrap();
    let (a, b) = (full.checkpoint.unwrap(), resumed.checkpoint.unwrap());
    assert_eq!(
        max_diff(&weights(&a), &weights(&b)),
        0.0,
        "LoRA resume differs"
    );
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "trainer_params.safetensors",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let adapter =
        candle_core::safetensors::load(a.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        adapter.len(),
        2 * 2 * 2,
        "A and B for 2 modules in 2 layers"
    );
    // The base weights stayed; the merged ones (what step 4 reads) moved; o_proj is no target.
    let raw =
        candle_core::safetensors::load(a.join("trainer_params.safetensors"), &Device::Cpu).unwrap();
    let w0 =
        candle_core::safetensors::load(base().join("model.safetensors"), &Device::Cpu).unwrap();
    let merged = weights(&a);
    let one = |m: &HashMap<String, Tensor>, k: &str| {
        HashMap::from([(k.to_string(), m[k].to_dtype(DType::F32).unwrap())])
    };
    let wp = "model.layers.0.self_attn.W_pack.weight";
    let op = "model.layers.0.self_attn.o_proj.weight";
    assert_eq!(max_diff(&one(&raw, wp), &one(&w0, wp)), 0.0);
    assert!(max_diff(&one(&merged, wp), &one(&w0, wp)) > 1e-4);
    assert_eq!(max_diff(&one(&merged, op), &one(&w0, op)), 0.0);
    assert!(max_diff(&one(&merged, "score.weight"), &one(&w0, "score.weight")) > 1e-4);
    // Step 4 scores the merged folder as the trainer does.
    let data = load_dataset(&cfg).unwrap();
    let trained = TrainableRm::load(&a, &[], &Device::Cpu).unwrap();
    let mine: Vec<f32> = group_logits(&trained, &data.eval, 8)
        .unwrap()
        .iter()
        .flatten()
        .map(|r| 1.0 / (1.0 + (-r).exp()))
        .collect();
    let scorer = RewardScorer::load(&a, DType::F32, &Device::Cpu).unwrap();
    let seqs: Vec<Vec<u32>> = data.eval.iter().flat_map(|g| g.seqs.clone()).collect();
    for (x, y) in mine.iter().zip(scorer.score_batch(&seqs).unwrap()) {
        assert!((x - y).abs() < 1e-6, "trainer {x} vs step 4 {y}");
    }
}

#[test]
fn a_base_without_score_head_gets_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    // A Baichuan "language model": the tiny reward model without its score head.
    let lm = tmp.path().join("lm");
    std::fs::create_dir(&lm).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(base().join(f), lm.join(f)).unwrap();
    }
    let mut w =
        candle_core::safetensors::load(base().join("model.safetensors"), &Device::Cpu).unwrap();
    w.retain(|k, _| !k.starts_with("score."));
    candle_core::safetensors::save(&w, lm.join("model.safetensors")).unwrap();
    assert!(
        RewardScorer::load(&lm, DType::F32, &Device::Cpu).is_err(),
        "step 4 needs a head"
    );
    let mut cfg = config(tmp.path(), "from-lm");
    cfg.model = lm;
    cfg.max_steps = Some(2);
    let dir = train_data_parallel(&cfg).unwrap().checkpoint.unwrap();
    let trained = weights(&dir);
    let bias: f32 = trained["score.bias"].to_vec1::<f32>().unwrap()[0];
    assert!(bias != 0.0, "the new head trained");
    let scorer = RewardScorer::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let s = scorer.score_batch(&[vec![5, 6, 7, 2]]).unwrap()[0];
    assert!(s > 0.0 && s < 1.0, "{s}");
}

/// Only rank 0 writes the metrics: when it cannot (here metrics.jsonl is a folder), rank 0 fails
/// and rank 1, which would have waited for it in the next gradient all-reduce forever, stops too.
/// The run ends with rank 0's error, naming the file.
#[test]
fn a_rank_failing_alone_stops_the_other_ranks_with_its_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), "blocked");
    cfg.ranks = 2;
    cfg.max_steps = Some(2);
    std::fs::create_dir_all(cfg.output_dir.join("metrics.jsonl")).unwrap();
    let e = train_data_parallel(&cfg).unwrap_err().to_string();
    assert!(e.contains("metrics.jsonl"), "{e}");
    assert!(!e.contains("rank group stopped"), "rank 0's own error: {e}");
}
