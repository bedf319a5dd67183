//! End to end: `evalfleet step4` on the first 4 demo dialogues (yamls/demo/charactereval, each
//! role profile cut to its first three entries so that CPU prefill stays short: a full profile
//! makes a prompt of thousands of tokens) with
//! SmolLM2-135M-Instruct (GGUF, greedy, its own chat template) as the generator and the worker
//! crate's tiny random-weight BaichuanCharRM (`worker/tests/fixtures/reward/tiny-rm-alibi4`, bf16)
//! as the reward model, on real `evalfleet-worker` processes. Every output file is checked
//! against the original's format (key order, 4-space indentation, raw non-ASCII, no trailing
//! newline, the right-aligned score log) by recomputing it from the previous file with the
//! library; then `--stage transform` re-runs the later sub-steps from the stored generations and
//! must give the same files.

mod fleet_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use evalfleet::output::PyJson;
use evalfleet::step4::aggregate::{Summary, format_log_data, metric_groups};
use evalfleet::step4::data::{read_id2metric, read_json, read_records};
use evalfleet::step4::files::records_json;
use evalfleet::step4::transform::transform;
use evalfleet::step4::{Record, get, get_str};
use fleet_common::{evalfleet_bin, repo, smollm2, wait_ok, worker_bin};

/// Dialogues generated (the demo set has five).
const DIALOGUES: usize = 4;

/// The worker crate's tiny reward model (Baichuan ALiBi layout, random weights).
fn tiny_reward_model() -> PathBuf {
    let path = repo().join("worker/tests/fixtures/reward/tiny-rm-alibi4");
    assert!(
        path.join("config.json").is_file(),
        "{}: the tiny reward model fixture is missing (scripts/goldens/reward_goldens.py writes it)",
        path.display()
    );
    path
}

fn demo_dir() -> PathBuf {
    repo().join("yamls/demo/charactereval")
}

/// The demo task folder with each profile cut to its first three entries, under `dir`.
fn short_task_dir(dir: &Path) -> PathBuf {
    let task = dir.join("task");
    std::fs::create_dir_all(&task).unwrap();
    for name in ["test_data.jsonl", "id2metric.jsonl"] {
        std::fs::copy(demo_dir().join(name), task.join(name)).unwrap();
    }
    let PyJson::Object(roles) = read_json(&demo_dir().join("character_profiles.json")).unwrap()
    else {
        panic!("profiles")
    };
    let short = roles
        .into_iter()
        .map(|(role, profile)| match profile {
            PyJson::Object(entries) => {
                (role, PyJson::Object(entries.into_iter().take(3).collect()))
            }
            other => (role, other),
        })
        .collect();
    let text = evalfleet::output::dumps_pretty(&PyJson::Object(short), false, false);
    std::fs::write(task.join("character_profiles.json"), text).unwrap();
    task
}

fn write_yaml(dir: &Path, out: &Path) -> PathBuf {
    let yaml = format!(
        "model_path: {model}\nreward_model_path: {rm}\ntask_dir: {task}\noutput_dir: {out}\n\n\
         finetuning_type: lora\nmax_samples: {DIALOGUES}\nmax_new_tokens: 24\ndo_sample: false\n\
         batch_size: 4\n",
        model = smollm2().display(),
        rm = tiny_reward_model().display(),
        task = short_task_dir(dir).display(),
        out = out.display(),
    );
    let path = dir.join("step4.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn run_step4(yaml: &Path, extra: &[&str]) -> String {
    let mut cmd = Command::new(evalfleet_bin());
    cmd.args(["step4", yaml.to_str().unwrap(), "--workers", "1", "--cpu"])
        .args(extra)
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = wait_ok(
        cmd.spawn().unwrap(),
        Duration::from_secs(1200),
        "evalfleet step4",
    );
    String::from_utf8(out.stdout).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn keys(record: &Record) -> Vec<&str> {
    record.iter().map(|(k, _)| k.as_str()).collect()
}

/// A file written as `json.dumps(records, ensure_ascii=False, indent=4)`: re-dumping its parse
/// gives the same text (this catches indentation, separators, escaping, a trailing newline).
fn check_layout(path: &Path) -> Vec<Record> {
    let text = read(path);
    let records = read_records(path).unwrap();
    assert_eq!(records_json(&records), text, "{}", path.display());
    assert!(
        text.starts_with("[\n    {\n        \"id\": "),
        "{}",
        path.display()
    );
    assert!(!text.ends_with('\n'));
    assert!(!text.contains("\\u"), "non-ASCII must be written raw");
    records
}

#[test]
fn step4_end_to_end_with_smollm2_and_a_tiny_reward_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let yaml = write_yaml(dir.path(), &out);
    let stdout = run_step4(&yaml, &[]);

    // Each sub-step's journal is removed once its file is written.
    assert!(!out.join(evalfleet::journal::JOURNAL_DIR).exists());

    // Sub-step 1: the demo records in order, `model_output` appended.
    let generated = check_layout(&out.join("step1_generation.jsonl"));
    let demo = read_records(&demo_dir().join("test_data.jsonl")).unwrap();
    assert_eq!(generated.len(), DIALOGUES);
    for (g, d) in generated.iter().zip(&demo) {
        assert_eq!(
            keys(g),
            ["id", "role", "novel_name", "context", "model_output"]
        );
        assert_eq!(&g[..4], &d[..]);
        let output = get_str(g, "model_output").unwrap();
        assert!(!output.is_empty() && output != "ERROR", "{output:?}");
    }

    // Sub-step 2: exactly the transform of sub-step 1's file (first lines, one row per metric).
    let rows = check_layout(&out.join("step2_generation_trans.jsonl"));
    let id2metric = read_id2metric(&demo_dir().join("id2metric.jsonl")).unwrap();
    assert_eq!(rows, transform(&generated, &id2metric));
    assert_eq!(rows.len(), 2 + 1 + 5 + 1);

    // Sub-step 3: each row plus its score under its metric name, a bf16 sigmoid * 4 + 1.
    let scored = check_layout(&out.join("step3_evaluation.jsonl"));
    assert_eq!(scored.len(), rows.len());
    for (s, r) in scored.iter().zip(&rows) {
        assert_eq!(&s[..r.len()], &r[..]);
        let metric = get_str(r, "metric_en").unwrap();
        assert_eq!(keys(s).last(), Some(&metric));
        let Some(PyJson::Float(score)) = get(s, metric) else {
            panic!("no score under {metric}")
        };
        assert!((1.0..=5.0).contains(score), "{score}");
        let sigmoid = ((score - 1.0) / 4.0) as f32;
        assert_eq!(f64::from(sigmoid) * 4.0 + 1.0, *score);
        assert_eq!(
            sigmoid.to_bits() & 0xffff,
            0,
            "{sigmoid} is not a bf16 value"
        );
    }

    // Sub-step 4: the right-aligned log of the means in first-appearance order, also printed.
    let log = read(&out.join("step4_eval_scores.jsonl"));
    let means: Vec<(String, f64)> = metric_groups(&scored)
        .unwrap()
        .iter()
        .map(|g| (g.name.clone(), g.mean()))
        .collect();
    assert_eq!(means[0].0, "Accuracy");
    assert_eq!(log, format_log_data(&means));
    assert_eq!(log.lines().count(), means.len());
    assert!(stdout.contains(&log), "{stdout}");
    let summary = read_json(&out.join("step4_eval_scores.json")).unwrap();
    let expected = Summary::of(&scored).unwrap().to_json();
    assert_eq!(summary, expected);

    // Re-run from the transform: the same later files from the stored generations.
    let before: Vec<String> = [
        "step2_generation_trans.jsonl",
        "step3_evaluation.jsonl",
        "step4_eval_scores.jsonl",
    ]
    .iter()
    .map(|f| read(&out.join(f)))
    .collect();
    std::fs::remove_file(out.join("step3_evaluation.jsonl")).unwrap();
    run_step4(&yaml, &["--stage", "transform"]);
    for (name, old) in [
        "step2_generation_trans.jsonl",
        "step3_evaluation.jsonl",
        "step4_eval_scores.jsonl",
    ]
    .iter()
    .zip(&before)
    {
        assert_eq!(
            &read(&out.join(name)),
            old,
            "{name} after --stage transform"
        );
    }
}

#[test]
fn the_aggregate_stage_needs_no_workers_and_a_missing_input_names_its_sub_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let yaml = dir.path().join("step4.yaml");
    std::fs::write(
        &yaml,
        format!(
            "model_path: m\nreward_model_path: r\ntask_dir: {}\noutput_dir: {}\n",
            demo_dir().display(),
            out.display()
        ),
    )
    .unwrap();
    let output = Command::new(evalfleet_bin())
        .args(["step4", yaml.to_str().unwrap(), "--stage", "score"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("step2_generation_trans.jsonl: missing")
            && stderr.contains("--stage transform"),
        "{stderr}"
    );

    // A scored file alone is enough for `--stage aggregate` (no model, no worker).
    let row = |metric: &str, score: f64| -> Record {
        vec![
            ("id".into(), PyJson::Int(1)),
            ("role".into(), PyJson::Str("佟湘玉".into())),
            ("metric_en".into(), PyJson::Str(metric.into())),
            (metric.into(), PyJson::Float(score)),
        ]
    };
    let rows = [
        row("Fluency", 3.375),
        row("Communication_skills", 2.0),
        row("Fluency", 4.0),
    ];
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("step3_evaluation.jsonl"), records_json(&rows)).unwrap();
    let output = Command::new(evalfleet_bin())
        .args([
            "step4",
            yaml.to_str().unwrap(),
            "--stage",
            "aggregate",
            "--workers",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        read(&out.join("step4_eval_scores.jsonl")),
        "             Fluency: 3.69\nCommunication_skills: 2.00"
    );
    assert!(out.join("step4_eval_scores.json").is_file());
}
