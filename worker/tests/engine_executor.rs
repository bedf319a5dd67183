//! The task runner on SmolLM2-135M-Instruct's GGUF (vocabulary and chat template from its
//! metadata; fetched by scripts/fetch-models.sh): one result per item, decoded predictions and
//! labels, per-item errors, the model cache.

mod models_common;

use evalfleet_proto::v1 as pb;
use evalfleet_worker::tasks::{Executor, ExecutorOptions};
use models_common::smollm2_gguf;
use pb::item_result::Outcome;

fn message(role: &str, content: &str) -> pb::ChatMessage {
    pb::ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

fn generate_item(id: &str, question: &str, answer: &str) -> pb::WorkItem {
    pb::WorkItem {
        item_id: id.into(),
        payload: Some(pb::work_item::Payload::Generate(pb::GenerateItem {
            messages: vec![message("user", question), message("assistant", answer)],
            system: String::new(),
        })),
    }
}

fn lease(key: &str, template: &str, items: Vec<pb::WorkItem>) -> pb::Lease {
    pb::Lease {
        lease_id: 7,
        task: "generate".into(),
        model: Some(pb::ModelSpec {
            key: key.into(),
            model_path: smollm2_gguf().display().to_string(),
            adapter_paths: vec![],
            dtype: "auto".into(),
        }),
        prompt: Some(pb::PromptSpec {
            template: template.into(),
            cutoff_len: 1024,
            reserved_label_len: 1,
        }),
        generation: Some(pb::GenerationParams {
            do_sample: false,
            temperature: 0.95,
            top_p: 0.7,
            top_k: 50,
            repetition_penalty: 1.0,
            max_new_tokens: 24,
            seed: 42,
        }),
        items,
        ..Default::default()
    }
}

fn run(executor: &mut Executor, lease: &pb::Lease) -> Vec<pb::ItemResult> {
    let mut results = Vec::new();
    executor
        .run_lease(lease, &mut |r| results.push(r))
        .expect("run_lease");
    results
}

fn generated<'r>(results: &'r [pb::ItemResult], id: &str) -> &'r pb::GenerateResult {
    match results
        .iter()
        .find(|r| r.item_id == id)
        .and_then(|r| r.outcome.as_ref())
    {
        Some(Outcome::Generate(g)) => g,
        other => panic!("item {id}: expected a generate result, got {other:?}"),
    }
}

#[test]
fn executor_runs_generate_leases() {
    let mut executor = Executor::new(ExecutorOptions {
        max_batch: 4,
        ..ExecutorOptions::default()
    });
    let items = vec![
        generate_item("france", "What is the capital of France?", "Paris."),
        generate_item("add", "What is 2 + 2?", "It is  4 ."),
        generate_item(
            "poem",
            "Write one line about the sea.",
            "Waves , blue and wide .",
        ),
        pb::WorkItem {
            item_id: "empty".into(),
            payload: None,
        },
        generate_item("hello", "Say hello.", "Hello !"),
        pb::WorkItem {
            item_id: "german".into(),
            payload: Some(pb::work_item::Payload::Generate(pb::GenerateItem {
                messages: vec![
                    message("user", "Translate 'good morning' into Spanish."),
                    message("assistant", "Buenos días."),
                    message("user", "And into German?"),
                    message("assistant", "Guten Morgen."),
                ],
                system: String::new(),
            })),
        },
    ];
    let results = run(&mut executor, &lease("smol", "", items.clone()));
    assert_eq!(results.len(), items.len(), "one result per item");
    assert!(results.iter().all(|r| r.lease_id == 7));

    match &results
        .iter()
        .find(|r| r.item_id == "empty")
        .expect("empty item")
        .outcome
    {
        Some(Outcome::Error(e)) => assert!(!e.retryable && e.message.contains("empty"), "{e:?}"),
        other => panic!("expected an item error, got {other:?}"),
    }
    // The prompts are the model's chat template as transformers renders it (37 and 60 tokens in
    // tests/fixtures/smollm2-reference.json); the GGUF's greedy answer to the German question is
    // "Besser." + <|im_end|> (ids 50 362 259 30 2), which stops the item.
    let france = generated(&results, "france");
    assert_eq!(
        (france.prompt_tokens, france.label.as_str()),
        (37, "Paris.")
    );
    let german = generated(&results, "german");
    assert_eq!(german.prompt_tokens, 60);
    assert_eq!(
        (german.finish_reason.as_str(), german.new_tokens),
        ("stop", 5),
        "{german:?}"
    );
    assert_eq!(german.predict, "Besser.", "special tokens are skipped");
    assert_eq!(german.label, "Guten Morgen.");
    // Saved labels keep the spaces; saved predictions and metric texts use clean-up as asked.
    let add = generated(&results, "add");
    assert_eq!(add.label, "It is  4 .");
    assert!(add.prompt_tokens > 10);
    for r in ["france", "add", "poem", "hello", "german"].map(|id| generated(&results, id)) {
        assert!(
            r.finish_reason == "stop" || (r.finish_reason == "length" && r.new_tokens == 24),
            "{r:?}"
        );
    }
    assert_eq!(executor.models_held(), vec!["smol".to_string()]);

    // A LLaMA-Factory template on the same model; the model stays loaded under its key.
    let chatml = run(&mut executor, &lease("smol", "chatml", items[..1].to_vec()));
    assert!(generated(&chatml, "france").prompt_tokens > 0);
    assert_eq!(executor.models_held(), vec!["smol".to_string()]);

    // An unknown template fails every item, naming the known templates, without failing the lease.
    let bad = run(
        &mut executor,
        &lease("smol", "no-such-template", items[..2].to_vec()),
    );
    assert_eq!(bad.len(), 2);
    for r in &bad {
        match &r.outcome {
            Some(Outcome::Error(e)) => assert!(e.message.contains("qwen"), "{e:?}"),
            other => panic!("expected an item error, got {other:?}"),
        }
    }

    // A second key replaces the first (keep_models = 1).
    run(&mut executor, &lease("smol-again", "", items[4..].to_vec()));
    assert_eq!(executor.models_held(), vec!["smol-again".to_string()]);
}
