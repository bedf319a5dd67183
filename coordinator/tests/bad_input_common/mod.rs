//! Helpers of the bad-input tests (`tests/bad_input_*.rs`, the README's "Bad input" table): a
//! working step-1 / step-3 setup on the tiny real model that each test breaks in one place, the
//! `evalfleet` and `evalfleet-worker` binaries run as child processes, and the checks every bad
//! input must pass: a non-zero exit, a message naming the file/key/line and what was expected,
//! no panic, and no output file touched (earlier outputs byte-identical, no partial file).
//!
//! Needs `mod fleet_common;` next to `mod bad_input_common;` in the test file.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::fleet_common::{evalfleet_bin, repo, tiny_chat_model, worker_bin};

/// Files a step-1 run writes; each test puts an earlier run's version there first.
pub const STEP1_OUTPUTS: [&str; 3] = [
    "generated_predictions.jsonl",
    "predict_results.json",
    "all_results.json",
];

/// The limit for one run (a guard against hangs; every case fails in seconds).
pub const LIMIT: Duration = Duration::from_secs(300);

/// A working step-1 job under a temporary folder: the tiny model, a copy of the demo data, an
/// output folder holding an earlier run's files. Tests break one thing, then [`Step1::run`].
pub struct Step1 {
    pub dir: tempfile::TempDir,
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    /// The YAML's text; tests may edit it before [`Step1::run`].
    pub yaml: String,
}

impl Step1 {
    pub fn new() -> Step1 {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_chat_model(dir.path());
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        for name in [
            "dataset_info.json",
            "demo_alpaca.json",
            "demo_sharegpt.jsonl",
        ] {
            std::fs::copy(repo().join("yamls/demo").join(name), data.join(name)).unwrap();
        }
        let out = dir.path().join("out");
        prior_outputs(&out, &STEP1_OUTPUTS);
        let yaml = format!(
            "model_name_or_path: {model}\nstage: sft\ndo_predict: true\nfinetuning_type: lora\n\
             dataset_dir: {data}\ndataset: demo_alpaca,demo_sharegpt\ntemplate: default\n\
             cutoff_len: 40\nmax_samples: 2\noutput_dir: {out}\nper_device_eval_batch_size: 1\n\
             predict_with_generate: true\nmax_new_tokens: 4\ndo_sample: false\n",
            model = model.display(),
            data = data.display(),
            out = out.display(),
        );
        Step1 {
            dir,
            model,
            data,
            out,
            yaml,
        }
    }

    /// Replaces the line starting with `key:` by `line` (panics if there is none).
    pub fn set(&mut self, key: &str, line: &str) {
        let prefix = format!("{key}:");
        let mut found = false;
        let lines: Vec<String> = self
            .yaml
            .lines()
            .map(|l| {
                if l.starts_with(&prefix) {
                    found = true;
                    line.to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert!(found, "no key {key} in the test YAML");
        self.yaml = lines.join("\n") + "\n";
    }

    /// Writes the YAML and runs `evalfleet step1` on it with one local CPU worker plus `extra`
    /// arguments; returns the YAML's path and the output.
    pub fn run(&self, extra: &[&str]) -> (PathBuf, Output) {
        let yaml = self.dir.path().join("job.yaml");
        std::fs::write(&yaml, &self.yaml).unwrap();
        let mut args = vec!["step1", yaml.to_str().unwrap(), "--workers", "1", "--cpu"];
        args.extend_from_slice(extra);
        let out = run(evalfleet(&args));
        (yaml, out)
    }

    /// Runs step 1 and checks the clean failure (see [`assert_clean_failure`]) on its output
    /// folder, with `expected` in stderr. Returns stderr.
    pub fn fails_with(&self, expected: &[&str]) -> String {
        let before = Snapshot::of(&self.out);
        let (_, out) = self.run(&[]);
        assert_clean_failure(&out, expected);
        before.assert_unchanged(&self.out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A working step-3 job: one MMLU-layout subject (`algebra`: 5 dev and 3 test questions) as an
/// extracted tree, the tiny model with room for the prompts, a save_dir holding an earlier run.
pub struct Step3 {
    pub dir: tempfile::TempDir,
    /// `<task_dir>/mmlu`.
    pub task: PathBuf,
    /// `<save_dir>/mmlu`.
    pub out: PathBuf,
    pub yaml: PathBuf,
}

impl Step3 {
    pub fn new() -> Step3 {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_chat_model(dir.path());
        // A few-shot prompt is longer than the tiny model's 64 positions; its weights do not
        // depend on the limit (rotary positions are computed).
        let config = model.join("config.json");
        let text = std::fs::read_to_string(&config).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["max_position_embeddings"] = 1024.into();
        std::fs::write(&config, json.to_string()).unwrap();

        let task = dir.path().join("tasks/mmlu");
        std::fs::create_dir_all(task.join("data/dev")).unwrap();
        std::fs::create_dir_all(task.join("data/test")).unwrap();
        std::fs::write(
            task.join("mapping.json"),
            r#"{"algebra": {"name": "algebra", "category": "STEM"}}"#,
        )
        .unwrap();
        let rows = |n: usize| -> String {
            (1..=n)
                .map(|i| format!("What is {i}+1?,{},{},{},{},A\n", i + 1, i + 2, i + 3, i + 4))
                .collect()
        };
        std::fs::write(task.join("data/dev/algebra_dev.csv"), rows(5)).unwrap();
        std::fs::write(task.join("data/test/algebra_test.csv"), rows(3)).unwrap();

        let save = dir.path().join("save");
        let out = save.join("mmlu");
        prior_outputs(&out, &["results.json", "results.log"]);
        let yaml = dir.path().join("step3.yaml");
        std::fs::write(
            &yaml,
            format!(
                "model_name_or_path: {model}\nfinetuning_type: lora\ntask_dir: {tasks}\n\
                 tasks:\n  - mmlu\nlangs:\n  - en\nsplits:\n  - test\ntemplate: default\n\
                 n_shot: 2\nsave_dir: {save}\nbatch_size: 8\n",
                model = model.display(),
                tasks = dir.path().join("tasks").display(),
                save = save.display(),
            ),
        )
        .unwrap();
        Step3 {
            dir,
            task,
            out,
            yaml,
        }
    }

    /// Runs `evalfleet step3` and checks the clean failure on `<save_dir>/mmlu`. Returns stderr.
    pub fn fails_with(&self, expected: &[&str]) -> String {
        let before = Snapshot::of(&self.out);
        let out = run(evalfleet(&[
            "step3",
            self.yaml.to_str().unwrap(),
            "--workers",
            "1",
            "--cpu",
        ]));
        assert_clean_failure(&out, expected);
        before.assert_unchanged(&self.out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// Writes `names` into `dir` as an earlier run's outputs: valid files of their kind (a run
/// merges into an existing all_results.json) with contents no run would write.
pub fn prior_outputs(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for name in names {
        let text = if name.ends_with(".json") {
            "{\n    \"earlier_run\": 1.0\n}".to_string()
        } else if name.ends_with(".jsonl") {
            r#"{"label": "an earlier run", "predict": "an earlier run"}"#.to_string()
        } else {
            format!("an earlier run's {name}\n")
        };
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// The `evalfleet` binary with `args`, its workers from [`worker_bin`], output piped.
pub fn evalfleet(args: &[&str]) -> Command {
    let mut cmd = Command::new(evalfleet_bin());
    cmd.args(args).env("EVALFLEET_WORKER_BIN", worker_bin());
    quiet(&mut cmd);
    cmd
}

/// The `evalfleet-worker` binary with `args`, output piped.
pub fn worker(args: &[&str]) -> Command {
    let mut cmd = Command::new(worker_bin());
    cmd.args(args);
    quiet(&mut cmd);
    cmd
}

/// No test hooks from the environment of the test run; no stdin; stdout and stderr piped.
fn quiet(cmd: &mut Command) {
    for hook in [
        "EVALFLEET_TEST_CRASH_ONCE",
        "EVALFLEET_TEST_HOLD_ONCE",
        "EVALFLEET_TEST_DISK_FULL",
        "EVALFLEET_TOKEN",
    ] {
        cmd.env_remove(hook);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

/// Spawns `cmd` and waits for it (killed after [`LIMIT`], a guard against hangs only),
/// draining its output meanwhile: a failing model load can log more than a pipe holds.
pub fn run(mut cmd: Command) -> Output {
    let mut child = cmd.spawn().unwrap();
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                pipe.read_to_end(&mut bytes).unwrap();
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("{cmd:?} still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The checks every bad input must pass on the process's output: a non-zero exit, every
/// `expected` text in stderr (the file/key/line and what was expected), no panic anywhere (the
/// coordinator's stderr also carries its local workers' lines).
pub fn assert_clean_failure(out: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "expected a failure, got {}:\n{stderr}",
        out.status
    );
    for text in expected {
        assert!(
            stderr.contains(text),
            "the message does not say {text:?}:\n{stderr}"
        );
    }
    for stream in [&stderr, &stdout] {
        assert!(!stream.contains("panicked at"), "a panic:\n{stream}");
    }
}

/// Every file under a folder with its bytes, except the result journal (resume data that a
/// failed run is meant to leave behind).
#[derive(Debug, PartialEq)]
pub struct Snapshot(BTreeMap<PathBuf, Vec<u8>>);

impl Snapshot {
    pub fn of(dir: &Path) -> Snapshot {
        let mut files = BTreeMap::new();
        collect(dir, dir, &mut files);
        Snapshot(files)
    }

    /// `dir` holds exactly the files it held before, byte for byte: nothing half-written or
    /// replaced, no temporary file left over (the journal aside).
    pub fn assert_unchanged(&self, dir: &Path) {
        let now = Snapshot::of(dir);
        let names = |s: &Snapshot| s.0.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&now),
            names(self),
            "{}: files differ from before the run",
            dir.display()
        );
        for (name, bytes) in &self.0 {
            assert!(
                now.0[name] == *bytes,
                "{}: {} changed",
                dir.display(),
                name.display()
            );
        }
    }
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == ".evalfleet-journal") {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let rel = path.strip_prefix(root).unwrap().to_owned();
            files.insert(rel, std::fs::read(&path).unwrap());
        }
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
