//! Helpers shared by the fleet tests: finding the binaries, a tiny real model, a small job, and
//! running the binaries as child processes (waiting with a limit, reading a coordinator's URL).
//!
//! The worker binary belongs to another crate, so cargo does not build it for these tests. It is
//! taken from `$EVALFLEET_WORKER_BIN`, else from next to the `evalfleet` binary (the same target
//! directory and profile); if absent the test fails and says how to build it (scripts/test.sh
//! builds every binary before running the tests).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use evalfleet::run::{FleetSetup, run_fleet};
use evalfleet::sched::{ItemOutcome, TaskSpec};
use evalfleet_proto::v1 as pb;

/// The repository root (the demo data, the rendered manifests, the default `.models`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Waits for `child` (killing it after `limit`, a guard against hangs only) and returns its output.
pub fn wait(mut child: Child, limit: Duration) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "process still running after {limit:?}: {:?}",
                child.wait_with_output().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// [`wait`], then asserts that `what` (the process, for the message) exited successfully; the
/// panic shows its exit status and stderr.
pub fn wait_ok(child: Child, limit: Duration, what: &str) -> Output {
    let out = wait(child, limit);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Reads the URL from a `--listen` coordinator's `listening on <url>` stdout line (after any
/// `health on <addr>` line of `--health-listen`), then keeps draining its stdout so its later
/// output never meets a closed pipe. If another line comes first the coordinator failed to
/// start: panics with that line and its stderr.
pub fn listening_url(child: Child) -> (Child, String) {
    stdout_value(child, "listening on ", &["health on "])
}

/// Reads the address from a `--health-listen` coordinator's first stdout line (`health on
/// <addr>`), then keeps draining its stdout, as [`listening_url`].
pub fn health_addr(child: Child) -> (Child, String) {
    stdout_value(child, "health on ", &[])
}

/// The rest of the first stdout line starting with `prefix` (lines starting with one of `skip`
/// are passed over); stdout is drained in the background afterwards.
fn stdout_value(mut child: Child, prefix: &str, skip: &[&str]) -> (Child, String) {
    let mut stdout = BufReader::new(
        child
            .stdout
            .take()
            .expect("the coordinator's stdout is piped"),
    );
    let mut line = String::new();
    loop {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        if !skip.iter().any(|s| line.starts_with(s)) {
            break;
        }
    }
    let Some(value) = line.trim().strip_prefix(prefix).map(str::to_string) else {
        let out = wait(child, Duration::from_secs(30));
        panic!(
            "the coordinator did not print {prefix:?} (first line {line:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, value)
}

/// The fault-injection hooks (`EVALFLEET_TEST_CRASH_ONCE`, `EVALFLEET_TEST_HOLD_ONCE`,
/// `EVALFLEET_TEST_DISK_FULL`) exist only in binaries built with the `test-hooks` feature. A test
/// that sets one calls this first, so that a build without them fails here and says why, rather
/// than waiting for a fault that never comes (or passing without one).
#[cfg(not(feature = "test-hooks"))]
pub fn require_test_hooks() {
    panic!(
        "this test injects faults through the binaries' test hooks: build and run it with \
         `--features evalfleet/test-hooks,evalfleet-worker/test-hooks` (scripts/test.sh does)"
    );
}

/// See the other definition: with the feature, the hooks are there.
#[cfg(feature = "test-hooks")]
pub fn require_test_hooks() {}

/// Starts `evalfleet ARGS` with this build's worker binary, info logs on stderr into `log`, and
/// no test hook inherited from the test's environment; `hold` (`MARKER:ITEM`) sets the worker
/// hold hook, which the spawned workers inherit.
pub fn spawn_logged(args: &[&str], log: &Path, hold: Option<String>) -> Child {
    let mut cmd = std::process::Command::new(evalfleet_bin());
    cmd.args(args)
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env("RUST_LOG", "info")
        .env_remove("EVALFLEET_TEST_CRASH_ONCE")
        .env_remove("EVALFLEET_TEST_HOLD_ONCE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(spec) = hold {
        require_test_hooks();
        cmd.env("EVALFLEET_TEST_HOLD_ONCE", spec);
    }
    cmd.spawn().unwrap()
}

/// The `evalfleet` binary under test.
pub fn evalfleet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_evalfleet"))
}

/// The `evalfleet-worker` binary (see the module docs).
pub fn worker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EVALFLEET_WORKER_BIN") {
        return PathBuf::from(p);
    }
    let name = format!("evalfleet-worker{}", std::env::consts::EXE_SUFFIX);
    let path = Path::new(env!("CARGO_BIN_EXE_evalfleet")).with_file_name(name);
    assert!(
        path.is_file(),
        "worker binary {} is missing: build it first with `cargo build -p evalfleet-worker` \
         (same profile and target dir; scripts/test.sh does this), or set EVALFLEET_WORKER_BIN",
        path.display()
    );
    path
}

/// `$EVALFLEET_MODELS`, default `<repo>/.models` (filled by scripts/fetch-models.sh).
pub fn models_dir() -> PathBuf {
    std::env::var_os("EVALFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".models"))
}

/// The SmolLM2 GGUF fetched by scripts/fetch-models.sh; fails saying how to get it.
pub fn smollm2() -> PathBuf {
    let path = models_dir().join("smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh (or set EVALFLEET_MODELS)",
        path.display()
    );
    path
}

/// The f32 SmolLM2 folder scripts/test.sh converts from the GGUF; fails saying how to make it.
pub fn smollm2_f32() -> PathBuf {
    let dir = models_dir().join("smollm2-135m-instruct-f32");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/test.sh (it converts the GGUF of scripts/fetch-models.sh with \
         evalfleet-worker convert-gguf), or set EVALFLEET_MODELS",
        dir.display()
    );
    dir
}

/// The all-MiniLM-L6-v2 sentence-transformers folder (`$EVALFLEET_MODELS/all-minilm-l6-v2`,
/// default `<repo>/.models`); fails saying how to get it.
pub fn minilm() -> PathBuf {
    let dir = models_dir().join("all-minilm-l6-v2");
    assert!(
        dir.join("modules.json").is_file(),
        "{} is missing: run scripts/fetch-models.sh (or set EVALFLEET_MODELS)",
        dir.display()
    );
    dir
}

/// The worker crate's tiny random-weight llama (f32, 256-token vocabulary, 64 positions).
fn tiny_llama_weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker/tests/fixtures/tiny-llama/model")
}

/// [`tiny_chat_model`] with 1024 positions instead of the fixture's 64, for step-3 prompts (a
/// header and a shot, one token per byte); its positions are rotary (computed, not learned), so
/// a longer context is as valid.
pub fn tiny_chat_model_long(dir: &Path) -> PathBuf {
    let model = tiny_chat_model(dir);
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["max_position_embeddings"] = 1024.into();
    std::fs::write(&config, json.to_string()).unwrap();
    model
}

/// Builds, under `dir`, an HF model folder that the real worker can serve in milliseconds: the
/// tiny llama's weights plus a byte-level tokenizer that fits its 256-token vocabulary (ids 0-2
/// are `<unk>`, `<s>`, `</s>`, as its config says; 3.. are bytes, all but three that never occur
/// in UTF-8 text). Returns the folder. Predictions are random text, but deterministic: greedy and
/// seeded sampling give the same bytes on every run.
pub fn tiny_chat_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny-llama-chat");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(tiny_llama_weights()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    let specials = ["<unk>", "<s>", "</s>"];
    let mut vocab = serde_json::Map::new();
    for (id, token) in specials.iter().enumerate() {
        vocab.insert(token.to_string(), id.into());
    }
    let bytes = (0u8..=255).filter(|b| !(0xF5..=0xF7).contains(b));
    for (byte, id) in bytes.zip(specials.len()..) {
        vocab.insert(byte_char(byte).to_string(), id.into());
    }
    assert_eq!(vocab.len(), 256, "the model's vocabulary size");
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, content)| {
            serde_json::json!({"id": id, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "vocab": vocab, "merges": []},
    });
    let config = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": false, "clean_up_tokenization_spaces": false});
    for (name, value) in [
        ("tokenizer.json", tokenizer),
        ("tokenizer_config.json", config),
    ] {
        std::fs::write(
            model.join(name),
            serde_json::to_string_pretty(&value).unwrap(),
        )
        .unwrap();
    }
    model
}

/// The printable character byte-level BPE uses for `byte` (the GPT-2 convention): printable
/// Latin-1 bytes stand for themselves, the others take code points from 256 on, in byte order.
fn byte_char(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + rank).unwrap()
}

/// `n` generate items ("question i" → "answer i") for the tiny model at `model`.
pub fn task(model: &Path, n: usize) -> TaskSpec {
    let item = |i: usize| pb::WorkItem {
        item_id: i.to_string(),
        payload: Some(pb::work_item::Payload::Generate(pb::GenerateItem {
            messages: vec![
                pb::ChatMessage {
                    role: "user".into(),
                    content: format!("question {i}"),
                },
                pb::ChatMessage {
                    role: "assistant".into(),
                    content: format!("answer {i}"),
                },
            ],
            system: String::new(),
        })),
    };
    TaskSpec {
        name: "step1".into(),
        template: lease_template(model),
        items: (0..n).map(item).collect(),
    }
}

/// What every lease shares: the model, the LLaMA-Factory `default` template, greedy decoding.
pub fn lease_template(model: &Path) -> pb::Lease {
    pb::Lease {
        model: Some(pb::ModelSpec {
            key: "tiny".into(),
            model_path: model.display().to_string(),
            adapter_paths: Vec::new(),
            dtype: "f32".into(),
        }),
        prompt: Some(pb::PromptSpec {
            template: "default".into(),
            cutoff_len: 40,
            reserved_label_len: 0,
        }),
        generation: Some(pb::GenerationParams {
            do_sample: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            max_new_tokens: 6,
            seed: 42,
        }),
        ..Default::default()
    }
}

/// `workers` local CPU workers with batch size 3, plus `extra` worker arguments.
pub fn setup(workers: usize, extra: &[&str]) -> FleetSetup {
    FleetSetup {
        workers: Some(workers),
        batch_size: Some(3),
        cpu_only: true,
        worker_bin: Some(worker_bin()),
        worker_args: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// `predict|label` of every item (panics on a failed item).
pub fn predictions(outcomes: &[ItemOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            ItemOutcome::Done(pb::item_result::Outcome::Generate(g)) => {
                format!("{}|{}", g.predict, g.label)
            }
            other => panic!("unexpected outcome {other:?}"),
        })
        .collect()
}

/// The labels of [`task`]'s items, in order.
pub fn labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("answer {i}")).collect()
}

/// Predictions of one worker running everything: the reference the fleets must reproduce.
pub async fn reference(model: &Path, n: usize) -> Vec<String> {
    let run = run_fleet(vec![task(model, n)], &setup(1, &[]), "reference")
        .await
        .unwrap();
    predictions(&run.outcomes[0])
}

/// The worker crate's tiny reward model (Baichuan ALiBi layout, random weights, bf16).
pub fn tiny_reward_model() -> PathBuf {
    let path = repo().join("worker/tests/fixtures/reward/tiny-rm-alibi4");
    assert!(
        path.join("config.json").is_file(),
        "{}: the tiny reward model fixture is missing (scripts/goldens/reward_goldens.py writes it)",
        path.display()
    );
    path
}

/// The demo CharacterEval folder under `root`, each role profile cut to its first three entries
/// so that CPU prefill stays short (a full profile makes a prompt of thousands of tokens).
pub fn short_charactereval(root: &Path) -> PathBuf {
    use evalfleet::output::PyJson;
    let demo = repo().join("yamls/demo/charactereval");
    let task = root.join("charactereval");
    std::fs::create_dir_all(&task).unwrap();
    for name in ["test_data.jsonl", "id2metric.jsonl"] {
        std::fs::copy(demo.join(name), task.join(name)).unwrap();
    }
    let profiles = evalfleet::step4::data::read_json(&demo.join("character_profiles.json"));
    let Ok(PyJson::Object(roles)) = profiles else {
        panic!("the demo profiles are not an object")
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

/// A results file's text without its speed metrics (`*_runtime`, `*_per_second`: they time the
/// run, so they differ between any two runs).
pub fn without_speed(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains("_runtime\"") && !l.contains("_per_second\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every file under `dir` (path relative to it → bytes), sorted, the speed metrics left out of
/// step 1's results files ([`without_speed`]): what two runs of one job must agree on.
pub fn result_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = match name.as_str() {
                "predict_results.json" | "all_results.json" => {
                    without_speed(&std::fs::read_to_string(&path).unwrap()).into_bytes()
                }
                _ => std::fs::read(&path).unwrap(),
            };
            files.push((path.strip_prefix(dir).unwrap().to_path_buf(), bytes));
        }
    }
    files.sort();
    files
}

/// One MMLU subject in the original folder layout: 2 dev rows (the shots), 3 test questions.
pub fn tiny_mmlu(root: &Path) {
    let dir = root.join("mmlu");
    for sub in ["data/dev", "data/test"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(
        dir.join("mapping.json"),
        r#"{"abstract_algebra": {"name": "abstract algebra", "category": "STEM"}}"#,
    )
    .unwrap();
    let row = |i: usize| format!("What is {i} + {i}?,{},{},{},{},B\n", i, 2 * i, 3 * i, 4 * i);
    let dev: String = (1..=2).map(row).collect();
    let test: String = (3..=5).map(row).collect();
    std::fs::write(dir.join("data/dev/abstract_algebra_dev.csv"), dev).unwrap();
    std::fs::write(dir.join("data/test/abstract_algebra_test.csv"), test).unwrap();
}
