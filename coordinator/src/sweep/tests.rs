//! The sweep YAML: the example file, each checkpoint's run file, and the errors.

use std::path::{Path, PathBuf};

use super::config::{CheckpointKind, parse_sweep};
use crate::config::StepConfig;

/// A temp folder with adapters `checkpoint-1000` and `checkpoint-500` and a full model `final`.
fn checkpoints() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tmp");
    for (name, file) in [
        ("checkpoint-1000", "adapter_config.json"),
        ("checkpoint-500", "adapter_config.json"),
        ("final", "config.json"),
    ] {
        let d = root.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(file), "{}").expect("write");
    }
    root
}

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../yamls/sweep.yaml");
    std::fs::read_to_string(&path).expect("yamls/sweep.yaml")
}

#[test]
fn the_example_gives_each_checkpoint_the_original_layout() {
    let root = checkpoints();
    let glob = format!("checkpoints: {}/checkpoint-*", root.path().display());
    let text = example().replace("checkpoints: runs/smollm2-sft/checkpoint-*", &glob);
    assert_ne!(text, example(), "the example's checkpoints line changed");
    let cfg = parse_sweep(Path::new("sweep.yaml"), &text).expect("example parses");
    assert_eq!(cfg.steps, ["step1", "step2", "step3"]);
    let names: Vec<&str> = cfg.checkpoints.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["checkpoint-500", "checkpoint-1000"]);
    let c = &cfg.checkpoints[0];
    let job = cfg.checkpoint_job(c).expect("run file");
    let dir = PathBuf::from("./out/sweep/checkpoint-500");
    for step in &job.steps {
        match step {
            StepConfig::Step1(s) => {
                assert_eq!(s.output_dir, dir);
                assert_eq!(s.model.adapter_name_or_path, std::slice::from_ref(&c.path));
                assert_eq!(
                    s.model.model_name_or_path,
                    Path::new(".models/smollm2-135m-instruct-f32")
                );
                assert_eq!(s.generation.max_new_tokens, 64);
            }
            StepConfig::Step2(s) => {
                assert_eq!(s.output_dir, dir);
                assert_eq!(s.model_path, Path::new(".models/all-minilm-l6-v2"));
            }
            StepConfig::Step3(s) => {
                assert_eq!(s.save_dir.as_deref(), Some(dir.as_path()));
                assert_eq!(s.model.adapter_name_or_path, std::slice::from_ref(&c.path));
                assert_eq!(s.tasks.len(), 3);
            }
            StepConfig::Step4(_) => panic!("the example does not list step4"),
        }
    }
}

#[test]
fn a_full_model_checkpoint_is_the_model_and_step4_gets_its_own_keys() {
    let root = checkpoints();
    let text = format!(
        "model_name_or_path: base\ncheckpoints: [{r}/final, {r}/checkpoint-500]\n\
         steps: [step4]\noutput_dir: out\nstep4: {{reward_model_path: rm, task_dir: t}}\n",
        r = root.path().display()
    );
    let cfg = parse_sweep(Path::new("s.yaml"), &text).expect("parses");
    assert_eq!(cfg.checkpoints[0].kind, CheckpointKind::FullModel);
    let job = cfg.checkpoint_job(&cfg.checkpoints[0]).expect("final");
    let s4 = job.step4().expect("step4");
    assert_eq!(s4.model_path, root.path().join("final"));
    assert!(s4.adapter_name_or_path.is_empty());
    assert_eq!(s4.output_dir, Path::new("out/final/CharacterEval"));
    let job = cfg.checkpoint_job(&cfg.checkpoints[1]).expect("adapter");
    let s4 = job.step4().expect("step4");
    assert_eq!(s4.model_path, Path::new("base"));
    assert_eq!(
        s4.adapter_name_or_path,
        [root.path().join("checkpoint-500")]
    );
}

#[test]
fn errors_name_the_file_the_key_and_what_was_expected() {
    let root = checkpoints();
    let ok = format!(
        "model_name_or_path: base\ncheckpoints: {}/checkpoint-*\nsteps: [step1]\n\
         output_dir: out\ndataset: d\n",
        root.path().display()
    );
    let err = |text: String| {
        parse_sweep(Path::new("s.yaml"), &text)
            .expect_err("refused")
            .to_string()
    };
    parse_sweep(Path::new("s.yaml"), &ok).expect("the base case parses");
    let cases = [
        (
            ok.replace("output_dir: out\n", ""),
            "missing required key `output_dir`",
        ),
        (
            ok.replace("model_name_or_path: base\n", ""),
            "missing required key `model_name_or_path`",
        ),
        (
            format!("{ok}adapter_name_or_path: a\n"),
            "key `adapter_name_or_path`: set by the sweep for each checkpoint",
        ),
        (
            format!("{ok}step1: {{output_dir: x}}\n"),
            "key `step1.output_dir`: set by the sweep",
        ),
        (
            format!("{ok}step1: {{datset: x}}\n"),
            "unknown key `step1.datset`",
        ),
        (
            format!("{ok}step1: [a]\n"),
            "key `step1`: expected a mapping",
        ),
        (
            ok.replace("steps: [step1]", "steps: [step2]")
                .replace("dataset: d\n", "step2: {model_path: e}\n"),
            "list step1 too",
        ),
        (ok.replace("checkpoint-*", "nothing-*"), "matches nothing"),
    ];
    for (text, expected) in cases {
        let e = err(text);
        assert!(e.starts_with("s.yaml: "), "{e}");
        assert!(e.contains(expected), "expected {expected:?} in: {e}");
    }
}
