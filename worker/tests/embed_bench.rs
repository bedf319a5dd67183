//! Throughput of the embedder on the 509 golden pairs with all-MiniLM-L6-v2 (a benchmark, not a
//! test: ignored by default). Compare with `scripts/goldens/embed_goldens.py --bench` on the same
//! machine:
//!
//! ```text
//! cargo test -p evalfleet-worker --test embed_bench -- --ignored --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use evalfleet_worker::embed::{Embedder, cosine};

fn models_dir() -> PathBuf {
    std::env::var_os("EVALFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models"))
}

fn pairs() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embed_pairs.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Best of `runs` timings of `f`, in seconds.
fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn minilm_pairs_per_second() {
    let dir = models_dir().join("all-minilm-l6-v2");
    assert!(
        dir.join("modules.json").exists(),
        "{} missing: run scripts/fetch-models.sh",
        dir.display()
    );
    let embedder = Embedder::load(&dir, &Device::Cpu).unwrap();
    let pairs = pairs();
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    embedder.embed(&texts[..64]).unwrap(); // warm-up

    let batched = best_of(3, || {
        let e = embedder.embed(&texts).unwrap();
        let s: f32 = e.chunks(2).map(|ab| cosine(&ab[0], &ab[1])).sum();
        assert!(s.is_finite());
    });
    let per_pair = best_of(1, || {
        for (a, b) in &pairs {
            let e = embedder.embed(&[a, b]).unwrap();
            assert!(cosine(&e[0], &e[1]).is_finite());
        }
    });
    let n = pairs.len() as f64;
    eprintln!(
        "evalfleet embed, all-MiniLM-L6-v2, CPU, {} pairs: batched (32, length-sorted) {:.1} pairs/s; one encode per pair as the original tool {:.1} pairs/s",
        pairs.len(),
        n / batched,
        n / per_pair
    );
}
