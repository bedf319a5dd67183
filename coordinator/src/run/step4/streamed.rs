//! Step 4's sub-steps 1 to 3 in one fleet: reward scoring starts while generation still runs.
//!
//! The scheduler holds the generate task (one item per dialogue) and a streaming reward task fed
//! from it ([`Scheduler::feed_many`]): each generated dialogue becomes, in the call that records
//! its result, one reward item per (dialogue, metric) row that sub-step 2 makes of it
//! (docs/FIDELITY.md §4.3: the first line of the reply, one row per metric of `id2metric`), with
//! the reward input text of sub-step 3. A dialogue's rows depend only on that dialogue, so they
//! can be made before the others are generated; their items are named
//! [`fed_item_id`]`(dialogue, metric number)` because the row numbers are known only once every
//! dialogue is in.
//!
//! The files are those of the sub-steps one after the other: when generation completes,
//! step1_generation.jsonl and step2_generation_trans.jsonl are written (scoring goes on); when
//! scoring completes, each score goes into its row and step3_evaluation.jsonl is written. A reward
//! model scores each input on its own (packed without padding), so neither the order of the items
//! nor how they are leased changes a score.
//!
//! Both tasks' results go to one journal ([`STEP4_JOURNAL`]) as they arrive; on resume the
//! journaled generations feed their reward items again and the journaled scores mark them done,
//! so a killed run recomputes only what is missing. Its fingerprint also covers `id2metric` of the
//! selected dialogues, from which the fed items are made.
//!
//! The two tasks and their journal are a [`Step4Part`] ([`schedule_step4`]), which can share a
//! scheduler with other work: `evalfleet step4` gives it a fleet of its own
//! ([`generate_and_score`]); a sweep ([`crate::sweep`]) schedules every checkpoint's part, task
//! names prefixed by the checkpoint, into its one fleet, so the reward model is loaded once per
//! worker for all checkpoints. Either way the part writes the same files.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use tracing::{info, warn};

use super::{
    FleetSetup, REWARD_TASK, RunError, aggregate, apply_generations, attach_scores, generate_task,
    reward_item, reward_lease, reward_results,
};
use crate::config::Step4Config;
use crate::journal::Journal;
use crate::output::PyJson;
use crate::rpc::Fleet;
use crate::run::RunningFleet;
use crate::sched::{DeriveMany, Event, ItemOutcome, Scheduler, TaskSpec};
use crate::step4::data::{TaskData, id_key};
use crate::step4::files::write_records;
use crate::step4::reward::{fed_item_id, rm_input_text};
use crate::step4::transform::{transform_indexed, transform_one};
use crate::step4::{EVALUATION_FILE, GENERATION_FILE, Record, TRANSFORM_FILE, set};

/// The journal's name (`<output_dir>/.evalfleet-journal/step4.jsonl`).
pub const STEP4_JOURNAL: &str = "step4";

/// What the streamed fleet produced.
pub(super) struct Streamed {
    /// The files written, in order.
    pub files: Vec<PathBuf>,
    /// The scheduler's timeline.
    pub timeline: Vec<Event>,
}

/// Generates every dialogue and scores its rows in one fleet of its own; writes every file.
pub(super) async fn generate_and_score(
    cfg: &Step4Config,
    setup: &FleetSetup,
) -> Result<Streamed, RunError> {
    let mut sched = Scheduler::new(setup.options.sched.clone());
    let mut part = schedule_step4(cfg, &mut sched, "", setup.restart)?;
    let mut setup = setup.clone();
    // The fleet preloads it, journals every result into it and flushes it when stopped.
    setup.journal = Some(part.journal().clone());
    let mut fleet = RunningFleet::start(sched, &setup, "step4").await?;
    let result = run_both(&mut fleet, &mut part).await;
    fleet.stop(result.is_ok()).await;
    let files = match result {
        Ok(files) => files,
        // Flushes the journal and adds what an interruption saved to the error.
        Err(e) => {
            return fleet
                .journal_stopped(Err(e))
                .map(|()| unreachable!("still an error"));
        }
    };
    // Logs how many results were computed and how many came from the journal.
    fleet.journal_stopped(Ok(()))?;
    let timeline = fleet.fleet().with_sched(|s| s.timeline().to_vec());
    Ok(Streamed { files, timeline })
}

/// Waits for generation, writes sub-steps 1 and 2, waits for scoring, writes the rest.
async fn run_both(
    fleet: &mut RunningFleet,
    part: &mut Step4Part,
) -> Result<Vec<PathBuf>, RunError> {
    fleet.wait_until(|s| part.generated(s)).await?;
    part.write_generations(fleet.fleet())?;
    fleet.wait_until(|s| part.complete(s)).await?;
    part.finish(fleet.fleet())
}

/// Step 4 from `generate` as two tasks of a scheduler that may hold other work (a sweep holds
/// every checkpoint's steps): the generate task and the reward task fed from it, and their
/// journal. Made by [`schedule_step4`]; once [`Step4Part::generated`], write the first two
/// files ([`Step4Part::write_generations`]); once [`Step4Part::complete`], the rest
/// ([`Step4Part::finish`]). The files are those `evalfleet step4` writes for the same config.
pub struct Step4Part {
    cfg: Step4Config,
    data: TaskData,
    /// The generate and reward tasks' indices in the scheduler.
    generate: usize,
    reward: usize,
    /// Their names (prefixed).
    names: [String; 2],
    /// `<prefix>step4`, for the log.
    label: String,
    journal: Arc<Journal>,
    /// Once the generations are written: the transformed rows and each fed item's row.
    rows: Option<(Vec<Record>, HashMap<String, usize>)>,
}

/// Reads step 4's dialogues and adds its generate task and the reward task fed from it to
/// `sched`, named `<prefix>step4-generate` and `<prefix>step4-reward` (a sweep passes
/// `<checkpoint>/`, a step-4 run nothing). Opens their journal (`step4` in `output_dir`; a new
/// one with `restart`) but leaves its results for the caller to preload
/// ([`Journal::preload`]) and its sink for the caller to route results to (both tasks' results
/// go to [`Step4Part::journal`]).
pub fn schedule_step4(
    cfg: &Step4Config,
    sched: &mut Scheduler,
    prefix: &str,
    restart: bool,
) -> Result<Step4Part, RunError> {
    let data = TaskData::read(&cfg.task_dir, cfg.max_samples)?;
    info!(
        "{prefix}step4: generating replies for {} dialogues from {}, scoring each one's rows \
         with {} as it arrives",
        data.records.len(),
        cfg.task_dir.display(),
        cfg.reward_model_path.display()
    );
    let mut generate = generate_task(cfg, &data.records, &data.profiles)?;
    generate.name = format!("{prefix}{}", generate.name);
    let reward = TaskSpec {
        name: format!("{prefix}{REWARD_TASK}"),
        template: reward_lease(cfg),
        items: Vec::new(),
    };
    let tasks = [generate, reward];
    let extra = [("fed items".to_string(), metrics_part(&data))];
    let journal = Journal::open_with(&cfg.output_dir, STEP4_JOURNAL, &tasks, &extra, restart)?;
    let names = tasks.each_ref().map(|t| t.name.clone());
    let [generate, reward] = tasks;
    let g = sched.add_task(generate)?;
    let r = sched.add_streaming_task(reward)?;
    sched.feed_many(g, r, reward_feed(&data))?;
    Ok(Step4Part {
        cfg: cfg.clone(),
        data,
        generate: g,
        reward: r,
        names,
        label: format!("{prefix}step4"),
        journal: Arc::new(journal),
        rows: None,
    })
}

impl Step4Part {
    /// The journal both tasks' results go to.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The generate and reward tasks' names.
    pub fn task_names(&self) -> &[String; 2] {
        &self.names
    }

    /// The generate and reward tasks' indices in the scheduler.
    pub fn tasks(&self) -> [usize; 2] {
        [self.generate, self.reward]
    }

    /// Every dialogue has its generation.
    pub fn generated(&self, s: &Scheduler) -> bool {
        s.task_complete(self.generate)
    }

    /// Every row has its score (the reward task's input closes once generation completes).
    pub fn complete(&self, s: &Scheduler) -> bool {
        s.task_complete(self.generate) && s.task_complete(self.reward)
    }

    /// The first two files have been written.
    pub fn generations_written(&self) -> bool {
        self.rows.is_some()
    }

    /// Once [`Step4Part::generated`]: writes step1_generation.jsonl and
    /// step2_generation_trans.jsonl (scoring may still run). Does nothing the second time.
    pub fn write_generations(&mut self, fleet: &Fleet) -> Result<(), RunError> {
        if self.rows.is_some() {
            return Ok(());
        }
        let (generate, reward) = (self.generate, self.reward);
        let (outcomes, scored, fed) = fleet.with_sched(|s| {
            let outcomes: Vec<ItemOutcome> =
                s.outcomes(generate).iter().flatten().cloned().collect();
            let scored = s.outcomes(reward).iter().flatten().count();
            (outcomes, scored, s.items(reward).len())
        });
        let name = &self.label;
        info!("{name}: all dialogues generated; {scored} of {fed} rows are already scored");
        let mut records = self.data.records.clone();
        apply_generations(&mut records, outcomes);
        let out = &self.cfg.output_dir;
        write_records(out, GENERATION_FILE, &records)?;
        let indexed = transform_indexed(&records, &self.data.id2metric);
        info!(
            "{name}: {} dialogues → {} (dialogue, metric) rows",
            records.len(),
            indexed.len()
        );
        let row_of: HashMap<String, usize> = indexed
            .iter()
            .enumerate()
            .map(|(row, (dialogue, k, _))| (fed_item_id(*dialogue, *k), row))
            .collect();
        let rows: Vec<Record> = indexed.into_iter().map(|(_, _, row)| row).collect();
        write_records(out, TRANSFORM_FILE, &rows)?;
        self.rows = Some((rows, row_of));
        Ok(())
    }

    /// Once [`Step4Part::complete`]: writes the first two files if not yet done, puts every
    /// score into its row (step3_evaluation.jsonl), writes the score log and the summary, and
    /// removes the journal. Returns the five files, in order.
    pub fn finish(&mut self, fleet: &Fleet) -> Result<Vec<PathBuf>, RunError> {
        self.write_generations(fleet)?;
        let (rows, row_of) = self.rows.take().expect("written above");
        let reward = self.reward;
        let outcomes: Vec<(String, ItemOutcome)> = fleet.with_sched(|s| {
            s.items(reward)
                .iter()
                .zip(s.outcomes(reward))
                .filter_map(|(item, o)| Some((item.item_id.clone(), o.clone()?)))
                .collect()
        });
        let results = reward_results(outcomes)?;
        let scored = attach_scores(&self.cfg, rows, results, |id| row_of.get(id).copied())?;
        let out = &self.cfg.output_dir;
        let mut files = [GENERATION_FILE, TRANSFORM_FILE, EVALUATION_FILE]
            .map(|name| out.join(name))
            .to_vec();
        files.extend(aggregate(&self.cfg, &scored)?);
        self.journal.complete()?;
        Ok(files)
    }
}

/// The feed from generation to scoring: a generated dialogue's reward items, one per row that
/// sub-step 2 makes of it, named [`fed_item_id`]. A row whose input text cannot be made (its
/// role has no profile: generation would have failed on that first) is left out with a warning,
/// and the step then fails for the missing score.
fn reward_feed(data: &TaskData) -> DeriveMany {
    let records = Arc::new(data.records.clone());
    let id2metric = Arc::new(data.id2metric.clone());
    let profiles = Arc::new(data.profiles.clone());
    Box::new(move |item, outcome| {
        let Outcome::Generate(g) = outcome else {
            return Vec::new();
        };
        let Some(i) = item
            .item_id
            .parse()
            .ok()
            .filter(|&i: &usize| i < records.len())
        else {
            return Vec::new();
        };
        let mut record = records[i].clone();
        set(
            &mut record,
            "model_output",
            PyJson::Str(g.predict_for_metrics.clone()),
        );
        let rows = transform_one(&record, &id2metric).into_iter().enumerate();
        rows.filter_map(|(k, row)| match rm_input_text(&row, i, &profiles) {
            Ok(text) => Some(reward_item(fed_item_id(i, k), text)),
            Err(e) => {
                warn!("step4: dialogue {i}: {e}; its row is not scored");
                None
            }
        })
        .collect()
    })
}

/// The metrics of every selected dialogue, in dialogue order: the fed items are made from them,
/// so a journal made with other metrics must not be resumed.
fn metrics_part(data: &TaskData) -> String {
    let mut text = String::new();
    for record in &data.records {
        let id = id_key(record).unwrap_or_default();
        let metrics = data
            .id2metric
            .get(&id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let _ = write!(text, "{id}:");
        for m in metrics {
            let _ = write!(text, " {}/{}", m.en, m.zh);
        }
        text.push('\n');
    }
    crate::journal::fingerprint::digest_text(&text)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::step4::data::{Metric, Profiles};
    use crate::step4::transform::transform;

    fn data() -> TaskData {
        let record = |id: i128, role: &str| -> Record {
            vec![
                ("id".into(), PyJson::Int(id)),
                ("role".into(), PyJson::Str(role.into())),
                ("context".into(), PyJson::Str(format!("context {id}"))),
            ]
        };
        let profile = PyJson::Object(vec![(
            "甲".into(),
            PyJson::Object(vec![("性别".into(), PyJson::Str("女".into()))]),
        )]);
        let metric = |en: &str, zh: &str| Metric {
            en: en.into(),
            zh: zh.into(),
        };
        TaskData {
            records: vec![record(1, "甲"), record(2, "甲")],
            profiles: Profiles::from_json(Path::new("profiles.json"), &profile).unwrap(),
            id2metric: HashMap::from([
                ("1".into(), vec![metric("A", "一"), metric("B", "二")]),
                ("2".into(), vec![metric("C", "三")]),
            ]),
        }
    }

    fn generated(text: &str) -> Outcome {
        Outcome::Generate(pb::GenerateResult {
            predict: format!("decoded differently: {text}"),
            predict_for_metrics: text.into(),
            ..Default::default()
        })
    }

    fn dialogue(i: usize) -> pb::WorkItem {
        pb::WorkItem {
            item_id: i.to_string(),
            payload: None,
        }
    }

    #[test]
    fn a_generation_feeds_the_reward_items_of_the_rows_sub_step_2_makes_of_it() {
        let data = data();
        let mut feed = reward_feed(&data);
        let items = feed(&dialogue(0), &generated("first line\nsecond"));
        let ids: Vec<&str> = items.iter().map(|i| i.item_id.as_str()).collect();
        assert_eq!(ids, ["0/0", "0/1"]);

        // The texts the stage-by-stage scoring makes from the transformed file's rows.
        let mut record = data.records[0].clone();
        set(
            &mut record,
            "model_output",
            PyJson::Str("first line\nsecond".into()),
        );
        let rows = transform(&[record], &data.id2metric);
        let expected: Vec<String> = rows
            .iter()
            .map(|row| rm_input_text(row, 0, &data.profiles).unwrap())
            .collect();
        let texts: Vec<&str> = items
            .iter()
            .map(|i| match &i.payload {
                Some(pb::work_item::Payload::Reward(r)) => r.text.as_str(),
                other => panic!("not a reward item: {other:?}"),
            })
            .collect();
        assert_eq!(texts, expected);
        assert!(
            texts[1].ends_with("first line\n\n<Dimension>\n\n二"),
            "{}",
            texts[1]
        );

        // What sub-step 2 skips feeds nothing: an "ERROR" reply; so do unknown dialogues.
        assert!(feed(&dialogue(1), &generated("ERROR")).is_empty());
        assert!(feed(&dialogue(7), &generated("x")).is_empty());
        assert_eq!(feed(&dialogue(1), &generated("y")).len(), 1);
    }

    #[test]
    fn the_fingerprint_part_follows_the_selected_dialogues_metrics() {
        let mut data = data();
        let before = metrics_part(&data);
        assert_eq!(before, metrics_part(&data.clone()));
        data.id2metric.get_mut("2").unwrap()[0].zh = "四".into();
        assert_ne!(metrics_part(&data), before);
    }
}
