//! Step 3 goldens from the real LLaMA-Factory v0.7.1 evaluator path (datasets 2.16.0, pandas
//! 2.1.4, numpy 1.26.4; scripts/goldens/step3_goldens.py):
//! - the shuffle seeds and permutations (2000 five-row ones after `np.random.seed(42)`, others);
//! - every cell of all three benchmarks rendered as pandas + datasets render it;
//! - every prompt of every subject (a hash per subject over all prompts, the first three prompts'
//!   hashes and eight full prompts);
//! - the seed's `results.json` / `results.log` rewritten byte for byte from its predictions.
//!
//! The benchmarks are read from the seed's `evaluation/` folder: `EVALFLEET_SEED` or, by default,
//! `<repo>/../shared/seed`.

use std::path::PathBuf;

use evalfleet::step3::data::{Layout, Split, read_mapping, read_table};
use evalfleet::step3::plan::{PlanOptions, TaskPlan, plan_task};
use evalfleet::step3::rng::{ShuffleSeeds, permutation};
use evalfleet::step3::source::TaskSource;
use evalfleet::step3::{Message, TaskResults};
use serde_json::Value;
use sha2::{Digest, Sha256};

const TASKS: [(&str, &str, Split); 3] = [
    ("mmlu", "en", Split::Test),
    ("cmmlu", "zh", Split::Test),
    ("ceval", "zh", Split::Validation),
];

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn seed_dir() -> PathBuf {
    let dir = std::env::var_os("EVALFLEET_SEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/seed"));
    assert!(
        dir.join("evaluation/mmlu/mapping.json").is_file(),
        "{}: the seed's evaluation data is missing; set EVALFLEET_SEED to the seed folder",
        dir.display()
    );
    dir
}

fn plan(task: &str, lang: &str, split: Split) -> TaskPlan {
    let dir = seed_dir().join("evaluation").join(task);
    plan_task(&dir, &PlanOptions::new(lang, split)).unwrap_or_else(|e| panic!("{task}: {e}"))
}

fn as_usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("int") as usize)
        .collect()
}

#[test]
fn shuffle_seeds_and_permutations_match_numpy() {
    let fx = fixture("step3_shuffles.json");
    let pairs = fx["seed42_n5"].as_array().expect("pairs");
    let mut seeds = ShuffleSeeds::new(42);
    for (k, pair) in pairs.iter().enumerate() {
        let seed = seeds.next_seed();
        assert_eq!(
            seed as u64,
            pair[0].as_u64().expect("seed"),
            "shuffle {k}: seed"
        );
        assert_eq!(
            permutation(seed, 5),
            as_usizes(&pair[1]),
            "shuffle {k} (seed {seed})"
        );
    }
    let other = fx["other_n"].as_array().expect("other");
    for case in other {
        let (seed, n) = (
            case[0].as_u64().expect("seed") as u32,
            case[1].as_u64().expect("n"),
        );
        assert_eq!(
            permutation(seed, n as usize),
            as_usizes(&case[2]),
            "seed {seed}, n {n}"
        );
    }
    eprintln!(
        "{} five-row shuffles and {} other sizes equal numpy's",
        pairs.len(),
        other.len()
    );
}

/// Every cell of every split file: rendered text equals the file's text except exactly at the
/// cells the real pipeline changed, and there it equals what the pipeline produced.
#[test]
fn every_cell_renders_as_pandas_and_datasets() {
    let fx = fixture("step3_cells.json");
    for (task, _, _) in TASKS {
        let dir = seed_dir().join("evaluation").join(task);
        let subjects = read_mapping(&dir.join("mapping.json")).expect("mapping");
        let mut source = TaskSource::open(&dir).expect("task source");
        let layout = Layout::detect(&source, &subjects[0].key).expect("layout");
        let mut diffs = Vec::new();
        let mut cells = 0;
        for subject in &subjects {
            for split in [Split::Train, Split::Validation, Split::Test] {
                let Some(member) = layout.member(&subject.key, split) else {
                    continue;
                };
                let text = source.read(&member).expect("csv");
                let table = read_table(&text, layout, &member).expect("table");
                let names = ["question", "A", "B", "C", "D", "answer"];
                for (c, name) in names.iter().enumerate() {
                    let (Some(raw), Some(out)) = (&table.raw[c], &table.rendered[c]) else {
                        continue;
                    };
                    for (row, (r, o)) in raw.iter().zip(out).enumerate() {
                        cells += 1;
                        if r != o {
                            diffs.push(serde_json::json!([member, row, name, r, o]));
                        }
                    }
                }
            }
        }
        // The golden lists files test, validation, train; compare as sets.
        let mut expected = fx[task].as_array().expect("task cells").clone();
        expected.sort_by_key(Value::to_string);
        diffs.sort_by_key(Value::to_string);
        assert_eq!(
            diffs, expected,
            "{task}: cells whose rendering differs from the CSV text"
        );
        eprintln!(
            "{task}: {cells} cells, {} rendered differently, all as pandas",
            diffs.len()
        );
    }
}

/// The hashed form of a prompt, as the golden script forms it from LF's message dicts.
fn prompt_text(messages: &[Message], answer: &str) -> String {
    let mut parts: Vec<String> = messages
        .iter()
        .map(|m| format!("{}\x1e{}", m.role.as_str(), m.content))
        .collect();
    parts.push(format!("assistant\x1e{answer}"));
    parts.join("\x1f")
}

fn sha_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn every_prompt_equals_the_llamafactory_evaluators() {
    let fx = fixture("step3_prompts.json");
    for (task, lang, split) in TASKS {
        let plan = plan(task, lang, split);
        let golden = &fx[task]["subjects"];
        let mut items = plan.items.iter();
        for sp in &plan.subjects {
            let g = &golden[&sp.subject.key];
            assert_eq!(
                sp.len as u64,
                g["count"].as_u64().expect("count"),
                "{task}/{}",
                sp.subject.key
            );
            let mut whole = Sha256::new();
            for i in 0..sp.len {
                let item = items.next().expect("item");
                let hash = sha_hex(&prompt_text(&item.messages, &item.answer));
                if i < 3 {
                    assert_eq!(
                        hash,
                        g["first"][i].as_str().expect("hash"),
                        "{task}/{} #{i}",
                        sp.subject.key
                    );
                }
                whole.update(hash.as_bytes());
            }
            let all: String = whole
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                all,
                g["all"].as_str().expect("all"),
                "{task}/{}: some prompt differs",
                sp.subject.key
            );
        }
        for full in fx[task]["full"].as_array().expect("full") {
            let subject = full["subject"].as_str().expect("subject");
            let index = full["index"].as_u64().expect("index") as usize;
            let s = plan
                .subjects
                .iter()
                .position(|p| p.subject.key == subject)
                .expect("subject");
            let item = plan
                .items
                .iter()
                .find(|i| i.subject == s && i.index == index)
                .expect("item");
            let msgs = full["messages"].as_array().expect("messages");
            let (last, head) = msgs.split_last().expect("messages");
            assert_eq!(head.len(), item.messages.len(), "{task}/{subject}");
            for (m, g) in item.messages.iter().zip(head) {
                assert_eq!(m.role.as_str(), g["role"].as_str().expect("role"));
                assert_eq!(
                    m.content,
                    g["content"].as_str().expect("content"),
                    "{task}/{subject}"
                );
            }
            assert_eq!(item.answer, last["content"].as_str().expect("answer"));
        }
        eprintln!(
            "{task}: {} prompts in {} subjects equal LF's",
            plan.items.len(),
            plan.subjects.len()
        );
    }
}

#[test]
fn seed_results_files_are_rewritten_byte_for_byte() {
    for (task, lang, split) in TASKS {
        let plan = plan(task, lang, split);
        let out = seed_dir().join("output").join(task);
        let stored_json = std::fs::read_to_string(out.join("results.json")).expect("results.json");
        let stored_log = std::fs::read_to_string(out.join("results.log")).expect("results.log");
        let stored: Value = serde_json::from_str(&stored_json).expect("json");
        let mut predictions = Vec::new();
        for sp in &plan.subjects {
            let subject = stored[&sp.subject.key].as_object().expect("subject");
            assert_eq!(subject.len(), sp.len, "{task}/{}", sp.subject.key);
            for i in 0..sp.len {
                predictions.push(subject[&i.to_string()].as_str().expect("letter").to_owned());
            }
        }
        let results = TaskResults::from_predictions(&plan, predictions).expect("results");
        assert_eq!(results.results_json(), stored_json, "{task}: results.json");
        assert_eq!(results.results_log(), stored_log, "{task}: results.log");
        let dir = tempfile::tempdir().expect("tempdir");
        let files = results.write(dir.path()).expect("write");
        assert_eq!(std::fs::read_to_string(&files[1]).expect("log"), stored_log);
        eprintln!("{task}: results.json and results.log equal the seed's\n{stored_log}");
    }
}
