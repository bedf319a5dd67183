//! The SmolLM2 GGUF tokenizer against transformers (fixture from
//! scripts/goldens/tokenize_goldens.py), and the HF folder written from the GGUF.

mod tokenize_common;

use evalfleet_worker::tokenize::{TextTokenizer, write_hf_tokenizer_files};
use tokenize_common::{fixture, ids, smollm2_gguf, smollm2_tokenizer};

fn check_against_goldens(tok: &TextTokenizer, what: &str) {
    let golden = fixture("tokenize_smollm2.json");
    let rows = golden["rows"].as_array().expect("rows");
    assert!(rows.len() >= 90, "too few golden rows: {}", rows.len());
    let mut failures = Vec::new();
    for row in rows {
        let text = row["text"].as_str().expect("text");
        let want = ids(&row["ids"]);
        let got = tok.encode(text).expect("encode");
        if got != want {
            failures.push(format!("encode {text:?}: got {got:?}, want {want:?}"));
            continue;
        }
        let raw = tok.decode(&want, false, Some(false)).expect("decode");
        if raw != row["decode_raw"].as_str().expect("decode_raw") {
            failures.push(format!("decode_raw {text:?}: got {raw:?}"));
        }
        let skip = tok.decode(&want, true, Some(false)).expect("decode");
        if skip != row["decode_skip"].as_str().expect("decode_skip") {
            failures.push(format!("decode_skip {text:?}: got {skip:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert_eq!(
        tok.bos_id().map(u64::from),
        golden["bos_id"].as_u64(),
        "{what}: bos"
    );
    assert_eq!(
        tok.eos_id().map(u64::from),
        golden["eos_id"].as_u64(),
        "{what}: eos"
    );
    assert_eq!(
        tok.pad_id().map(u64::from),
        golden["pad_id"].as_u64(),
        "{what}: pad"
    );
    assert_eq!(
        tok.unk_id().map(u64::from),
        golden["unk_id"].as_u64(),
        "{what}: unk"
    );
    assert_eq!(
        tok.chat_template(),
        golden["chat_template"].as_str(),
        "{what}: chat template"
    );
}

#[test]
fn gguf_tokenizer_matches_transformers() {
    let tok = smollm2_tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert!(!tok.add_bos_token());
    check_against_goldens(&tok, "GGUF");
}

#[test]
fn hf_folder_written_from_gguf_loads_to_the_same_tokenizer() {
    let path = smollm2_gguf();
    let mut file = std::fs::File::open(&path).expect("open gguf");
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("gguf");
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_tokenizer_files(&content, &path, dir.path()).expect("write");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} not written");
    }
    let tok = TextTokenizer::from_hf_dir(dir.path()).expect("load written folder");
    assert!(!tok.clean_up_tokenization_spaces());
    check_against_goldens(&tok, "HF folder");
}

#[test]
fn clean_up_flag_applies_transformers_4_rules() {
    let tok = smollm2_tokenizer();
    let ids = tok
        .encode("Hello , world . I do n't know !")
        .expect("encode");
    assert_eq!(
        tok.decode(&ids, true, Some(true)).expect("decode"),
        "Hello, world. I don't know!"
    );
    assert_eq!(
        tok.decode(&ids, true, None).expect("decode"),
        "Hello , world . I do n't know !"
    );
}

#[test]
fn sentencepiece_gguf_matches_transformers() {
    // A tiny "llama"-model vocabulary (scripts/goldens/tokenize_spm_goldens.py): merges derived
    // from scores, byte fallback, control and user-defined tokens, prefix space on the first piece.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures");
    let tok =
        TextTokenizer::from_gguf_file(&dir.join("tokenize_spm_tiny.gguf")).expect("tiny spm gguf");
    let golden = fixture("tokenize_spm.json");
    assert_eq!(
        tok.vocab_size() as u64,
        golden["vocab_size"].as_u64().unwrap()
    );
    assert_eq!(tok.bos_id().map(u64::from), golden["bos_id"].as_u64());
    assert_eq!(tok.eos_id().map(u64::from), golden["eos_id"].as_u64());
    assert!(tok.add_bos_token());
    let rows = golden["rows"].as_array().expect("rows");
    let mut failures = Vec::new();
    for row in rows {
        let text = row["text"].as_str().expect("text");
        let want = ids(&row["ids"]);
        let got = tok.encode(text).expect("encode");
        if got != want {
            failures.push(format!("encode {text:?}: got {got:?}, want {want:?}"));
            continue;
        }
        for (key, skip) in [("decode_raw", false), ("decode_skip", true)] {
            let got = tok.decode(&want, skip, Some(false)).expect("decode");
            if got != row[key].as_str().expect(key) {
                failures.push(format!("{key} {text:?}: got {got:?}, want {}", row[key]));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn hf_folder_config_forms_and_model_path_dispatch() {
    let path = smollm2_gguf();
    let from_dir = TextTokenizer::from_model_path(path.parent().expect("parent"))
        .expect("folder with one gguf");
    assert_eq!(
        from_dir.encode("Hello, world!").unwrap(),
        vec![19556, 28, 905, 17]
    );

    let mut file = std::fs::File::open(&path).expect("open gguf");
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("gguf");
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_tokenizer_files(&content, &path, dir.path()).expect("write");
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    let config = serde_json::json!({
        "bos_token": {"content": "<|im_start|>", "lstrip": false, "__type": "AddedToken"},
        "eos_token": "<|im_end|>",
        "pad_token": null,
        "additional_special_tokens": ["<|im_start|>", {"content": "<|im_end|>"}],
        "added_tokens_decoder": {"49152": {"content": "<extra_new>", "special": true}},
        "chat_template": [{"name": "rag", "template": "R"}, {"name": "default", "template": "D{{ bos_token }}"}],
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let tok = TextTokenizer::from_model_path(dir.path()).expect("load");
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.pad_id(), None);
    assert_eq!(tok.additional_special_token_ids(), vec![1, 2]);
    assert_eq!(tok.chat_template(), Some("D{{ bos_token }}"));
    // Config without the flag: transformers 4's default (clean up) applies.
    assert!(tok.clean_up_tokenization_spaces());
    let ids = tok.encode("a<extra_new>b").unwrap();
    assert!(ids.contains(&49152), "{ids:?}");
    assert_eq!(tok.decode(&ids, true, Some(false)).unwrap(), "ab");
}
