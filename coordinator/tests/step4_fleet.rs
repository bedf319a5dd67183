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
//!
//! Scoring concurrent with generation (the default from `generate`), on 3 dialogues with one
//! worker taking one item per lease: the scheduler's timeline (a logical record, no clock) shows
//! the first reward lease going out before generation completes; the files equal those of
//! `--stage-by-stage` (generation, then scoring, as two fleets); and a coordinator killed
//! (`kill -9`) with one dialogue's rows scored and the next dialogue generated resumes from its
//! journal, computing only the rest, with the same files again.

mod fleet_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use evalfleet::output::PyJson;
use evalfleet::run::FleetSetup;
use evalfleet::run::step4::{Step4Options, run_step4_with};
use evalfleet::sched::Event;
use evalfleet::step4::aggregate::{Summary, format_log_data, metric_groups};
use evalfleet::step4::data::{read_id2metric, read_json, read_records};
use evalfleet::step4::files::records_json;
use evalfleet::step4::transform::transform;
use evalfleet::step4::{Record, get, get_str};
use fleet_common::{evalfleet_bin, repo, smollm2, wait, wait_ok, worker_bin};

/// Dialogues generated (the demo set has five).
const DIALOGUES: usize = 4;

fn demo_dir() -> PathBuf {
    repo().join("yamls/demo/charactereval")
}

fn write_yaml(dir: &Path, out: &Path) -> PathBuf {
    write_yaml_for(dir, out, DIALOGUES, "step4.yaml")
}

/// A step-4 YAML on the first `dialogues` short demo dialogues, writing to `out`.
fn write_yaml_for(dir: &Path, out: &Path, dialogues: usize, name: &str) -> PathBuf {
    let yaml = format!(
        "model_path: {model}\nreward_model_path: {rm}\ntask_dir: {task}\noutput_dir: {out}\n\n\
         finetuning_type: lora\nmax_samples: {dialogues}\nmax_new_tokens: 24\ndo_sample: false\n\
         batch_size: 4\n",
        model = smollm2().display(),
        rm = fleet_common::tiny_reward_model().display(),
        task = fleet_common::short_charactereval(dir).display(),
        out = out.display(),
    );
    let path = dir.join(name);
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

    // The finished step's journals are removed once the job (this one step) has written its files.
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

/// Every file step 4 writes.
const FILES: [&str; 5] = [
    "step1_generation.jsonl",
    "step2_generation_trans.jsonl",
    "step3_evaluation.jsonl",
    "step4_eval_scores.jsonl",
    "step4_eval_scores.json",
];

/// `evalfleet step4 <yaml> --workers 1 --batch-size 1 --cpu [extra]`, stderr to `log`; `hold`
/// sets the worker hook (`MARKER:ITEM`: hang at the first result for ITEM).
fn step4_child(yaml: &Path, extra: &[&str], log: &Path, hold: Option<String>) -> Child {
    let mut cmd = Command::new(evalfleet_bin());
    cmd.args(["step4", yaml.to_str().unwrap()])
        .args(["--workers", "1", "--batch-size", "1", "--cpu"])
        .args(extra)
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env("RUST_LOG", "info")
        .env_remove("EVALFLEET_TEST_HOLD_ONCE")
        .env_remove("EVALFLEET_TEST_CRASH_ONCE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(spec) = hold {
        fleet_common::require_test_hooks();
        cmd.env("EVALFLEET_TEST_HOLD_ONCE", spec);
    }
    cmd.spawn().unwrap()
}

/// Runs to the end and returns the log; fails showing it.
fn finish(child: Child, log: &Path) -> String {
    let status = wait(child, Duration::from_secs(1200)).status;
    let text = read(log);
    assert!(
        status.success(),
        "evalfleet step4 failed ({status}):\n{text}"
    );
    text
}

/// Polls `cond` (every 50 ms, giving up after 20 minutes: a guard against hangs only).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The journal's result lines (not its header or timing lines).
fn journal_results(path: &Path) -> Vec<String> {
    read_or_empty(path)
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && l.contains(r#""item":"#))
        .map(str::to_string)
        .collect()
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn assert_same_files(a: &Path, b: &Path) {
    for name in FILES {
        assert!(read(&a.join(name)) == read(&b.join(name)), "{name} differs");
    }
}

#[test]
fn scoring_starts_during_generation_and_a_killed_run_resumes_to_the_same_files() {
    const SMALL: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let (streamed, staged, resumed) = (
        dir.path().join("streamed"),
        dir.path().join("staged"),
        dir.path().join("resumed"),
    );
    let yaml = write_yaml_for(dir.path(), &streamed, SMALL, "streamed.yaml");

    // The default run, through the library for its timeline: task 0 generates, task 1 scores.
    let cfg = evalfleet::config::load_step4(&yaml).unwrap();
    let setup = FleetSetup {
        workers: Some(1),
        batch_size: Some(1),
        cpu_only: true,
        worker_bin: Some(worker_bin()),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime
        .block_on(run_step4_with(&cfg, &setup, Step4Options::default()))
        .unwrap();
    assert_eq!(report.files.len(), FILES.len());
    let timeline = &report.timeline;
    let first_reward_lease = timeline
        .iter()
        .position(|e| matches!(e, Event::Leased { task: 1, .. }))
        .expect("no reward lease");
    let generated = timeline
        .iter()
        .position(|e| *e == Event::TaskComplete { task: 0 })
        .expect("generation never completed");
    assert!(
        first_reward_lease < generated,
        "scoring did not start before generation ended: {timeline:?}"
    );
    let generate_leases_after = timeline[first_reward_lease..]
        .iter()
        .filter(|e| matches!(e, Event::Leased { task: 0, .. }))
        .count();
    assert!(generate_leases_after > 0, "{timeline:?}");
    // Step 4 is recorded finished; its journal goes when the job that ran it ends.
    let journals = streamed.join(evalfleet::journal::JOURNAL_DIR);
    assert!(journals.join("step4.done").is_file());
    evalfleet::journal::remove_finished([streamed.as_path()]).unwrap();
    assert!(!journals.exists());

    // The sub-steps one after the other: the same files.
    let log = dir.path().join("log");
    let yaml_staged = write_yaml_for(dir.path(), &staged, SMALL, "staged.yaml");
    finish(
        step4_child(&yaml_staged, &["--stage-by-stage"], &log, None),
        &log,
    );
    assert_same_files(&streamed, &staged);

    // Killed with dialogue 0 generated and its two rows scored, and dialogue 1 generated: the
    // worker hangs at the first result for reward item "1/0" (dialogue 1's first metric).
    let yaml_resumed = write_yaml_for(dir.path(), &resumed, SMALL, "resumed.yaml");
    let marker = dir.path().join("held");
    let hold = Some(format!("{}:1/0", marker.display()));
    let mut coordinator = step4_child(&yaml_resumed, &[], &log, hold);
    let journal = resumed.join(".evalfleet-journal/step4.jsonl");
    let mut worker = None;
    wait_for("the worker to hold", || {
        worker = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        worker.is_some()
    });
    wait_for("4 results in the journal", || {
        journal_results(&journal).len() == 4
    });
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    let _ = Command::new("kill")
        .args(["-9", &worker.unwrap().to_string()])
        .stderr(Stdio::null())
        .status();
    let kept: Vec<String> = journal_results(&journal)
        .iter()
        .map(|l| l.split(r#","kind""#).next().unwrap().to_string())
        .collect();
    assert_eq!(
        kept,
        [
            r#"{"task":"step4-generate","item":"0""#,
            r#"{"task":"step4-reward","item":"0/0""#,
            r#"{"task":"step4-reward","item":"0/1""#,
            r#"{"task":"step4-generate","item":"1""#,
        ]
    );
    let text = finish(step4_child(&yaml_resumed, &[], &log, None), &log);
    let line = text
        .lines()
        .find(|l| l.contains("results computed in this run"))
        .unwrap_or_else(|| panic!("{text}"));
    // Dialogue 2 and its five rows, and dialogue 1's row.
    assert!(
        line.contains("7 results computed in this run, 4 taken from the journal"),
        "{line}"
    );
    assert_same_files(&resumed, &staged);
    assert!(!journal.exists(), "a finished step 4 deletes its journal");
}
