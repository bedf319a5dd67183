//! One AdamW step of reward-model training equals PyTorch's (scripts/goldens/train_rm_goldens.py):
//! same tiny BaichuanCharRM init (tests/fixtures/reward/tiny-rm-alibi4 in f32), same batch of
//! three groups, same AdamW settings; loss values and every updated weight within 1e-5, for
//! loss_1 alone, loss_2 alone and both; and both on the rotary model (tiny-rm-rope). Splitting the batch into micro-batches gives the same
//! step. The same three cases on a llama decoder reward model (tests/fixtures/train/tiny-llama-rm,
//! transformers' LlamaModel plus a score head: scripts/goldens/train_rm_llama_goldens.py).
//! In bf16 compute (f32 master weights), the llama model's losses and gradients against
//! PyTorch's same scheme within bf16 rounding (scripts/goldens/train_rm_bf16_goldens.py).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use evalfleet_worker::collective::LocalCollective;
use evalfleet_worker::score::reward::RewardScorer;
use evalfleet_worker::train::check::{GoldenCase as Case, GoldenGroup, gradient_reports};
use evalfleet_worker::train::{
    AdamW, AdamWConfig, LoraConfig, LossNorm, MicroBatch, TrainableRm, train_step,
};
use serde::Deserialize;

/// The goldens' batch and loss cases (the library's golden types) with their AdamW settings.
#[derive(Deserialize)]
struct Goldens {
    adamw: AdamWConfig,
    groups: Vec<GoldenGroup>,
    cases: Vec<Case>,
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
    let norm = loss_norm(g, case.w_ranking, case.w_regression);
    let single = one_rank();
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
        let diff: f32 = max_abs_diff(got, want);
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
    let d: f32 = max_abs_diff(&reference["both/score.weight"], &w0);
    assert!(d > 5e-4, "score.weight moved by only {d}");
}

/// The loss normalisation of the golden batch with these loss weights.
fn loss_norm(g: &Goldens, w_ranking: f64, w_regression: f64) -> LossNorm {
    LossNorm {
        groups: g.groups.len(),
        items: g.groups.iter().map(|x| x.seqs.len()).sum(),
        w_ranking,
        w_regression,
    }
}

/// A group of one rank: the steps here are single-process.
fn one_rank() -> LocalCollective {
    LocalCollective::group(1).remove(0)
}

/// The largest absolute elementwise difference of two tensors.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Inputs of the golden batch as slices.
fn golden_seqs(g: &Goldens) -> Vec<&[u32]> {
    g.groups
        .iter()
        .flat_map(|x| x.seqs.iter().map(|s| &s[..]))
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The training forward (plain differentiable ops) and the scoring forward (fused kernels, as
/// step 4 runs it) of a decoder reward model agree, for `dir`.
fn check_train_and_score_forward_agree(dir: &Path) {
    let g = goldens_of("train/step_llama_goldens.json");
    let seqs = golden_seqs(&g);
    let model = TrainableRm::load(dir, &[], &Device::Cpu).unwrap();
    let train: Vec<f32> = model.logits(&seqs, true).unwrap().to_vec1().unwrap();
    let eval: Vec<f32> = model.logits(&seqs, false).unwrap().to_vec1().unwrap();
    let d = max_diff(&train, &eval);
    assert!(
        d < 1e-5,
        "{}: training vs scoring logits differ by {d}",
        dir.display()
    );
    let scorer = RewardScorer::load(dir, DType::F32, &Device::Cpu).unwrap();
    let owned: Vec<Vec<u32>> = seqs.iter().map(|s| s.to_vec()).collect();
    let step4 = scorer.score_batch(&owned).unwrap();
    let sig: Vec<f32> = train.iter().map(|r| 1.0 / (1.0 + (-r).exp())).collect();
    let ds = max_diff(&sig, &step4);
    assert!(
        ds < 1e-5,
        "{}: step 4 sigmoids differ by {ds}",
        dir.display()
    );
    // The scores are not all alike (a test that compares constants proves nothing).
    let spread = train.iter().cloned().fold(f32::MIN, f32::max)
        - train.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1e-2, "logits spread only {spread}");
    eprintln!(
        "{}: training vs scoring forward {d:e}, vs step 4 sigmoid {ds:e}",
        dir.display()
    );
}

#[test]
fn llama_training_forward_equals_the_step4_forward() {
    let dir = fixtures().join("train/tiny-llama-rm");
    check_train_and_score_forward_agree(&dir);
    // Step 4's default dtype is bf16: it loads and lands near the f32 scores.
    let g = goldens_of("train/step_llama_goldens.json");
    let seqs: Vec<Vec<u32>> = golden_seqs(&g).iter().map(|s| s.to_vec()).collect();
    let f32s = RewardScorer::load(&dir, DType::F32, &Device::Cpu)
        .unwrap()
        .score_batch(&seqs)
        .unwrap();
    let bf16 = RewardScorer::load(&dir, DType::BF16, &Device::Cpu)
        .unwrap()
        .score_batch(&seqs)
        .unwrap();
    let d = max_diff(&f32s, &bf16);
    eprintln!("bf16 vs f32 sigmoids: {d:e}");
    assert!(d < 2e-2, "bf16 sigmoids differ from f32 by {d}");
}

#[test]
fn qwen2_reward_model_trains_through_its_qkv_biases() {
    // The llama fixture as Qwen2 (q/k/v biases, drawn non-zero here).
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("train/tiny-llama-rm");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
    cfg["model_type"] = serde_json::json!("qwen2");
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let mut ws =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    for l in 0..2 {
        for (p, n) in [("q_proj", 32), ("k_proj", 16), ("v_proj", 16)] {
            let b = Tensor::randn(0f32, 0.3, n, &Device::Cpu).unwrap();
            ws.insert(format!("model.layers.{l}.self_attn.{p}.bias"), b);
        }
    }
    candle_core::safetensors::save(&ws, tmp.path().join("model.safetensors")).unwrap();
    check_train_and_score_forward_agree(tmp.path());

    // One step reaches the biases.
    let g = goldens_of("train/step_llama_goldens.json");
    let model = TrainableRm::load(tmp.path(), &[], &Device::Cpu).unwrap();
    let name = "model.layers.0.self_attn.k_proj.bias";
    let before = model.param(name).unwrap().as_tensor().copy().unwrap();
    let norm = loss_norm(&g, 1.0, 1.0);
    let single = one_rank();
    let mut opt = AdamW::new(g.adamw);
    train_step(
        &model,
        &mut opt,
        &micro_batches(&g, 1),
        &norm,
        1e-3,
        &single,
    )
    .unwrap();
    let moved: f32 = max_abs_diff(model.param(name).unwrap().as_tensor(), &before);
    assert!(moved > 5e-4, "{name} moved by only {moved}");
}

#[test]
fn llama_lora_step_moves_only_the_adapter_and_head() {
    check_llama_lora_steps(DType::F32);
}

/// The same in bf16 compute: the frozen base weights are cast once and must still not move,
/// while the adapters (merged in f32 before the cast) do change the scores.
#[test]
fn llama_lora_steps_in_bf16_move_only_the_adapter_and_head() {
    check_llama_lora_steps(DType::BF16);
}

fn check_llama_lora_steps(dtype: DType) {
    let g = goldens_of("train/step_llama_goldens.json");
    let dir = fixtures().join("train/tiny-llama-rm");
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    };
    let model = TrainableRm::load(&dir, &[], &Device::Cpu)
        .unwrap()
        .with_lora(&lora, &[], 7)
        .unwrap()
        .with_compute_dtype(dtype)
        .unwrap();
    // 2 layers × 3 modules × (A, B) + the score head.
    assert_eq!(
        model.trainable().len(),
        2 * 3 * 2 + 2,
        "{:?}",
        model.trainable()
    );
    let seqs = golden_seqs(&g);
    let before: Vec<f32> = model.logits(&seqs, false).unwrap().to_vec1().unwrap();
    let norm = loss_norm(&g, 1.0, 1.0);
    let single = one_rank();
    let mut opt = AdamW::new(g.adamw);
    let embed0 = model
        .param("model.embed_tokens.weight")
        .unwrap()
        .as_tensor()
        .copy()
        .unwrap();
    for _ in 0..3 {
        train_step(
            &model,
            &mut opt,
            &micro_batches(&g, 1),
            &norm,
            1e-2,
            &single,
        )
        .unwrap();
    }
    let b = model
        .param("model.layers.1.self_attn.q_proj.lora_B.weight")
        .unwrap()
        .as_tensor()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(b > 1e-3, "lora_B still ~0 ({b})");
    let embed_moved: f32 = max_abs_diff(
        model
            .param("model.embed_tokens.weight")
            .unwrap()
            .as_tensor(),
        &embed0,
    );
    assert_eq!(embed_moved, 0.0, "a frozen base weight moved");
    let after: Vec<f32> = model.logits(&seqs, false).unwrap().to_vec1().unwrap();
    assert!(
        max_diff(&before, &after) > 1e-3,
        "LoRA steps changed no score"
    );
    // The merged weights are what the scorer reads: q_proj moved.
    let sd = model.state_dict().unwrap();
    let q = &sd["model.layers.1.self_attn.q_proj.weight"];
    let q0 = model
        .param("model.layers.1.self_attn.q_proj.weight")
        .unwrap()
        .as_tensor();
    let dq: f32 = max_abs_diff(q, q0);
    assert!(dq > 1e-5, "merged q_proj equals the base ({dq})");
}

/// bf16 compute with f32 master weights (`dtype: bf16`) against PyTorch's same scheme
/// (scripts/goldens/train_rm_bf16_goldens.py: transformers' LlamaModel over bf16 casts of f32
/// parameters, the head in f32), for each loss: the losses agree within 0.2 %; no parameter's
/// gradient is further from PyTorch's than 5 % or than PyTorch's own bf16 gradient is from its
/// f32 one (bf16 rounding, up to ~80 % for the small, cancelling gradients of the ranking loss);
/// and the gradients lie nearer PyTorch's bf16 ones than its f32 ones (bf16 is really used).
#[test]
fn bf16_gradients_of_a_llama_reward_model_match_pytorch() {
    let reports = gradient_reports(
        &fixtures().join("train/tiny-llama-rm"),
        &fixtures().join("train/step_llama_bf16_goldens.json"),
        &fixtures().join("train/step_llama_bf16_grads.safetensors"),
        &Device::Cpu,
        DType::BF16,
    )
    .unwrap();
    assert_eq!(reports.len(), 3);
    for r in &reports {
        let name = &r.case;
        assert!(r.gradients_f32, "{name}: a gradient is not f32");
        assert!(r.compared + 1 >= r.params && r.params > 10, "{name}: {r:?}");
        assert!(
            r.worst_loss_error() < 2e-3,
            "{name}: losses {:?} vs {:?}",
            r.losses,
            r.reference_losses
        );
        assert!(
            r.worst_excess <= 1.0,
            "{name}: gradient of {} is {}x the allowed distance",
            r.worst_param,
            r.worst_excess
        );
        assert!(
            r.distance_to_reference < r.distance_to_f32,
            "{name}: nearer the f32 gradients ({}) than the bf16 ones ({})",
            r.distance_to_f32,
            r.distance_to_reference
        );
        eprintln!("{}", serde_json::to_string(r).unwrap());
    }
}

/// A bf16 step updates f32 master weights (the parameters, and so checkpoints, stay f32) and
/// moves them as the f32 step does: the same sign of update for nearly every weight; on the
/// llama reward model and on the BaichuanCharRM-style one (ALiBi, packed QKV).
#[test]
fn a_bf16_step_keeps_f32_weights_and_moves_them_like_the_f32_step() {
    check_bf16_step(
        "train/step_llama_goldens.json",
        "llama-both",
        "train/tiny-llama-rm",
    );
    check_bf16_step("train/step_goldens.json", "both", "reward/tiny-rm-alibi4");
}

fn check_bf16_step(goldens: &str, case: &str, folder: &str) {
    let g = goldens_of(goldens);
    let both = g.cases.iter().find(|c| c.name == case).unwrap();
    let norm = loss_norm(&g, both.w_ranking, both.w_regression);
    let dir = fixtures().join(folder);
    let single = one_rank();
    let step = |dtype: DType| {
        let model = TrainableRm::load(&dir, &[], &Device::Cpu)
            .unwrap()
            .with_compute_dtype(dtype)
            .unwrap();
        let mut opt = AdamW::new(g.adamw);
        let micros = micro_batches(&g, 1);
        train_step(&model, &mut opt, &micros, &norm, g.adamw.lr, &single).unwrap();
        model
    };
    let (m32, m16) = (step(DType::F32), step(DType::BF16));
    let init = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let (mut same, mut total) = (0usize, 0usize);
    for (name, v16) in m16.params() {
        assert_eq!(v16.as_tensor().dtype(), DType::F32, "{name}");
        let w0 = init[name].to_dtype(DType::F32).unwrap();
        let d16: Vec<f32> = (v16.as_tensor() - &w0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let d32: Vec<f32> = (m32.params()[name].as_tensor() - &w0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        same += d16
            .iter()
            .zip(&d32)
            .filter(|(a, b)| a.signum() == b.signum())
            .count();
        total += d16.len();
    }
    let agree = same as f64 / total as f64;
    assert!(
        agree > 0.95,
        "{folder}: only {agree} of the updates have the f32 step's sign"
    );
    for (name, t) in m16.state_dict().unwrap() {
        assert_eq!(t.dtype(), DType::F32, "{folder}: state dict {name}");
    }
    eprintln!("{folder}: bf16 vs f32 step: {agree:.4} of {total} updates agree in sign");
}
