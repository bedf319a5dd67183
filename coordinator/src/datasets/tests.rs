//! Dataset loading: LF's alpaca and sharegpt conversion rules, max_samples, errors.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

/// A temporary `dataset_dir` holding `dataset_info.json` and the given files.
fn dir_with(info: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join(DATASET_INFO), info).expect("write info");
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(path, text).expect("write data");
    }
    dir
}

fn load(dir: &Path, names: &[&str], max: Option<usize>) -> Result<Vec<Sample>, DatasetError> {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    load_samples(dir, &names, max)
}

fn turns(sample: &Sample) -> Vec<(&'static str, &str)> {
    sample
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect()
}

const SEED_INFO: &str = r#"{"demo.json": {"file_name": "demo.json", "columns": {"prompt": "instruction",
    "query": "input", "response": "output", "history": "history"}}}"#;

#[test]
fn alpaca_rows_convert_as_lf() {
    let data = r#"[
 {"instruction": "q1", "input": "extra", "output": "a1", "history": [["h1", "r1"]], "system": "ignored"},
 {"instruction": "", "input": "only input", "output": "a2", "history": null},
 {"instruction": "q3", "input": null, "output": ["x", "y"], "history": "not a list"},
 {"instruction": "q4", "output": null}
]"#;
    let dir = dir_with(SEED_INFO, &[("demo.json", data)]);
    let samples = load(dir.path(), &["demo.json"], None).expect("loads");
    assert_eq!(samples.len(), 4);
    assert_eq!(
        turns(&samples[0]),
        [
            ("user", "h1"),
            ("assistant", "r1"),
            ("user", "q1\nextra"),
            ("assistant", "a1")
        ]
    );
    // The original tool's columns map no system column, so the row's "system" is not read.
    assert_eq!(samples[0].system, "");
    assert_eq!(
        turns(&samples[1]),
        [("user", "only input"), ("assistant", "a2")]
    );
    // Two responses (ranking style) or none: an empty assistant turn, label "".
    assert_eq!(turns(&samples[2]), [("user", "q3"), ("assistant", "")]);
    assert_eq!(turns(&samples[3]), [("user", "q4"), ("assistant", "")]);
    assert_eq!(samples[3].label(), "");
    assert_eq!(samples[0].label(), "a1");
    assert_eq!(samples[0].prompt().len(), 3);
    assert_eq!((samples[2].index, samples[2].origin.line), (2, 4));
}

#[test]
fn alpaca_defaults_without_columns_and_system_column() {
    let info = r#"{"d": {"file_name": "d.jsonl"}, "s": {"file_name": "d.jsonl",
        "columns": {"prompt": "instruction", "response": "output", "system": "sys"}}}"#;
    let data =
        "{\"instruction\": \"i\", \"input\": \"x\", \"output\": \"o\", \"sys\": \"be brief\"}\n";
    let dir = dir_with(info, &[("d.jsonl", data)]);
    let d = load(dir.path(), &["d"], None).expect("loads");
    assert_eq!(turns(&d[0]), [("user", "i\nx"), ("assistant", "o")]);
    assert_eq!(d[0].system, "");
    // `columns` given without `query`: the input column is not read.
    let s = load(dir.path(), &["s"], None).expect("loads");
    assert_eq!(turns(&s[0]), [("user", "i"), ("assistant", "o")]);
    assert_eq!(s[0].system, "be brief");
}

#[test]
fn sharegpt_rows_convert_as_lf() {
    let info = r#"{"chat": {"file_name": "chat.jsonl", "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "sys"}}}"#;
    let data = [
        r#"{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "u1"}, {"from": "gpt", "value": "a1"}], "sys": "col"}"#,
        r#"{"conversations": [{"from": "human", "value": "u1"}, {"from": "function_call", "value": "f"}, {"from": "observation", "value": "o"}, {"from": "gpt", "value": "a2"}, {"from": "human", "value": "dangling"}], "sys": "col"}"#,
        r#"{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "unanswered"}]}"#,
        r#"{"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "last"}]}"#,
    ]
    .join("\n");
    let dir = dir_with(info, &[("chat.jsonl", &data)]);
    let samples = load(dir.path(), &["chat"], None).expect("loads");
    // The third row has no complete pair after its system turn: LF drops it.
    assert_eq!(samples.len(), 3);
    assert_eq!(turns(&samples[0]), [("user", "u1"), ("assistant", "a1")]);
    assert_eq!(samples[0].system, "S");
    assert_eq!(
        turns(&samples[1]),
        [
            ("user", "u1"),
            ("function", "f"),
            ("observation", "o"),
            ("assistant", "a2")
        ]
    );
    assert_eq!(samples[1].system, "col");
    assert_eq!((samples[2].index, samples[2].origin.line), (2, 4));
}

#[test]
fn sharegpt_custom_tags_and_unset_tags() {
    let info = r#"{"oa": {"file_name": "oa.json", "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"}},
        "partial": {"file_name": "oa.json", "formatting": "sharegpt",
        "columns": {"messages": "messages"}, "tags": {"role_tag": "role", "content_tag": "content"}}}"#;
    let data = r#"[{"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]"#;
    let dir = dir_with(info, &[("oa.json", data)]);
    let samples = load(dir.path(), &["oa"], None).expect("loads");
    assert_eq!(turns(&samples[0]), [("user", "hi"), ("assistant", "hello")]);
    assert_eq!(samples[0].system, "sys");
    // LF quirk: a `tags` object without user_tag accepts no user turn.
    let err = load(dir.path(), &["partial"], None)
        .expect_err("no user tag")
        .to_string();
    assert!(err.contains("role tag \"system\" is not accepted"), "{err}");
}

#[test]
fn sharegpt_wrong_role_order_is_an_error_with_line() {
    let info = r#"{"c": {"file_name": "c.jsonl", "formatting": "sharegpt"}}"#;
    let data = "{\"conversations\": [{\"from\": \"human\", \"value\": \"a\"}, {\"from\": \"gpt\", \"value\": \"b\"}]}\n\
                {\"conversations\": [{\"from\": \"gpt\", \"value\": \"a\"}, {\"from\": \"human\", \"value\": \"b\"}]}\n";
    let dir = dir_with(info, &[("c.jsonl", data)]);
    let err = load(dir.path(), &["c"], None)
        .expect_err("bad order")
        .to_string();
    assert!(err.contains("c.jsonl: line 2: turn 0"), "{err}");
    assert!(
        err.contains("expected one of [\"human\", \"observation\"]"),
        "{err}"
    );
    // max_samples = 1 never reads the bad row.
    assert_eq!(
        load(dir.path(), &["c"], Some(1))
            .expect("first row only")
            .len(),
        1
    );
}

#[test]
fn max_samples_is_per_dataset_and_datasets_concatenate_in_order() {
    let info = r#"{"a": {"file_name": "a.json"}, "b": {"file_name": "b"}}"#;
    let rows = |p: &str, n: usize| {
        (0..n)
            .map(|i| format!("{{\"instruction\": \"{p}{i}\", \"output\": \"o\"}}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (a, b1, b2) = (rows("a", 3), rows("b", 2), rows("c", 2));
    let dir = dir_with(
        info,
        &[("a.json", &a), ("b/2.jsonl", &b2), ("b/1.jsonl", &b1)],
    );
    let samples = load(dir.path(), &["a", "b"], Some(3)).expect("loads");
    let firsts: Vec<&str> = samples
        .iter()
        .map(|s| s.messages[0].content.as_str())
        .collect();
    // A folder's files are read in name order and count as one dataset.
    assert_eq!(firsts, ["a0", "a1", "a2", "b0", "b1", "c0"]);
    assert_eq!(
        samples.iter().map(|s| s.index).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(samples[5].origin.dataset, "b");
    assert!(samples[5].origin.path.ends_with("b/2.jsonl"));
}

#[test]
fn errors_name_files_lines_and_known_names() {
    let dir = dir_with(
        SEED_INFO,
        &[(
            "demo.json",
            "[\n {\"instruction\": \"x\"},\n {\"instruction\": 5}\n]",
        )],
    );
    let unknown = load(dir.path(), &["demo"], None)
        .expect_err("unknown")
        .to_string();
    assert!(
        unknown.contains("no dataset named \"demo\"; it defines: demo.json"),
        "{unknown}"
    );
    let wrong = load(dir.path(), &["demo.json"], None)
        .expect_err("number")
        .to_string();
    assert!(
        wrong.contains(
            "demo.json: line 3: column \"instruction\": expected a string, found a number"
        ),
        "{wrong}"
    );

    let broken = dir_with(
        SEED_INFO,
        &[("demo.json", "[\n {\"instruction\": \"x\",}\n]")],
    );
    let msg = load(broken.path(), &["demo.json"], None)
        .expect_err("syntax")
        .to_string();
    assert!(
        msg.contains("demo.json: line 2, column 22: invalid JSON: trailing comma"),
        "{msg}"
    );

    let missing = dir_with(r#"{"d": {"file_name": "nope.json"}}"#, &[]);
    assert!(
        load(missing.path(), &["d"], None)
            .expect_err("missing")
            .to_string()
            .contains("file not found")
    );
    let csv = dir_with(r#"{"d": {"file_name": "d.csv"}}"#, &[("d.csv", "a,b\n")]);
    assert!(
        load(csv.path(), &["d"], None)
            .expect_err("csv")
            .to_string()
            .contains("use .json or .jsonl")
    );
    let hub = dir_with(r#"{"d": {"hf_hub_url": "x/y"}}"#, &[]);
    assert!(
        load(hub.path(), &["d"], None)
            .expect_err("hub")
            .to_string()
            .contains("not supported")
    );
    let no_info = tempfile::tempdir().expect("temp dir");
    let msg = load(no_info.path(), &["d"], None)
        .expect_err("no info")
        .to_string();
    assert!(msg.contains("dataset_info.json: cannot read"), "{msg}");
    let empty = dir_with(SEED_INFO, &[("demo.json", "[]")]);
    assert!(matches!(
        load(empty.path(), &["demo.json"], None),
        Err(DatasetError::NoSamples { .. })
    ));
}

#[test]
fn repo_demo_data_loads() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../yamls/demo");
    let samples = load(&dir, &["demo_alpaca", "demo_sharegpt"], None).expect("demo data loads");
    assert_eq!(samples.len(), 16);
    assert!(
        samples
            .iter()
            .all(|s| s.messages.len() % 2 == 0 && !s.label().is_empty())
    );
    assert!(
        samples.iter().any(|s| s.messages.len() >= 6),
        "has multi-turn history"
    );
    assert!(
        samples.iter().any(|s| !s.system.is_empty()),
        "has a system prompt"
    );
}
