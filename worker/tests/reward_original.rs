//! Reward models at the real model's head size against the ORIGINAL modeling code
//! (scripts/goldens/reward_original_goldens.py: Baichuan2's own `modeling_baichuan.py` with the
//! BaichuanCharRM head, and transformers' Llama / Qwen2 models with the same head, run by
//! PyTorch on the CPU in f32 and bf16). Checkpoints: head size 128 and 64, safetensors and
//! PyTorch .bin; a Baichuan2-style SentencePiece tokenizer whose special tokens are marked
//! `single_word` (docs/FIDELITY.md §4.5).
//!
//! What must hold: the ids equal the slow tokenizer's (texts with special tokens included);
//! f32 sigmoids within 1e-4; in bf16, on inputs up to 2,048 tokens, at least 95% of the sigmoids
//! identical and the rest within one bf16 step of the score (0.0156 after `* 4 + 1`); longer
//! inputs (2,049-4,096 tokens, and texts cut to the last 4,096) within two steps. Every run
//! prints its agreement figures.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use evalfleet_worker::score::reward::RewardScorer;
use serde::Deserialize;

/// One bf16 step of a sigmoid in [0.5, 1) on the `* 4 + 1` scale: 4 · 2⁻⁸ = 0.015625 (the
/// "0.0156" of the requirement).
const BF16_STEP: f64 = 0.015625;

#[derive(Deserialize)]
struct Goldens {
    cutoff_len: usize,
    eos_id: u32,
    texts: Vec<GoldenText>,
}

#[derive(Deserialize)]
struct GoldenText {
    name: String,
    class: String,
    full_len: usize,
    truncated: bool,
    /// Absent for long texts, which are rebuilt by [`long_text`].
    text: Option<String>,
    long_rule: Option<usize>,
    /// The slow tokenizer's ids + eos, the last 4,096 kept.
    ids: Vec<u32>,
    sigmoid: std::collections::HashMap<String, Sigmoids>,
}

#[derive(Deserialize)]
struct Sigmoids {
    f32: f64,
    bf16: f64,
}

const SENTENCES: [&str; 8] = [
    "佟湘玉：额滴神啊，这日子没法过了！",
    "白展堂：掌柜的，您别着急，有我在呢。",
    "现在请你扮演一个角色扮演专家。请你根据上述信息扮演角色进行对话。",
    "The quick brown fox jumps over the lazy dog.",
    "{'姓名': '郭芙蓉', '性别': '女', '经历': ['排山倒海', '同福客栈']}",
    "知识准确率 言语一致性 对话一致性 知识幻觉性 行为一致性 对话连贯性",
    "Hello, 世界! Mixed 中英文 text with numbers 12345 and symbols #@%.",
    "吕秀才：子曾经曰过，学而时习之，不亦说乎？",
];

/// The golden script's `long_text(n)`.
fn long_text(n: usize) -> String {
    let body: Vec<&str> = (0..n).map(|i| SENTENCES[i % SENTENCES.len()]).collect();
    format!(
        "<RoleInfo>\n\n{}\n\n<Dimension>\n\n知识准确率",
        body.join("\n")
    )
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward_original")
}

fn goldens() -> Goldens {
    let path = fixtures().join("goldens.json");
    let text = std::fs::read_to_string(&path).expect("reward_original goldens.json");
    serde_json::from_str(&text).expect("valid goldens.json")
}

impl GoldenText {
    fn text(&self) -> String {
        match (&self.text, self.long_rule) {
            (Some(t), _) => t.clone(),
            (None, Some(n)) => long_text(n),
            _ => panic!("{}: neither text nor long_rule", self.name),
        }
    }
}

/// The model folder with the shared tokenizer files copied in (a temp dir).
fn model_dir(model: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for src in [fixtures().join(model), fixtures().join("tokenizer")] {
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn scorer(dir: &Path, dtype: DType) -> RewardScorer {
    RewardScorer::load(dir, dtype, &Device::Cpu).unwrap_or_else(|e| panic!("{dir:?}: {e}"))
}

/// The ids the worker builds for each golden text (checked against the slow tokenizer's).
fn encoded(g: &Goldens, s: &RewardScorer) -> Vec<Vec<u32>> {
    assert_eq!(s.eos_id(), g.eos_id);
    g.texts
        .iter()
        .map(|t| {
            let input = s.encode(&t.text(), g.cutoff_len).unwrap();
            assert_eq!(input.truncated, t.truncated, "{}", t.name);
            assert_eq!(
                s.encode(&t.text(), 0).unwrap().ids.len(),
                t.full_len,
                "{}: untruncated length",
                t.name
            );
            assert_eq!(input.ids, t.ids, "{}", t.name);
            input.ids
        })
        .collect()
}

#[test]
fn single_word_special_tokens_tokenize_like_the_slow_tokenizer() {
    let g = goldens();
    let dir = model_dir("baichuan-h64");
    let s = scorer(dir.path(), DType::F32);
    encoded(&g, &s);
    // The fixture must exercise both outcomes of single_word: a special token kept whole
    // (spaces around it) and one glued to its neighbour and encoded as text.
    let spaced = g
        .texts
        .iter()
        .find(|t| t.name == "specials_spaced")
        .unwrap();
    assert!(spaced.ids[..spaced.ids.len() - 1].contains(&g.eos_id));
    let glued = g.texts.iter().find(|t| t.name == "specials_glued").unwrap();
    assert_eq!(
        glued.ids.iter().filter(|&&i| i == g.eos_id).count(),
        1,
        "only the appended eos: `对话</s>结束` is text"
    );
}

/// Agreement of one length class: (records, identical, worst difference of `sigmoid * 4 + 1`).
#[derive(Default, Debug)]
struct Agreement {
    n: usize,
    identical: usize,
    worst: f64,
}

fn check_model(model: &str, dtype: DType) {
    let g = goldens();
    let dir = model_dir(model);
    let s = scorer(dir.path(), dtype);
    // The golden ids (the tokenizer has its own test).
    let inputs: Vec<Vec<u32>> = g.texts.iter().map(|t| t.ids.clone()).collect();
    let got = s.score_batch(&inputs).unwrap();
    let mut by_class: std::collections::BTreeMap<&str, Agreement> = Default::default();
    let mut failures = Vec::new();
    for (t, &sig) in g.texts.iter().zip(&got) {
        let want = &t.sigmoid[model];
        let want = if dtype == DType::F32 {
            want.f32
        } else {
            want.bf16
        };
        let diff = (sig as f64 - want).abs() * 4.0;
        let a = by_class.entry(t.class.as_str()).or_default();
        a.n += 1;
        a.identical += usize::from(sig as f64 == want);
        a.worst = a.worst.max(diff);
        let bound = match (dtype, t.class.as_str()) {
            (DType::F32, _) => 1e-4 * 4.0,
            (_, "short") => BF16_STEP,
            _ => 2.0 * BF16_STEP,
        };
        if diff > bound {
            failures.push(format!(
                "{} ({} tokens): sigmoid {sig} vs reference {want}",
                t.name, t.full_len
            ));
        }
    }
    for (class, a) in &by_class {
        eprintln!(
            "{model} {dtype:?} {class}: {}/{} identical ({:.1}%), worst score difference {:.3e}",
            a.identical,
            a.n,
            100.0 * a.identical as f64 / a.n as f64,
            a.worst
        );
    }
    assert!(failures.is_empty(), "{model} {dtype:?}: {failures:#?}");
    if dtype == DType::BF16 {
        let short = &by_class["short"];
        assert!(
            short.identical * 100 >= short.n * 95,
            "{model} bf16: only {}/{} sigmoids identical on inputs up to 2,048 tokens",
            short.identical,
            short.n
        );
    }
}

#[test]
fn baichuan_h128_safetensors_f32() {
    check_model("baichuan-h128", DType::F32);
}

#[test]
fn baichuan_h128_safetensors_bf16() {
    check_model("baichuan-h128", DType::BF16);
}

#[test]
fn baichuan_h64_bin_f32() {
    check_model("baichuan-h64", DType::F32);
}

#[test]
fn baichuan_h64_bin_bf16() {
    check_model("baichuan-h64", DType::BF16);
}

#[test]
fn llama_h128_f32() {
    check_model("llama-h128", DType::F32);
}

#[test]
fn llama_h128_bf16() {
    check_model("llama-h128", DType::BF16);
}

#[test]
fn qwen2_h64_f32() {
    check_model("qwen2-h64", DType::F32);
}

#[test]
fn qwen2_h64_bf16() {
    check_model("qwen2-h64", DType::BF16);
}
