//! SentencePiece `tokenizer.model` parity with the `sentencepiece` Python package (goldens from
//! scripts/goldens/spm_model_goldens.py) and the Baichuan-style folder loaded through
//! `TextTokenizer` (golden from scripts/goldens/spm_baichuan_golden.py, transformers 4.41.2).

use std::path::{Path, PathBuf};

use evalfleet_worker::tokenize::TextTokenizer;
use evalfleet_worker::tokenize::spm::{ModelType, PieceType, SpmModel};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm")
}

fn read_json(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON")
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Compares encode and decode of every golden text for one model; returns the number of texts.
fn check_model(model_file: &str, golden: &str, key: &str, expected_type: ModelType) -> usize {
    let model = SpmModel::from_file(&fixtures().join(model_file)).expect("load model");
    assert_eq!(model.model_type(), expected_type);
    let golden = read_json(golden);
    let texts = golden["texts"].as_array().expect("texts");
    let g = &golden[key];
    let (ids, decoded) = (
        g["ids"].as_array().unwrap(),
        g["decoded"].as_array().unwrap(),
    );
    let mut encode_diffs = Vec::new();
    let mut decode_diffs = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let text = text.as_str().unwrap();
        let want = ids_of(&ids[i]);
        let got = model.encode(text);
        if got != want {
            encode_diffs.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        let want_text = decoded[i].as_str().unwrap_or(text);
        let got_text = model.decode(&want).expect("decode");
        if got_text != want_text {
            decode_diffs.push(format!("{text:?}: got {got_text:?}, want {want_text:?}"));
        }
    }
    assert!(
        encode_diffs.is_empty(),
        "{key}: {} of {} texts encode differently, first: {:#?}",
        encode_diffs.len(),
        texts.len(),
        &encode_diffs[..encode_diffs.len().min(5)]
    );
    assert!(
        decode_diffs.is_empty(),
        "{key}: {} decodes differ, first: {:#?}",
        decode_diffs.len(),
        &decode_diffs[..decode_diffs.len().min(5)]
    );
    let mut case_diffs = Vec::new();
    for case in g["decode_cases"].as_array().unwrap() {
        let ids = ids_of(&case["ids"]);
        let got = model.decode(&ids).expect("decode case");
        if got != case["text"].as_str().unwrap() {
            case_diffs.push(format!("{ids:?}: got {got:?}, want {}", case["text"]));
        }
    }
    assert!(case_diffs.is_empty(), "{key}: {case_diffs:#?}");
    texts.len()
}

#[test]
fn bpe_byte_fallback_nfkc_matches_sentencepiece() {
    assert_eq!(
        check_model("bpe.model", "goldens.json", "bpe", ModelType::Bpe),
        2000
    );
}

#[test]
fn unigram_identity_matches_sentencepiece() {
    assert_eq!(
        check_model(
            "unigram.model",
            "goldens.json",
            "unigram",
            ModelType::Unigram
        ),
        2000
    );
}

#[test]
fn baichuan_style_bpe_matches_sentencepiece() {
    assert_eq!(
        check_model(
            "baichuan/tokenizer.model",
            "goldens.json",
            "baichuan",
            ModelType::Bpe
        ),
        2000
    );
}

#[test]
fn unused_pieces_are_resegmented_or_skipped_like_sentencepiece() {
    let golden = "unused_goldens.json";
    assert_eq!(
        check_model("unused_bpe.model", golden, "bpe", ModelType::Bpe),
        600
    );
    let unigram = check_model(
        "unused_unigram.model",
        golden,
        "unigram",
        ModelType::Unigram,
    );
    assert_eq!(unigram, 600);
    let model = SpmModel::from_file(&fixtures().join("unused_bpe.model")).expect("load");
    let unused = ids_of(&read_json(golden)["bpe"]["unused_ids"]);
    assert_eq!(unused.len(), 150);
    assert!(
        unused
            .iter()
            .all(|&id| model.piece_type(id) == Some(PieceType::Unused))
    );
}

#[test]
fn decoding_round_trips() {
    // Identity normalizer, no dummy prefix, spaces kept: every text without a literal U+2581
    // comes back unchanged (byte fallback covers characters outside the vocabulary).
    let model = SpmModel::from_file(&fixtures().join("baichuan/tokenizer.model")).expect("load");
    let golden = read_json("goldens.json");
    let mut checked = 0;
    for text in golden["texts"].as_array().unwrap() {
        let text = text.as_str().unwrap();
        if text.contains('\u{2581}') {
            continue;
        }
        assert_eq!(model.decode(&model.encode(text)).expect("decode"), text);
        checked += 1;
    }
    assert_eq!(checked, 1997);
    // nmt_nfkc with whitespace clean-up: text already in normal form round-trips too.
    let model = SpmModel::from_file(&fixtures().join("bpe.model")).expect("load");
    for text in [
        "你好,世界!",
        "佟湘玉:展堂。老邢:你来得正好。",
        "emoji 😀 and 𠀀 rare",
    ] {
        assert_eq!(model.decode(&model.encode(text)).expect("decode"), text);
    }
    assert_eq!(model.bos_id(), Some(1));
    assert_eq!(model.eos_id(), Some(2));
    assert_eq!(model.unk_id(), 0);
    assert!(model.byte_fallback());
}

/// Loads a Baichuan-style folder through `TextTokenizer` and compares it with a slow-tokenizer
/// golden; returns the number of records compared.
fn check_slow_folder(dir: &Path, golden: &str) -> usize {
    assert!(!dir.join("tokenizer.json").exists());
    let tok = TextTokenizer::from_model_path(dir).expect("load Baichuan-style folder");
    assert!(tok.spm().is_some());
    let golden = read_json(golden);
    let id = |key: &str| golden[key].as_u64().map(|v| v as u32);
    assert_eq!(tok.eos_id(), id("eos_token_id"));
    assert_eq!(tok.bos_id(), id("bos_token_id"));
    assert_eq!(tok.unk_id(), id("unk_token_id"));
    assert_eq!(tok.pad_id(), id("pad_token_id"));
    assert_eq!(
        tok.vocab_size(),
        golden["vocab_size"].as_u64().unwrap() as usize
    );
    assert!(!tok.add_bos_token());
    let records = golden["records"].as_array().unwrap();
    let mut diffs = Vec::new();
    for r in records {
        let text = r["text"].as_str().unwrap();
        let want = ids_of(&r["ids"]);
        let got = tok.encode(text).expect("encode");
        if got != want {
            diffs.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        for (skip, key) in [(false, "decode"), (true, "decode_skip")] {
            let got = tok.decode(&want, skip, None).expect("decode");
            if got != r[key].as_str().unwrap() {
                diffs.push(format!("{key} {text:?}: got {got:?}, want {}", r[key]));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} records differ, first: {:#?}",
        diffs.len(),
        records.len(),
        &diffs[..diffs.len().min(5)]
    );
    records.len()
}

#[test]
fn baichuan_folder_loads_through_text_tokenizer() {
    let dir = fixtures().join("baichuan");
    assert_eq!(check_slow_folder(&dir, "baichuan_slow.json"), 614);
}

#[test]
fn baichuan_folder_with_added_tokens_splits_on_them() {
    // Configs as transformers' save_pretrained wrote them, next to the fixture model.
    let dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        ("baichuan/tokenizer.model", "tokenizer.model"),
        (
            "baichuan_added/tokenizer_config.json",
            "tokenizer_config.json",
        ),
        (
            "baichuan_added/special_tokens_map.json",
            "special_tokens_map.json",
        ),
    ] {
        std::fs::copy(fixtures().join(from), dir.path().join(to)).expect("copy fixture");
    }
    assert_eq!(check_slow_folder(dir.path(), "baichuan_added.json"), 206);
    let tok = TextTokenizer::from_model_path(dir.path()).expect("load");
    assert_eq!(tok.token_to_id("<|role|>"), Some(3000));
    assert_eq!(tok.additional_special_tokens(), ["<|role|>", "<|CHAR|>"]);
}

/// A ModelProto cut after its pieces (no trainer_spec / normalizer_spec).
fn pieces_only() -> Vec<u8> {
    use evalfleet_worker::tokenize::spm::proto::{ModelProto, Piece};
    use prost::Message;
    let piece = |p: &str, t: i32| Piece {
        piece: Some(p.into()),
        score: Some(0.0),
        r#type: Some(t),
    };
    ModelProto {
        pieces: vec![piece("<unk>", 2), piece("a", 1)],
        trainer_spec: None,
        normalizer_spec: None,
        denormalizer_spec: None,
    }
    .encode_to_vec()
}

#[test]
fn broken_model_files_name_the_file_and_what_was_expected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(fixtures().join("bpe.model")).expect("read");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "truncated.model",
            bytes[..bytes.len() / 2].to_vec(),
            "ModelProto",
        ),
        (
            "text.model",
            b"{\"model\": \"not protobuf\"}".to_vec(),
            "ModelProto",
        ),
        ("pieces-only.model", pieces_only(), "expected pieces"),
    ];
    for (name, content, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let err = SpmModel::from_file(&path).expect_err(name).to_string();
        assert!(err.contains(name), "{err}");
        assert!(err.contains(expected), "{name}: {err}");
    }
}

#[test]
fn folder_errors_name_the_missing_or_broken_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = TextTokenizer::from_hf_dir(dir.path())
        .expect_err("empty folder")
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("tokenizer.model"),
        "{err}"
    );
    std::fs::write(dir.path().join("tokenizer.model"), b"\x0a\xff\xff").expect("write");
    let err = TextTokenizer::from_model_path(dir.path())
        .expect_err("broken model")
        .to_string();
    assert!(
        err.contains("tokenizer.model") && err.contains("ModelProto"),
        "{err}"
    );
}
