//! End to end: `evalfleet step3` with real `evalfleet-worker` processes and the f32 SmolLM2
//! folder (`$EVALFLEET_MODELS/smollm2-135m-instruct-f32`, made by scripts/test.sh), on small
//! tasks built from the seed's benchmarks (`EVALFLEET_SEED`, default `<repo>/../shared/seed`):
//! three subjects of each, their evaluated files cut after a few questions, as extracted trees.
//!
//! - The predictions, results.json and results.log equal those of LLaMA-Factory v0.7.1's evaluator
//!   loop on the same task folders (fixtures `step3_lf_predictions.json`, 6 questions per subject,
//!   and `step3_lf_predictions_25.json`, 25 per subject, an ignored test for its run time; from
//!   scripts/goldens/step3_lf_goldens.py); a question may differ only where LF's two largest
//!   choice logits are within 1e-4 of each other.
//! - 1 worker with batches of 1 and 3 workers with batches of 8 give byte-identical result files,
//!   in both few-shot modes.

mod fleet_common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use evalfleet::step3::csvtok::records;
use evalfleet::step3::data::read_mapping;
use evalfleet::step3::source::TaskSource;
use fleet_common::{evalfleet_bin, repo, smollm2_f32, worker_bin};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// (task, lang, split, the evaluated file's member pattern, its dev file's pattern).
const TASKS: [(&str, &str, &str, &str, &str); 3] = [
    (
        "mmlu",
        "en",
        "test",
        "data/test/{}_test.csv",
        "data/dev/{}_dev.csv",
    ),
    ("cmmlu", "zh", "test", "test/{}.csv", "dev/{}.csv"),
    (
        "ceval",
        "zh",
        "validation",
        "val/{}_val.csv",
        "dev/{}_dev.csv",
    ),
];

fn seed_evaluation() -> PathBuf {
    let dir = std::env::var_os("EVALFLEET_SEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/seed"))
        .join("evaluation");
    assert!(
        dir.join("mmlu/mapping.json").is_file(),
        "{}: the seed's evaluation data is missing; set EVALFLEET_SEED to the seed folder",
        dir.display()
    );
    dir
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// `text` up to the end of its `keep`-th CSV record (all of it when it has no more).
fn first_records(text: &str, keep: usize) -> &str {
    let recs = records(text);
    let Some(next) = recs.get(keep) else {
        return text;
    };
    let mut end = 0;
    for line in text.split_inclusive('\n').take(next.line - 1) {
        end += line.len();
    }
    &text[..end]
}

/// Builds `<root>/<task>` as an extracted tree holding `subjects` (in the seed's mapping order),
/// their dev files and their evaluated files cut after `rows` questions; checks each cut file's
/// SHA-256 against `files` (what the LF side read). Returns the task folder.
fn small_task(
    root: &Path,
    task: usize,
    subjects: &[String],
    rows: usize,
    files: Option<&Value>,
) -> PathBuf {
    let (name, _, _, target, dev) = TASKS[task];
    let seed = seed_evaluation().join(name);
    let dir = root.join(name);
    let mut mapping = String::from("{");
    for subject in read_mapping(&seed.join("mapping.json")).expect("seed mapping") {
        if !subjects.contains(&subject.key) {
            continue;
        }
        if mapping.len() > 1 {
            mapping.push_str(", ");
        }
        let json = |s: &str| serde_json::to_string(s).expect("json string");
        write!(
            mapping,
            "{}: {{\"name\": {}, \"category\": {}}}",
            json(&subject.key),
            json(&subject.name),
            json(&subject.category)
        )
        .expect("write");
    }
    mapping.push('}');
    std::fs::create_dir_all(&dir).expect("task dir");
    std::fs::write(dir.join("mapping.json"), mapping).expect("mapping");
    let mut source = TaskSource::open(&seed).expect("seed zip");
    let header = usize::from(name != "mmlu");
    for subject in subjects {
        for (pattern, cut) in [(dev, false), (target, true)] {
            let member = pattern.replace("{}", subject);
            let text = source.read(&member).expect("seed member");
            let text = if cut {
                first_records(&text, rows + header)
            } else {
                &text
            };
            if let Some(files) = files.filter(|_| cut) {
                let digest: String = Sha256::digest(text.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(
                    files[subject].as_str(),
                    Some(digest.as_str()),
                    "{name}/{member}: the cut file differs from the one LF read"
                );
            }
            let path = dir.join(&member);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write csv");
        }
    }
    dir
}

/// Runs `evalfleet step3` on the tasks under `task_dir`; returns its stdout.
fn run_step3(
    dir: &Path,
    tasks: &[usize],
    extra_yaml: &str,
    workers: usize,
    batch: usize,
) -> String {
    let list = |field: usize| {
        let values: Vec<&str> = tasks
            .iter()
            .map(|&t| [TASKS[t].0, TASKS[t].1, TASKS[t].2][field])
            .collect();
        values.join(", ")
    };
    let save = dir.join(format!("out-{workers}-{batch}"));
    let yaml = dir.join(format!("step3-{workers}-{batch}.yaml"));
    std::fs::write(
        &yaml,
        format!(
            "model_name_or_path: {}\ntask_dir: {}\ntasks: [{}]\nlangs: [{}]\nsplits: [{}]\n\
             template: qwen\nsave_dir: {}\nbatch_size: {batch}\n{extra_yaml}",
            smollm2_f32().display(),
            dir.join("tasks").display(),
            list(0),
            list(1),
            list(2),
            save.display()
        ),
    )
    .expect("yaml");
    let output = Command::new(evalfleet_bin())
        .arg("step3")
        .arg(&yaml)
        .args(["--workers", &workers.to_string(), "--cpu"])
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env("RUST_LOG", "info")
        .output()
        .expect("run evalfleet");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "evalfleet step3 failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

#[test]
fn step3_predictions_equal_llamafactory_evaluator() {
    golden("step3_lf_predictions.json", 54);
}

/// The same on 25 questions per subject (197 in all); about 15 CPU-minutes in a debug build.
#[test]
#[ignore = "long: run with --ignored (or EVALFLEET_WORKER_BIN set to a release worker)"]
fn step3_predictions_equal_llamafactory_evaluator_25_questions_per_subject() {
    golden("step3_lf_predictions_25.json", 197);
}

/// Runs evalfleet on the fixture's task folders and compares with LF's predictions.
fn golden(fixture_name: &str, questions: usize) {
    let fx = fixture(fixture_name);
    let tmp = tempfile::tempdir().expect("tempdir");
    let tasks_dir = tmp.path().join("tasks");
    for (t, (name, ..)) in TASKS.iter().enumerate() {
        let task = &fx["tasks"][name];
        let rows = task["rows"].as_u64().expect("rows") as usize;
        small_task(
            &tasks_dir,
            t,
            &strings(&task["subjects"]),
            rows,
            Some(&task["files"]),
        );
    }
    let stdout = run_step3(tmp.path(), &[0, 1, 2], "", 1, 4);
    let out = tmp.path().join("out-1-4");
    let mut compared = 0;
    let mut differing = Vec::new();
    for (name, ..) in TASKS {
        let task = &fx["tasks"][name];
        let want_json = task["results_json"].as_str().expect("results_json");
        let got_json = read(&out.join(name).join("results.json"));
        let got: Value = serde_json::from_str(&got_json).expect("results.json");
        let before = differing.len();
        for (subject, questions) in task["questions"].as_object().expect("questions") {
            for (i, q) in questions.as_array().expect("list").iter().enumerate() {
                compared += 1;
                let pred = got[subject][i.to_string()].as_str().unwrap_or("missing");
                if pred != q["pred"].as_str().expect("pred") {
                    let margin = q["margin"].as_f64().expect("margin");
                    differing.push(format!(
                        "{name}/{subject}/{i}: LF {} evalfleet {pred}, LF logit margin {margin:e}",
                        q["pred"]
                    ));
                    assert!(margin < 1e-4, "{}", differing.last().expect("pushed"));
                }
            }
        }
        let want_log = task["results_log"].as_str().expect("results_log");
        // A prediction that differs (within a tiny margin) changes the files; else they are equal.
        if differing.len() == before {
            assert_eq!(got_json, want_json, "{name}: results.json");
            assert_eq!(
                read(&out.join(name).join("results.log")),
                want_log,
                "{name}: results.log"
            );
            assert!(
                stdout.contains(want_log),
                "{name}: results.log on stdout:\n{stdout}"
            );
        }
    }
    eprintln!("compared {compared} questions with LF; differing: {differing:#?}");
    assert_eq!(compared, questions);
}

#[test]
fn step3_results_do_not_depend_on_workers_or_batch_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let subjects: Vec<String> = ["middle_school_geography", "discrete_mathematics"]
        .map(String::from)
        .to_vec();
    for (mode, extra) in [("llamafactory", ""), ("fixed", "few_shot_order: fixed\n")] {
        let dir = tmp.path().join(mode);
        small_task(&dir.join("tasks"), 2, &subjects, 3, None);
        run_step3(&dir, &[2], extra, 1, 1);
        run_step3(&dir, &[2], extra, 3, 8);
        for file in [
            "results.json",
            "results.log",
            "results_detail.jsonl",
            "results_subjects.tsv",
        ] {
            let one = read(&dir.join("out-1-1/ceval").join(file));
            let three = read(&dir.join("out-3-8/ceval").join(file));
            assert_eq!(one, three, "{mode}: {file}");
        }
        let detail = read(&dir.join("out-1-1/ceval/results_detail.jsonl"));
        assert_eq!(detail.lines().count(), 6, "{mode}");
    }
}
