//! `evalfleet sweep` end to end, with real processes on loopback: three LoRA checkpoints made
//! here from the tiny llama's committed PEFT adapters (the worker crate's fixtures; a copy with
//! another `lora_alpha` is a different adapter) over the tiny chat model, two CPU workers, step 1
//! on the demo data.
//!
//! - each worker reads the base once (its log says `loaded base` at most once) while the fleet
//!   applies all three adapters;
//! - every checkpoint folder holds the step-1 files, no journal and the finished marker, and a
//!   checkpoint's predictions equal `evalfleet step1` with that adapter (merged at load);
//! - summary.csv has one row per checkpoint, in step order, with the numbers of each folder's
//!   predict_results.json;
//! - a fourth checkpoint added (`checkpoint-1000`, which sorts last by step, first by name) and
//!   the sweep re-run: only it is evaluated, the others are skipped and left untouched, and the
//!   report has four rows;
//! - a sweep stopped by SIGTERM while one worker holds an item of its first checkpoint (the
//!   worker's EVALFLEET_TEST_HOLD_ONCE hook) exits 130 with its journal intact, and the same
//!   command resumes from it and writes the files of an uninterrupted sweep.
//!
//! Step 3 needs a real model (the tiny one's 64 positions cannot hold an MMLU prompt): a third
//! test sweeps three small LoRA adapters written here (q_proj of three layers, rank 2) over the
//! SmolLM2 f32 folder on step 1 and step 3 (two MMLU subjects cut to three questions, 1-shot)
//! and checks the per-checkpoint files and the report's ROUGE and MMLU columns.
//!
//! Step 4 in the shared fleet: two SmolLM2 adapters, the tiny reward model, two workers: the
//! reward model (and the base) is loaded at most once per worker, and each checkpoint's
//! CharacterEval files equal `evalfleet step4` on that checkpoint alone.

mod fleet_common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use std::time::Instant;

use fleet_common::{evalfleet_bin, repo, tiny_chat_model, wait, worker_bin};

/// Guard against hangs only; no assertion depends on it.
const LIMIT: Duration = Duration::from_secs(600);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The worker crate's tiny-llama adapter fixture `name`.
fn adapter_fixture(name: &str) -> PathBuf {
    repo().join("worker/tests/fixtures/tiny-llama").join(name)
}

/// Copies adapter fixture `from` to `to`, with `lora_alpha` set to `alpha` when given.
fn make_checkpoint(from: &str, to: &Path, alpha: Option<u32>) {
    std::fs::create_dir_all(to).unwrap();
    let src = adapter_fixture(from);
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        to.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&read(&src.join("adapter_config.json"))).unwrap();
    if let Some(alpha) = alpha {
        config["lora_alpha"] = alpha.into();
    }
    std::fs::write(to.join("adapter_config.json"), config.to_string()).unwrap();
}

/// The shared keys of the sweep and of the reference step-1 run.
fn step1_keys() -> String {
    format!(
        "finetuning_type: lora\ndataset_dir: {}\ndataset: demo_alpaca,demo_sharegpt\n\
         template: default\ncutoff_len: 40\nmax_samples: 3\nper_device_eval_batch_size: 2\n\
         max_new_tokens: 6\ndo_sample: false\ndtype: f32\n",
        repo().join("yamls/demo").display()
    )
}

/// Starts `evalfleet <args> <yaml>` with `workers` CPU workers of batch size `workers` (the
/// worker hold hook `hold` = `MARKER:ITEM` set when given), stderr to `log`.
fn spawn(args: &[&str], yaml: &Path, workers: usize, log: &Path, hold: Option<String>) -> Child {
    let n = workers.to_string();
    let mut all = args.to_vec();
    all.extend([
        yaml.to_str().unwrap(),
        "--workers",
        &n,
        "--batch-size",
        &n,
        "--cpu",
    ]);
    fleet_common::spawn_logged(&all, log, hold)
}

/// Runs `evalfleet <args>` with two CPU workers to the end; asserts success, returns stderr.
fn evalfleet(args: &[&str], yaml: &Path, log: &Path) -> String {
    finish(spawn(args, yaml, 2, log, None), args, log)
}

/// Waits for `child` to succeed; returns its log.
fn finish(child: Child, args: &[&str], log: &Path) -> String {
    let status = wait(child, LIMIT).status;
    let text = read(log);
    assert!(
        status.success(),
        "evalfleet {args:?} failed ({status}):\n{text}"
    );
    text
}

/// How many lines of worker `i`'s forwarded log contain `what`.
fn worker_lines(log: &str, i: usize, what: &str) -> usize {
    let prefix = format!("[worker {i}]");
    log.lines()
        .filter(|l| l.contains(&prefix) && l.contains(what))
        .count()
}

/// summary.csv as (model, column → cell) rows.
fn summary_rows(csv: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut lines = csv.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let named = header[1..]
                .iter()
                .cloned()
                .zip(cells[1..].iter().map(|c| c.to_string()))
                .collect();
            (cells[0].to_string(), named)
        })
        .collect()
}

fn cell<'a>(row: &'a [(String, String)], column: &str) -> &'a str {
    &row.iter()
        .find(|(c, _)| c == column)
        .unwrap_or_else(|| panic!("no column {column}"))
        .1
}

/// A number of predict_results.json.
fn metric(dir: &Path, key: &str) -> f64 {
    let json: serde_json::Value =
        serde_json::from_str(&read(&dir.join("predict_results.json"))).unwrap();
    json[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: no number {key}", dir.display()))
}

/// Checks the report rows against the checkpoint folders, in `names` order.
fn check_summary(sweep: &Path, names: &[&str]) {
    let rows = summary_rows(&read(&sweep.join("summary.csv")));
    let models: Vec<&str> = rows.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(models, names);
    for (name, row) in &rows {
        let dir = sweep.join(name);
        for (column, key) in [
            ("rouge-1", "predict_rouge-1"),
            ("rouge-l", "predict_rouge-l"),
            ("samples_per_second", "predict_samples_per_second"),
        ] {
            let text = cell(row, column);
            let shown: f64 = text
                .parse()
                .unwrap_or_else(|_| panic!("{name} {column}: {text:?}"));
            assert_eq!(shown, metric(&dir, key), "{name} {column}");
        }
    }
}

fn check_complete(dir: &Path) {
    for f in [
        "generated_predictions.jsonl",
        "predict_results.json",
        "all_results.json",
        ".evalfleet-sweep.json",
    ] {
        assert!(dir.join(f).is_file(), "{} lacks {f}", dir.display());
    }
    assert!(
        !dir.join(".evalfleet-journal").exists(),
        "{}: a journal is left",
        dir.display()
    );
    assert_eq!(
        read(&dir.join("generated_predictions.jsonl"))
            .lines()
            .count(),
        6
    );
}

/// Three adapter checkpoints under `<root>/run` and a step-1 sweep YAML over them writing to
/// `out`; returns the YAML's path.
fn three_checkpoint_sweep(root: &Path, base: &Path, out: &Path, file: &str) -> PathBuf {
    let ckpts = root.join("run");
    make_checkpoint("lora", &ckpts.join("checkpoint-100"), None);
    make_checkpoint("lora2", &ckpts.join("checkpoint-200"), None);
    make_checkpoint("lora", &ckpts.join("checkpoint-300"), Some(24));
    let yaml = root.join(file);
    std::fs::write(
        &yaml,
        format!(
            "model_name_or_path: {}\ncheckpoints: {}/checkpoint-*\nsteps: [step1]\noutput_dir: {}\n{}",
            base.display(),
            ckpts.display(),
            out.display(),
            step1_keys()
        ),
    )
    .unwrap();
    yaml
}

/// Complete result lines of a journal (not its header or timing lines).
fn journal_results(path: &Path) -> usize {
    let text = String::from_utf8(std::fs::read(path).unwrap_or_default()).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && l.contains(r#""item":"#))
        .count()
}

/// The latest generation time a journal's timing lines give task `task`.
fn journal_elapsed(path: &Path, task: &str) -> Option<f64> {
    read(path)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["task"] == task)
        .filter_map(|v| v["elapsed_s"].as_f64())
        .reduce(f64::max)
}

/// Polls `cond` until it holds (the hang guard aside, no timing is involved).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < LIMIT, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

#[test]
fn a_stopped_sweep_resumes_from_the_checkpoints_journals() {
    let tmp = tempfile::tempdir().unwrap();
    let (reference, out, yaml, log) = swept_reference(tmp.path(), three_checkpoint_sweep);

    // One worker, one item per lease: items 0-2 of checkpoint-100 are journaled, then it holds.
    let marker = tmp.path().join("held");
    let hold = Some(format!("{}:3", marker.display()));
    let coordinator = spawn(&["sweep"], &yaml, 1, &log, hold);
    let journal = out.join("checkpoint-100/.evalfleet-journal/step1.jsonl");
    let mut worker = None;
    wait_until("a held worker and 3 journaled results", || {
        worker = read_pid(&marker);
        worker.is_some() && journal_results(&journal) == 3
    });
    kill(coordinator.id(), "-TERM");
    let status = wait(coordinator, LIMIT).status;
    kill(worker.unwrap(), "-9");
    let text = read(&log);
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(
        text.contains("run the same command again to resume"),
        "{text}"
    );
    assert_eq!(journal_results(&journal), 3, "the journal is intact");
    // The journal kept the generation time so far (the sweep gives its journals a clock).
    let earlier = journal_elapsed(&journal, "checkpoint-100/step1")
        .unwrap_or_else(|| panic!("no timing line in {}", read(&journal)));

    let text = finish(spawn(&["sweep"], &yaml, 1, &log, None), &["sweep"], &log);
    assert!(
        text.contains("3 of 18 items were done by an earlier run"),
        "{text}"
    );
    for name in ["checkpoint-100", "checkpoint-200", "checkpoint-300"] {
        check_complete(&out.join(name));
        let file = |dir: &Path| read(&dir.join(name).join("generated_predictions.jsonl"));
        assert_eq!(file(&out), file(&reference), "{name}");
    }
    // The resumed checkpoint's runtime includes the stopped run's.
    let runtime = metric(&out.join("checkpoint-100"), "predict_runtime");
    assert!(runtime + 1e-4 >= earlier, "{runtime} < {earlier}");
    check_summary(
        &out,
        &["checkpoint-100", "checkpoint-200", "checkpoint-300"],
    );
}

/// A sweep made by `make` (root, base model, output folder, YAML name → YAML path) on the tiny
/// chat model, run once to the end with one worker into `<root>/reference`. Returns that
/// reference folder, the other output folder (`<root>/out`), its sweep YAML, and the log path.
fn swept_reference(
    root: &Path,
    make: fn(&Path, &Path, &Path, &str) -> PathBuf,
) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let base = tiny_chat_model(root);
    let (reference, out) = (root.join("reference"), root.join("out"));
    let ref_yaml = make(root, &base, &reference, "ref.yaml");
    let yaml = make(root, &base, &out, "sweep.yaml");
    let log = root.join("log");
    finish(
        spawn(&["sweep"], &ref_yaml, 1, &log, None),
        &["sweep"],
        &log,
    );
    (reference, out, yaml, log)
}

fn read_pid(marker: &Path) -> Option<u32> {
    std::fs::read_to_string(marker).ok()?.trim().parse().ok()
}

#[test]
fn three_adapters_one_base_load_per_worker_then_a_fourth_checkpoint_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_chat_model(tmp.path());
    let ckpts = tmp.path().join("run");
    let sweep = tmp.path().join("sweep");
    let yaml = three_checkpoint_sweep(tmp.path(), &base, &sweep, "sweep.yaml");
    let log = tmp.path().join("log");
    let text = evalfleet(&["sweep"], &yaml, &log);

    // The base is read at most once per worker, and the fleet applied all three adapters.
    let mut applied = 0;
    for i in 0..2 {
        assert!(
            worker_lines(&text, i, "loaded base") <= 1,
            "worker {i}:\n{text}"
        );
        applied += worker_lines(&text, i, "applied adapter");
    }
    let loads: usize = (0..2).map(|i| worker_lines(&text, i, "loaded base")).sum();
    assert!((1..=2).contains(&loads), "{text}");
    assert!(applied >= 3, "{applied} adapters applied:\n{text}");
    for name in ["checkpoint-100", "checkpoint-200", "checkpoint-300"] {
        assert!(
            text.contains(&format!("applied adapter {}", ckpts.join(name).display())),
            "{name}:\n{text}"
        );
        check_complete(&sweep.join(name));
    }
    let predictions = |name: &str| read(&sweep.join(name).join("generated_predictions.jsonl"));
    assert_ne!(predictions("checkpoint-100"), predictions("checkpoint-200"));
    assert_ne!(predictions("checkpoint-100"), predictions("checkpoint-300"));
    check_summary(
        &sweep,
        &["checkpoint-100", "checkpoint-200", "checkpoint-300"],
    );
    assert!(sweep.join("report.html").is_file());

    // A checkpoint equals evaluating its adapter alone (merged at load, no base cache).
    let single = tmp.path().join("single");
    let single_yaml = tmp.path().join("single.yaml");
    std::fs::write(
        &single_yaml,
        format!(
            "model_name_or_path: {}\nadapter_name_or_path: {}\noutput_dir: {}\n{}",
            base.display(),
            ckpts.join("checkpoint-200").display(),
            single.display(),
            step1_keys()
        ),
    )
    .unwrap();
    evalfleet(&["step1"], &single_yaml, &tmp.path().join("single.log"));
    assert_eq!(
        read(&single.join("generated_predictions.jsonl")),
        predictions("checkpoint-200")
    );

    // A fourth checkpoint: only it is evaluated.
    let before: Vec<String> = ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
        .iter()
        .map(|n| read(&sweep.join(n).join("all_results.json")))
        .collect();
    make_checkpoint("lora2", &ckpts.join("checkpoint-1000"), Some(2));
    let text = evalfleet(&["sweep"], &yaml, &log);
    for name in ["checkpoint-100", "checkpoint-200", "checkpoint-300"] {
        assert!(
            text.contains(&format!("sweep: skipping {name}: evaluated earlier")),
            "{name}:\n{text}"
        );
    }
    assert!(
        text.contains("sweep: evaluating 1 of 4 checkpoints: checkpoint-1000"),
        "{text}"
    );
    let applied: usize = (0..2)
        .map(|i| worker_lines(&text, i, "applied adapter"))
        .sum();
    assert!(applied >= 1, "{text}");
    assert!(!text.contains("checkpoint-100/step1"), "{text}");
    for (n, old) in ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
        .iter()
        .zip(&before)
    {
        assert_eq!(
            &read(&sweep.join(n).join("all_results.json")),
            old,
            "{n} was rewritten"
        );
    }
    check_complete(&sweep.join("checkpoint-1000"));
    check_summary(
        &sweep,
        &[
            "checkpoint-100",
            "checkpoint-200",
            "checkpoint-300",
            "checkpoint-1000",
        ],
    );
}

/// The seed's evaluation folder (`$EVALFLEET_SEED/evaluation`, default `../shared/seed`).
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

/// `<root>/mmlu` with `subjects`: their dev files and their first `rows` test questions.
fn small_mmlu(root: &Path, subjects: &[&str], rows: usize) {
    let seed = seed_evaluation().join("mmlu");
    let dir = root.join("mmlu");
    let mapping: serde_json::Value =
        serde_json::from_str(&read(&seed.join("mapping.json"))).unwrap();
    let kept: serde_json::Map<String, serde_json::Value> = subjects
        .iter()
        .map(|s| (s.to_string(), mapping[*s].clone()))
        .collect();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mapping.json"),
        serde_json::Value::Object(kept).to_string(),
    )
    .unwrap();
    let mut source = evalfleet::step3::source::TaskSource::open(&seed).unwrap();
    for subject in subjects {
        for (member, cut) in [
            (format!("data/dev/{subject}_dev.csv"), None),
            (format!("data/test/{subject}_test.csv"), Some(rows)),
        ] {
            let text = source.read(&member).unwrap();
            // These subjects' questions are one line each (checked: the cut keeps `rows`).
            let text: String = match cut {
                Some(n) => text.split_inclusive('\n').take(n).collect(),
                None => text,
            };
            let path = dir.join(&member);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }
}

/// Writes a PEFT LoRA adapter for SmolLM2-135M into `dir`: rank 2 on q_proj of layers 0-2,
/// deterministic values from `seed`.
fn smollm2_adapter(dir: &Path, seed: u64) {
    const HIDDEN: usize = 576;
    const RANK: usize = 2;
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    };
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for layer in 0..3 {
        for (half, shape) in [("A", [RANK, HIDDEN]), ("B", [HIDDEN, RANK])] {
            let name = format!(
                "base_model.model.model.layers.{layer}.self_attn.q_proj.lora_{half}.weight"
            );
            let start = data.len();
            for _ in 0..shape[0] * shape[1] {
                data.extend_from_slice(&next().to_le_bytes());
            }
            header.insert(
                name,
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut file = (head.len() as u64).to_le_bytes().to_vec();
    file.extend(head);
    file.extend(data);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), file).unwrap();
    let config = serde_json::json!({"peft_type": "LORA", "r": RANK, "lora_alpha": 4,
        "target_modules": ["q_proj"], "fan_in_fan_out": false});
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
}

/// The `Average:` of a step-3 results.log.
fn results_average(log: &str) -> f64 {
    log.lines()
        .find_map(|l| l.trim().strip_prefix("Average:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Average in {log:?}"))
}

#[test]
fn step1_and_step3_on_smollm2_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpts = tmp.path().join("run");
    for (i, step) in [50, 100, 150].into_iter().enumerate() {
        smollm2_adapter(&ckpts.join(format!("checkpoint-{step}")), i as u64 + 1);
    }
    let tasks = tmp.path().join("tasks");
    small_mmlu(&tasks, &["abstract_algebra", "anatomy"], 3);
    let sweep = tmp.path().join("sweep");
    let yaml = tmp.path().join("sweep.yaml");
    std::fs::write(
        &yaml,
        format!(
            "model_name_or_path: {base}\ncheckpoints: {ckpts}/checkpoint-*\nsteps: [step1, step3]\n\
             output_dir: {out}\ntemplate: chatml\n\
             step1: {{dataset_dir: {data}, dataset: demo_alpaca, max_samples: 2, max_new_tokens: 4, do_sample: false}}\n\
             step3: {{task_dir: {tasks}, tasks: [mmlu], langs: [en], splits: [test], n_shot: 1}}\n",
            base = fleet_common::smollm2_f32().display(),
            ckpts = ckpts.display(),
            out = sweep.display(),
            data = repo().join("yamls/demo").display(),
            tasks = tasks.display(),
        ),
    )
    .unwrap();
    let text = evalfleet(&["sweep"], &yaml, &tmp.path().join("log"));
    for i in 0..2 {
        assert!(
            worker_lines(&text, i, "loaded base") <= 1,
            "worker {i}:\n{text}"
        );
    }
    let names = ["checkpoint-50", "checkpoint-100", "checkpoint-150"];
    let rows = summary_rows(&read(&sweep.join("summary.csv")));
    assert_eq!(
        rows.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
        names
    );
    for (name, row) in &rows {
        let dir = sweep.join(name);
        assert_eq!(
            read(&dir.join("generated_predictions.jsonl"))
                .lines()
                .count(),
            2
        );
        let results: serde_json::Value =
            serde_json::from_str(&read(&dir.join("mmlu/results.json"))).unwrap();
        for subject in ["abstract_algebra", "anatomy"] {
            assert_eq!(
                results[subject].as_object().map(|o| o.len()),
                Some(3),
                "{name} {subject}"
            );
        }
        let average = results_average(&read(&dir.join("mmlu/results.log")));
        assert_eq!(
            cell(row, "avg_mmlu").parse::<f64>().unwrap(),
            average,
            "{name}"
        );
        let rouge: f64 = cell(row, "rouge-1").parse().unwrap();
        assert_eq!(rouge, metric(&dir, "predict_rouge-1"), "{name}");
        assert!(
            !dir.join(".evalfleet-journal").exists(),
            "{name}: a journal is left"
        );
    }
}

/// Runs `evalfleet <args> <yaml>` with `workers` CPU workers taking one item per lease (so a
/// generation never shares a padded batch: the comparison below is exact); returns stderr.
fn evalfleet_one_per_lease(args: &[&str], yaml: &Path, workers: usize, log: &Path) -> String {
    let n = workers.to_string();
    let child = Command::new(evalfleet_bin())
        .args(args)
        .arg(yaml)
        .args(["--workers", &n, "--batch-size", "1", "--cpu"])
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env("RUST_LOG", "info")
        .env_remove("EVALFLEET_TEST_CRASH_ONCE")
        .env_remove("EVALFLEET_TEST_HOLD_ONCE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap();
    finish(child, args, log)
}

/// Step 4 in the sweep's shared fleet: two SmolLM2 LoRA checkpoints, the worker crate's tiny
/// reward model, two workers. Each worker loads the base and the reward model at most once for
/// the whole sweep, and every checkpoint's CharacterEval files are byte for byte those of
/// `evalfleet step4` on that checkpoint alone.
#[test]
fn step4_in_the_shared_fleet_loads_the_reward_model_once_per_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpts = tmp.path().join("run");
    let names = ["checkpoint-10", "checkpoint-20"];
    for (i, name) in names.iter().enumerate() {
        smollm2_adapter(&ckpts.join(name), i as u64 + 7);
    }
    let base = fleet_common::smollm2_f32();
    let reward_model = fleet_common::tiny_reward_model();
    assert!(
        reward_model.join("config.json").is_file(),
        "{reward_model:?}"
    );
    let keys = format!(
        "reward_model_path: {}\ntask_dir: {}\nmax_samples: 3\nmax_new_tokens: 8\ndo_sample: false\n",
        reward_model.display(),
        fleet_common::short_charactereval(tmp.path()).display()
    );
    let sweep = tmp.path().join("sweep");
    let yaml = tmp.path().join("sweep.yaml");
    let indented: String = keys.lines().map(|l| format!("  {l}\n")).collect();
    std::fs::write(
        &yaml,
        format!(
            "model_name_or_path: {}\ncheckpoints: {}/checkpoint-*\nsteps: [step4]\n\
             output_dir: {}\nstep4:\n{indented}",
            base.display(),
            ckpts.display(),
            sweep.display()
        ),
    )
    .unwrap();
    let text = evalfleet_one_per_lease(&["sweep"], &yaml, 2, &tmp.path().join("log"));

    let mut reward_loads = 0;
    for i in 0..2 {
        let loads = worker_lines(&text, i, "reward model loaded");
        assert!(
            loads <= 1,
            "worker {i} loaded the reward model {loads} times:\n{text}"
        );
        reward_loads += loads;
        assert!(
            worker_lines(&text, i, "loaded base") <= 1,
            "worker {i}:\n{text}"
        );
    }
    assert!(reward_loads >= 1, "{text}");
    // The generator is each checkpoint's adapter over the cached base.
    for name in names {
        assert!(
            text.contains(&format!("applied adapter {}", ckpts.join(name).display())),
            "{name}:\n{text}"
        );
    }
    assert!(
        text.contains("checkpoint-20/step4: generating replies for 3 dialogues"),
        "the tasks are named by checkpoint:\n{text}"
    );
    // Earlier, step 4 ran after the shared fleet with fleets of its own, one per checkpoint.
    assert_eq!(
        text.matches("starting 2 local worker(s)").count(),
        1,
        "{text}"
    );

    let files = [
        "step1_generation.jsonl",
        "step2_generation_trans.jsonl",
        "step3_evaluation.jsonl",
        "step4_eval_scores.jsonl",
        "step4_eval_scores.json",
    ];
    for name in names {
        let dir = sweep.join(name);
        assert!(dir.join(".evalfleet-sweep.json").is_file(), "{name}");
        assert!(
            !dir.join("CharacterEval/.evalfleet-journal").exists(),
            "{name}: a journal is left"
        );
        let reference = tmp.path().join("reference").join(name);
        let ref_yaml = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(
            &ref_yaml,
            format!(
                "model_path: {}\nadapter_name_or_path: {}\noutput_dir: {}\n{keys}",
                base.display(),
                ckpts.join(name).display(),
                reference.display()
            ),
        )
        .unwrap();
        let log = tmp.path().join(format!("{name}.log"));
        evalfleet_one_per_lease(&["step4"], &ref_yaml, 2, &log);
        for file in files {
            assert_eq!(
                read(&dir.join("CharacterEval").join(file)),
                read(&reference.join(file)),
                "{name}: {file}"
            );
        }
    }
    let rows = summary_rows(&read(&sweep.join("summary.csv")));
    let models: Vec<&str> = rows.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(models, names);
}

/// Two adapter checkpoints under `<root>/run` and a sweep YAML with steps [step1, step2] over
/// them (all-MiniLM-L6-v2 for step 2) writing to `out`; returns the YAML's path.
fn two_checkpoint_chain_sweep(root: &Path, base: &Path, out: &Path, file: &str) -> PathBuf {
    let ckpts = root.join("run");
    make_checkpoint("lora", &ckpts.join("checkpoint-100"), None);
    make_checkpoint("lora2", &ckpts.join("checkpoint-200"), None);
    let yaml = root.join(file);
    std::fs::write(
        &yaml,
        format!(
            "model_name_or_path: {}\ncheckpoints: {}/checkpoint-*\nsteps: [step1, step2]\n\
             output_dir: {}\nstep2:\n  model_path: {}\n{}",
            base.display(),
            ckpts.display(),
            out.display(),
            fleet_common::minilm().display(),
            step1_keys()
        ),
    )
    .unwrap();
    yaml
}

/// A checkpoint's result files, speed metrics left out (they time the run).
fn checkpoint_files(dir: &Path) -> Vec<(String, String)> {
    [
        "generated_predictions.jsonl",
        "predict_results.json",
        "all_results.json",
        "sem_sim_distribution.json",
    ]
    .iter()
    .map(|name| {
        (
            name.to_string(),
            fleet_common::without_speed(&read(&dir.join(name))),
        )
    })
    .collect()
}

#[test]
fn a_sweep_killed_in_its_second_checkpoints_step2_recomputes_no_step1_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (reference, out, yaml, log) = swept_reference(tmp.path(), two_checkpoint_chain_sweep);

    // One worker, one item per lease: a step-1 result's step-2 item goes out next, so when the
    // worker holds checkpoint-200's last step-2 item (5), all 6 of its step-1 results and 5
    // step-2 scores are journaled; checkpoint-100's files are written meanwhile.
    let marker = tmp.path().join("held");
    let hold = Some(format!("{}:5@checkpoint-200/step2", marker.display()));
    let mut coordinator = spawn(&["sweep"], &yaml, 1, &log, hold);
    let journal = out.join("checkpoint-200/.evalfleet-journal/step1+step2.jsonl");
    let mut worker = None;
    let finished = out.join("checkpoint-100/.evalfleet-sweep.json");
    wait_until(
        "a held worker, 11 journaled results, checkpoint-100 written",
        || {
            worker = read_pid(&marker);
            worker.is_some() && journal_results(&journal) == 11 && finished.is_file()
        },
    );
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    kill(worker.unwrap(), "-9");
    assert!(!out.join("checkpoint-100/.evalfleet-journal").exists());

    let text = finish(spawn(&["sweep"], &yaml, 1, &log, None), &["sweep"], &log);
    assert!(text.contains("sweep: skipping checkpoint-100"), "{text}");
    assert!(
        text.contains(
            "sweep: checkpoint-200: 1 results computed in this run, 11 taken from the journal \
             (checkpoint-200/step1: 0 computed, 6 taken; checkpoint-200/step2: 1 computed, 5 taken)"
        ),
        "{text}"
    );
    for name in ["checkpoint-100", "checkpoint-200"] {
        assert_eq!(
            checkpoint_files(&out.join(name)),
            checkpoint_files(&reference.join(name)),
            "{name}"
        );
        assert!(
            !out.join(name).join(".evalfleet-journal").exists(),
            "{name}"
        );
    }
}
