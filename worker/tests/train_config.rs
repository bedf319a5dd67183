//! The train-rm YAML and data errors: the example yamls/train_rm.yaml parses with the values it
//! shows; unknown keys, bad settings and bad JSONL lines are reported with the key, file and
//! line.

use std::path::Path;

use evalfleet_worker::train::TrainConfig;
use evalfleet_worker::train::trainer::load_dataset;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn example_yaml_parses() {
    let cfg = TrainConfig::from_yaml_file(&repo().join("yamls/train_rm.yaml")).unwrap();
    assert_eq!(cfg.ranks, 2);
    assert_eq!(cfg.batch_groups, 8);
    assert_eq!(cfg.adamw.lr, 0.001);
    assert_eq!(cfg.loss.ranking, 1.0);
    assert!(cfg.lora.is_none());
    assert_eq!(cfg.device, "cpu");
}

#[test]
fn config_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |text: &str| {
        let p = tmp.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        TrainConfig::from_yaml_file(&p).unwrap_err().to_string()
    };
    let base = "model: m\ntrain_data: d.jsonl\noutput_dir: o\n";
    let e = write(&format!("{base}batch_group: 4\n"));
    assert!(e.contains("batch_group"), "{e}");
    let e = write(&format!("{base}batch_groups: 0\n"));
    assert!(e.contains("batch_groups"), "{e}");
    let e = write(&format!("{base}eval_fraction: 1.5\n"));
    assert!(e.contains("eval_fraction"), "{e}");
    let e = write("train_data: d.jsonl\noutput_dir: o\n");
    assert!(e.contains("model"), "{e}");
    let e = write(&format!("{base}dtype: f16\n"));
    assert!(
        e.contains("`dtype` f16") && e.contains("bf16 or f32"),
        "{e}"
    );
    let e = write(&format!("{base}dtype: int8\n"));
    assert!(e.contains("`dtype` \"int8\""), "{e}");
}

#[test]
fn the_compute_dtype_is_bf16_on_gpus_and_f32_on_the_cpu_unless_told() {
    use candle_core::DType;
    let tmp = tempfile::tempdir().unwrap();
    let read = |extra: &str| {
        let p = tmp.path().join("c.yaml");
        std::fs::write(
            &p,
            format!("model: m\ntrain_data: d.jsonl\noutput_dir: o\n{extra}"),
        )
        .unwrap();
        TrainConfig::from_yaml_file(&p)
            .unwrap()
            .compute_dtype()
            .unwrap()
    };
    assert_eq!(read(""), DType::F32);
    assert_eq!(read("device: cuda\n"), DType::BF16);
    assert_eq!(read("device: cuda:1\n"), DType::BF16);
    assert_eq!(read("device: cuda\ndtype: f32\n"), DType::F32);
    assert_eq!(read("dtype: bf16\n"), DType::BF16);
}

#[test]
fn data_errors_name_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = repo().join("worker/tests/fixtures/reward/tiny-rm-alibi4");
    let good = r#"{"role": "r", "context": "c", "response": "a", "dimension": "d", "score": 3}"#;
    let check = |lines: &str, want: &str| {
        let data = tmp.path().join("d.jsonl");
        std::fs::write(&data, lines).unwrap();
        let yaml = format!(
            "model: {}\ntrain_data: {}\noutput_dir: {}\n",
            model.display(),
            data.display(),
            tmp.path().join("o").display()
        );
        let cfg: TrainConfig = serde_yaml::from_str(&yaml).unwrap();
        let e = load_dataset(&cfg).err().expect("an error").to_string();
        assert!(e.contains("d.jsonl") && e.contains(want), "{e}");
    };
    check(&format!("{good}\n{{\"role\": 1}}\n"), "line 2");
    check(
        &format!("{good}\n{}\n", good.replace("\"score\": 3", "\"score\": 7")),
        "outside 1..5",
    );
    check("\n", "no training records");
}
