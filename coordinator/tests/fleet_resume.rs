//! The result journal and graceful stops, with real processes on loopback (`evalfleet step1`
//! spawning `evalfleet-worker`s):
//!
//! - the coordinator killed (`kill -9`) mid step 1 on SmolLM2 (GGUF, greedy): a torn last line
//!   added to its journal, a run of another job refused, then the same command resumes and
//!   computes exactly the items the journal lacks, and the files equal an uninterrupted run's;
//!   the resumed `predict_runtime` includes the earlier run's generation time from the journal;
//! - the same mid step 1 → step 2 chain (`evalfleet run`, steps [step1, step2]) and mid step 3
//!   (`evalfleet step3`): the re-run takes both steps' (or every question's) finished results
//!   from the journal and the files equal an uninterrupted run's;
//! - SIGTERM on the coordinator: exit 130 with the resume message, journal intact, a re-run
//!   finishes with identical predictions;
//! - SIGTERM on a worker: it gives its lease back, which the coordinator logs as a returned
//!   lease (not an expiry, not a disconnect holding leases), and the job finishes.
//!
//! Where a process must be stopped mid-lease, the worker's EVALFLEET_TEST_HOLD_ONCE hook makes
//! one worker hang at a known item and write its pid into a marker file; the test waits for the
//! marker and for the journal's lines, never for a time.

mod fleet_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fleet_common::{repo, result_files, smollm2, wait, without_speed};

/// Step 1 samples: 4 from each of the two demo datasets.
const ITEMS: usize = 8;
/// Guard against hangs only; no assertion depends on it.
const LIMIT: Duration = Duration::from_secs(900);

/// A step-1 YAML on the demo data for `model`, writing to `out`.
fn write_yaml(path: &Path, model: &Path, template: &str, out: &Path, max_new_tokens: usize) {
    let yaml = format!(
        "model_name_or_path: {model}\nstage: sft\ndo_predict: true\nfinetuning_type: lora\n\
         dataset_dir: {data}\ndataset: demo_alpaca,demo_sharegpt\ntemplate: {template}\n\
         cutoff_len: 40\nmax_samples: 4\noutput_dir: {out}\nper_device_eval_batch_size: 1\n\
         predict_with_generate: true\nmax_new_tokens: {max_new_tokens}\ndo_sample: false\n",
        model = model.display(),
        data = repo().join("yamls/demo").display(),
        out = out.display(),
    );
    std::fs::write(path, yaml).unwrap();
}

/// `evalfleet step1 <yaml> --workers N --batch-size B [extra]`, stderr to `log`; `hold` sets the
/// worker hook (inherited by the spawned workers) as `MARKER:ITEM`.
fn step1(yaml: &Path, workers: usize, batch: usize, log: &Path, hold: Option<String>) -> Child {
    evalfleet("step1", yaml, workers, batch, log, hold)
}

/// `evalfleet <command> <yaml> --workers N --batch-size B --cpu`, as [`step1`].
fn evalfleet(
    command: &str,
    yaml: &Path,
    workers: usize,
    batch: usize,
    log: &Path,
    hold: Option<String>,
) -> Child {
    let (w, b) = (workers.to_string(), batch.to_string());
    let args = [
        command,
        yaml.to_str().unwrap(),
        "--cpu",
        "--workers",
        &w,
        "--batch-size",
        &b,
    ];
    fleet_common::spawn_logged(&args, log, hold)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs to the end; asserts success (showing the log otherwise) and returns the log.
fn finish(child: Child, log: &Path) -> String {
    let status = wait(child, LIMIT).status;
    let text = read(log);
    assert!(status.success(), "evalfleet failed ({status}):\n{text}");
    text
}

/// Polls `cond` until it holds (the hang guard aside, no timing is involved).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < LIMIT, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid the holding worker wrote into `marker`, once it is there.
fn held_worker(marker: &Path) -> u32 {
    let mut pid = None;
    wait_until("a worker to hold", || {
        pid = std::fs::read_to_string(marker)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

fn journal(out: &Path) -> PathBuf {
    out.join(".evalfleet-journal/step1.jsonl")
}

/// Complete result lines in a journal (its lines that end in a newline and name an item: not
/// the header, not the timing lines).
fn journal_results(path: &Path) -> usize {
    let text = String::from_utf8(std::fs::read(path).unwrap_or_default()).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && l.contains(r#""item":"#))
        .count()
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// Kills a held worker left behind by a killed coordinator (it may have exited already).
fn reap(pid: u32) {
    let _ = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// `(computed, from the journal)` from the log's "N results computed in this run, M taken from
/// the journal" line.
fn computed_and_loaded(log: &str) -> (usize, usize) {
    let line = log
        .lines()
        .find(|l| l.contains("results computed in this run"))
        .unwrap_or_else(|| panic!("no summary line in the log:\n{log}"));
    // The totals end at "taken from the journal" (each task's share may follow).
    let (totals, _) = line.split_once(" taken from the journal").unwrap();
    let numbers: Vec<usize> = totals
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let n = numbers.len();
    assert!(n >= 2, "{line}");
    (numbers[n - 2], numbers[n - 1])
}

/// The metric keys of predict_results.json (not the speed keys, which time the run).
fn metrics(out: &Path) -> Vec<(String, String)> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&read(&out.join("predict_results.json"))).unwrap();
    map.into_iter()
        .filter(|(k, _)| k.contains("rouge") || k.contains("bleu"))
        .map(|(k, v)| (k, v.to_string()))
        .collect()
}

/// The speed keys of all_results.json.
fn speed(out: &Path) -> std::collections::BTreeMap<String, f64> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&read(&out.join("all_results.json"))).unwrap();
    map.into_iter()
        .filter(|(k, _)| k.contains("_runtime") || k.contains("_per_second"))
        .map(|(k, v)| (k, v.as_f64().unwrap()))
        .collect()
}

fn exit_code(status: ExitStatus) -> Option<i32> {
    status.code()
}

#[test]
fn coordinator_killed_mid_step1_resumes_computing_only_what_the_journal_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let model = smollm2();
    let (reference, out) = (dir.path().join("reference"), dir.path().join("out"));
    let (yaml_ref, yaml) = (dir.path().join("ref.yaml"), dir.path().join("job.yaml"));
    write_yaml(&yaml_ref, &model, "chatml", &reference, 12);
    write_yaml(&yaml, &model, "chatml", &out, 12);
    let log = dir.path().join("log");
    finish(step1(&yaml_ref, 1, 1, &log, None), &log);

    // One worker, one item per lease: items go out in order, and the worker hangs at item 3.
    let marker = dir.path().join("held");
    let hold = Some(format!("{}:3", marker.display()));
    let mut coordinator = step1(&yaml, 1, 1, &log, hold);
    let worker = held_worker(&marker);
    wait_until("items 0-2 in the journal", || {
        journal_results(&journal(&out)) == 3
    });
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    reap(worker);
    let saved = journal_results(&journal(&out));
    assert_eq!(saved, 3);

    // The killed run journaled its generation time after each result.
    let text = read(&journal(&out));
    assert!(text.contains(r#"{"task":"step1","elapsed_s":"#), "{text}");
    // Say the earlier runs took 1000 s: the resumed run's predict_runtime must include them.
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(b"{\"task\":\"step1\",\"elapsed_s\":1000.0}\n");
    // A power cut tore the last line.
    bytes.extend_from_slice(br#"{"task":"step1","item":"3","kind":"generate","result":"CgVo"#);
    std::fs::write(journal(&out), &bytes).unwrap();

    // Another job (other generation settings) on the same output directory is refused.
    let other = dir.path().join("other.yaml");
    write_yaml(&other, &model, "chatml", &out, 5);
    let refused = wait(step1(&other, 1, 1, &log, None), LIMIT);
    let text = read(&log);
    assert_eq!(exit_code(refused.status), Some(1), "{text}");
    assert!(text.contains("belongs to another job"), "{text}");
    assert!(text.contains("its generation differs"), "{text}");
    assert!(
        text.contains("max_new_tokens: 12") && text.contains("max_new_tokens: 5"),
        "{text}"
    );
    assert!(text.contains("--restart"), "{text}");
    assert_eq!(
        std::fs::read(journal(&out)).unwrap(),
        bytes,
        "a refused run leaves it alone"
    );

    // The same command again: resumes.
    let started = Instant::now();
    let text = finish(step1(&yaml, 1, 1, &log, None), &log);
    let took = started.elapsed().as_secs_f64();
    assert!(text.contains("ignoring a torn last line"), "{text}");
    assert_eq!(computed_and_loaded(&text), (ITEMS - saved, saved), "{text}");
    // 1000 s before, plus this run's generation (which took less than the whole command).
    let speed = speed(&out);
    let runtime = speed["predict_runtime"];
    assert!(
        (1000.0..=1000.0 + took).contains(&runtime),
        "{runtime} (the re-run took {took} s)"
    );
    let per_second = speed["predict_samples_per_second"];
    assert!(
        (per_second - ITEMS as f64 / runtime).abs() < 1e-3,
        "{per_second} vs {ITEMS} / {runtime}"
    );
    assert_eq!(
        read(&out.join("generated_predictions.jsonl")),
        read(&reference.join("generated_predictions.jsonl"))
    );
    assert_eq!(metrics(&out), metrics(&reference));
    assert!(
        !out.join(".evalfleet-journal").exists(),
        "a finished step deletes its journal"
    );
}

#[test]
fn sigterm_on_the_coordinator_keeps_the_journal_and_a_rerun_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let model = fleet_common::tiny_chat_model(dir.path());
    let (reference, out) = (dir.path().join("reference"), dir.path().join("out"));
    let (yaml_ref, yaml) = (dir.path().join("ref.yaml"), dir.path().join("job.yaml"));
    write_yaml(&yaml_ref, &model, "default", &reference, 8);
    write_yaml(&yaml, &model, "default", &out, 8);
    let log = dir.path().join("log");
    finish(step1(&yaml_ref, 1, 1, &log, None), &log);

    let marker = dir.path().join("held");
    let coordinator = step1(&yaml, 1, 1, &log, Some(format!("{}:5", marker.display())));
    let worker = held_worker(&marker);
    wait_until("items 0-4 in the journal", || {
        journal_results(&journal(&out)) == 5
    });
    signal(coordinator.id(), "-TERM");
    let status = wait(coordinator, LIMIT).status;
    reap(worker);
    let text = read(&log);
    assert_eq!(exit_code(status), Some(130), "{text}");
    assert!(
        text.contains("stopped by SIGTERM: 5 of 8 item results are saved"),
        "{text}"
    );
    assert!(
        text.contains("run the same command again to resume"),
        "{text}"
    );
    assert_eq!(journal_results(&journal(&out)), 5, "the journal is intact");
    assert!(!out.join("generated_predictions.jsonl").exists());

    let text = finish(step1(&yaml, 1, 1, &log, None), &log);
    assert_eq!(computed_and_loaded(&text), (3, 5), "{text}");
    assert_eq!(
        read(&out.join("generated_predictions.jsonl")),
        read(&reference.join("generated_predictions.jsonl"))
    );
}

#[test]
fn sigterm_on_a_worker_gives_its_lease_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = fleet_common::tiny_chat_model(dir.path());
    let out = dir.path().join("out");
    let yaml = dir.path().join("job.yaml");
    write_yaml(&yaml, &model, "default", &out, 8);
    let log = dir.path().join("log");
    // Two workers, three items per lease: whoever has item 1 hangs after sending item 0.
    let marker = dir.path().join("held");
    let coordinator = step1(&yaml, 2, 3, &log, Some(format!("{}:1", marker.display())));
    let worker = held_worker(&marker);
    signal(worker, "-TERM");
    let text = finish(coordinator, &log);
    // Lease 1 (items 0-2) is the held one; how many of its items were sent before the hook
    // depends on the order the worker emits a batch in.
    assert!(
        text.contains("is stopping and returned lease 1: "),
        "{text}"
    );
    assert!(text.contains("items go back to the queue"), "{text}");
    assert!(
        !text.contains("did not exit"),
        "the stopping worker exits without waiting for its hung lease:
{text}"
    );
    assert!(
        text.contains("lease 1 given back"),
        "the worker's own log:\n{text}"
    );
    for slow_path in ["expired without heartbeats", "disconnected holding leases"] {
        assert!(!text.contains(slow_path), "{slow_path}:\n{text}");
    }
    let lines = read(&out.join("generated_predictions.jsonl"));
    assert_eq!(lines.split('\n').count(), ITEMS, "{lines}");
}

/// A run file with steps [step1, step2] on `out`: the tiny chat model, all-MiniLM-L6-v2.
fn write_chain_yaml(path: &Path, model: &Path, out: &Path) {
    let yaml = format!(
        "steps: [step1, step2]\nmodel_name_or_path: {model}\ndataset_dir: {data}\n\
         dataset: demo_alpaca,demo_sharegpt\ntemplate: default\ncutoff_len: 40\nmax_samples: 4\n\
         output_dir: {out}\nper_device_eval_batch_size: 1\npredict_with_generate: true\n\
         max_new_tokens: 8\ndo_sample: false\nstep2:\n  model_path: {embedder}\n",
        model = model.display(),
        data = repo().join("yamls/demo").display(),
        out = out.display(),
        embedder = fleet_common::minilm().display(),
    );
    std::fs::write(path, yaml).unwrap();
}

/// Kills the coordinator once `journal` holds `results` results, and the held worker.
fn kill_at(mut coordinator: Child, marker: &Path, journal: &Path, results: usize) {
    let worker = held_worker(marker);
    wait_until("the journal's results", || {
        journal_results(journal) == results
    });
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    reap(worker);
    assert_eq!(journal_results(journal), results);
}

#[test]
fn coordinator_killed_mid_chain_resumes_step1_and_step2_from_one_journal() {
    let dir = tempfile::tempdir().unwrap();
    let model = fleet_common::tiny_chat_model(dir.path());
    let (reference, out) = (dir.path().join("reference"), dir.path().join("out"));
    let (yaml_ref, yaml) = (dir.path().join("ref.yaml"), dir.path().join("job.yaml"));
    write_chain_yaml(&yaml_ref, &model, &reference);
    write_chain_yaml(&yaml, &model, &out);
    let log = dir.path().join("log");
    finish(evalfleet("run", &yaml_ref, 1, 1, &log, None), &log);

    // One worker, one item per lease: each step-1 result's step-2 item goes out next (a fed
    // task's full lease comes first), so the leases alternate step1 0, step2 0, step1 1, ...
    // The worker hangs at the first result for item 3 (step 1's): 3 of each step are journaled.
    let marker = dir.path().join("held");
    let hold = Some(format!("{}:3", marker.display()));
    let coordinator = evalfleet("run", &yaml, 1, 1, &log, hold);
    let chain_journal = out.join(".evalfleet-journal/step1+step2.jsonl");
    kill_at(coordinator, &marker, &chain_journal, 6);
    let text = read(&chain_journal);
    for task in ["step1", "step2"] {
        let results = format!(r#"{{"task":"{task}","item":"#);
        assert_eq!(text.matches(&results).count(), 3, "{task}:\n{text}");
    }
    assert!(
        !out.join("generated_predictions.jsonl").exists(),
        "step 1 was not complete"
    );

    let text = finish(evalfleet("run", &yaml, 1, 1, &log, None), &log);
    assert_eq!(computed_and_loaded(&text), (2 * ITEMS - 6, 6), "{text}");
    for name in [
        "generated_predictions.jsonl",
        "sem_sim_distribution.json",
        "sem_sim_histogram.svg",
        "sem_sim_histogram.png",
    ] {
        let bytes = |dir: &Path| std::fs::read(dir.join(name)).unwrap();
        assert!(bytes(&out) == bytes(&reference), "{name} differs");
    }
    for name in ["predict_results.json", "all_results.json"] {
        let (a, b) = (read(&out.join(name)), read(&reference.join(name)));
        assert!(a.contains("\"predict_runtime\""), "{name}: {a}");
        assert_eq!(without_speed(&a), without_speed(&b), "{name} differs");
    }
    let results = read(&out.join("predict_results.json"));
    assert!(results.contains("\"avg_sem_sim_score\""), "{results}");
    assert!(
        !chain_journal.exists(),
        "a finished chain deletes its journal"
    );
}

/// Questions of the step-3 benchmark (one subject, MMLU layout).
const QUESTIONS: usize = 8;

/// A benchmark of our own in the MMLU layout under `dir/tasks/mine`: one subject, two dev rows,
/// [`QUESTIONS`] test rows.
fn write_benchmark(dir: &Path) {
    let task = dir.join("tasks/mine");
    std::fs::create_dir_all(task.join("data/dev")).unwrap();
    std::fs::create_dir_all(task.join("data/test")).unwrap();
    std::fs::write(
        task.join("mapping.json"),
        r#"{"arithmetic": {"name": "arithmetic", "category": "STEM"}}"#,
    )
    .unwrap();
    let row = |a: usize, b: usize| {
        let sum = a + b;
        let answer = ["A", "B", "C", "D"][sum % 4];
        let choices: Vec<String> = (0..4).map(|k| (sum - sum % 4 + k).to_string()).collect();
        format!("What is {a} + {b}?,{},{answer}\n", choices.join(","))
    };
    let dev: String = (0..2).map(|i| row(i + 1, 2)).collect();
    let test: String = (0..QUESTIONS).map(|i| row(3 * i + 4, i + 5)).collect();
    std::fs::write(task.join("data/dev/arithmetic_dev.csv"), dev).unwrap();
    std::fs::write(task.join("data/test/arithmetic_test.csv"), test).unwrap();
}

fn write_step3_yaml(path: &Path, dir: &Path, save: &Path) {
    let yaml = format!(
        "model_name_or_path: {model}\ntask_dir: {tasks}\ntasks: [mine]\nlangs: [en]\n\
         splits: [test]\ntemplate: qwen\nn_shot: 1\nfew_shot_order: fixed\nsave_dir: {save}\n",
        model = fleet_common::smollm2_f32().display(),
        tasks = dir.join("tasks").display(),
        save = save.display(),
    );
    std::fs::write(path, yaml).unwrap();
}

#[test]
fn coordinator_killed_mid_step3_resumes_scoring_only_the_missing_questions() {
    let dir = tempfile::tempdir().unwrap();
    write_benchmark(dir.path());
    let (reference, out) = (dir.path().join("reference"), dir.path().join("out"));
    let (yaml_ref, yaml) = (dir.path().join("ref.yaml"), dir.path().join("job.yaml"));
    write_step3_yaml(&yaml_ref, dir.path(), &reference);
    write_step3_yaml(&yaml, dir.path(), &out);
    let log = dir.path().join("log");
    finish(evalfleet("step3", &yaml_ref, 1, 1, &log, None), &log);
    let files: Vec<PathBuf> = std::fs::read_dir(reference.join("mine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 4, "{files:?}");

    // One worker, one question per lease, in queue order (every question has the same shot):
    // the worker hangs at question 5 with questions 0-4 journaled.
    let marker = dir.path().join("held");
    let hold = Some(format!("{}:5", marker.display()));
    let coordinator = evalfleet("step3", &yaml, 1, 1, &log, hold);
    let step3_journal = out.join(".evalfleet-journal/step3.jsonl");
    kill_at(coordinator, &marker, &step3_journal, 5);

    let text = finish(evalfleet("step3", &yaml, 1, 1, &log, None), &log);
    assert_eq!(computed_and_loaded(&text), (QUESTIONS - 5, 5), "{text}");
    for file in &files {
        let name = file.file_name().unwrap();
        assert_eq!(
            read(&out.join("mine").join(name)),
            read(file),
            "{name:?} differs"
        );
    }
    assert!(
        !step3_journal.exists(),
        "a finished step 3 deletes its journal"
    );
}

/// A job `[step1, step2, step3]` on the tiny chat model (with a longer context for step 3's
/// prompts): step 1 → step 2 chained on `out`, step 3 on [`write_benchmark`]'s questions
/// (under `dir`, written by the caller) into `save`.
fn write_three_step_yaml(path: &Path, model: &Path, dir: &Path, out: &Path, save: &Path) {
    let yaml = format!(
        "steps: [step1, step2, step3]\nmodel_name_or_path: {model}\ntemplate: default\n\
         dataset_dir: {data}\ndataset: demo_alpaca,demo_sharegpt\ncutoff_len: 40\n\
         max_samples: 4\noutput_dir: {out}\nper_device_eval_batch_size: 1\n\
         predict_with_generate: true\nmax_new_tokens: 8\ndo_sample: false\n\
         step2:\n  model_path: {embedder}\n\
         step3: {{task_dir: {tasks}, tasks: [mine], langs: [en], splits: [test], n_shot: 1, \
         few_shot_order: fixed, save_dir: {save}}}\n",
        model = model.display(),
        data = repo().join("yamls/demo").display(),
        out = out.display(),
        embedder = fleet_common::minilm().display(),
        tasks = dir.join("tasks").display(),
        save = save.display(),
    );
    std::fs::write(path, yaml).unwrap();
}

#[test]
fn coordinator_killed_in_step3_of_a_three_step_job_recomputes_no_finished_step() {
    let dir = tempfile::tempdir().unwrap();
    write_benchmark(dir.path());
    let model = fleet_common::tiny_chat_model_long(dir.path());
    let run = |name: &str| {
        let (out, save) = (
            dir.path().join(name),
            dir.path().join(format!("{name}-step3")),
        );
        let yaml = dir.path().join(format!("{name}.yaml"));
        write_three_step_yaml(&yaml, &model, dir.path(), &out, &save);
        (yaml, out, save)
    };
    let (yaml_ref, reference, reference_save) = run("reference");
    let (yaml, out, save) = run("out");
    let log = dir.path().join("log");
    finish(evalfleet("run", &yaml_ref, 1, 1, &log, None), &log);

    // One worker, one question per lease: it hangs at question 5 of step 3, questions 0-4
    // journaled; steps 1 and 2 are written and recorded finished by then.
    let marker = dir.path().join("held");
    let hold = Some(format!("{}:5@step3/mine", marker.display()));
    let coordinator = evalfleet("run", &yaml, 1, 1, &log, hold);
    let step3_journal = save.join(".evalfleet-journal/step3.jsonl");
    kill_at(coordinator, &marker, &step3_journal, 5);
    let chain = out.join(".evalfleet-journal/step1+step2");
    assert!(
        chain.with_extension("done").is_file(),
        "steps 1 and 2 are recorded finished"
    );
    assert_eq!(journal_results(&chain.with_extension("jsonl")), 2 * ITEMS);

    let text = finish(evalfleet("run", &yaml, 1, 1, &log, None), &log);
    assert!(
        text.contains("step1+step2: finished by an earlier run of this job"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "step1+step2: 0 results computed in this run, {} taken from the journal \
             (step1: 0 computed, {ITEMS} taken; step2: 0 computed, {ITEMS} taken)",
            2 * ITEMS
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "step3: {} results computed in this run, 5 taken from the journal",
            QUESTIONS - 5
        )),
        "{text}"
    );
    assert_eq!(
        result_files(&out),
        result_files(&reference),
        "steps 1 and 2 differ"
    );
    assert_eq!(
        result_files(&save),
        result_files(&reference_save),
        "step 3 differs"
    );
    for d in [&out, &save] {
        assert!(
            !d.join(".evalfleet-journal").exists(),
            "{}: the finished job leaves no journal",
            d.display()
        );
    }
}
