//! Step 1 then step 2 on the same `output_dir` in one fleet (`evalfleet run` with
//! `steps: [step1, step2]`): step 2's embed items are fed from step 1's results as they arrive
//! ([`crate::sched`]'s feeds), so a worker loads the embedder and scores pairs while generation
//! is still running, instead of a second fleet starting after step 1 ends.
//!
//! The files are the same as running the two steps one after the other: step 1's three files are
//! written as soon as step 1 completes (step 2 goes on meanwhile), then step 2 reads them back and
//! merges its scores into them exactly as `evalfleet step2` does ([`super::step2`]). If the job
//! stops during step 2, the step-1 files stay as step 1 wrote them (step 2 replaces each file
//! atomically, at its very end).
//!
//! Workers keep both models (the decoder and the embedder are cached apart), so the interleaved
//! leases load each model once per worker.
//!
//! Both steps' results go to one journal (`crate::journal`, [`CHAIN_JOURNAL`] in `output_dir`)
//! as they arrive: a chained run that is stopped or killed resumes, the same command computing
//! only the step-1 and step-2 items the journal lacks (the step-2 items of journaled step-1
//! results are fed again on resume, and those with a journaled score are not recomputed). Step
//! 1's `predict_runtime` adds step 1's generation time in the earlier runs. The journal is
//! removed once step 2's files are written.

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use tracing::info;

use super::step1::{self, Step1Report, finish_step1, step1_task};
use super::step2::{STEP2_TASK, embed_payload, finish_step2, step2_lease};
use super::{FleetSetup, RunError, RunningFleet};
use crate::config::{Step1Config, Step2Config};
use crate::datasets;
use crate::journal::Journal;
use crate::sched::{Derive, Event, ItemOutcome, Scheduler, TaskSpec};
use crate::step2::{self, Step2Outputs};

/// What the chained steps produced.
#[derive(Debug)]
pub struct ChainReport {
    pub step1: Step1Report,
    pub step2: Step2Outputs,
    /// The scheduler's timeline (task 0 is step 1, task 1 step 2): shows when step 2 started.
    pub timeline: Vec<Event>,
}

/// Index of step 1's task in the chain's scheduler.
pub const STEP1: usize = 0;
/// Index of step 2's task in the chain's scheduler.
pub const STEP2: usize = 1;
/// The name [`step1_task`] gives step 1's task (its timing lines in the journal).
const STEP1_TASK: &str = "step1";
/// The chain's journal name (`<output_dir>/.evalfleet-journal/step1+step2.jsonl`).
pub const CHAIN_JOURNAL: &str = "step1+step2";

/// Whether `step2` can be chained onto `step1`: step 2 scores the files step 1 writes.
pub fn can_chain(step1: &Step1Config, step2: &Step2Config) -> bool {
    step1.output_dir == step2.output_dir
}

/// Runs step 1 and, fed from its results, step 2 in one fleet (see the module docs). The
/// YAMLs' `workers` / `batch_size` (step 1's first) apply where the command line left them unset.
pub async fn run_chain(
    cfg1: &Step1Config,
    cfg2: &Step2Config,
    setup: &FleetSetup,
) -> Result<ChainReport, RunError> {
    let samples = datasets::load_for(&cfg1.data)?;
    info!(
        "step1+step2: {} samples from {}; step 2 starts as step-1 results arrive",
        samples.len(),
        cfg1.data.dataset.join(", ")
    );
    let mut setup = setup.merged_with(cfg1.fleet_keys().or(cfg2.fleet_keys()));
    let tasks = [step1_task(cfg1, &samples), step2_stream_task(cfg2)];
    let journal = setup.attach_journal(&cfg1.output_dir, CHAIN_JOURNAL, &tasks)?;
    let sched = chained_scheduler(&setup, tasks)?;
    let mut fleet = RunningFleet::start(sched, &setup, "step1+step2").await?;
    let result = run_steps(&mut fleet, &journal, cfg1, cfg2).await;
    fleet.stop(result.is_ok()).await;
    let (step1, step2) = match result {
        Ok(steps) => steps,
        // Flushes the journal and adds what an interruption saved to the error.
        Err(e) => {
            return fleet
                .journal_stopped(Err(e))
                .map(|()| unreachable!("still an error"));
        }
    };
    // Logs how many results were computed and how many came from the journal.
    fleet.journal_stopped(Ok(()))?;
    journal.complete()?;
    let timeline = fleet.fleet().with_sched(|s| s.timeline().to_vec());
    Ok(ChainReport {
        step1,
        step2,
        timeline,
    })
}

/// Step 2's task in the chain: no items until step 1's results feed it.
fn step2_stream_task(cfg2: &Step2Config) -> TaskSpec {
    TaskSpec {
        name: STEP2_TASK.into(),
        template: step2_lease(cfg2),
        items: Vec::new(),
    }
}

/// A scheduler with step 1's task and the streaming step-2 task fed from it.
fn chained_scheduler(
    setup: &FleetSetup,
    [step1, step2]: [TaskSpec; 2],
) -> Result<Scheduler, RunError> {
    let mut sched = Scheduler::new(setup.options.sched.clone());
    debug_assert_eq!(step1.name, STEP1_TASK);
    let producer = sched.add_task(step1)?;
    let consumer = sched.add_streaming_task(step2)?;
    debug_assert_eq!((producer, consumer), (STEP1, STEP2));
    sched.feed(producer, consumer, embed_from_generate())?;
    Ok(sched)
}

/// Step 2's item for a step-1 result: its (label, predict) as step 1 writes them to
/// generated_predictions.jsonl, under the same id (the sample index is the row index).
fn embed_from_generate() -> Derive {
    Box::new(|_item, outcome| match outcome {
        Outcome::Generate(g) => Some(embed_payload(&g.label, &g.predict)),
        _ => None,
    })
}

/// Waits for step 1, writes its files, waits for step 2, merges its scores.
async fn run_steps(
    fleet: &mut RunningFleet,
    journal: &Journal,
    cfg1: &Step1Config,
    cfg2: &Step2Config,
) -> Result<(Step1Report, Step2Outputs), RunError> {
    fleet.wait_until(|s| s.task_complete(STEP1)).await?;
    // Step 1's own time: this run's, plus step 1's in the runs before (not step 2's after it).
    let elapsed = fleet.run_elapsed() + journal.prior_elapsed_of(STEP1_TASK);
    let (outcomes, step2_done, step2_total) = fleet.fleet().with_sched(|s| {
        let outcomes: Vec<ItemOutcome> = s.outcomes(STEP1).iter().flatten().cloned().collect();
        let done = s.outcomes(STEP2).iter().flatten().count();
        (outcomes, done, s.items(STEP2).len())
    });
    info!("step1: all items done; step 2 has already scored {step2_done} of {step2_total} pairs");
    let report1 = finish_step1(cfg1, outcomes, elapsed).await?;
    step1::log_report(&report1);

    fleet.wait_until(|s| s.progress().is_complete()).await?;
    // Step 2 as `evalfleet step2` would do it: from the files step 1 just wrote.
    let rows = step2::read_step1_inputs(&cfg2.output_dir)?;
    let outcomes: Vec<(String, ItemOutcome)> = fleet.fleet().with_sched(|s| {
        s.items(STEP2)
            .iter()
            .zip(s.outcomes(STEP2))
            .filter_map(|(item, o)| Some((item.item_id.clone(), o.clone()?)))
            .collect()
    });
    let report2 = finish_step2(cfg2, &rows, outcomes)?;
    Ok((report1, report2))
}
