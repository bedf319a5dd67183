//! LLaMA-Factory templates against llmtuner 0.7.1 itself (fixture from
//! scripts/goldens/lf_goldens.py) on the SmolLM2 tokenizer: every template, `cutoff_len`
//! truncation, stop ids; and transformers 4.41's decode clean-up.

mod tokenize_common;

use evalfleet_worker::tokenize::{
    ChatMessage, PromptBuilder, PromptStyle, get_template, known_template_names,
};
use tokenize_common::{fixture, ids, smollm2_tokenizer};

fn messages(conv: &serde_json::Value) -> (Vec<ChatMessage>, String) {
    let msgs = conv["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            ChatMessage::new(
                m[0].as_str().expect("role"),
                m[1].as_str().expect("content"),
            )
        })
        .collect();
    (msgs, conv["system"].as_str().expect("system").to_string())
}

#[test]
fn templates_match_llamafactory() {
    let golden = fixture("tokenize_lf_goldens.json");
    let base = smollm2_tokenizer();
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() > 500, "too few cases: {}", cases.len());
    let mut failures = Vec::new();
    let mut templates_seen = std::collections::BTreeSet::new();
    // One builder (cloned + fixed tokenizer) per template, as the task runner holds it.
    let mut builders = std::collections::HashMap::new();
    for case in cases {
        let name = case["template"].as_str().expect("template");
        templates_seen.insert(name.to_string());
        let conv_name = case["conversation"].as_str().expect("conversation");
        let (msgs, system) = messages(&golden["conversations"][conv_name]);
        let cutoff = case["cutoff_len"].as_u64().expect("cutoff") as usize;
        let reserved = case["reserved_label_len"].as_u64().expect("reserved") as usize;
        let template = get_template(name).expect("template");
        let builder = builders.entry(name.to_string()).or_insert_with(|| {
            PromptBuilder::new(PromptStyle::LlamaFactory(template.clone()), &base).expect("builder")
        });
        let tok = builder.tokenizer();
        let what = format!("{name}/{conv_name}/cutoff {cutoff}/reserved {reserved}");
        let (prompt, label) = template
            .encode_oneturn(tok, &msgs, &system, cutoff, reserved)
            .expect("encode");
        if prompt != ids(&case["prompt_ids"]) || label != ids(&case["label_ids"]) {
            failures.push(format!(
                "{what}: encode_oneturn\n got  {prompt:?} / {label:?}\n want {} / {}",
                case["prompt_ids"], case["label_ids"]
            ));
            continue;
        }
        let info = &golden["templates"][name];
        let mut want_label = ids(&case["label_ids"]);
        if info["efficient_eos"].as_bool().expect("efficient_eos") {
            want_label.push(info["eos_id"].as_u64().expect("eos") as u32);
        }
        let built = builder
            .build(&msgs, &system, cutoff, reserved)
            .expect("build");
        if built.prompt_ids != prompt || built.label_ids != want_label {
            failures.push(format!(
                "{what}: build gives {:?} / {:?}",
                built.prompt_ids, built.label_ids
            ));
        }
        if built.stop_ids != dedup(ids(&info["stop_ids"])) {
            failures.push(format!(
                "{what}: stop ids {:?} want {}",
                built.stop_ids, info["stop_ids"]
            ));
        }
        if tok.eos_id().map(u64::from) != info["eos_id"].as_u64()
            || tok.pad_id().map(u64::from) != info["pad_id"].as_u64()
        {
            failures.push(format!(
                "{what}: eos/pad {:?}/{:?}",
                tok.eos_id(),
                tok.pad_id()
            ));
        }
    }
    let shown: Vec<_> = failures.iter().take(15).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{shown:#?}",
        failures.len(),
        cases.len()
    );
    let known: Vec<String> = known_template_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let seen: Vec<String> = templates_seen.into_iter().collect();
    assert_eq!(
        known, seen,
        "the registry and LF v0.7.1's template list differ"
    );
}

fn dedup(ids: Vec<u32>) -> Vec<u32> {
    let mut out = Vec::new();
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

#[test]
fn decode_clean_up_matches_transformers_4() {
    let golden = fixture("tokenize_lf_goldens.json");
    let tok = smollm2_tokenizer();
    let rows = golden["decode_clean"].as_array().expect("decode_clean");
    let mut failures = Vec::new();
    for row in rows {
        let want_ids = ids(&row["ids"]);
        let text = row["text"].as_str().expect("text");
        assert_eq!(
            tok.encode(text).expect("encode"),
            want_ids,
            "{text:?}: transformers 4.41 encodes differently"
        );
        let got = tok.decode(&want_ids, true, Some(true)).expect("decode");
        if got != row["decoded"].as_str().expect("decoded") {
            failures.push(format!("{text:?}: got {got:?}, want {}", row["decoded"]));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn qwen_prompt_layout_is_protocol_1_3() {
    // docs/FIDELITY.md §1.3: history pairs end with <EOS> then "\n"; the label is the answer +
    // nothing (efficient_eos is false, the assistant format already ends with eos).
    let tok = smollm2_tokenizer();
    let builder = PromptBuilder::new(
        PromptStyle::LlamaFactory(get_template("qwen").unwrap()),
        &tok,
    )
    .unwrap();
    let msgs = [
        ChatMessage::new("user", "q0"),
        ChatMessage::new("assistant", "a0"),
        ChatMessage::new("user", "q1"),
        ChatMessage::new("assistant", "y"),
    ];
    let p = builder.build(&msgs, "", 1024, 1).unwrap();
    let t = builder.tokenizer();
    let text = t.decode(&p.prompt_ids, false, Some(false)).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nq0<|im_end|>\n<|im_start|>assistant\na0<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.decode(&p.label_ids, false, Some(false)).unwrap(),
        "y<|im_end|>"
    );
    assert_eq!(p.stop_ids, vec![2]);
}
