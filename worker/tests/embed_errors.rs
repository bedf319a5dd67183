//! Folders the embedder cannot run fail at load with a message naming the file and what is missing
//! or unsupported (never a silently different embedding).

use std::path::{Path, PathBuf};

use candle_core::Device;
use evalfleet_worker::embed::Embedder;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embed_tiny_bert_cls")
}

/// A copy of the tiny CLS BERT folder in a temporary directory, to be broken by the test.
fn copy_tiny() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for rel in [
        "config.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "tokenizer.json",
        "1_Pooling/config.json",
    ] {
        let to = dir.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(tiny().join(rel), to).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match Embedder::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} lacks {from}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

#[test]
fn the_copy_loads() {
    let dir = copy_tiny();
    let e = Embedder::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!((e.dim(), e.max_seq_length()), (32, 24));
}

#[test]
fn a_dense_module_is_named() {
    let dir = copy_tiny();
    edit(
        &dir.path().join("modules.json"),
        "models.Pooling",
        "models.Dense",
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("modules.json") && err.contains("sentence_transformers.models.Dense"),
        "{err}"
    );
}

#[test]
fn weighted_mean_pooling_is_unsupported() {
    let dir = copy_tiny();
    edit(
        &dir.path().join("1_Pooling/config.json"),
        "pooling_mode_cls_token",
        "pooling_mode_weightedmean_tokens",
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("1_Pooling/config.json") && err.contains("weighted-mean"),
        "{err}"
    );
}

#[test]
fn a_non_bert_encoder_is_named() {
    let dir = copy_tiny();
    edit(
        &dir.path().join("config.json"),
        "\"bert\"",
        "\"xlm-roberta\"",
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("xlm-roberta"),
        "{err}"
    );
}

#[test]
fn missing_files_are_named() {
    let dir = copy_tiny();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert!(load_err(dir.path()).contains("no tokenizer.json"));
    let dir = copy_tiny();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(load_err(dir.path()).contains("no model.safetensors"));
    let dir = copy_tiny();
    std::fs::remove_file(dir.path().join("modules.json")).unwrap();
    assert!(load_err(dir.path()).contains("no modules.json"));
}

#[test]
fn a_pooling_dimension_mismatch_is_named() {
    let dir = copy_tiny();
    edit(
        &dir.path().join("1_Pooling/config.json"),
        "\"word_embedding_dimension\": 32",
        "\"word_embedding_dimension\": 64",
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("word_embedding_dimension 64") && err.contains("hidden_size 32"),
        "{err}"
    );
}

#[test]
fn long_texts_are_truncated_to_max_seq_length() {
    // Past 24 tokens nothing changes: the tail is cut before the encoder sees it.
    let e = Embedder::load(&tiny(), &Device::Cpu).unwrap();
    let base = "the cat sat on the mat ".repeat(10);
    let longer = format!("{base} and then the machine learning train left");
    let v = e.embed(&[&base, &longer]).unwrap();
    assert_eq!(v[0], v[1]);
    let short = e.embed(&["the cat", "the mat"]).unwrap();
    assert_ne!(short[0], short[1]);
}
