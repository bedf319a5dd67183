//! Step 1 (SFT predict, docs/FIDELITY.md §1): the test set's samples become one generate item each
//! (item id = sample index), the fleet generates them, and in sample order the coordinator scores
//! every (predict, label) pair, averages, and writes generated_predictions.jsonl,
//! predict_results.json and all_results.json with HF's speed metrics.

use std::slice;
use std::time::Duration;

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use tracing::info;

use super::{FleetSetup, RunError, absolute, run_fleet};
use crate::config::{ModelConfig, Step1Config};
use crate::datasets::{self, Sample};
use crate::metrics::{self, Summary};
use crate::output::{self, PredictionRow, SpeedMetrics, Step1Files};
use crate::sched::{ItemOutcome, TaskSpec};

/// What step 1 produced.
#[derive(Debug)]
pub struct Step1Report {
    pub files: Step1Files,
    pub summary: Summary,
    pub samples: usize,
    /// Seconds from the first worker with its model loaded to the last result (`predict_runtime`;
    /// see the module docs of [`super`]).
    pub runtime: f64,
}

/// Runs step 1 as `cfg` describes; the YAML's `workers` / `batch_size` apply where the command
/// line left them unset.
pub async fn run_step1(cfg: &Step1Config, setup: &FleetSetup) -> Result<Step1Report, RunError> {
    let samples = datasets::load_for(&cfg.data)?;
    info!(
        "step1: {} samples from {}",
        samples.len(),
        cfg.data.dataset.join(", ")
    );
    let mut setup = setup.merged_with(cfg.fleet_keys());
    let task = step1_task(cfg, &samples);
    output::check_output_dir(&cfg.output_dir)?;
    let journal = setup.attach_journal(&cfg.output_dir, "step1", slice::from_ref(&task))?;
    let run = run_fleet(vec![task], &setup, "step1").await?;
    let outcomes = run.outcomes.into_iter().next().unwrap_or_default();
    let report = finish_step1(cfg, outcomes, run.elapsed).await?;
    journal.complete()?;
    Ok(report)
}

/// Step 1 after the fleet: the outcomes (in sample order) are scored and averaged, and the three
/// files written in `cfg.output_dir`; `elapsed` is the generation phase (`predict_runtime`).
pub(crate) async fn finish_step1(
    cfg: &Step1Config,
    outcomes: Vec<ItemOutcome>,
    elapsed: Duration,
) -> Result<Step1Report, RunError> {
    let results = generate_results(outcomes)?;

    // Scoring is CPU work (jieba, LCS): keep it off the async threads.
    let pairs: Vec<(String, String)> = results
        .iter()
        .map(|r| (r.predict_for_metrics.clone(), r.label_for_metrics.clone()))
        .collect();
    let summary = tokio::task::spawn_blocking(move || score_pairs(&pairs))
        .await
        .map_err(|e| RunError::Scoring(format!("scoring thread failed: {e}")))??;
    let runtime = elapsed.as_secs_f64();
    let speed = SpeedMetrics::new(results.len(), cfg.per_device_eval_batch_size, runtime);
    let rows: Vec<PredictionRow> = results
        .into_iter()
        .map(|r| PredictionRow {
            label: r.label,
            predict: r.predict,
        })
        .collect();
    let files = output::write_step1(&cfg.output_dir, &rows, &summary.metric_pairs(), &speed)?;
    Ok(Step1Report {
        files,
        summary,
        samples: rows.len(),
        runtime,
    })
}

/// Logs the one-line summary of a finished step 1.
pub fn log_report(report: &Step1Report) {
    let s = &report.summary;
    info!(
        "step1: {} samples in {:.1} s; rouge-1 {:.4}, rouge-2 {:.4}, rouge-l {:.4}, bleu-4 {:.4}",
        report.samples, report.runtime, s.rouge1.f, s.rouge2.f, s.rougel.f, s.bleu4
    );
}

/// Scores (predict, label) pairs in order and averages them as LLaMA-Factory's ComputeMetrics.
pub fn score_pairs(pairs: &[(String, String)]) -> Result<Summary, RunError> {
    let rows = pairs
        .iter()
        .map(|(predict, label)| metrics::score_row(predict, label))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RunError::Scoring(e.to_string()))?;
    Ok(metrics::summarize(&rows))
}

/// The lease's generation parameters from a step's generation keys (steps 1 and 4).
pub(crate) fn generation_params(g: &crate::config::GenerationConfig) -> pb::GenerationParams {
    pb::GenerationParams {
        do_sample: g.do_sample,
        temperature: g.temperature as f32,
        top_p: g.top_p as f32,
        top_k: g.top_k as u32,
        repetition_penalty: g.repetition_penalty as f32,
        max_new_tokens: g.max_new_tokens as u32,
        seed: g.seed,
    }
}

/// The step-1 task: one generate item per sample, and the lease fields they share.
pub fn step1_task(cfg: &Step1Config, samples: &[Sample]) -> TaskSpec {
    let template = pb::Lease {
        model: Some(model_spec(&cfg.model)),
        prompt: Some(pb::PromptSpec {
            template: cfg.data.template.clone().unwrap_or_default(),
            cutoff_len: cfg.data.cutoff_len as u32,
            reserved_label_len: cfg.data.reserved_label_len as u32,
        }),
        generation: Some(generation_params(&cfg.generation)),
        ..Default::default()
    };
    let items = samples.iter().map(work_item).collect();
    TaskSpec {
        name: "step1".into(),
        template,
        items,
    }
}

fn work_item(sample: &Sample) -> pb::WorkItem {
    let messages = sample
        .messages
        .iter()
        .map(|m| pb::ChatMessage {
            role: m.role.as_str().to_string(),
            content: m.content.clone(),
        })
        .collect();
    pb::WorkItem {
        item_id: sample.index.to_string(),
        payload: Some(pb::work_item::Payload::Generate(pb::GenerateItem {
            messages,
            system: sample.system.clone(),
        })),
    }
}

/// The model of a job (steps 1 and 3). Relative paths are made absolute against this directory,
/// so that local workers started elsewhere (and the model key) do not depend on a working
/// directory.
pub(crate) fn model_spec(model: &ModelConfig) -> pb::ModelSpec {
    let model_path = absolute(&model.model_name_or_path);
    let adapter_paths: Vec<String> = model
        .adapter_name_or_path
        .iter()
        .map(|p| absolute(p))
        .collect();
    let dtype = model.dtype.as_str().to_string();
    let key = format!("{model_path}|{}|{dtype}", adapter_paths.join(","));
    pb::ModelSpec {
        key,
        model_path,
        adapter_paths,
        dtype,
    }
}

/// The generate results in item order, or an error naming the items that failed.
fn generate_results(outcomes: Vec<ItemOutcome>) -> Result<Vec<pb::GenerateResult>, RunError> {
    let ids = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| (i.to_string(), o));
    super::collect_outcomes("sample", ids, |_, outcome| match outcome {
        Outcome::Generate(g) => Some(g),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    #[test]
    fn items_follow_samples_and_lease_carries_the_settings() {
        let yaml = "model_name_or_path: /m/model.gguf\nadapter_name_or_path: /a1,/a2\ndataset: demo\n\
                    template: qwen\ncutoff_len: 512\noutput_dir: /tmp/o\ndo_sample: false\nmax_new_tokens: 7\n";
        let job = config::parse_step1(Path::new("t.yaml"), yaml).unwrap();
        let cfg = job.step1().unwrap();
        let sample = |index: usize, q: &str| Sample {
            index,
            messages: vec![
                datasets::ChatMessage {
                    role: datasets::Role::User,
                    content: q.into(),
                },
                datasets::ChatMessage {
                    role: datasets::Role::Assistant,
                    content: format!("a-{q}"),
                },
            ],
            system: "sys".into(),
            tools: String::new(),
            origin: datasets::Origin {
                dataset: "demo".into(),
                path: "x".into(),
                line: index + 1,
            },
        };
        let task = step1_task(cfg, &[sample(0, "q0"), sample(1, "q1")]);
        assert_eq!(
            task.items
                .iter()
                .map(|i| i.item_id.as_str())
                .collect::<Vec<_>>(),
            ["0", "1"]
        );
        let Some(pb::work_item::Payload::Generate(g)) = &task.items[1].payload else {
            panic!()
        };
        assert_eq!(
            (g.messages[0].role.as_str(), g.messages[0].content.as_str()),
            ("user", "q1")
        );
        assert_eq!(
            (g.messages[1].role.as_str(), g.system.as_str()),
            ("assistant", "sys")
        );
        let model = task.template.model.as_ref().unwrap();
        assert_eq!(model.adapter_paths, ["/a1", "/a2"]);
        assert_eq!(model.key, "/m/model.gguf|/a1,/a2|auto");
        let prompt = task.template.prompt.as_ref().unwrap();
        assert_eq!(
            (
                prompt.template.as_str(),
                prompt.cutoff_len,
                prompt.reserved_label_len
            ),
            ("qwen", 512, 1)
        );
        let gen_params = task.template.generation.as_ref().unwrap();
        assert_eq!(
            (
                gen_params.do_sample,
                gen_params.max_new_tokens,
                gen_params.seed
            ),
            (false, 7, 42)
        );
    }

    #[test]
    fn failed_items_are_named() {
        let ok = ItemOutcome::Done(Outcome::Generate(pb::GenerateResult::default()));
        let bad = ItemOutcome::Failed {
            message: "prompt too long".into(),
            attempts: 1,
        };
        let err = generate_results(vec![ok, bad]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sample 1: prompt too long"), "{text}");
    }
}
