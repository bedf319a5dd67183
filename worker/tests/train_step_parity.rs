//! One AdamW step of reward-model training equals PyTorch's (scripts/goldens/train_rm_goldens.py):
//! same tiny BaichuanCharRM init (tests/fixtures/reward/tiny-rm-alibi4 in f32), same batch of
//! three groups, same AdamW settings; loss values and every updated weight within 1e-5, for
//! loss_1 alone, loss_2 alone and both; and both on the rotary model (tiny-rm-rope). Splitting the batch into micro-batches gives the same
//! step. The same three cases on a llama decoder reward model (tests/fixtures/train/tiny-llama-rm,
//! transformers' LlamaModel plus a score head: scripts/goldens/train_rm_llama_goldens.py).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use evalfleet_worker::collective::LocalCollective;
use evalfleet_worker::train::{AdamW, AdamWConfig, LossNorm, MicroBatch, TrainableRm, train_step};
use serde::Deserialize;

#[derive(Deserialize)]
struct Goldens {
    adamw: AdamWConfig,
    groups: Vec<Group>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Group {
    seqs: Vec<Vec<u32>>,
    scores: Vec<f32>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    w_ranking: f64,
    w_regression: f64,
    loss_1: f64,
    loss_2: f64,
    loss: f64,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn goldens() -> Goldens {
    goldens_of("train/step_goldens.json")
}

fn goldens_of(file: &str) -> Goldens {
    let text = std::fs::read_to_string(fixtures().join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The batch split into `parts` micro-batches of whole groups.
fn micro_batches(g: &Goldens, parts: usize) -> Vec<MicroBatch> {
    let mut out = vec![MicroBatch::default(); parts];
    for (i, group) in g.groups.iter().enumerate() {
        out[i * parts / g.groups.len()].push_group(group.seqs.clone(), group.scores.clone());
    }
    out
}

/// Runs one step of `case` and compares against PyTorch.
fn check_case(
    g: &Goldens,
    case: &Case,
    parts: usize,
    reference: &std::collections::HashMap<String, Tensor>,
) {
    let dev = Device::Cpu;
    // "rope-*" cases start from the rotary model, "llama-*" from the llama reward model, the
    // others from the ALiBi one.
    let folder = if case.name.starts_with("rope-") {
        "reward/tiny-rm-rope"
    } else if case.name.starts_with("llama-") {
        "train/tiny-llama-rm"
    } else {
        "reward/tiny-rm-alibi4"
    };
    let model = TrainableRm::load(&fixtures().join(folder), &[], &dev).unwrap();
    let mut opt = AdamW::new(g.adamw);
    let norm = LossNorm {
        groups: g.groups.len(),
        items: g.groups.iter().map(|x| x.seqs.len()).sum(),
        w_ranking: case.w_ranking,
        w_regression: case.w_regression,
    };
    let single = LocalCollective::group(1).remove(0);
    let micros = micro_batches(g, parts);
    let loss = train_step(&model, &mut opt, &micros, &norm, g.adamw.lr, &single).unwrap();
    let name = &case.name;
    assert!(
        (loss.ranking - case.loss_1).abs() < 1e-5,
        "{name}: loss_1 {} vs {}",
        loss.ranking,
        case.loss_1
    );
    assert!(
        (loss.regression - case.loss_2).abs() < 1e-5,
        "{name}: loss_2 {} vs {}",
        loss.regression,
        case.loss_2
    );
    assert!(
        (loss.total - case.loss).abs() < 1e-5,
        "{name}: loss {} vs {}",
        loss.total,
        case.loss
    );
    let mut worst = (0f32, String::new());
    let mut moved = 0usize;
    for (pname, var) in model.params() {
        let want = &reference[&format!("{name}/{pname}")];
        let got = var.as_tensor();
        let diff: f32 = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        if diff > worst.0 {
            worst = (diff, pname.clone());
        }
        moved += 1;
    }
    assert_eq!(
        moved,
        reference
            .keys()
            .filter(|k| k.starts_with(&format!("{name}/")))
            .count()
    );
    assert!(
        worst.0 < 1e-5,
        "{name} ({parts} micro-batches): {} differs by {}",
        worst.1,
        worst.0
    );
    eprintln!(
        "{name}, {parts} micro-batches: losses {:?}, max weight diff {:e} ({})",
        loss, worst.0, worst.1
    );
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    reference_of("train/step_weights.safetensors")
}

fn reference_of(file: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(file), &Device::Cpu).unwrap()
}

#[test]
fn one_step_of_a_llama_reward_model_equals_pytorch_for_each_loss() {
    let g = goldens_of("train/step_llama_goldens.json");
    let reference = reference_of("train/step_llama_weights.safetensors");
    assert_eq!(g.cases.len(), 3);
    for case in &g.cases {
        check_case(&g, case, 1, &reference);
    }
    let both = g.cases.iter().find(|c| c.name == "llama-both").unwrap();
    check_case(&g, both, 3, &reference);
}

#[test]
fn one_step_equals_pytorch_for_each_loss() {
    let g = goldens();
    let reference = reference();
    assert_eq!(g.cases.len(), 4);
    for case in &g.cases {
        check_case(&g, case, 1, &reference);
    }
}

#[test]
fn micro_batches_accumulate_to_the_same_step() {
    let g = goldens();
    let reference = reference();
    let both = g.cases.iter().find(|c| c.name == "both").unwrap();
    check_case(&g, both, 3, &reference);
}

#[test]
fn the_step_moves_the_weights() {
    // Guards against a test that passes because nothing changed: the reference moved away from
    // the initial weights by about the learning rate.
    let reference = reference();
    let init = candle_core::safetensors::load(
        fixtures().join("reward/tiny-rm-alibi4/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let w0 = init["score.weight"]
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let d: f32 = (&reference["both/score.weight"] - w0)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d > 5e-4, "score.weight moved by only {d}");
}
