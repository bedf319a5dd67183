//! The executor on step-2 leases: embed items scored with the lease's sentence-transformers
//! folder (all-MiniLM-L6-v2 from scripts/fetch-models.sh), equal to [`Embedder::score_pairs`];
//! an item of the wrong kind and a missing folder fail as the module docs say.

use std::path::{Path, PathBuf};

use candle_core::Device;
use evalfleet_proto::v1 as pb;
use evalfleet_worker::embed::Embedder;
use evalfleet_worker::tasks::{Executor, ExecutorOptions};
use pb::item_result::Outcome;

fn minilm_dir() -> PathBuf {
    let models = std::env::var_os("EVALFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models"));
    let dir = models.join("all-minilm-l6-v2");
    assert!(
        dir.join("modules.json").exists(),
        "{} is missing: run scripts/fetch-models.sh (or set EVALFLEET_MODELS)",
        dir.display()
    );
    dir
}

fn embed_item(id: &str, label: &str, predict: &str) -> pb::WorkItem {
    pb::WorkItem {
        item_id: id.into(),
        payload: Some(pb::work_item::Payload::Embed(pb::EmbedItem {
            label: label.into(),
            predict: predict.into(),
        })),
    }
}

fn lease(model: &Path, items: Vec<pb::WorkItem>) -> pb::Lease {
    pb::Lease {
        lease_id: 7,
        model: Some(pb::ModelSpec {
            key: format!("embed|{}", model.display()),
            model_path: model.display().to_string(),
            adapter_paths: Vec::new(),
            dtype: "f32".into(),
        }),
        items,
        ..Default::default()
    }
}

fn run(exec: &mut Executor, lease: &pb::Lease) -> Vec<pb::ItemResult> {
    let mut results = Vec::new();
    exec.run_lease(lease, &mut |r| results.push(r)).unwrap();
    results
}

#[test]
fn embed_lease_scores_every_pair_and_names_bad_items() {
    let dir = minilm_dir();
    let pairs = [
        ("今天天气很好", "今天天气不错"),
        ("The cat sits on the mat.", "A dog runs in the park."),
        ("same text", "same text"),
    ];
    let want = Embedder::load(&dir, &Device::Cpu)
        .unwrap()
        .with_batch_size(2)
        .score_pairs(&pairs)
        .unwrap();
    let mut exec = Executor::new(ExecutorOptions {
        max_batch: 2,
        ..Default::default()
    });
    let mut items: Vec<pb::WorkItem> = pairs
        .iter()
        .enumerate()
        .map(|(i, (l, p))| embed_item(&i.to_string(), l, p))
        .collect();
    items.push(pb::WorkItem {
        item_id: "9".into(),
        payload: Some(pb::work_item::Payload::Generate(Default::default())),
    });
    let results = run(&mut exec, &lease(&dir, items));
    assert_eq!(results.len(), 4);
    for r in &results {
        assert_eq!(r.lease_id, 7);
        match (r.item_id.as_str(), &r.outcome) {
            ("9", Some(Outcome::Error(e))) => {
                assert!(e.message.contains("only embed items"), "{}", e.message);
                assert!(!e.retryable);
            }
            (id, Some(Outcome::Embed(e))) => {
                let i: usize = id.parse().unwrap();
                // Batches of 2 pairs here, 4 texts per pass there: equal up to float rounding.
                assert!(
                    (e.score - want[i]).abs() < 1e-5,
                    "{id}: {} vs {}",
                    e.score,
                    want[i]
                );
            }
            other => panic!("unexpected result {other:?}"),
        }
    }
    assert_eq!(exec.models_held(), [format!("embed|{}", dir.display())]);
}

#[test]
fn missing_embedding_folder_fails_the_lease_naming_it() {
    let mut exec = Executor::new(ExecutorOptions::default());
    let missing = Path::new("no/such/embedder");
    let err = exec
        .run_lease(
            &lease(missing, vec![embed_item("0", "a", "b")]),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no/such/embedder"), "{err}");
}
