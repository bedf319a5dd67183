//! The sweep driver: every unfinished checkpoint's step items in one scheduler, served by one
//! fleet ([`RunningFleet`]), each checkpoint's files written as soon as its items are in.
//!
//! Tasks are queued checkpoint by checkpoint (its step 1, its step-2 feed, its step-3 tasks, its
//! step-4 generation and the reward scoring fed from it, then the next checkpoint's), so a worker
//! keeps one checkpoint's model for as long as that checkpoint has work and moves to the next
//! once; with LoRA checkpoints the worker's base cache makes that move a merge, not a model load.
//! The embedder and the reward model are held by workers beside the generator (their own model
//! caches), so each is loaded once per worker for the whole sweep. Task names carry the
//! checkpoint (`checkpoint-500/step1`, `checkpoint-500/step4-reward`), since one scheduler holds
//! them all.
//!
//! Each checkpoint keeps its step journals in its own folder (`step1` in its output folder,
//! `step3` in its `save_dir`, the same folder), opened as the step drivers open them, and the
//! fleet's results are routed to the journal of their task: a stopped sweep resumes every
//! checkpoint where it was. Step 2 is fed from step 1 as in `run::chain` and, like it, shares
//! step 1's journal (`step1+step2`): on resume the journaled step-1 results feed step 2 again and
//! its journaled scores are not recomputed. A checkpoint's journals are removed once it is
//! marked finished. Step 4 is `run::step4`'s streamed step
//! ([`schedule_step4`]): its journal is `step4` in the checkpoint's CharacterEval folder, its
//! first two files are written as soon as the checkpoint's generations are in, the others once
//! its rows are scored; the files are those of `evalfleet step4` for the checkpoint.
//!
//! Every journal's clock is the shared fleet's start of generation, so each task's timing lines
//! accumulate over runs and a resumed checkpoint's `predict_runtime` includes the earlier runs'.
//!
//! `predict_runtime` of a checkpoint's step 1 is measured from when the previous task in the
//! queue completed (or the first model was ready) to when its last step-1 result came in: with
//! several workers the boundary between checkpoints overlaps a little, so it is close to, not
//! exactly, the time the fleet spent on that checkpoint.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use tracing::info;

use super::SweepError;
use super::config::{Checkpoint, SweepConfig};
use super::state::{self, Status};
use crate::config::{
    JobConfig, Step1Config, Step2Config, Step3Config, Step3Task, Step4Stage, StepConfig,
};
use crate::datasets::{self, Sample};
use crate::journal::Journal;
use crate::rpc::ResultSink;
use crate::run::chain::CHAIN_JOURNAL;
use crate::run::step1::{self, finish_step1, step1_task};
use crate::run::step2::{STEP2_TASK, embed_payload, finish_step2, step2_lease};
use crate::run::step3::{plan_all, step3_task};
use crate::run::step4::{Step4Part, schedule_step4};
use crate::run::{FleetSetup, RunError, RunningFleet};
use crate::sched::{Derive, ItemOutcome, Scheduler, TaskSpec};
use crate::step3::{TaskPlan, TaskResults};

/// What a sweep did.
#[derive(Debug)]
pub struct SweepReport {
    /// Checkpoints evaluated by this run, in order.
    pub evaluated: Vec<String>,
    /// Checkpoints skipped as finished earlier, in order.
    pub skipped: Vec<String>,
    /// The report written into the sweep folder.
    pub report: crate::report::ReportFiles,
}

/// Runs the sweep `cfg`: skips the finished checkpoints, evaluates the others in one fleet
/// (step 4 after it), then writes the report of the whole sweep folder. The checkpoints'
/// `workers` / `batch_size` apply where the command line left them unset.
pub async fn run_sweep(cfg: &SweepConfig, setup: &FleetSetup) -> Result<SweepReport, SweepError> {
    // Held until the report is written: another sweep or run on this folder is refused.
    let _lock =
        crate::dirlock::DirLock::acquire(&cfg.output_dir).map_err(crate::run::RunError::from)?;
    let mut todo = Vec::new();
    let mut skipped = Vec::new();
    for c in &cfg.checkpoints {
        let pending = Pending::new(cfg, c)?;
        match state::status(&pending.dir, &pending.job, &pending.digest) {
            Status::Done if !setup.restart => {
                info!(
                    "sweep: skipping {}: evaluated earlier with these settings, outputs complete",
                    c.name
                );
                skipped.push(c.name.clone());
                continue;
            }
            Status::Done => info!("sweep: {}: --restart: evaluating again", c.name),
            Status::New => {}
            Status::SettingsChanged => info!(
                "sweep: {}: evaluated earlier with other settings: evaluating again",
                c.name
            ),
            Status::Incomplete(missing) => info!(
                "sweep: {}: marked finished but {} is missing: evaluating again",
                c.name,
                missing[0].display()
            ),
        }
        todo.push(pending);
    }
    if let Some(first) = todo.first()
        && !first.job.ignored_keys.is_empty()
    {
        info!(
            "{}: ignoring keys that have no effect here: {}",
            cfg.file.display(),
            first.job.ignored_keys.join(", ")
        );
    }
    let evaluated: Vec<String> = todo.iter().map(|p| p.checkpoint.name.clone()).collect();
    if todo.is_empty() {
        info!("sweep: every checkpoint is finished; writing the report");
    } else {
        info!(
            "sweep: evaluating {} of {} checkpoints: {}",
            todo.len(),
            cfg.checkpoints.len(),
            evaluated.join(", ")
        );
        evaluate(todo, setup).await?;
    }
    // Rows in the sweep's order (a list keeps its order), other result folders after them.
    let order: Vec<String> = cfg.checkpoints.iter().map(|c| c.name.clone()).collect();
    let report = crate::report::build_report_ordered(&cfg.output_dir, &order)?;
    info!(
        "sweep: report of {} checkpoints in {}",
        report.checkpoints.len(),
        report.summary_md.display()
    );
    Ok(SweepReport {
        evaluated,
        skipped,
        report,
    })
}

/// A checkpoint to evaluate, with its run file.
struct Pending {
    checkpoint: Checkpoint,
    dir: PathBuf,
    job: JobConfig,
    digest: String,
}

impl Pending {
    fn new(cfg: &SweepConfig, c: &Checkpoint) -> Result<Self, SweepError> {
        let yaml = cfg.checkpoint_yaml(c);
        Ok(Pending {
            checkpoint: c.clone(),
            dir: cfg.checkpoint_dir(c),
            job: cfg.checkpoint_job(c)?,
            digest: state::digest(&yaml),
        })
    }
}

/// One checkpoint in the shared scheduler: its parts' task indices and journals.
struct Scheduled {
    pending: Pending,
    step1: Option<(Step1Config, usize, Arc<Journal>)>,
    step2: Option<(Step2Config, usize)>,
    step3: Option<Step3Part>,
    step4: Option<Step4Part>,
    /// `(task name, journal)` of every journaled task: where the fleet's results go.
    journaled: Vec<(String, Arc<Journal>)>,
}

struct Step3Part {
    cfg: Step3Config,
    planned: Arc<Vec<(Step3Task, TaskPlan)>>,
    /// Per planned task: its scheduler index and its items' plan indices in queue order.
    tasks: Vec<(usize, Vec<usize>)>,
    journal: Arc<Journal>,
}

impl Scheduled {
    fn tasks(&self) -> Vec<usize> {
        let mut t: Vec<usize> = self.step1.iter().map(|s| s.1).collect();
        t.extend(self.step2.iter().map(|s| s.1));
        if let Some(s3) = &self.step3 {
            t.extend(s3.tasks.iter().map(|(i, _)| *i));
        }
        if let Some(s4) = &self.step4 {
            t.extend(s4.tasks());
        }
        t
    }

    fn journals(&self) -> Vec<Arc<Journal>> {
        let mut j: Vec<Arc<Journal>> = self.step1.iter().map(|s| s.2.clone()).collect();
        j.extend(self.step3.iter().map(|s| s.journal.clone()));
        j.extend(self.step4.iter().map(|s| s.journal().clone()));
        j
    }

    fn complete(&self, s: &Scheduler) -> bool {
        self.tasks().into_iter().all(|t| s.task_complete(t))
    }

    /// Step 4's generations are in but not yet written (see [`Step4Part::write_generations`]).
    fn step4_generated(&self, s: &Scheduler) -> bool {
        self.step4
            .as_ref()
            .is_some_and(|p| !p.generations_written() && p.generated(s))
    }
}

/// Data read once for all checkpoints that share it (same data keys / same step-3 plan keys).
#[derive(Default)]
struct Memo {
    samples: HashMap<String, Arc<Vec<Sample>>>,
    plans: HashMap<String, Arc<Vec<(Step3Task, TaskPlan)>>>,
}

/// Evaluates `todo` (see the module docs).
async fn evaluate(todo: Vec<Pending>, setup: &FleetSetup) -> Result<(), RunError> {
    // The fleet keys of the first checkpoint's first step (one fleet serves them all).
    let first_keys = todo.first().and_then(|p| p.job.steps.first());
    let mut setup = setup.merged_with(first_keys.map(|s| s.fleet_keys()).unwrap_or_default());
    setup.journal = None;
    let mut sched = Scheduler::new(setup.options.sched.clone());
    let mut memo = Memo::default();
    let mut runs = Vec::new();
    for pending in todo {
        state::unmark(&pending.dir).map_err(|e| {
            RunError::Scoring(format!(
                "{}: {e}",
                pending.dir.join(state::MARKER).display()
            ))
        })?;
        runs.push(schedule(pending, &mut sched, &mut memo, setup.restart).await?);
    }
    // Preloaded after every feed is set, so that step-1 results kept in a journal feed step 2.
    let mut routes: HashMap<String, ResultSink> = HashMap::new();
    let mut journals = Vec::new();
    for run in &runs {
        journals.extend(run.journals());
        for journal in run.journals() {
            journal.preload(&mut sched)?;
        }
        for (name, journal) in &run.journaled {
            routes.insert(name.clone(), journal.sink());
        }
    }
    let mut fleet = RunningFleet::start_with(sched, &setup, "sweep", |fleet| {
        // The journals' timing lines: generation time from the first model ready, as a step's.
        for journal in journals {
            let clock = fleet.clone();
            journal.set_clock(move || clock.model_ready_at().or_else(|| clock.first_lease_at()));
        }
        fleet.set_result_sink(Box::new(move |task, result| {
            if let Some(sink) = routes.get(&task) {
                sink(task, result);
            }
        }));
    })
    .await?;
    let result = finish_as_completed(&mut fleet, runs).await;
    fleet.stop(result.is_ok()).await;
    if let Err(e) = result {
        return Err(match e {
            RunError::Interrupted { signal, .. } => RunError::Interrupted {
                signal,
                resume: "finished checkpoints are kept and the others' results are saved in \
                         their folders' journals; run the same command again to resume"
                    .into(),
            },
            other => other,
        });
    }
    Ok(())
}

/// Waits for checkpoints to complete and finishes each (in completion order), writing a
/// checkpoint's step-4 generations as soon as they are in; returns how the fleet part ended.
async fn finish_as_completed(
    fleet: &mut RunningFleet,
    mut runs: Vec<Scheduled>,
) -> Result<(), RunError> {
    let completed: Mutex<HashMap<usize, Instant>> = Mutex::new(HashMap::new());
    while !runs.is_empty() {
        fleet
            .wait_until(|s| {
                let mut done = completed.lock().unwrap_or_else(|e| e.into_inner());
                for t in 0..s.task_count() {
                    if s.task_complete(t) {
                        done.entry(t).or_insert_with(Instant::now);
                    }
                }
                runs.iter().any(|r| r.complete(s) || r.step4_generated(s))
            })
            .await?;
        for run in &mut runs {
            if fleet.fleet().with_sched(|s| run.step4_generated(s))
                && let Some(part) = &mut run.step4
            {
                part.write_generations(fleet.fleet())?;
            }
        }
        let (done, rest): (Vec<Scheduled>, Vec<Scheduled>) = {
            let fl = fleet.fleet();
            runs.into_iter()
                .partition(|r| fl.with_sched(|s| r.complete(s)))
        };
        runs = rest;
        for run in done {
            let times = completed.lock().unwrap_or_else(|e| e.into_inner()).clone();
            finish(fleet, run, &times).await?;
        }
    }
    Ok(())
}

/// Adds `pending`'s tasks to `sched` (named `<checkpoint>/<task>`) and opens their journals.
async fn schedule(
    pending: Pending,
    sched: &mut Scheduler,
    memo: &mut Memo,
    restart: bool,
) -> Result<Scheduled, RunError> {
    let name = pending.checkpoint.name.clone();
    let mut run = Scheduled {
        step1: None,
        step2: None,
        step3: None,
        step4: None,
        journaled: Vec::new(),
        pending,
    };
    // Step 2's task, made with step 1's so that both share step 1's journal (as in run::chain).
    let mut step2_spec = None;
    for step in run.pending.job.steps.clone() {
        match step {
            StepConfig::Step1(cfg) => {
                let samples = memo.samples(&cfg)?;
                let mut task = step1_task(&cfg, &samples);
                task.name = format!("{name}/{}", task.name);
                step2_spec = run.pending.job.steps.iter().find_map(|s| match s {
                    StepConfig::Step2(cfg2) => Some(TaskSpec {
                        name: format!("{name}/{STEP2_TASK}"),
                        template: step2_lease(cfg2),
                        items: Vec::new(),
                    }),
                    _ => None,
                });
                let (journal_name, journaled) = match &step2_spec {
                    Some(s2) => (CHAIN_JOURNAL, vec![task.clone(), s2.clone()]),
                    None => ("step1", vec![task.clone()]),
                };
                let journal = Arc::new(Journal::open(
                    &cfg.output_dir,
                    journal_name,
                    &journaled,
                    restart,
                )?);
                for spec in &journaled {
                    run.journaled.push((spec.name.clone(), journal.clone()));
                }
                let index = sched.add_task(task)?;
                run.step1 = Some((cfg, index, journal));
            }
            StepConfig::Step2(cfg) => {
                // The config checked that step 1 is listed, and steps run in the listed order.
                let (Some((_, producer, _)), Some(spec)) = (&run.step1, step2_spec.take()) else {
                    return Err(RunError::Scoring(format!(
                        "{name}: step2 in a sweep needs step1 before it"
                    )));
                };
                let consumer = sched.add_streaming_task(spec)?;
                sched.feed(*producer, consumer, embed_from_generate())?;
                run.step2 = Some((cfg, consumer));
            }
            StepConfig::Step3(cfg) => {
                let planned = memo.plans(&cfg).await?;
                let save_dir = cfg
                    .save_dir
                    .clone()
                    .unwrap_or_else(|| run.pending.dir.clone());
                let mut specs = Vec::new();
                let mut orders = Vec::new();
                for (task, plan) in planned.iter() {
                    let mut spec = step3_task(&cfg, task, plan);
                    spec.name = format!("{name}/{}", spec.name);
                    orders.push(
                        spec.items
                            .iter()
                            .filter_map(|i| i.item_id.parse().ok())
                            .collect::<Vec<usize>>(),
                    );
                    specs.push(spec);
                }
                let journal = Arc::new(Journal::open(&save_dir, "step3", &specs, restart)?);
                let mut tasks = Vec::new();
                for (spec, order) in specs.into_iter().zip(orders) {
                    run.journaled.push((spec.name.clone(), journal.clone()));
                    tasks.push((sched.add_task(spec)?, order));
                }
                run.step3 = Some(Step3Part {
                    cfg,
                    planned,
                    tasks,
                    journal,
                });
            }
            StepConfig::Step4(cfg) => {
                // A sweep generates with each checkpoint; a later stage has nothing to start from.
                if cfg.stage != Step4Stage::Generate {
                    return Err(RunError::Scoring(format!(
                        "{name}: step4 in a sweep runs from stage generate (each checkpoint \
                         generates its replies); remove step4.stage, or run `evalfleet step4 \
                         --stage ...` on the checkpoint's CharacterEval folder"
                    )));
                }
                let part = schedule_step4(&cfg, sched, &format!("{name}/"), restart)?;
                for task in part.task_names() {
                    run.journaled.push((task.clone(), part.journal().clone()));
                }
                run.step4 = Some(part);
            }
        }
    }
    Ok(run)
}

/// Step 2's item for a step-1 result, under the same id (as `run::chain` feeds it).
fn embed_from_generate() -> Derive {
    Box::new(|_item, outcome| match outcome {
        Outcome::Generate(g) => Some(embed_payload(&g.label, &g.predict)),
        _ => None,
    })
}

impl Memo {
    /// The samples of a step-1 config, loaded once per distinct data keys.
    fn samples(&mut self, cfg: &Step1Config) -> Result<Arc<Vec<Sample>>, RunError> {
        let key = format!("{:?}", cfg.data);
        if let Some(s) = self.samples.get(&key) {
            return Ok(s.clone());
        }
        let samples = Arc::new(datasets::load_for(&cfg.data)?);
        info!(
            "sweep: step1: {} samples from {}",
            samples.len(),
            cfg.data.dataset.join(", ")
        );
        self.samples.insert(key, samples.clone());
        Ok(samples)
    }

    /// The step-3 plans of a config, planned once per distinct plan keys (the plan does not
    /// depend on the model).
    async fn plans(
        &mut self,
        cfg: &Step3Config,
    ) -> Result<Arc<Vec<(Step3Task, TaskPlan)>>, RunError> {
        let key = format!(
            "{:?}|{:?}|{}|{:?}|{}",
            cfg.task_dir, cfg.tasks, cfg.n_shot, cfg.few_shot_order, cfg.seed
        );
        if let Some(p) = self.plans.get(&key) {
            return Ok(p.clone());
        }
        let owned = cfg.clone();
        let planned = tokio::task::spawn_blocking(move || plan_all(&owned))
            .await
            .map_err(|e| RunError::Scoring(format!("planning thread failed: {e}")))??;
        let planned = Arc::new(planned);
        self.plans.insert(key, planned.clone());
        Ok(planned)
    }
}

/// Writes a completed checkpoint's files (step 1, then step 2's scores into them, then step 3,
/// then step 4), records its steps finished in their journals, marks it finished, and removes
/// the journals.
async fn finish(
    fleet: &RunningFleet,
    mut run: Scheduled,
    completed: &HashMap<usize, Instant>,
) -> Result<(), RunError> {
    let name = run.pending.checkpoint.name.clone();
    let outcomes_of = |task: usize| -> Vec<ItemOutcome> {
        fleet
            .fleet()
            .with_sched(|s| s.outcomes(task).iter().flatten().cloned().collect())
    };
    if let Some((cfg, task, journal)) = &run.step1 {
        // A resumed checkpoint adds its earlier runs' generation time, as a resumed step 1 does.
        let prior = journal.prior_elapsed_of(&format!("{name}/step1"));
        let runtime = step1_runtime(fleet, *task, completed) + prior;
        let report = finish_step1(cfg, outcomes_of(*task), runtime).await?;
        info!("sweep: {name}:");
        step1::log_report(&report);
    }
    if let Some((cfg, task)) = &run.step2 {
        let rows = crate::step2::read_step1_inputs(&cfg.output_dir)?;
        let outcomes: Vec<(String, ItemOutcome)> = fleet.fleet().with_sched(|s| {
            s.items(*task)
                .iter()
                .zip(s.outcomes(*task))
                .filter_map(|(item, o)| Some((item.item_id.clone(), o.clone()?)))
                .collect()
        });
        finish_step2(cfg, &rows, outcomes)?;
    }
    if let Some(s3) = &run.step3 {
        let dir = s3
            .cfg
            .save_dir
            .clone()
            .unwrap_or_else(|| run.pending.dir.clone());
        for ((task, plan), (index, order)) in s3.planned.iter().zip(&s3.tasks) {
            let items = crate::run::step3::choice_results(plan, order, outcomes_of(*index))?;
            let results = TaskResults::from_items(plan, &items)?;
            info!("sweep: {name}: {}:\n{}", task.name, results.results_log());
            results.replace(&dir.join(&task.name))?;
        }
    }
    if let Some(part) = &mut run.step4 {
        part.finish(fleet.fleet())?;
    }
    for journal in run.journals() {
        journal.complete()?;
        info!("sweep: {name}: {}", journal.describe_counts());
    }
    mark_done(&run.pending)?;
    // The checkpoint is marked finished: its journals can go (until now a re-run would have
    // taken every result from them).
    crate::journal::remove_finished(run.pending.job.output_dirs().iter().map(PathBuf::as_path))?;
    Ok(())
}

/// Step 1's `predict_runtime` for the checkpoint whose step-1 task is `task` (see the module
/// docs): from the completion of the task before it (or the first model ready) to its own.
fn step1_runtime(
    fleet: &RunningFleet,
    task: usize,
    completed: &HashMap<usize, Instant>,
) -> Duration {
    let end = completed.get(&task).copied().unwrap_or_else(Instant::now);
    let f = fleet.fleet();
    let ready = f.model_ready_at().or_else(|| f.first_lease_at());
    let previous = task
        .checked_sub(1)
        .and_then(|t| completed.get(&t).copied())
        .filter(|&p| p < end);
    let start = match (previous, ready) {
        (Some(p), Some(r)) => p.max(r),
        (Some(p), None) => p,
        (None, Some(r)) => r,
        (None, None) => end,
    };
    end.saturating_duration_since(start)
}

fn mark_done(pending: &Pending) -> Result<(), RunError> {
    state::mark_done(&pending.dir, &pending.checkpoint.path, &pending.digest)?;
    info!("sweep: {}: finished", pending.checkpoint.name);
    Ok(())
}
