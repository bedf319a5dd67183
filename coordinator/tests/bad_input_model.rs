//! Bad model folders (README "Bad input"): missing folder, config.json without `architectures`,
//! a truncated safetensors file, a tensor of the wrong shape, no tokenizer, a chat template that
//! does not compile. The coordinator plans the job; its local worker loads the model and fails
//! every item with the reason, which the coordinator's final message repeats per sample. Each
//! test checks the exit code, that message, no panic, and the untouched output folder.

mod bad_input_common;
mod fleet_common;

use bad_input_common::Step1;

#[test]
fn missing_model_folder_is_named() {
    let mut job = Step1::new();
    let missing = job.dir.path().join("no-such-model");
    job.set(
        "model_name_or_path",
        &format!("model_name_or_path: {}", missing.display()),
    );
    let stderr = job.fails_with(&[
        "items failed",
        &format!("{}: no such model file or folder", missing.display()),
    ]);
    assert!(stderr.contains("sample 0:"), "{stderr}");
}

#[test]
fn config_without_architectures_names_the_key() {
    let job = Step1::new();
    let config = job.model.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("architectures");
    std::fs::write(&config, json.to_string()).unwrap();
    job.fails_with(&[&format!(
        "{}: missing `architectures` (expected a list of names)",
        config.display()
    )]);
}

#[test]
fn truncated_safetensors_names_the_file() {
    let job = Step1::new();
    let shard = job.model.join("model-00002-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    file.set_len(len / 2).unwrap();
    job.fails_with(&[&format!(
        "{}: truncated: {} bytes, but its header describes {len} (expected the whole file; \
         download or copy it again)",
        shard.display(),
        len / 2
    )]);
}

#[test]
fn tensor_of_the_wrong_shape_names_the_tensor_and_both_shapes() {
    let job = Step1::new();
    let shard = job.model.join("model-00001-of-00002.safetensors");
    let name = "model.layers.0.self_attn.q_proj.weight";
    reshape_tensor(&shard, name, [64, 65]);
    job.fails_with(&[name, "[64, 65]", "expected [64, 64]"]);
}

#[test]
fn missing_tokenizer_says_which_files_are_expected() {
    let job = Step1::new();
    std::fs::remove_file(job.model.join("tokenizer.json")).unwrap();
    job.fails_with(&[&format!(
        "{}: missing: an HF model folder needs tokenizer.json or a SentencePiece tokenizer.model",
        job.model.join("tokenizer.json").display()
    )]);
}

#[test]
fn chat_template_that_does_not_compile_names_the_file_and_line() {
    let mut job = Step1::new();
    let config = job.model.join("tokenizer_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["chat_template"] = "{% for m in messages %}{{ m.content }".into();
    std::fs::write(&config, json.to_string()).unwrap();
    // An empty template means: use the model's own chat template.
    job.set("template", "template: \"\"");
    job.fails_with(&[
        &format!("{}, key `chat_template`", config.display()),
        "chat template does not compile: syntax error",
        "(line 1)",
    ]);
}

/// Rewrites tensor `name` of a safetensors file (F32) as zeros of `shape`, keeping every other
/// tensor: an 8-byte header length, the JSON header, then the data.
fn reshape_tensor(path: &std::path::Path, name: &str, shape: [usize; 2]) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let data = &bytes[8 + header_len..];
    let mut names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    names.sort_by_key(|k| header[*k]["data_offsets"][0].as_u64().unwrap());
    let mut new_header = serde_json::Map::new();
    let mut new_data = Vec::new();
    for key in names {
        let entry = &header[key];
        assert_eq!(entry["dtype"], "F32", "{key}");
        let tensor = if key == name {
            vec![0u8; shape[0] * shape[1] * 4]
        } else {
            let [a, b] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap() as usize);
            data[a..b].to_vec()
        };
        let dims: serde_json::Value = if key == name {
            serde_json::json!(shape)
        } else {
            entry["shape"].clone()
        };
        let start = new_data.len();
        new_data.extend_from_slice(&tensor);
        new_header.insert(
            key.clone(),
            serde_json::json!({"dtype": "F32", "shape": dims,
                "data_offsets": [start, new_data.len()]}),
        );
    }
    let mut text = serde_json::Value::Object(new_header)
        .to_string()
        .into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&new_data);
    std::fs::write(path, out).unwrap();
}
