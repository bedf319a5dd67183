//! Where the worker tests find their inputs: the real small models that scripts/fetch-models.sh
//! puts under `<repo>/.models` (or `$EVALFLEET_MODELS`), and the committed fixtures. A missing
//! model fails the test with what to run, never skips it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// SmolLM2-135M-Instruct's Q4_1 GGUF, relative to the models folder.
pub const SMOLLM2_GGUF: &str = "smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The models folder: `$EVALFLEET_MODELS`, else the repository's `.models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("EVALFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models"))
}

/// `relative` under the models folder; panics, naming the path and the fetch script, when it is
/// not there.
pub fn model_path(relative: &str) -> PathBuf {
    let p = models_dir().join(relative);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh (or set EVALFLEET_MODELS)",
        p.display()
    );
    p
}

/// SmolLM2-135M-Instruct's GGUF (see [`model_path`]).
pub fn smollm2_gguf() -> PathBuf {
    model_path(SMOLLM2_GGUF)
}

/// The worker crate's committed test fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
