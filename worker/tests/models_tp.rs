//! Tensor parallelism in the model code (issue 8): a model split over 2 or 4 in-process ranks
//! (threads of one `LocalCollective` group, each rank loading its part and running the same
//! inputs) gives the logits of the whole model within 1e-4 in f32, and the same greedy tokens
//! through the KV cache; with and without merged LoRA adapters; llama, qwen2 (q/k/v biases) and
//! Baichuan reward models (ALiBi and rotary). The committed tiny checkpoints have 2 KV heads, so
//! world size 4 runs on checkpoints written here from seeded random weights (8 heads, 4 KV heads,
//! every bias the architectures allow, and an adapter on every linear layer). A world size that
//! does not divide the heads is refused with a message naming the model, the count and the
//! world size.

mod models_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use evalfleet_worker::collective::{LocalCollective, SharedCollective};
use evalfleet_worker::models::{
    BaichuanRewardModel, DTypeChoice, Decoder, ForwardInput, LoadOptions, LogitsAt, load_causal_lm,
};
use serde_json::json;

const TOL: f32 = 1e-4;
/// Greedy decoding steps after the prompt.
const STEPS: usize = 6;

/// Runs `f` once per rank of a group of `world` (rank threads sharing a `LocalCollective`;
/// world 1 runs without a group) and returns the ranks' results in rank order.
fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(Option<SharedCollective>) -> T + Send + Sync + 'static,
) -> Vec<T> {
    if world == 1 {
        return vec![f(None)];
    }
    let f = Arc::new(f);
    let handles: Vec<_> = LocalCollective::group(world)
        .into_iter()
        .map(|c| {
            let f = f.clone();
            std::thread::spawn(move || f(Some(Arc::new(c) as SharedCollective)))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a rank panicked"))
        .collect()
}

/// What one rank computed: the prompt's logits at every position, the greedy tokens, and the
/// last-position logits of every decoding step.
#[derive(Debug, Clone)]
struct Run {
    prefill: Vec<f32>,
    tokens: Vec<Vec<u32>>,
    steps: Vec<Vec<f32>>,
}

/// The prompts: two rows, the second left-padded by 3 (pad id 0, masked out).
fn prompts() -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
    let ids = vec![
        vec![5, 17, 99, 3, 42, 250, 7, 64],
        vec![0, 0, 0, 11, 200, 31, 8, 77],
    ];
    let mask = vec![vec![1; 8], vec![0, 0, 0, 1, 1, 1, 1, 1]];
    (ids, mask)
}

fn u32s(rows: &[Vec<u32>]) -> Tensor {
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

fn u8s(rows: &[Vec<u8>]) -> Tensor {
    let flat: Vec<u8> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Loads `model` (with `adapters`) as one rank of `tp` and runs the prompts, then [`STEPS`]
/// greedy steps through the KV cache.
fn run_decoder(
    model: &Path,
    adapters: &[PathBuf],
    dtype: DTypeChoice,
    tp: Option<SharedCollective>,
) -> Run {
    let opts = LoadOptions {
        dtype,
        tp,
        ..LoadOptions::default()
    };
    let m = load_causal_lm(model, adapters, &opts).unwrap();
    let (ids, mask) = prompts();
    let positions: Vec<Vec<u32>> = mask
        .iter()
        .map(|r| {
            let mut p = 0u32;
            // Left padding: pads get 0, real tokens count from 0.
            r.iter()
                .map(|&v| {
                    let here = p;
                    p += u32::from(v);
                    here
                })
                .collect()
        })
        .collect();
    let mut cache = m.new_cache();
    let mut key_mask = mask.clone();
    let input = ForwardInput {
        tokens: u32s(&ids),
        positions: u32s(&positions),
        key_mask: Some(u8s(&key_mask)),
    };
    let logits = m.forward(&input, &mut cache, LogitsAt::All).unwrap();
    let prefill = flat(&logits);
    let mut last = logits.i((.., ids[0].len() - 1..)).unwrap();
    let mut next_pos: Vec<u32> = positions.iter().map(|r| r[r.len() - 1] + 1).collect();
    let mut tokens = vec![Vec::new(); ids.len()];
    let mut steps = Vec::new();
    for _ in 0..STEPS {
        let picked: Vec<u32> = last
            .argmax(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (row, &t) in tokens.iter_mut().zip(&picked) {
            row.push(t);
        }
        for r in &mut key_mask {
            r.push(1);
        }
        let input = ForwardInput {
            tokens: Tensor::from_vec(picked, (ids.len(), 1), &Device::Cpu).unwrap(),
            positions: Tensor::from_vec(next_pos.clone(), (ids.len(), 1), &Device::Cpu).unwrap(),
            key_mask: Some(u8s(&key_mask)),
        };
        last = m.forward(&input, &mut cache, LogitsAt::Last).unwrap();
        steps.push(flat(&last));
        for p in &mut next_pos {
            *p += 1;
        }
    }
    Run {
        prefill,
        tokens,
        steps,
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every rank of a group returns the same bits (they all-reduce to the same activations).
fn same_on_all_ranks(runs: &[Run], what: &str) -> Run {
    for (r, run) in runs.iter().enumerate().skip(1) {
        assert_eq!(run.tokens, runs[0].tokens, "{what}: rank {r}'s tokens");
        assert!(
            max_diff(&run.prefill, &runs[0].prefill) == 0.0,
            "{what}: rank {r}'s logits differ from rank 0's"
        );
    }
    runs[0].clone()
}

/// World sizes `worlds` against world 1: logits within [`TOL`], identical greedy tokens.
/// Returns the largest difference seen.
fn check_decoder(model: &Path, adapters: &[PathBuf], dtype: DTypeChoice, worlds: &[usize]) -> f32 {
    // The fixture's folder and the model's own name (e.g. `tiny-llama/model`).
    let name: PathBuf = model
        .iter()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let name = name.display().to_string();
    let run = |world: usize| {
        let (m, a) = (model.to_path_buf(), adapters.to_vec());
        on_ranks(world, move |tp| run_decoder(&m, &a, dtype, tp))
    };
    let whole = run(1).remove(0);
    let mut worst = 0f32;
    for &world in worlds {
        let what = format!("{name} ({} adapters) at TP={world}", adapters.len());
        let split = same_on_all_ranks(&run(world), &what);
        let d = max_diff(&split.prefill, &whole.prefill);
        let ds = split
            .steps
            .iter()
            .zip(&whole.steps)
            .map(|(a, b)| max_diff(a, b))
            .fold(0.0, f32::max);
        println!(
            "{what}: max |logit diff| prompt {d:e}, decoding {ds:e}; tokens {:?}",
            split.tokens
        );
        assert!(d < TOL, "{what}: prompt logits differ by {d}");
        assert!(ds < TOL, "{what}: decoding logits differ by {ds}");
        assert_eq!(split.tokens, whole.tokens, "{what}: greedy tokens");
        worst = worst.max(d).max(ds);
    }
    worst
}

fn fixture(name: &str) -> PathBuf {
    models_common::fixtures().join(name)
}

#[test]
fn llama_and_qwen2_fixtures_at_tp2_with_and_without_lora() {
    for arch in ["tiny-llama", "tiny-qwen2", "tiny-mistral"] {
        let model = fixture(arch).join("model");
        check_decoder(&model, &[], DTypeChoice::F32, &[2]);
        check_decoder(
            &model,
            &[fixture(arch).join("lora")],
            DTypeChoice::F32,
            &[2],
        );
    }
    // Two adapters merged in order (one rsLoRA), then cut.
    let llama = fixture("tiny-llama");
    check_decoder(
        &llama.join("model"),
        &[llama.join("lora"), llama.join("lora2")],
        DTypeChoice::F32,
        &[2],
    );
}

/// `n` seeded values uniform in [-scale, scale).
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

struct TensorsOut(HashMap<String, Tensor>, u64);

impl TensorsOut {
    fn add(&mut self, name: &str, shape: &[usize], scale: f32) {
        self.1 += 1;
        let n = shape.iter().product();
        let t = Tensor::from_vec(random(n, self.1, scale), shape, &Device::Cpu).unwrap();
        self.0.insert(name.to_string(), t);
    }
}

/// Shapes of the written decoders: 8 heads of 8, 4 KV heads, intermediate 96 (divisible by 4).
const HIDDEN: usize = 64;
const HEADS: usize = 8;
const KV_HEADS: usize = 4;
const HEAD_DIM: usize = 8;
const INTER: usize = 96;
const VOCAB: usize = 256;
const LAYERS: usize = 2;

/// The linear layers of layer `i` as (name, out, in).
fn linears(i: usize) -> Vec<(String, usize, usize)> {
    let p = format!("model.layers.{i}");
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    vec![
        (format!("{p}.self_attn.q_proj"), q, HIDDEN),
        (format!("{p}.self_attn.k_proj"), kv, HIDDEN),
        (format!("{p}.self_attn.v_proj"), kv, HIDDEN),
        (format!("{p}.self_attn.o_proj"), HIDDEN, q),
        (format!("{p}.mlp.gate_proj"), INTER, HIDDEN),
        (format!("{p}.mlp.up_proj"), INTER, HIDDEN),
        (format!("{p}.mlp.down_proj"), HIDDEN, INTER),
    ]
}

/// Writes a random decoder checkpoint of `arch` ("llama": every bias, "qwen2": q/k/v biases,
/// tied embeddings) and a LoRA adapter on all its linear layers under `dir`; returns the model
/// and adapter folders.
fn write_decoder(dir: &Path, arch: &str, seed: u64) -> (PathBuf, PathBuf) {
    let llama = arch == "llama";
    let model = dir.join(format!("{arch}-model"));
    std::fs::create_dir_all(&model).unwrap();
    let mut config = json!({
        "architectures": [if llama { "LlamaForCausalLM" } else { "Qwen2ForCausalLM" }],
        "model_type": arch,
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": !llama,
    });
    if llama {
        config["attention_bias"] = json!(true);
        config["mlp_bias"] = json!(true);
    }
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let mut w = TensorsOut(HashMap::new(), seed);
    w.add("model.embed_tokens.weight", &[VOCAB, HIDDEN], 1.0);
    w.add("model.norm.weight", &[HIDDEN], 1.0);
    if llama {
        w.add("lm_head.weight", &[VOCAB, HIDDEN], 0.2);
    }
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        w.add(&format!("{p}.input_layernorm.weight"), &[HIDDEN], 1.0);
        w.add(
            &format!("{p}.post_attention_layernorm.weight"),
            &[HIDDEN],
            1.0,
        );
        for (name, out, inp) in linears(i) {
            w.add(&format!("{name}.weight"), &[out, inp], 0.25);
            let qkv = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .any(|n| name.ends_with(n));
            if llama || qkv {
                w.add(&format!("{name}.bias"), &[out], 0.1);
            }
        }
    }
    candle_core::safetensors::save(&w.0, model.join("model.safetensors")).unwrap();

    let adapter = dir.join(format!("{arch}-lora"));
    std::fs::create_dir_all(&adapter).unwrap();
    let targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let acfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": targets});
    std::fs::write(adapter.join("adapter_config.json"), acfg.to_string()).unwrap();
    let mut a = TensorsOut(HashMap::new(), seed + 1000);
    for i in 0..LAYERS {
        for (name, out, inp) in linears(i) {
            let key = format!("base_model.model.{name}");
            a.add(&format!("{key}.lora_A.weight"), &[4, inp], 0.2);
            a.add(&format!("{key}.lora_B.weight"), &[out, 4], 0.2);
        }
    }
    candle_core::safetensors::save(&a.0, adapter.join("adapter_model.safetensors")).unwrap();
    (model, adapter)
}

#[test]
fn written_llama_and_qwen2_at_tp2_and_tp4_with_and_without_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let mut worst = 0f32;
    for (arch, seed) in [("llama", 11), ("qwen2", 23)] {
        let (model, adapter) = write_decoder(tmp.path(), arch, seed);
        worst = worst.max(check_decoder(&model, &[], DTypeChoice::F32, &[2, 4]));
        worst = worst.max(check_decoder(&model, &[adapter], DTypeChoice::F32, &[2, 4]));
    }
    println!("written decoders: worst |logit diff| {worst:e}");
}

/// GGUF: quantized weights are refused under TP; dequantized (dtype f32) they are cut like any.
#[test]
fn gguf_is_split_only_dequantized() {
    let gguf = fixture("tiny-qwen2").join("model.gguf");
    let g = gguf.clone();
    let errs = on_ranks(2, move |tp| {
        let opts = LoadOptions {
            tp,
            ..LoadOptions::default()
        };
        load_causal_lm(&g, &[], &opts).unwrap_err().to_string()
    });
    for e in &errs {
        assert!(
            e.contains("quantized GGUF model") && e.contains("model.gguf") && e.contains("f32"),
            "{e}"
        );
    }
    check_decoder(&gguf, &[], DTypeChoice::F32, &[2]);
}

#[test]
fn a_world_size_that_does_not_divide_the_heads_is_refused() {
    let model = fixture("tiny-llama").join("model");
    let m = model.clone();
    let errs = on_ranks(4, move |tp| {
        let opts = LoadOptions {
            tp,
            ..LoadOptions::default()
        };
        load_causal_lm(&m, &[], &opts).unwrap_err().to_string()
    });
    for e in &errs {
        assert!(
            e.contains("tiny-llama")
                && e.contains("LlamaForCausalLM")
                && e.contains("2 key/value heads")
                && e.contains("world size of 4"),
            "{e}"
        );
    }
    // The reward model with 5 heads at world size 2.
    let rm = fixture("reward/tiny-rm-alibi5");
    let errs = on_ranks(2, move |tp| {
        BaichuanRewardModel::load_sharded(&rm, DType::F32, &Device::Cpu, tp)
            .unwrap_err()
            .to_string()
    });
    for e in &errs {
        assert!(
            e.contains("tiny-rm-alibi5")
                && e.contains("5 attention heads")
                && e.contains("world size of 2"),
            "{e}"
        );
    }
}

/// Reward inputs of several lengths (1 token included: the one-row path).
fn reward_inputs() -> Vec<Vec<u32>> {
    vec![
        vec![3, 17, 250, 9, 41, 77, 300, 12, 5, 2],
        vec![8],
        vec![100, 200, 300, 383, 1, 2, 3],
        (0..40).map(|i| (i * 37 % 383) as u32).collect(),
    ]
}

/// One rank's reward model: last hidden states of the inputs one at a time, and batched scores.
fn run_reward(
    dir: &Path,
    adapters: &[PathBuf],
    tp: Option<SharedCollective>,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let m = BaichuanRewardModel::load_with(dir, adapters, DType::F32, &Device::Cpu, tp).unwrap();
    let seqs = reward_inputs();
    let hidden = seqs
        .iter()
        .filter(|s| s.len() > 1)
        .map(|s| flat(&m.last_hidden(&[s]).unwrap()))
        .collect();
    (hidden, m.score_batch(&seqs).unwrap())
}

#[test]
fn baichuan_reward_models_at_tp2_and_tp4() {
    for name in ["tiny-rm-alibi4", "tiny-rm-rope"] {
        let dir = fixture("reward").join(name);
        let run = |world: usize| {
            let d = dir.clone();
            on_ranks(world, move |tp| run_reward(&d, &[], tp))
        };
        let (hidden, scores) = run(1).remove(0);
        for world in [2, 4] {
            let ranks = run(world);
            for (r, rank) in ranks.iter().enumerate() {
                let dh = rank
                    .0
                    .iter()
                    .zip(&hidden)
                    .map(|(a, b)| max_diff(a, b))
                    .fold(0.0, f32::max);
                let ds = max_diff(&rank.1, &scores);
                println!(
                    "{name} TP={world} rank {r}: max |hidden diff| {dh:e}, |score diff| {ds:e}"
                );
                assert!(dh < TOL, "{name} TP={world}: hidden states differ by {dh}");
                assert!(ds < TOL, "{name} TP={world}: scores differ by {ds}");
            }
        }
    }
}

/// The LoRA targets of a Baichuan layer as (module, out, in), from the folder's config.json.
fn baichuan_linears(dir: &Path) -> Vec<(String, usize, usize)> {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    let get = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (h, inter) = (get("hidden_size"), get("intermediate_size"));
    (0..get("num_hidden_layers"))
        .flat_map(|i| {
            let p = format!("model.layers.{i}");
            [
                (format!("{p}.self_attn.W_pack"), 3 * h, h),
                (format!("{p}.self_attn.o_proj"), h, h),
                (format!("{p}.mlp.gate_proj"), inter, h),
                (format!("{p}.mlp.up_proj"), inter, h),
                (format!("{p}.mlp.down_proj"), h, inter),
            ]
        })
        .collect()
}

const RM_RANK: usize = 4;

/// Writes a PEFT adapter with seeded random A and B on every Baichuan target of `base` to
/// `dir` (r 4, alpha 8, rsLoRA when asked); returns the merge scale it implies.
fn write_baichuan_adapter(base: &Path, dir: &Path, seed: u64, rslora: bool) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let targets = ["W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let cfg = json!({
        "peft_type": "LORA", "r": RM_RANK, "lora_alpha": 8, "use_rslora": rslora,
        "target_modules": targets,
    });
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    let mut a = TensorsOut(HashMap::new(), seed);
    for (module, out, inp) in baichuan_linears(base) {
        let key = format!("base_model.model.{module}");
        a.add(&format!("{key}.lora_A.weight"), &[RM_RANK, inp], 0.1);
        a.add(&format!("{key}.lora_B.weight"), &[out, RM_RANK], 0.1);
    }
    candle_core::safetensors::save(&a.0, dir.join("adapter_model.safetensors")).unwrap();
    if rslora {
        8.0 / (RM_RANK as f64).sqrt()
    } else {
        8.0 / RM_RANK as f64
    }
}

/// The reference merge, written independently of the worker: every tensor of `base` in f32,
/// with `W[o][i] += scale · Σ_k B[o][k]·A[k][i]` (in f64) for each adapter module, saved with
/// the base's config.json as a plain folder under `out`.
fn merge_by_hand(base: &Path, adapter: &Path, scale: f64, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    std::fs::copy(base.join("config.json"), out.join("config.json")).unwrap();
    let mut tensors = HashMap::new();
    for entry in std::fs::read_dir(base).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            for (k, t) in candle_core::safetensors::load(&path, &Device::Cpu).unwrap() {
                tensors.insert(k, t.to_dtype(DType::F32).unwrap());
            }
        }
    }
    let lora =
        candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    for (module, out_dim, in_dim) in baichuan_linears(base) {
        let key = format!("base_model.model.{module}");
        let a = flat(&lora[&format!("{key}.lora_A.weight")]);
        let b = flat(&lora[&format!("{key}.lora_B.weight")]);
        let name = format!("{module}.weight");
        let mut w = flat(&tensors[&name]);
        for o in 0..out_dim {
            for i in 0..in_dim {
                let d: f64 = (0..RM_RANK)
                    .map(|k| b[o * RM_RANK + k] as f64 * a[k * in_dim + i] as f64)
                    .sum();
                w[o * in_dim + i] = (w[o * in_dim + i] as f64 + scale * d) as f32;
            }
        }
        let merged = Tensor::from_vec(w, (out_dim, in_dim), &Device::Cpu).unwrap();
        tensors.insert(name, merged);
    }
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).unwrap();
}

/// Largest difference of two reward runs (hidden states and scores).
fn reward_diff(a: &(Vec<Vec<f32>>, Vec<f32>), b: &(Vec<Vec<f32>>, Vec<f32>)) -> (f32, f32) {
    let dh =
        a.0.iter()
            .zip(&b.0)
            .map(|(x, y)| max_diff(x, y))
            .fold(0.0, f32::max);
    (dh, max_diff(&a.1, &b.1))
}

/// Baichuan reward models with a merged LoRA adapter (plain on the ALiBi model, rsLoRA on the
/// rotary one): (a) equal the checkpoint merged by hand within 1e-6, and differ from the base;
/// (b) split over 2 and 4 ranks (the merge happens before W_pack is cut per q/k/v block) they
/// equal the whole merged model within 1e-4.
#[test]
fn baichuan_reward_models_with_lora_at_tp2_and_tp4() {
    let tmp = tempfile::tempdir().unwrap();
    for (n, (name, rslora)) in [("tiny-rm-alibi4", false), ("tiny-rm-rope", true)]
        .into_iter()
        .enumerate()
    {
        let dir = fixture("reward").join(name);
        let adapter = tmp.path().join(format!("{name}-lora"));
        let scale = write_baichuan_adapter(&dir, &adapter, 500 + n as u64, rslora);
        let by_hand = tmp.path().join(format!("{name}-merged"));
        merge_by_hand(&dir, &adapter, scale, &by_hand);
        let adapters = vec![adapter];

        let base = run_reward(&dir, &[], None);
        let merged = run_reward(&dir, &adapters, None);
        let reference = run_reward(&by_hand, &[], None);
        let (dh, ds) = reward_diff(&merged, &reference);
        // Hidden states are O(1..10): their bound is relative to the largest (f32 rounds the
        // merged weights 1 ulp apart, which shows there, not in the sigmoid scores).
        let peak = reference
            .0
            .iter()
            .flatten()
            .fold(0f32, |m, x| m.max(x.abs()));
        let (_, moved) = reward_diff(&merged, &base);
        println!(
            "{name} + LoRA (scale {scale}): vs merged by hand |hidden| {dh:e} (peak {peak}), \
             |score| {ds:e}; vs base |score| {moved:e}"
        );
        assert!(
            ds < 1e-6,
            "{name}: scores differ from the hand merge by {ds}"
        );
        assert!(
            dh < 1e-6 * peak,
            "{name}: hidden states differ from the hand merge by {dh} (peak {peak})"
        );
        assert!(
            moved > 1e-3,
            "{name}: the adapter barely moved the scores ({moved})"
        );

        for world in [2, 4] {
            let (d, a) = (dir.clone(), adapters.clone());
            for (r, rank) in on_ranks(world, move |tp| run_reward(&d, &a, tp))
                .iter()
                .enumerate()
            {
                let (dh, ds) = reward_diff(rank, &merged);
                println!(
                    "{name} + LoRA TP={world} rank {r}: |hidden diff| {dh:e}, |score diff| {ds:e}"
                );
                assert!(
                    dh < TOL,
                    "{name} + LoRA TP={world}: hidden states differ by {dh}"
                );
                assert!(ds < TOL, "{name} + LoRA TP={world}: scores differ by {ds}");
            }
        }
    }
}

/// An adapter module the reward model does not have (a decoder's q_proj) is refused by name.
#[test]
fn a_baichuan_adapter_on_a_missing_module_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("reward").join("tiny-rm-alibi4");
    let adapter = tmp.path().join("lora");
    write_baichuan_adapter(&dir, &adapter, 9, false);
    let path = adapter.join("adapter_model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let key = "base_model.model.model.layers.0.self_attn.q_proj";
    let a = Tensor::zeros((RM_RANK, 64), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((64, RM_RANK), DType::F32, &Device::Cpu).unwrap();
    t.insert(format!("{key}.lora_A.weight"), a);
    t.insert(format!("{key}.lora_B.weight"), b);
    candle_core::safetensors::save(&t, &path).unwrap();
    let e = BaichuanRewardModel::load_with(&dir, &[adapter], DType::F32, &Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.q_proj") && e.contains("not a linear layer"),
        "{e}"
    );
}
