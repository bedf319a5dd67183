//! Step 3 token goldens: for every question of MMLU (14042), CMMLU (11582) and C-Eval validation
//! (1346), the prompt token ids evalfleet scores (the coordinator's plan and choice items, then
//! the worker's `prepare_job`) equal those of LLaMA-Factory v0.7.1's evaluator
//! (`encode_oneturn` with template `qwen`, transformers 4.41.2) on the SmolLM2 tokenizer, and the
//! choice ids equal LF's `encode(" A")[-1]`... (scripts/goldens/step3_lf_goldens.py, phase
//! `tokens`). The fixture holds per subject the count, the total length, the first question's hash
//! and a digest over all questions' hashes (SHA-256 of the ids as decimal text joined by ",").
//!
//! Needs the seed's evaluation data (`EVALFLEET_SEED`, default `<repo>/../shared/seed`) and the
//! f32 SmolLM2 folder (`$EVALFLEET_MODELS/smollm2-135m-instruct-f32`, made by scripts/test.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use evalfleet::config::parse_step3;
use evalfleet::run::step3::{plan_all, step3_task};
use evalfleet_proto::v1 as pb;
use evalfleet_worker::score::choice::prepare_job;
use evalfleet_worker::tokenize::{PromptBuilder, PromptStyle, TextTokenizer, get_template};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The f32 SmolLM2 folder; fails saying how to make it.
fn f32_model() -> PathBuf {
    let models = std::env::var_os("EVALFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".models"));
    let dir = models.join("smollm2-135m-instruct-f32");
    assert!(
        dir.join("tokenizer.json").is_file(),
        "{} is missing: run scripts/test.sh (it converts the GGUF of scripts/fetch-models.sh with \
         evalfleet-worker convert-gguf), or set EVALFLEET_MODELS",
        dir.display()
    );
    dir
}

fn seed_dir() -> PathBuf {
    let dir = std::env::var_os("EVALFLEET_SEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/seed"));
    assert!(
        dir.join("evaluation/mmlu/mapping.json").is_file(),
        "{}: the seed's evaluation data is missing; set EVALFLEET_SEED to the seed folder",
        dir.display()
    );
    dir
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/step3_token_hashes.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn ids_hash(ids: &[u32]) -> String {
    let text: Vec<String> = ids.iter().map(u32::to_string).collect();
    hex(&Sha256::digest(text.join(",").as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the fixture stores per subject.
#[derive(Debug, Default, PartialEq)]
struct SubjectDigest {
    count: u64,
    tokens: u64,
    first: String,
    all: String,
}

#[test]
fn every_prompt_encodes_to_llamafactory_token_ids() {
    let model = f32_model();
    let seed = seed_dir();
    let fx = fixture();
    let yaml = format!(
        "model_name_or_path: {}\ntask_dir: {}\ntasks: [mmlu, cmmlu, ceval]\nlangs: [en, zh, zh]\n\
         splits: [test, test, validation]\ntemplate: qwen\n",
        model.display(),
        seed.join("evaluation").display()
    );
    let job = parse_step3(Path::new("step3.yaml"), &yaml).expect("config");
    let cfg = job.step3().expect("step 3");
    let tokenizer = TextTokenizer::from_hf_dir(&model).expect("tokenizer");
    let template = get_template("qwen").expect("qwen template");
    let builder =
        PromptBuilder::new(PromptStyle::LlamaFactory(template), &tokenizer).expect("builder");
    let planned = plan_all(cfg).expect("plans");
    let mut compared = 0;
    for (task, plan) in &planned {
        let spec = step3_task(cfg, task, plan);
        let mut hashes = vec![(0usize, String::new()); plan.items.len()];
        for item in &spec.items {
            let Some(pb::work_item::Payload::Choice(choice)) = &item.payload else {
                panic!("{}: not a choice item", item.item_id)
            };
            let question = evalfleet_worker::runners::choice::question(choice);
            let job = prepare_job(&item.item_id, &question, &builder, usize::MAX)
                .unwrap_or_else(|e| panic!("{} item {}: {e}", task.name, item.item_id));
            let want: Vec<u64> = fx["choice_ids"]
                .as_array()
                .expect("choice ids")
                .iter()
                .map(|v| v.as_u64().expect("id"))
                .collect();
            let got: Vec<u64> = job.choice_ids.iter().map(|&i| u64::from(i)).collect();
            assert_eq!(got, want, "choice ids");
            let i: usize = item.item_id.parse().expect("plan index");
            hashes[i] = (job.prompt_ids.len(), ids_hash(&job.prompt_ids));
        }
        let mut digests: BTreeMap<String, SubjectDigest> = BTreeMap::new();
        let mut all: BTreeMap<String, Sha256> = BTreeMap::new();
        for (item, (len, hash)) in plan.items.iter().zip(&hashes) {
            let key = plan.subjects[item.subject].subject.key.clone();
            let d = digests.entry(key.clone()).or_default();
            d.count += 1;
            d.tokens += *len as u64;
            if d.first.is_empty() {
                d.first = hash.clone();
            }
            all.entry(key).or_default().update(hash.as_bytes());
        }
        for (key, h) in all {
            digests.get_mut(&key).expect("subject").all = hex(&h.finalize());
        }
        let want = fx["tasks"][&task.name]
            .as_object()
            .expect("task in fixture");
        assert_eq!(digests.len(), want.len(), "{}: subjects", task.name);
        for (key, got) in &digests {
            let w = &want[key];
            let expected = SubjectDigest {
                count: w["count"].as_u64().expect("count"),
                tokens: w["tokens"].as_u64().expect("tokens"),
                first: w["first"].as_str().expect("first").to_owned(),
                all: w["all"].as_str().expect("all").to_owned(),
            };
            assert_eq!(got, &expected, "{}/{key}", task.name);
            compared += got.count;
        }
    }
    assert_eq!(compared, 14042 + 11582 + 1346);
}
