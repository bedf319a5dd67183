//! Step 4 against Python (scripts/goldens/step4_goldens.py → tests/fixtures/step4/goldens.json)
//! and against the seed's stored example outputs (`output/CharacterEval`), reproduced byte for
//! byte from their inputs:
//!
//! - `repr()` of hand-made values and `str(profile)` of all 78 CharacterEval roles;
//! - the sub-step-1 messages of all 4564 dialogues (hash) and of the first two (in full);
//! - the reward-model input texts of the seed's example rows;
//! - step1_generation.jsonl rewritten, step2_generation_trans.jsonl from it, step3_evaluation.jsonl
//!   from that and the stored scores, and the score log from its printed means;
//! - the means and `format_log_data` text of a synthetic scored file.
//!
//! The data are read from the seed folder: `EVALFLEET_SEED` or, by default,
//! `<repo>/../shared/seed`.

use std::path::PathBuf;

use evalfleet::output::{PyJson, dumps_compact};
use evalfleet::step4::aggregate::{format_log_data, metric_groups};
use evalfleet::step4::data::{Profiles, TaskData, read_id2metric, read_json, read_records};
use evalfleet::step4::files::records_json;
use evalfleet::step4::prompt::record_messages;
use evalfleet::step4::pyrepr::{py_repr, py_str};
use evalfleet::step4::reward::{attach_score, rm_input_text, score_from_sigmoid};
use evalfleet::step4::transform::transform;
use evalfleet::step4::{Record, get};
use sha2::{Digest, Sha256};

fn goldens() -> PyJson {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/step4/goldens.json");
    read_json(&path).expect("goldens.json")
}

fn seed_dir() -> PathBuf {
    let dir = std::env::var_os("EVALFLEET_SEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/seed"));
    assert!(
        dir.join("evaluation/CharacterEval/test_data.jsonl")
            .is_file(),
        "{}: the seed's CharacterEval data is missing; set EVALFLEET_SEED to the seed folder",
        dir.display()
    );
    dir
}

fn task_dir() -> PathBuf {
    seed_dir().join("evaluation/CharacterEval")
}

fn example(name: &str) -> PathBuf {
    seed_dir().join("output/CharacterEval").join(name)
}

fn field<'a>(value: &'a PyJson, key: &str) -> &'a PyJson {
    match value {
        PyJson::Object(entries) => entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no key {key}")),
        _ => panic!("not an object looking up {key}"),
    }
}

fn items(value: &PyJson) -> &[PyJson] {
    match value {
        PyJson::Array(items) => items,
        _ => panic!("not an array"),
    }
}

fn text(value: &PyJson) -> &str {
    match value {
        PyJson::Str(s) => s,
        _ => panic!("not a string"),
    }
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn profiles() -> Profiles {
    evalfleet::step4::data::read_profiles(&task_dir()).expect("profiles")
}

#[test]
fn repr_matches_python() {
    let g = goldens();
    let cases = items(field(&g, "repr_cases"));
    assert!(cases.len() >= 16);
    for case in cases {
        let [value, expected] = items(case) else {
            panic!("case")
        };
        assert_eq!(py_repr(value), text(expected), "{value:?}");
    }
}

#[test]
fn every_profile_str_matches_python() {
    let g = goldens();
    let profiles_json = read_json(&task_dir().join("character_profiles.json")).unwrap();
    let PyJson::Object(roles) = &profiles_json else {
        panic!("profiles")
    };
    let expected = field(field(&g, "profiles"), "sha256");
    assert_eq!(roles.len(), 78);
    for (role, profile) in roles {
        let got = py_str(profile);
        let [len, hash] = items(field(expected, role)) else {
            panic!("{role}")
        };
        assert_eq!(PyJson::Int(got.chars().count() as i128), *len, "{role}");
        assert_eq!(sha256(&got), text(hash), "{role}");
    }
    let PyJson::Object(double) = field(field(&g, "profiles"), "double_quoted") else {
        panic!("double_quoted")
    };
    assert!(!double.is_empty());
    for (role, repr) in double {
        let profile = roles.iter().find(|(r, _)| r == role).unwrap();
        assert_eq!(py_str(&profile.1), text(repr), "{role}");
    }
}

fn messages_json(messages: &[evalfleet::step4::prompt::Message]) -> PyJson {
    PyJson::Array(
        messages
            .iter()
            .map(|m| {
                PyJson::Object(vec![
                    ("role".into(), PyJson::Str(m.role.into())),
                    ("content".into(), PyJson::Str(m.content.clone())),
                ])
            })
            .collect(),
    )
}

#[test]
fn messages_of_every_dialogue_match_python() {
    let g = goldens();
    let expected = field(&g, "messages");
    let data = TaskData::read(&task_dir(), None).unwrap();
    assert_eq!(
        PyJson::Int(data.records.len() as i128),
        *field(expected, "count")
    );
    let all: Vec<PyJson> = data
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| messages_json(&record_messages(r, i, &data.profiles).unwrap()))
        .collect();
    assert_eq!(&all[..2], items(field(expected, "first_two")));
    let dumped = dumps_compact(&PyJson::Array(all), false);
    assert_eq!(sha256(&dumped), text(field(expected, "sha256_all")));
}

#[test]
fn reward_texts_match_python() {
    let g = goldens();
    let rows = read_records(&example("step2_generation_trans.jsonl")).unwrap();
    let expected = items(field(&g, "rm_texts"));
    assert_eq!(rows.len(), expected.len());
    let profiles = profiles();
    for (i, (row, want)) in rows.iter().zip(expected).enumerate() {
        assert_eq!(
            rm_input_text(row, i, &profiles).unwrap(),
            text(want),
            "row {i}"
        );
    }
}

fn seed_file(name: &str) -> String {
    std::fs::read_to_string(example(name)).expect("seed example file")
}

#[test]
fn seed_example_files_are_reproduced_byte_for_byte() {
    // Sub-step 1's layout: the stored file read and written back.
    let generated = read_records(&example("step1_generation.jsonl")).unwrap();
    assert_eq!(
        records_json(&generated),
        seed_file("step1_generation.jsonl")
    );

    // Sub-step 2 from sub-step 1's file and the real id2metric.jsonl.
    let id2metric = read_id2metric(&task_dir().join("id2metric.jsonl")).unwrap();
    let mut rows = transform(&generated, &id2metric);
    assert_eq!(
        records_json(&rows),
        seed_file("step2_generation_trans.jsonl")
    );

    // Sub-step 3 from sub-step 2's rows and the stored scores as bf16 sigmoids.
    let stored = read_records(&example("step3_evaluation.jsonl")).unwrap();
    for (i, (row, scored)) in rows.iter_mut().zip(&stored).enumerate() {
        let metric = evalfleet::step4::get_str(scored, "metric_en").unwrap();
        let Some(PyJson::Float(score)) = get(scored, metric) else {
            panic!("row {i}: no score")
        };
        let sigmoid = ((score - 1.0) / 4.0) as f32;
        assert_eq!(f64::from(sigmoid), (score - 1.0) / 4.0, "a bf16 grid value");
        attach_score(row, i, score_from_sigmoid(sigmoid)).unwrap();
    }
    assert_eq!(records_json(&rows), seed_file("step3_evaluation.jsonl"));
    let groups = metric_groups(&rows).unwrap();
    let means: Vec<(&str, f64)> = groups.iter().map(|g| (g.name.as_str(), g.mean())).collect();
    assert_eq!(
        means,
        [("Accuracy", 3.421875), ("Communication_skills", 4.28125)]
    );

    // The score log (from the full run's means, which the example files do not hold): its
    // printed values formatted again give the same text.
    let log = seed_file("step4_eval_scores.jsonl");
    let printed: Vec<(String, f64)> = log
        .lines()
        .map(|line| {
            let (k, v) = line.split_once(": ").unwrap();
            (k.trim_start().to_owned(), v.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(printed.len(), 12);
    assert_eq!(format_log_data(&printed), log);
}

#[test]
fn synthetic_means_and_log_match_python() {
    let g = goldens();
    let case = field(&g, "aggregate");
    let rows: Vec<Record> = items(field(case, "rows"))
        .iter()
        .map(|r| match r {
            PyJson::Object(entries) => entries.clone(),
            _ => panic!("row"),
        })
        .collect();
    let groups = metric_groups(&rows).unwrap();
    let means: Vec<(String, f64)> = groups.iter().map(|g| (g.name.clone(), g.mean())).collect();
    let expected: Vec<(String, String)> = items(field(case, "means"))
        .iter()
        .map(|pair| {
            let [k, v] = items(pair) else { panic!("pair") };
            (text(k).to_owned(), text(v).to_owned())
        })
        .collect();
    let got: Vec<(String, String)> = means
        .iter()
        .map(|(k, v)| (k.clone(), evalfleet::output::float_repr(*v)))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(format_log_data(&means), text(field(case, "log")));
    let seed_values = [
        ("Accuracy".to_owned(), 2.695),
        ("Communication_skills".to_owned(), 10.0),
    ];
    assert_eq!(
        format_log_data(&seed_values),
        text(field(case, "log_seed_values"))
    );
}
