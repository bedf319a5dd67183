//! Step 4 (CharacterEval, docs/FIDELITY.md §4) through the fleet: the four sub-steps of
//! [`crate::step4`], from the configured stage on.
//!
//! 1. generate: one generate item per dialogue (item id = dialogue index), messages ending with
//!    the final user turn, the lease's template (`template`, else the model's chat template), the
//!    adapter merged; `model_output` = the reply decoded as the original tool did (special tokens
//!    skipped, the tokenizer's default clean-up). A dialogue whose generation fails gets `"ERROR"`
//!    (as CE marks failures), which sub-step 2 skips, and a warning.
//! 2. transform: pure ([`crate::step4::transform`]).
//! 3. score: one reward item per row (item id = row index), queued longest text first so leases
//!    batch similar lengths; the lease's model is the reward model in `reward_dtype` with a
//!    4096-token left truncation. Any failed row fails the step.
//! 4. aggregate: the score log and the summary.
//!
//! From `generate`, sub-steps 1 to 3 run in one fleet (`streamed`): each generated dialogue
//! feeds its (dialogue, metric) reward items to the scheduler as it arrives, so reward scoring
//! starts while generation still runs; the files are the same as the sub-steps one after the
//! other write. With `--stage-by-stage` (and from any later stage), generation and scoring are
//! two fleets one after the other, as the original tool's sub-steps. Either way every result is
//! journaled as it arrives (`crate::journal`: one journal for the streamed fleet, one per
//! sub-step otherwise, in `output_dir`), so a stopped run resumes with only the missing items; a
//! journal is removed once the files it stands for are written.
//!
//! The streamed sub-steps can also be scheduled into a fleet shared with other work
//! ([`schedule_step4`] then [`Step4Part`]'s `write_generations` and `finish`): `evalfleet sweep`
//! runs every checkpoint's step 4 that way.

mod streamed;

pub use streamed::{STEP4_JOURNAL, Step4Part, schedule_step4};

use std::path::PathBuf;
use std::slice;

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use tracing::{info, warn};

use super::{FleetSetup, RunError, absolute, run_fleet};
use crate::config::{Step4Config, Step4Stage};
use crate::output::PyJson;
use crate::sched::{Event, ItemOutcome, TaskSpec};
use crate::step4::aggregate::{Summary, format_log_data, metric_groups};
use crate::step4::data::{self, Profiles, read_profiles};
use crate::step4::files::{read_stage_records, write_log, write_records, write_summary};
use crate::step4::prompt::record_messages;
use crate::step4::reward::{RM_MAX_TOKENS, attach_score, rm_input_text, score_from_sigmoid};
use crate::step4::transform::transform;
use crate::step4::{
    ERROR_OUTPUT, EVALUATION_FILE, GENERATION_FILE, Record, Step4Error, TRANSFORM_FILE, set,
};

/// Fleet task names.
const GENERATE_TASK: &str = "step4-generate";
const REWARD_TASK: &str = "step4-reward";

/// How `evalfleet step4` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Step4Options {
    /// The first sub-step (`--stage`; else the YAML's `stage`).
    pub stage: Option<Step4Stage>,
    /// `--stage-by-stage`: generation and scoring as two fleets one after the other, instead of
    /// scoring each dialogue's rows while the others are still being generated.
    pub stage_by_stage: bool,
}

/// What step 4 did.
#[derive(Debug)]
pub struct Step4Report {
    /// The files written, in order.
    pub files: Vec<PathBuf>,
    /// The streamed fleet's scheduler timeline (task 0 generates, task 1 scores): shows when
    /// scoring started. Empty when generation and scoring did not share a fleet.
    pub timeline: Vec<Event>,
}

/// Runs step 4 from `stage` (else the YAML's `stage`) on; returns the files written. The
/// YAML's `workers` / `batch_size` apply where the command line left them unset.
pub async fn run_step4(
    cfg: &Step4Config,
    setup: &FleetSetup,
    stage: Option<Step4Stage>,
) -> Result<Vec<PathBuf>, RunError> {
    let options = Step4Options {
        stage,
        stage_by_stage: false,
    };
    Ok(run_step4_with(cfg, setup, options).await?.files)
}

/// [`run_step4`] with every option.
pub async fn run_step4_with(
    cfg: &Step4Config,
    setup: &FleetSetup,
    options: Step4Options,
) -> Result<Step4Report, RunError> {
    // Held until its files are written (`evalfleet step4` comes here without run_job).
    let _lock = crate::dirlock::DirLock::acquire(&cfg.output_dir)?;
    let stage = options.stage.unwrap_or(cfg.stage);
    let setup = setup.merged_with(cfg.fleet_keys());
    let out = &cfg.output_dir;
    if stage == Step4Stage::Generate && !options.stage_by_stage {
        let done = streamed::generate_and_score(cfg, &setup).await?;
        return Ok(Step4Report {
            files: done.files,
            timeline: done.timeline,
        });
    }
    let mut files = Vec::new();

    let generated = if stage == Step4Stage::Generate {
        let records = generate(cfg, &setup).await?;
        files.push(out.join(GENERATION_FILE));
        Some(records)
    } else {
        None
    };
    let transformed = if stage <= Step4Stage::Transform {
        let records = match generated {
            Some(r) => r,
            None => read_stage_records(out, GENERATION_FILE, "--stage generate")?,
        };
        let id2metric = data::read_id2metric(&cfg.task_dir.join(data::ID2METRIC))?;
        let rows = transform(&records, &id2metric);
        info!(
            "step4: {} dialogues → {} (dialogue, metric) rows",
            records.len(),
            rows.len()
        );
        files.push(write_records(out, TRANSFORM_FILE, &rows)?);
        Some(rows)
    } else {
        None
    };
    let scored = if stage <= Step4Stage::Score {
        let rows = match transformed {
            Some(r) => r,
            None => read_stage_records(out, TRANSFORM_FILE, "--stage transform")?,
        };
        let rows = score(cfg, &setup, rows).await?;
        files.push(out.join(EVALUATION_FILE));
        rows
    } else {
        read_stage_records(out, EVALUATION_FILE, "--stage score")?
    };
    files.extend(aggregate(cfg, &scored)?);
    Ok(Step4Report {
        files,
        timeline: Vec::new(),
    })
}

/// Sub-step 1: the dialogues with `model_output` set.
async fn generate(cfg: &Step4Config, setup: &FleetSetup) -> Result<Vec<Record>, RunError> {
    let task_data = data::TaskData::read(&cfg.task_dir, cfg.max_samples)?;
    let mut records = task_data.records;
    info!(
        "step4: generating replies for {} dialogues from {}",
        records.len(),
        cfg.task_dir.display()
    );
    let task = generate_task(cfg, &records, &task_data.profiles)?;
    let mut setup = setup.clone();
    let journal = setup.attach_journal(&cfg.output_dir, GENERATE_TASK, slice::from_ref(&task))?;
    let run = run_fleet(vec![task], &setup, "step4 generate").await?;
    let outcomes = run.outcomes.into_iter().next().unwrap_or_default();
    apply_generations(&mut records, outcomes);
    write_records(&cfg.output_dir, GENERATION_FILE, &records)?;
    journal.complete()?;
    Ok(records)
}

/// Sets each dialogue's `model_output` from its generation (in dialogue order); one that failed
/// gets `"ERROR"`, with a warning.
fn apply_generations(records: &mut [Record], outcomes: impl IntoIterator<Item = ItemOutcome>) {
    let mut failed = 0;
    for (i, (record, outcome)) in records.iter_mut().zip(outcomes).enumerate() {
        let output = match outcome {
            ItemOutcome::Done(Outcome::Generate(g)) => g.predict_for_metrics,
            other => {
                failed += 1;
                warn!("step4: dialogue {i}: generation failed ({other:?}); model_output = ERROR");
                ERROR_OUTPUT.to_owned()
            }
        };
        set(record, "model_output", PyJson::Str(output));
    }
    if failed > 0 {
        warn!("step4: {failed} dialogues failed to generate; sub-step 2 skips them");
    }
}

/// The generate task: one item per dialogue, no truncation (the original tool's prompts were not
/// cut).
pub fn generate_task(
    cfg: &Step4Config,
    records: &[Record],
    profiles: &Profiles,
) -> Result<TaskSpec, RunError> {
    let task_file = cfg.task_dir.join(data::TEST_DATA);
    let items = records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let messages =
                record_messages(record, i, profiles).map_err(|message| Step4Error::Invalid {
                    path: task_file.clone(),
                    message,
                })?;
            let messages = messages
                .into_iter()
                .map(|m| pb::ChatMessage {
                    role: m.role.to_owned(),
                    content: m.content,
                })
                .collect();
            Ok(pb::WorkItem {
                item_id: i.to_string(),
                payload: Some(pb::work_item::Payload::Generate(pb::GenerateItem {
                    messages,
                    system: String::new(),
                })),
            })
        })
        .collect::<Result<Vec<_>, Step4Error>>()?;
    let template = pb::Lease {
        model: Some(generator_model(cfg)),
        prompt: Some(pb::PromptSpec {
            template: cfg.template.clone().unwrap_or_default(),
            cutoff_len: 0,
            reserved_label_len: 1,
        }),
        generation: Some(super::step1::generation_params(&cfg.generation)),
        ..Default::default()
    };
    Ok(TaskSpec {
        name: GENERATE_TASK.into(),
        template,
        items,
    })
}

/// The model under test with its adapters (paths made absolute, as step 1 does).
fn generator_model(cfg: &Step4Config) -> pb::ModelSpec {
    let model_path = absolute(&cfg.model_path);
    let adapter_paths: Vec<String> = cfg
        .adapter_name_or_path
        .iter()
        .map(|p| absolute(p))
        .collect();
    let dtype = cfg.dtype.as_str().to_owned();
    pb::ModelSpec {
        key: format!("{model_path}|{}|{dtype}", adapter_paths.join(",")),
        model_path,
        adapter_paths,
        dtype,
    }
}

/// Sub-step 3: the rows with their scores.
async fn score(
    cfg: &Step4Config,
    setup: &FleetSetup,
    rows: Vec<Record>,
) -> Result<Vec<Record>, RunError> {
    let profiles = read_profiles(&cfg.task_dir)?;
    let task = reward_task(cfg, &rows, &profiles)?;
    info!(
        "step4: scoring {} rows with {}",
        rows.len(),
        cfg.reward_model_path.display()
    );
    let ids: Vec<String> = task.items.iter().map(|i| i.item_id.clone()).collect();
    let mut setup = setup.clone();
    let journal = setup.attach_journal(&cfg.output_dir, REWARD_TASK, slice::from_ref(&task))?;
    let run = run_fleet(vec![task], &setup, "step4 score").await?;
    let outcomes = run.outcomes.into_iter().next().unwrap_or_default();
    let results = reward_results(ids.into_iter().zip(outcomes))?;
    let n_rows = rows.len();
    let rows_at = move |id: &str| id.parse().ok().filter(|&n: &usize| n < n_rows);
    let rows = attach_scores(cfg, rows, results, rows_at)?;
    journal.complete()?;
    Ok(rows)
}

/// `(item id, result)` of every reward item, or an error naming the rows that failed.
fn reward_results(
    outcomes: impl IntoIterator<Item = (String, ItemOutcome)>,
) -> Result<Vec<(String, pb::RewardResult)>, RunError> {
    super::collect_outcomes("row", outcomes, |id, o| match o {
        Outcome::Reward(r) => Some((id.to_owned(), r)),
        _ => None,
    })
}

/// Puts each reward result's score into its row (`row_of` maps an item id to the row, `None`
/// for an id no row has) and writes step3_evaluation.jsonl; every row must have its score.
fn attach_scores(
    cfg: &Step4Config,
    mut rows: Vec<Record>,
    results: Vec<(String, pb::RewardResult)>,
    row_of: impl Fn(&str) -> Option<usize>,
) -> Result<Vec<Record>, RunError> {
    let path = cfg.output_dir.join(TRANSFORM_FILE);
    let invalid = |message: String| Step4Error::Invalid {
        path: path.clone(),
        message,
    };
    if results.len() != rows.len() {
        return Err(invalid(format!(
            "{} rows but {} reward results",
            rows.len(),
            results.len()
        ))
        .into());
    }
    let mut truncated = 0;
    let mut scored = vec![false; rows.len()];
    for (id, result) in results {
        let row_no = row_of(&id)
            .filter(|&n| !scored[n])
            .ok_or_else(|| invalid(format!("a reward result for unknown row {id}")))?;
        scored[row_no] = true;
        truncated += usize::from(result.truncated);
        attach_score(
            &mut rows[row_no],
            row_no,
            score_from_sigmoid(result.sigmoid),
        )
        .map_err(|message| Step4Error::Invalid {
            path: path.clone(),
            message,
        })?;
    }
    if truncated > 0 {
        info!(
            "step4: {truncated} reward inputs were longer than {RM_MAX_TOKENS} tokens (start cut)"
        );
    }
    write_records(&cfg.output_dir, EVALUATION_FILE, &rows)?;
    Ok(rows)
}

/// The reward task: one item per row, longest text first.
pub fn reward_task(
    cfg: &Step4Config,
    rows: &[Record],
    profiles: &Profiles,
) -> Result<TaskSpec, RunError> {
    let path = cfg.output_dir.join(TRANSFORM_FILE);
    let mut texts = rows
        .iter()
        .enumerate()
        .map(|(i, row)| rm_input_text(row, i, profiles).map(|t| (i, t)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|message| Step4Error::Invalid { path, message })?;
    // Stable: equal lengths keep row order.
    texts.sort_by_key(|(_, t)| std::cmp::Reverse(t.chars().count()));
    let items = texts
        .into_iter()
        .map(|(i, text)| reward_item(i.to_string(), text))
        .collect();
    Ok(TaskSpec {
        name: REWARD_TASK.into(),
        template: reward_lease(cfg),
        items,
    })
}

/// The reward item `id` scoring `text`.
fn reward_item(id: String, text: String) -> pb::WorkItem {
    pb::WorkItem {
        item_id: id,
        payload: Some(pb::work_item::Payload::Reward(pb::RewardItem { text })),
    }
}

/// What every reward lease shares: the reward model in `reward_dtype`, the 4096-token cut.
fn reward_lease(cfg: &Step4Config) -> pb::Lease {
    let model_path = absolute(&cfg.reward_model_path);
    let dtype = cfg.reward_dtype.as_str().to_owned();
    pb::Lease {
        model: Some(pb::ModelSpec {
            key: format!("reward|{model_path}|{dtype}"),
            model_path,
            adapter_paths: Vec::new(),
            dtype,
        }),
        prompt: Some(pb::PromptSpec {
            template: String::new(),
            cutoff_len: RM_MAX_TOKENS,
            reserved_label_len: 0,
        }),
        ..Default::default()
    }
}

/// Sub-step 4: writes the score log (also printed) and the summary.
fn aggregate(cfg: &Step4Config, rows: &[Record]) -> Result<Vec<PathBuf>, RunError> {
    let path = cfg.output_dir.join(EVALUATION_FILE);
    let invalid = |message| Step4Error::Invalid {
        path: path.clone(),
        message,
    };
    let means: Vec<(String, f64)> = metric_groups(rows)
        .map_err(invalid)?
        .into_iter()
        .map(|g| (g.name.clone(), g.mean()))
        .collect();
    let log = format_log_data(&means);
    println!("{log}");
    let summary = Summary::of(rows).map_err(invalid)?;
    info!(
        "step4: average of {} metric means: {:.4}",
        summary.metrics.len(),
        summary.average
    );
    Ok(vec![
        write_log(&cfg.output_dir, &log)?,
        write_summary(&cfg.output_dir, &summary)?,
    ])
}
