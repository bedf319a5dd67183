//! Loading failures must name what is wrong: the unsupported architecture (HF or GGUF), the
//! missing shard, the adapter file and the offending key or module.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use evalfleet_worker::models::{LoadOptions, load_causal_lm};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load_err(model: &Path, adapters: &[PathBuf]) -> String {
    load_causal_lm(model, adapters, &LoadOptions::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn unsupported_hf_architecture_is_named_with_the_supported_list() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"]}"#,
    )
    .unwrap();
    let err = load_err(dir.path(), &[]);
    assert!(
        err.contains("GPT2LMHeadModel") && err.contains("LlamaForCausalLM"),
        "{err}"
    );
}

#[test]
fn unsupported_gguf_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let emb = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let arch = Value::String("gpt2".into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &emb)],
    )
    .unwrap();
    drop(f);
    let err = load_err(&path, &[]);
    assert!(err.contains("gpt2") && err.contains("llama"), "{err}");
}

#[test]
fn a_missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-llama/model");
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let err = load_err(dir.path(), &[]);
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn an_adapter_for_another_model_names_the_module_and_file() {
    // The qwen2 adapter's q_proj delta is (64, 64); the mistral model's q_proj is (128, 64).
    let err = load_err(
        &fixtures().join("tiny-mistral/model"),
        &[fixtures().join("tiny-qwen2/lora")],
    );
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("q_proj"),
        "{err}"
    );
}

#[test]
fn an_unknown_adapter_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4}"#,
    )
    .unwrap();
    let t = Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let tensors =
        std::collections::HashMap::from([("base_model.model.lm_head.weight".to_string(), t)]);
    candle_core::safetensors::save(&tensors, dir.path().join("adapter_model.safetensors")).unwrap();
    let err = load_err(
        &fixtures().join("tiny-llama/model"),
        &[dir.path().to_path_buf()],
    );
    assert!(
        err.contains("base_model.model.lm_head.weight")
            && err.contains("adapter_model.safetensors"),
        "{err}"
    );
}
