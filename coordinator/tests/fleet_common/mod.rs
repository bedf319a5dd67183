//! Helpers shared by the fleet tests: finding the binaries.
//!
//! The worker binary belongs to another crate, so cargo does not build it for these tests. It is
//! taken from `$EVALFLEET_WORKER_BIN`, else from next to the `evalfleet` binary (the same target
//! directory and profile); if absent the test fails and says how to build it (scripts/test.sh
//! builds every binary before running the tests).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The `evalfleet` binary under test.
pub fn evalfleet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_evalfleet"))
}

/// The `evalfleet-worker` binary (see the module docs).
pub fn worker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EVALFLEET_WORKER_BIN") {
        return PathBuf::from(p);
    }
    let name = format!("evalfleet-worker{}", std::env::consts::EXE_SUFFIX);
    let path = Path::new(env!("CARGO_BIN_EXE_evalfleet")).with_file_name(name);
    assert!(
        path.is_file(),
        "worker binary {} is missing: build it first with `cargo build -p evalfleet-worker` \
         (same profile and target dir; scripts/test.sh does this), or set EVALFLEET_WORKER_BIN",
        path.display()
    );
    path
}
