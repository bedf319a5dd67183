//! The executor on step-4 reward leases (the tiny BaichuanCharRM-style model of
//! `tests/fixtures/reward/tiny-rm-alibi4`), and the load errors of broken reward model folders.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use evalfleet_proto::v1 as pb;
use evalfleet_worker::score::reward::RewardScorer;
use evalfleet_worker::tasks::{Executor, ExecutorOptions};
use pb::item_result::Outcome;

fn tiny_rm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward/tiny-rm-alibi4")
}

fn reward_item(id: &str, text: &str) -> pb::WorkItem {
    pb::WorkItem {
        item_id: id.into(),
        payload: Some(pb::work_item::Payload::Reward(pb::RewardItem {
            text: text.into(),
        })),
    }
}

fn lease(model: &Path, cutoff_len: u32, items: Vec<pb::WorkItem>) -> pb::Lease {
    pb::Lease {
        lease_id: 11,
        model: Some(pb::ModelSpec {
            key: format!("reward|{}", model.display()),
            model_path: model.display().to_string(),
            adapter_paths: Vec::new(),
            dtype: String::new(),
        }),
        prompt: Some(pb::PromptSpec {
            cutoff_len,
            ..Default::default()
        }),
        items,
        ..Default::default()
    }
}

#[test]
fn reward_lease_scores_in_bf16_with_eos_and_left_truncation() {
    let texts = [
        "佟湘玉：额滴神啊，这日子没法过了！",
        "",
        "The quick brown fox jumps over the lazy dog. 白展堂：掌柜的，您别着急，有我在呢。",
        "short </s> with a special token",
    ];
    let cutoff = 12;
    let mut items: Vec<pb::WorkItem> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| reward_item(&format!("r{i}"), t))
        .collect();
    items.push(pb::WorkItem {
        item_id: "bad".into(),
        payload: Some(pb::work_item::Payload::Generate(Default::default())),
    });
    let mut exec = Executor::new(ExecutorOptions {
        max_batch: 3,
        ..Default::default()
    });
    let mut results = Vec::new();
    exec.run_lease(&lease(&tiny_rm(), cutoff, items), &mut |r| results.push(r))
        .unwrap();
    assert_eq!(results.len(), texts.len() + 1);
    assert!(exec.models_held().iter().any(|k| k.starts_with("reward|")));

    // The same inputs one at a time through a bf16 scorer (docs/FIDELITY.md, decision 6: bf16 by
    // default).
    let scorer = RewardScorer::load(&tiny_rm(), DType::BF16, &Device::Cpu).unwrap();
    let mut truncated = 0;
    for (i, text) in texts.iter().enumerate() {
        let id = format!("r{i}");
        let r = results
            .iter()
            .find(|r| r.item_id == id)
            .expect("a result per item");
        let Some(Outcome::Reward(got)) = &r.outcome else {
            panic!("{id}: {:?}", r.outcome);
        };
        let input = scorer.encode(text, cutoff as usize).unwrap();
        assert_eq!(input.ids.len(), got.input_tokens as usize, "{id}");
        assert_eq!(input.truncated, got.truncated, "{id}");
        assert_eq!(*input.ids.last().unwrap(), scorer.eos_id());
        let alone = scorer.score_batch(&[input.ids]).unwrap()[0];
        assert_eq!(alone.to_bits(), got.sigmoid.to_bits(), "{id}");
        // A bf16 value widened: its low 16 bits are zero.
        assert_eq!(got.sigmoid.to_bits() & 0xffff, 0, "{id}: {}", got.sigmoid);
        truncated += usize::from(got.truncated);
    }
    assert!(
        (1..texts.len()).contains(&truncated),
        "some texts but not all must be longer than {cutoff} tokens: {truncated}"
    );
    let bad = results.iter().find(|r| r.item_id == "bad").unwrap();
    assert!(matches!(&bad.outcome, Some(Outcome::Error(e)) if e.message.contains("reward")));
}

/// A copy of the tiny model's folder to break.
fn broken_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny_rm()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    RewardScorer::load(dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn missing_w_pack_is_named() {
    let dir = broken_copy();
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let name = "model.layers.1.self_attn.W_pack.weight";
    let w = tensors.remove(name).unwrap();
    // A checkpoint with separate projections instead of the fused one.
    tensors.insert(
        "model.layers.1.self_attn.q_proj.weight".into(),
        w.narrow(0, 0, 64).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains(name) && err.contains("missing"), "{err}");
}

#[test]
fn wrong_shapes_are_named_with_both_shapes() {
    let dir = broken_copy();
    edit_config(dir.path(), |v| v["intermediate_size"] = 100.into());
    let err = load_err(dir.path());
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight")
            && err.contains("[128, 64]")
            && err.contains("[100, 64]"),
        "{err}"
    );
}

#[test]
fn unknown_position_embedding_is_named() {
    let dir = broken_copy();
    edit_config(dir.path(), |v| {
        v["position_embedding_type"] = "absolute".into()
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("position_embedding_type") && err.contains("absolute"),
        "{err}"
    );
}

#[test]
fn missing_weights_and_shards_are_named() {
    let dir = broken_copy();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("pytorch_model.bin.index.json"), "{err}");
    // An index naming a shard that is not there.
    let index = serde_json::json!({"weight_map": {"model.norm.weight": "pytorch_model-00001-of-00001.bin"}});
    std::fs::write(
        dir.path().join("pytorch_model.bin.index.json"),
        index.to_string(),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("pytorch_model-00001-of-00001.bin") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn score_head_and_vocabulary_are_checked() {
    let dir = broken_copy();
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("score.bias");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    assert!(load_err(dir.path()).contains("score.bias"));

    let scorer = RewardScorer::load(&tiny_rm(), DType::F32, &Device::Cpu).unwrap();
    let vocab = scorer.vocab() as u32;
    let err = scorer
        .score_batch(&[vec![1, vocab]])
        .unwrap_err()
        .to_string();
    assert!(err.contains(&vocab.to_string()), "{err}");
    assert!(scorer.score_batch(&[Vec::new()]).is_err());
}

#[test]
fn token_bounded_groups_give_the_same_scores_in_the_input_order() {
    let scorer = RewardScorer::load(&tiny_rm(), DType::BF16, &Device::Cpu).unwrap();
    let texts = [
        "a",
        "佟湘玉：额滴神啊",
        "The quick brown fox jumps over the lazy dog.",
        "",
        "吕秀才",
    ];
    let inputs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| scorer.encode(t, 0).unwrap().ids)
        .collect();
    let one_pass = scorer.score_batch(&inputs).unwrap();
    let small = scorer.clone().with_max_batch_tokens(12);
    let grouped = small.score_batch(&inputs).unwrap();
    for (i, input) in inputs.iter().enumerate() {
        let alone = scorer.score_batch(std::slice::from_ref(input)).unwrap()[0];
        assert_eq!(alone.to_bits(), one_pass[i].to_bits(), "text {i}");
        assert_eq!(alone.to_bits(), grouped[i].to_bits(), "text {i}");
    }
    // Different inputs give different scores: the order is not scrambled unnoticed.
    assert!(one_pass.windows(2).any(|w| w[0] != w[1]));
}

/// A reward folder as Baichuan publishes it: `tokenizer.model` (SentencePiece) without
/// tokenizer.json. Uses the SentencePiece fixture whose ids BaichuanTokenizer produced
/// (tests/fixtures/spm/baichuan_slow.json) and random weights of its vocabulary size.
#[test]
fn sentencepiece_only_folder_encodes_like_baichuan_tokenizer() {
    let spm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spm.join("baichuan_slow.json")).unwrap())
            .unwrap();
    let vocab = golden["vocab_size"].as_u64().unwrap() as usize;
    let dir = tempfile::tempdir().unwrap();
    for name in ["tokenizer.model", "tokenizer_config.json"] {
        std::fs::copy(spm.join("baichuan").join(name), dir.path().join(name)).unwrap();
    }
    let (h, inter) = (32, 64);
    let config = serde_json::json!({"hidden_size": h, "intermediate_size": inter,
        "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": vocab,
        "model_max_length": 4096, "hidden_act": "silu", "eos_token_id": 2});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let shapes: [(&str, Vec<usize>); 10] = [
        ("model.embed_tokens.weight", vec![vocab, h]),
        ("model.layers.0.input_layernorm.weight", vec![h]),
        ("model.layers.0.self_attn.W_pack.weight", vec![3 * h, h]),
        ("model.layers.0.self_attn.o_proj.weight", vec![h, h]),
        ("model.layers.0.post_attention_layernorm.weight", vec![h]),
        ("model.layers.0.mlp.gate_proj.weight", vec![inter, h]),
        ("model.layers.0.mlp.up_proj.weight", vec![inter, h]),
        ("model.layers.0.mlp.down_proj.weight", vec![h, inter]),
        ("model.norm.weight", vec![h]),
        ("score.weight", vec![1, h]),
    ];
    let mut tensors: std::collections::HashMap<String, candle_core::Tensor> = shapes
        .into_iter()
        .map(|(n, s)| {
            let t = candle_core::Tensor::randn(0f32, 0.2, s, &Device::Cpu).unwrap();
            (n.to_string(), t.to_dtype(DType::BF16).unwrap())
        })
        .collect();
    let bias = candle_core::Tensor::zeros(1, DType::BF16, &Device::Cpu).unwrap();
    tensors.insert("score.bias".into(), bias);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();

    let scorer = RewardScorer::load(dir.path(), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(scorer.eos_id(), 2);
    let mut inputs = Vec::new();
    for record in golden["records"].as_array().unwrap().iter().take(200) {
        let text = record["text"].as_str().unwrap();
        let mut want: Vec<u32> = serde_json::from_value(record["ids"].clone()).unwrap();
        want.push(2);
        let got = scorer.encode(text, 0).unwrap();
        assert_eq!(got.ids, want, "{text:?}");
        let cut = scorer.encode(text, 3).unwrap();
        assert_eq!(
            cut.ids[..],
            want[want.len().saturating_sub(3)..],
            "{text:?}"
        );
        assert_eq!(cut.truncated, want.len() > 3, "{text:?}");
        inputs.push(got.ids);
    }
    let scores = scorer.score_batch(&inputs[..20]).unwrap();
    assert!(scores.iter().all(|s| *s > 0.0 && *s < 1.0), "{scores:?}");
}

#[test]
fn a_reward_lease_with_an_adapter_is_refused_not_scored_on_the_base() {
    let mut spec = lease(&tiny_rm(), 12, vec![reward_item("r0", "佟湘玉：额滴神啊")]);
    if let Some(model) = spec.model.as_mut() {
        model.adapter_paths = vec!["some/adapter".into()];
    }
    let mut exec = Executor::new(ExecutorOptions::default());
    let mut results = Vec::new();
    let outcome = exec.run_lease(&spec, &mut |r| results.push(r));
    let message = match (&outcome, results.first().and_then(|r| r.outcome.as_ref())) {
        (Err(e), _) => e.to_string(),
        (Ok(()), Some(Outcome::Error(e))) => e.message.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(
        message.contains("adapters are not applied to reward models")
            && message.contains("some/adapter"),
        "{message}"
    );
    assert!(
        !results
            .iter()
            .any(|r| matches!(r.outcome, Some(Outcome::Reward(_))))
    );
}
