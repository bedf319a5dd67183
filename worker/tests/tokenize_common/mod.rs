//! Helpers shared by the tokenize_* integration tests: the SmolLM2 GGUF and fixture loading.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use evalfleet_worker::tokenize::TextTokenizer;

/// The demo models folder (`EVALFLEET_MODELS`, default `<repo>/.models`).
pub fn models_dir() -> PathBuf {
    match std::env::var_os("EVALFLEET_MODELS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(".models"),
    }
}

/// The SmolLM2-135M-Instruct GGUF; panics with the fix when it is missing.
pub fn smollm2_gguf() -> PathBuf {
    let p = models_dir()
        .join("smollm2-135m-instruct-gguf")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh (or set EVALFLEET_MODELS)",
        p.display()
    );
    p
}

/// The SmolLM2 tokenizer read from its GGUF file.
pub fn smollm2_tokenizer() -> TextTokenizer {
    TextTokenizer::from_gguf_file(&smollm2_gguf()).expect("SmolLM2 GGUF tokenizer")
}

/// A JSON fixture under tests/fixtures.
pub fn fixture(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A JSON array of ids as u32s.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an id array, found {v}"))
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
