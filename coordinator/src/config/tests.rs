//! Tests of the job YAML parser: the original tool's keys, defaults, ignored and unknown keys,
//! types, the run form.

use std::path::{Path, PathBuf};

use super::*;

/// The original tool's `yamls/step1.yaml` keys and layout (comments included), with local paths.
const SEED_LIKE: &str = "\
### model
model_name_or_path: ./models/Qwen1.5-14B-Chat
adapter_name_or_path: ./checkpoints/checkpoint-5000
# quantization_bit: 4

### method
stage: sft
do_predict: true
finetuning_type: lora

### dataset
dataset_dir: ./data
dataset: demo.json
template: qwen
cutoff_len: 1024
max_samples: 50   # 每个数据集采样多少用于预测对比
overwrite_cache: True
preprocessing_num_workers: 16

### output
output_dir: ./output
overwrite_output_dir: True

### eval
per_device_eval_batch_size: 1
predict_with_generate: True   # 现在用于生成文本
";

fn file() -> &'static Path {
    Path::new("jobs/step1.yaml")
}

fn step1(text: &str) -> Result<(Step1Config, Vec<String>), ConfigError> {
    let job = parse_step1(file(), text)?;
    Ok((job.step1().expect("step 1").clone(), job.ignored_keys))
}

fn err(text: &str) -> String {
    step1(text).expect_err("should fail").to_string()
}

const MINIMAL: &str = "model_name_or_path: m\ndataset: d\noutput_dir: o\n";

#[test]
fn seed_keys_parse_with_lf_defaults() {
    let (c, ignored) = step1(SEED_LIKE).expect("seed-like YAML parses");
    assert_eq!(
        c.model.model_name_or_path,
        PathBuf::from("./models/Qwen1.5-14B-Chat")
    );
    assert_eq!(
        c.model.adapter_name_or_path,
        vec![PathBuf::from("./checkpoints/checkpoint-5000")]
    );
    assert_eq!(c.model.finetuning_type, FinetuningType::Lora);
    assert_eq!(c.model.dtype, Dtype::Auto);
    assert_eq!(c.data.dataset_dir, PathBuf::from("./data"));
    assert_eq!(c.data.dataset, vec!["demo.json".to_owned()]);
    assert_eq!(c.data.template.as_deref(), Some("qwen"));
    assert_eq!((c.data.cutoff_len, c.data.reserved_label_len), (1024, 1));
    assert_eq!(c.data.max_samples, Some(50));
    assert_eq!(c.output_dir, PathBuf::from("./output"));
    assert_eq!(c.per_device_eval_batch_size, 1);
    assert_eq!(c.generation, GenerationConfig::default());
    assert_eq!(
        ignored,
        [
            "stage",
            "do_predict",
            "overwrite_cache",
            "preprocessing_num_workers",
            "overwrite_output_dir",
            "predict_with_generate"
        ]
    );
}

#[test]
fn generation_defaults_are_llamafactory_v071() {
    let (c, ignored) = step1(MINIMAL).expect("minimal");
    let g = c.generation;
    assert!(g.do_sample);
    assert_eq!((g.temperature, g.top_p, g.top_k), (0.95, 0.7, 50));
    assert_eq!((g.num_beams, g.max_new_tokens, g.seed), (1, 1024, 42));
    assert_eq!((g.repetition_penalty, g.length_penalty), (1.0, 1.0));
    assert_eq!(c.per_device_eval_batch_size, 8);
    assert_eq!(c.data.dataset_dir, PathBuf::from("data"));
    assert_eq!(c.data.template, None);
    assert!(ignored.is_empty());
}

#[test]
fn generation_and_fleet_keys_are_read() {
    let text = "model_name_or_path: m\noutput_dir: o\ndo_sample: false\ntemperature: 1\ntop_p: 0.9\n\
                top_k: 0\nmax_new_tokens: 64\nrepetition_penalty: 1.1\nseed: 7\ndtype: bfloat16\n\
                batch_size: 16\nworkers: 0\ndataset: a, b ,c\nadapter_name_or_path: x,y\n";
    let (c, _) = step1(text).expect("parses");
    assert!(!c.generation.do_sample);
    assert_eq!(c.generation.temperature, 1.0);
    assert_eq!(
        (
            c.generation.top_k,
            c.generation.max_new_tokens,
            c.generation.seed
        ),
        (0, 64, 7)
    );
    assert_eq!(c.model.dtype, Dtype::Bf16);
    assert_eq!((c.batch_size, c.workers), (Some(16), Some(0)));
    assert_eq!(c.data.dataset, ["a", "b", "c"]);
    assert_eq!(c.model.adapter_name_or_path.len(), 2);
}

#[test]
fn yaml11_booleans_and_null_values() {
    let (c, _) = step1(&format!("{MINIMAL}do_sample: no\nmax_samples:\n")).expect("parses");
    assert!(!c.generation.do_sample);
    assert_eq!(c.data.max_samples, None);
}

#[test]
fn unknown_key_names_file_and_suggests() {
    let msg = err(&format!("{MINIMAL}cutof_len: 12\n"));
    assert!(msg.contains("jobs/step1.yaml"), "{msg}");
    assert!(msg.contains("unknown key `cutof_len`"), "{msg}");
    assert!(msg.contains("did you mean `cutoff_len`?"), "{msg}");
    let far = err(&format!("{MINIMAL}qqqqqq: 1\n"));
    assert!(
        far.contains("unknown key `qqqqqq`") && !far.contains("did you mean"),
        "{far}"
    );
}

#[test]
fn wrong_types_name_key_and_expected_type() {
    let msg = err(&format!("{MINIMAL}cutoff_len: abc\n"));
    assert_eq!(
        msg,
        "jobs/step1.yaml: key `cutoff_len`: expected a non-negative integer, found the string \"abc\""
    );
    assert!(err(&format!("{MINIMAL}do_sample: maybe\n")).contains("expected a boolean"));
    assert!(err(&format!("{MINIMAL}temperature: hot\n")).contains("expected a number"));
    assert!(
        err(&format!("{MINIMAL}template: [qwen]\n")).contains("expected a string, found a list")
    );
    assert!(err(&format!("{MINIMAL}max_new_tokens: -5\n")).contains("non-negative integer"));
}

#[test]
fn invalid_values_are_refused() {
    assert!(err(&format!("{MINIMAL}num_beams: 4\n")).contains("beam search is not supported"));
    assert!(err(&format!("{MINIMAL}top_p: 0\n")).contains("top_p"));
    assert!(err(&format!("{MINIMAL}temperature: 0\n")).contains("must be > 0 when sampling"));
    // Greedy decoding does not use the temperature.
    assert!(step1(&format!("{MINIMAL}temperature: 0\ndo_sample: false\n")).is_ok());
    assert!(err(&format!("{MINIMAL}dtype: f8\n")).contains("expected auto, f32, f16 or bf16"));
    assert!(
        err(&format!(
            "{MINIMAL}finetuning_type: full\nadapter_name_or_path: a\n"
        ))
        .contains("only valid with `finetuning_type: lora`")
    );
    assert!(err(&format!("{MINIMAL}max_samples: 0\n")).contains("at least 1"));
}

#[test]
fn tensor_parallel_size_is_read_and_at_least_one() {
    let (c, _) = step1(&format!("{MINIMAL}tensor_parallel_size: 2\n")).expect("parses");
    assert_eq!(c.tensor_parallel_size, Some(2));
    assert_eq!(step1(MINIMAL).unwrap().0.tensor_parallel_size, None);
    let e = err(&format!("{MINIMAL}tensor_parallel_size: 0\n"));
    assert!(
        e.contains("tensor_parallel_size") && e.contains("at least 1"),
        "{e}"
    );
}

#[test]
fn missing_required_keys_are_named() {
    assert!(
        err("dataset: d\noutput_dir: o\n").contains("missing required key `model_name_or_path`")
    );
    assert!(
        err("model_name_or_path: m\noutput_dir: o\n").contains("missing required key `dataset`")
    );
    assert!(
        err("model_name_or_path: m\ndataset: d\n").contains("missing required key `output_dir`")
    );
}

#[test]
fn malformed_yaml_reports_position() {
    let msg = err("model_name_or_path: m\ndataset: [unclosed\n");
    assert!(msg.starts_with("jobs/step1.yaml: line "), "{msg}");
    assert!(err("- a\n- b\n").contains("expected a mapping"));
    assert!(err(&format!("{MINIMAL}steps: [step1]\n")).contains("use `evalfleet run`"));
}

#[test]
fn run_form_merges_step_section_over_top_level() {
    let text = "\
steps: [step1]
model_name_or_path: m
output_dir: top
overwrite_cache: true
step1:
  dataset: demo
  output_dir: ./out1
  stage: sft
";
    let job = parse_job(Path::new("run.yaml"), text).expect("run form");
    let c = job.step1().expect("step 1");
    assert_eq!(c.output_dir, PathBuf::from("./out1"));
    assert_eq!(c.data.dataset, ["demo"]);
    assert_eq!(job.ignored_keys, ["overwrite_cache", "stage"]);
}

#[test]
fn run_form_chains_step1_and_step2() {
    let text = "\
steps: [step1, step2]
model_name_or_path: m
dataset: demo
output_dir: ./out
workers: 2
step2:
  model_path: ./emb
";
    let job = parse_job(Path::new("run.yaml"), text).expect("run form");
    assert_eq!(job.steps.len(), 2);
    assert_eq!(
        job.step1().expect("step 1").output_dir,
        PathBuf::from("./out")
    );
    let c = job.step2().expect("step 2");
    assert_eq!(
        (c.model_path.as_path(), c.output_dir.as_path(), c.workers),
        (Path::new("./emb"), Path::new("./out"), Some(2))
    );
}

#[test]
fn run_form_errors() {
    let run = |text: &str| {
        parse_job(Path::new("run.yaml"), text)
            .expect_err("fails")
            .to_string()
    };
    assert!(run("model_name_or_path: m\n").contains("missing required key `steps`"));
    assert!(
        run("steps: [step3]\nmodel_name_or_path: m\n").contains("missing required key `tasks`")
    );
    let msg = run(
        "steps: [step1, step2]\nmodel_name_or_path: m\ndataset: d\noutput_dir: o\nstep2:\n  model_pth: e\n",
    );
    assert!(
        msg.contains("unknown key `step2.model_pth` (did you mean `model_path`?)"),
        "{msg}"
    );
    assert!(run("steps: [stepp1]\n").contains("did you mean `step1`?"));
    assert!(run("steps: step1\nstep3:\n  a: 1\n").contains("does not list step3"));
    let msg = run(
        "steps: [step1]\nmodel_name_or_path: m\ndataset: d\noutput_dir: o\nstep1:\n  top_kk: 3\n",
    );
    assert!(
        msg.contains("unknown key `step1.top_kk` (did you mean `top_k`?)"),
        "{msg}"
    );
    assert!(run("steps: [step1]\nstep1: 3\n").contains("key `step1`: expected a mapping"));
}

#[test]
fn repo_step1_yaml_parses() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../yamls/step1.yaml");
    let job = load_step1(&path).expect("yamls/step1.yaml parses");
    assert!(job.step1().is_some());
}

#[test]
fn unreadable_file_names_it() {
    let msg = load_step1(Path::new("no/such/job.yaml"))
        .expect_err("fails")
        .to_string();
    assert!(msg.starts_with("no/such/job.yaml: cannot read"), "{msg}");
}

#[test]
fn repo_step2_yaml_parses() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../yamls/step2.yaml");
    let c = load_step2(&path).expect("yamls/step2.yaml parses");
    assert_eq!(c.model_path, PathBuf::from(".models/all-minilm-l6-v2"));
    assert_eq!(c.output_dir, PathBuf::from("./out/step1"));
}

#[test]
fn run_file_with_step3_shares_model_keys_and_keeps_step_keys_apart() {
    let text = "steps: [step1, step3]\nmodel_name_or_path: m\ntemplate: qwen\ndataset: demo\n\
                output_dir: o\ntasks: [mmlu]\nsave_dir: s\nstage: sft\n";
    let job = parse_job(Path::new("job.yaml"), text).expect("parses");
    let s1 = job.step1().expect("step 1");
    let s3 = job.step3().expect("step 3");
    assert_eq!(s1.data.template.as_deref(), Some("qwen"));
    assert_eq!(s3.template.as_deref(), Some("qwen"));
    assert_eq!(s3.model.model_name_or_path, PathBuf::from("m"));
    assert_eq!(s3.save_dir, Some(PathBuf::from("s")));
    assert_eq!(job.ignored_keys, ["stage"]);
    let err = parse_job(Path::new("job.yaml"), &format!("{text}n_shots: 3\n"))
        .expect_err("unknown key")
        .to_string();
    assert!(err.contains("unknown key `n_shots`"), "{err}");
}
