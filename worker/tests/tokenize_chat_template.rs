//! Chat templates rendered as transformers renders them (fixture from
//! scripts/goldens/templates_goldens.py), and the model-chat-template prompt style.

mod tokenize_common;

use evalfleet_worker::tokenize::{
    ChatMessage, ChatTemplate, PromptBuilder, PromptStyle, TemplateTokens,
};
use tokenize_common::{fixture, smollm2_tokenizer};

#[test]
fn templates_render_like_transformers() {
    let golden = fixture("tokenize_chat_templates.json");
    let tokens = TemplateTokens::from_tokenizer(&smollm2_tokenizer());
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 60, "too few cases: {}", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let tname = case["template"].as_str().expect("template");
        let cname = case["conversation"].as_str().expect("conversation");
        let agp = case["add_generation_prompt"].as_bool().expect("agp");
        let source = golden["templates"][tname]
            .as_str()
            .expect("template source");
        let template = ChatTemplate::new(source).unwrap_or_else(|e| panic!("{tname}: {e}"));
        let messages: Vec<ChatMessage> = golden["conversations"][cname]
            .as_array()
            .expect("conversation")
            .iter()
            .map(|m| {
                ChatMessage::new(
                    m[0].as_str().expect("role"),
                    m[1].as_str().expect("content"),
                )
            })
            .collect();
        let got = template.render(&messages, agp, &tokens);
        let what = format!("{tname}/{cname}/agp={agp}");
        match (
            got,
            case.get("rendered").and_then(|r| r.as_str()),
            case.get("error"),
        ) {
            (Ok(text), Some(want), _) if text == want => {}
            (Ok(text), Some(want), _) => {
                failures.push(format!("{what}:\n got  {text:?}\n want {want:?}"))
            }
            (Err(e), None, Some(want)) => {
                let want = want.as_str().expect("error text");
                if !e.to_string().contains(want) {
                    failures.push(format!("{what}: error {e} does not contain {want:?}"));
                }
            }
            (got, _, _) => failures.push(format!("{what}: got {got:?}, want {case}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn model_chat_template_prompt_and_label() {
    let tok = smollm2_tokenizer();
    let builder = PromptBuilder::new(PromptStyle::ModelChatTemplate, &tok).expect("builder");
    let msgs = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
    ];
    let p = builder.build(&msgs, "", 1024, 1).expect("build");
    let prompt = tok.decode(&p.prompt_ids, false, Some(false)).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        tok.decode(&p.label_ids, false, Some(false)).unwrap(),
        "Hello!<|im_end|>"
    );
    assert_eq!(p.stop_ids, vec![2]);

    // A system prompt replaces the template's default; cutoff keeps the prompt's last tokens.
    let with_system = builder.build(&msgs, "Be brief.", 1024, 1).unwrap();
    let text = tok
        .decode(&with_system.prompt_ids, false, Some(false))
        .unwrap();
    assert!(
        text.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"),
        "{text}"
    );
    let cut = builder.build(&msgs, "", 5, 1).unwrap();
    assert_eq!(
        cut.prompt_ids,
        p.prompt_ids[p.prompt_ids.len() - 5..].to_vec()
    );
    assert_eq!(cut.label_ids, p.label_ids);

    // No answer: the whole conversation is the prompt and the label is empty.
    let open = builder.build(&msgs[..1], "", 1024, 1).unwrap();
    assert_eq!(open.prompt_ids, p.prompt_ids);
    assert!(open.label_ids.is_empty());
}

#[test]
fn encode_chat_keeps_a_final_assistant_turn() {
    let tok = smollm2_tokenizer();
    let builder = PromptBuilder::new(PromptStyle::ModelChatTemplate, &tok).expect("builder");
    let msgs = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
    ];
    let text = builder.render_chat(&msgs, true).unwrap();
    assert!(
        text.ends_with("<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n"),
        "{text}"
    );
    assert_eq!(
        builder.encode_chat(&msgs, true).unwrap(),
        tok.encode(&text).unwrap()
    );
    let lf = PromptBuilder::new(
        PromptStyle::LlamaFactory(evalfleet_worker::tokenize::get_template("qwen").unwrap()),
        &tok,
    )
    .unwrap();
    assert!(lf.render_chat(&msgs, true).is_err());
}
