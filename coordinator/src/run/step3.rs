//! Step 3 (MMLU / CMMLU / C-Eval, docs/FIDELITY.md §3): every task is planned in the coordinator
//! first (so a data error names its file and row before any worker starts, and the number of
//! workers never changes a prompt), each question becomes one choice item, the fleet scores them,
//! and per task the coordinator writes results.json, results.log, results_detail.jsonl and the
//! per-subject table into `<save_dir>/<task>/` (removed first, as the original tool did) and prints
//! results.log to stdout, as LLaMA-Factory's evaluator does.
//!
//! Every question's probabilities are journaled as they arrive (`crate::journal`,
//! [`STEP3_JOURNAL`] under `save_dir`): a stopped or killed run resumes, the same command scoring
//! only the questions the journal lacks. The journal is removed once every task's files are
//! written. Without `save_dir` nothing is written, so nothing is journaled either.
//!
//! ## Queue order and shared prefixes
//!
//! A lease is a run of consecutive queued items, and a worker computes the keys and values of an
//! item's first `shared_prefix_pairs` (user, assistant) shot pairs once for every item that has
//! the same ones. So the queue holds each subject's questions sorted by their shot rows
//! (lexicographically): questions whose first shots agree are adjacent and land in the same
//! lease. An item's `shared_prefix_pairs` is the longest run of leading shots it shares with some
//! other question of its subject, capped at `prefix_pairs`, and 0 when it shares none (nothing to
//! reuse). It depends on the plan only, never on leases or workers.

use std::path::PathBuf;

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use tracing::info;

use super::step1::model_spec;
use super::{FleetSetup, RunError, run_fleet};
use crate::config::{Step3Config, Step3Task};
use crate::sched::{ItemOutcome, TaskSpec};
use crate::step3::{ItemResult, PlanOptions, Step3Error, TaskPlan, TaskResults, plan_task};

/// The journal's name (`<save_dir>/.evalfleet-journal/step3.jsonl`).
pub const STEP3_JOURNAL: &str = "step3";

/// LF's `encode_oneturn` default `cutoff_len`: no truncation for any real prompt.
const NO_CUTOFF: u32 = 1_000_000;

/// What step 3 produced for one task.
#[derive(Debug)]
pub struct Step3TaskReport {
    /// The task's name (`mmlu`, ...).
    pub task: String,
    /// results.log's text (the category accuracies).
    pub log: String,
    /// The files written (none without `save_dir`).
    pub files: Vec<PathBuf>,
}

/// Runs step 3 as `cfg` describes; the YAML's `workers` / `batch_size` apply where the command
/// line left them unset. Prints each task's results.log to stdout.
pub async fn run_step3(
    cfg: &Step3Config,
    setup: &FleetSetup,
) -> Result<Vec<Step3TaskReport>, RunError> {
    let planned = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || plan_all(&cfg))
            .await
            .map_err(|e| RunError::Scoring(format!("planning thread failed: {e}")))??
    };
    let mut setup = setup.merged_with(cfg.fleet_keys());
    let tasks: Vec<TaskSpec> = planned
        .iter()
        .map(|(task, plan)| step3_task(cfg, task, plan))
        .collect();
    // Outcomes come back in queue order; the item ids are plan indices.
    let orders: Vec<Vec<usize>> = tasks
        .iter()
        .map(|t| {
            t.items
                .iter()
                .filter_map(|i| i.item_id.parse().ok())
                .collect()
        })
        .collect();
    // The earlier results of each task are replaced only once its new ones are written
    // (TaskResults::replace): a failed or stopped run leaves them as they were.
    let journal = match &cfg.save_dir {
        Some(dir) => Some(setup.attach_journal(dir, STEP3_JOURNAL, &tasks)?),
        None => {
            info!("step3: no save_dir, so no journal: a stopped run starts over");
            None
        }
    };
    let run = run_fleet(tasks, &setup, "step3").await?;
    let mut reports = Vec::new();
    for (((task, plan), outcomes), order) in planned.iter().zip(run.outcomes).zip(orders) {
        let items = choice_results(plan, &order, outcomes)?;
        let results = TaskResults::from_items(plan, &items)?;
        let log = results.results_log();
        println!("{log}");
        let files = match &cfg.save_dir {
            Some(dir) => results.replace(&dir.join(&task.name))?,
            None => Vec::new(),
        };
        reports.push(Step3TaskReport {
            task: task.name.clone(),
            log,
            files,
        });
    }
    if let Some(journal) = journal {
        journal.complete()?;
    }
    Ok(reports)
}

/// Plans every task of `cfg`, in order.
pub fn plan_all(cfg: &Step3Config) -> Result<Vec<(Step3Task, TaskPlan)>, Step3Error> {
    cfg.tasks
        .iter()
        .map(|task| {
            let options = PlanOptions {
                lang: task.lang.clone(),
                split: task.split,
                n_shot: cfg.n_shot,
                order: cfg.few_shot_order,
                seed: cfg.seed,
            };
            let plan = plan_task(&cfg.task_dir.join(&task.name), &options)?;
            info!(
                "step3: {}: {} questions in {} subjects",
                task.name,
                plan.items.len(),
                plan.subjects.len()
            );
            Ok((task.clone(), plan))
        })
        .collect()
}

/// One task of the fleet: a choice item per question (item id = its index in the plan), in
/// [`queue_order`].
pub fn step3_task(cfg: &Step3Config, task: &Step3Task, plan: &TaskPlan) -> TaskSpec {
    let template = pb::Lease {
        model: Some(model_spec(&cfg.model)),
        prompt: Some(pb::PromptSpec {
            template: cfg.template.clone().unwrap_or_default(),
            cutoff_len: NO_CUTOFF,
            reserved_label_len: 1,
        }),
        ..Default::default()
    };
    let choice_texts = plan.choice_texts().to_vec();
    let items = queue_order(plan, cfg.prefix_pairs)
        .into_iter()
        .map(|(i, shared)| pb::WorkItem {
            item_id: i.to_string(),
            payload: Some(pb::work_item::Payload::Choice(pb::ChoiceItem {
                messages: plan.items[i]
                    .messages
                    .iter()
                    .map(|m| pb::ChatMessage {
                        role: m.role.as_str().to_string(),
                        content: m.content.clone(),
                    })
                    .collect(),
                system: String::new(),
                choice_texts: choice_texts.clone(),
                shared_prefix_pairs: shared as u32,
            })),
        })
        .collect();
    TaskSpec {
        name: format!("step3/{}", task.name),
        template,
        items,
    }
}

/// The plan's items in queue order with their `shared_prefix_pairs` (see the module docs):
/// subjects in plan order, each subject's questions sorted by shot rows (ties by index).
pub fn queue_order(plan: &TaskPlan, prefix_pairs: usize) -> Vec<(usize, usize)> {
    let mut order = Vec::with_capacity(plan.items.len());
    let mut start = 0;
    for subject in &plan.subjects {
        let mut idx: Vec<usize> = (start..start + subject.len).collect();
        start += subject.len;
        idx.sort_by(|&a, &b| {
            plan.items[a]
                .shots
                .cmp(&plan.items[b].shots)
                .then(a.cmp(&b))
        });
        // In lexicographic order the longest prefix an item shares with any other item is the
        // longer of those it shares with its two neighbours.
        let lcp = |a: usize, b: usize| {
            let (x, y) = (&plan.items[a].shots, &plan.items[b].shots);
            x.iter().zip(y).take_while(|(p, q)| p == q).count()
        };
        for (k, &i) in idx.iter().enumerate() {
            let before = k.checked_sub(1).map_or(0, |p| lcp(idx[p], i));
            let after = idx.get(k + 1).map_or(0, |&n| lcp(i, n));
            order.push((i, before.max(after).min(prefix_pairs)));
        }
    }
    order
}

/// Every question's probabilities in plan order (`order[k]` is the plan index of `outcomes[k]`),
/// or an error naming the questions (`subject/index`) that failed.
pub(crate) fn choice_results(
    plan: &TaskPlan,
    order: &[usize],
    outcomes: Vec<ItemOutcome>,
) -> Result<Vec<ItemResult>, RunError> {
    let shown = |i: usize| {
        let item = &plan.items[i];
        format!("{}/{}", plan.subjects[item.subject].subject.key, item.index)
    };
    let picked = super::collect_outcomes(
        "question",
        order.iter().map(|&i| shown(i)).zip(outcomes),
        |_, outcome| match outcome {
            Outcome::Choice(c) => Some(c),
            _ => None,
        },
    )?;
    let mut results: Vec<Option<ItemResult>> = vec![None; plan.items.len()];
    for (&i, choice) in order.iter().zip(picked) {
        let probabilities =
            <[f32; 4]>::try_from(choice.probabilities.as_slice()).map_err(|_| {
                RunError::Scoring(format!(
                    "question {}: {} choice probabilities, expected 4",
                    shown(i),
                    choice.probabilities.len()
                ))
            })?;
        results[i] = Some(ItemResult { probabilities });
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.ok_or_else(|| RunError::Scoring(format!("question {}: no result", shown(i))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::step3::prompt::EN;
    use crate::step3::{Layout, Message, Step3Item, Subject, SubjectPlan};
    use std::path::Path;

    /// A plan of two subjects whose items have the given shot rows.
    fn plan(shots: &[&[&[usize]]]) -> TaskPlan {
        let mut plan = TaskPlan {
            template: EN,
            layout: Layout::Mmlu,
            subjects: Vec::new(),
            items: Vec::new(),
        };
        for (s, subject_shots) in shots.iter().enumerate() {
            for (index, shot) in subject_shots.iter().enumerate() {
                plan.items.push(Step3Item {
                    subject: s,
                    index,
                    messages: vec![Message {
                        role: crate::datasets::Role::User,
                        content: format!("s{s} q{index}"),
                    }],
                    answer: "A".into(),
                    shots: shot.to_vec(),
                });
            }
            plan.subjects.push(SubjectPlan {
                subject: Subject {
                    key: format!("s{s}"),
                    name: format!("s {s}"),
                    category: "STEM".into(),
                },
                len: subject_shots.len(),
            });
        }
        plan
    }

    #[test]
    fn questions_sharing_shots_are_adjacent_and_share_what_they_can() {
        let p = plan(&[
            &[&[1, 2, 3, 0], &[0, 1, 2, 3], &[1, 2, 0, 3], &[3, 2, 1, 0]],
            // The other subject's identical shots are not shared across subjects.
            &[&[3, 2, 1, 0], &[3, 2, 1, 0]],
        ]);
        assert_eq!(
            queue_order(&p, 3),
            [(1, 0), (2, 2), (0, 2), (3, 0), (4, 3), (5, 3)]
        );
        assert_eq!(queue_order(&p, 1)[1], (2, 1));
        assert!(queue_order(&p, 0).iter().all(|&(_, k)| k == 0));
    }

    #[test]
    fn items_are_choice_questions_with_the_lease_settings() {
        let yaml = "model_name_or_path: /m/model\ntasks: [mine]\ntemplate: qwen\nfew_shot_order: fixed\nn_shot: 2\n";
        let job = config::parse_step3(Path::new("t.yaml"), yaml).unwrap();
        let cfg = job.step3().unwrap();
        let p = plan(&[&[&[0, 1], &[0, 1], &[0, 1]]]);
        let task = step3_task(cfg, &cfg.tasks[0], &p);
        assert_eq!(task.name, "step3/mine");
        let ids: Vec<&str> = task.items.iter().map(|i| i.item_id.as_str()).collect();
        assert_eq!(ids, ["0", "1", "2"]);
        let Some(pb::work_item::Payload::Choice(c)) = &task.items[2].payload else {
            panic!("not a choice item")
        };
        assert_eq!(c.choice_texts, [" A", " B", " C", " D"]);
        assert_eq!(c.shared_prefix_pairs, 2);
        assert_eq!(
            (c.messages[0].role.as_str(), c.messages[0].content.as_str()),
            ("user", "s0 q2")
        );
        let prompt = task.template.prompt.as_ref().unwrap();
        assert_eq!(
            (prompt.template.as_str(), prompt.cutoff_len),
            ("qwen", NO_CUTOFF)
        );
        assert!(task.template.generation.is_none());
        assert_eq!(task.template.model.as_ref().unwrap().model_path, "/m/model");
    }

    #[test]
    fn results_go_back_to_plan_order_and_failures_are_named() {
        let p = plan(&[&[&[0], &[1]]]);
        let done = |x: f32| {
            ItemOutcome::Done(Outcome::Choice(pb::ChoiceResult {
                probabilities: vec![x, 0.1, 0.1, 0.1],
                prompt_tokens: 9,
            }))
        };
        let got = choice_results(&p, &[1, 0], vec![done(0.7), done(0.05)]).unwrap();
        assert_eq!(got[0].prediction(), "B");
        assert_eq!(got[1].prediction(), "A");
        let failed = ItemOutcome::Failed {
            message: "prompt too long".into(),
            attempts: 1,
        };
        let err = choice_results(&p, &[1, 0], vec![done(0.7), failed]).unwrap_err();
        assert!(
            err.to_string().contains("question s0/0: prompt too long"),
            "{err}"
        );
        let short = ItemOutcome::Done(Outcome::Choice(pb::ChoiceResult {
            probabilities: vec![1.0],
            prompt_tokens: 1,
        }));
        let err = choice_results(&p, &[0, 1], vec![done(0.7), short]).unwrap_err();
        assert!(err.to_string().contains("question s0/1: 1 choice"), "{err}");
    }
}
