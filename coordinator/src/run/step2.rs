//! Step 2 (semantic similarity, docs/FIDELITY.md §2): the step-1 rows of `output_dir` become one
//! embed item each (item id = row index), queued longest first so that each lease batches texts of
//! similar length; the fleet scores them on embedding workers, and the scores, put back in row
//! order, are written into the step-1 files with the distribution ([`crate::step2`]).
//!
//! Chained after step 1 in one fleet (`run::chain`), the same lease template and items are fed
//! from step 1's results as they arrive, and [`finish_step2`] writes the files the same way.

use std::slice;

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use tracing::info;

use super::{FleetSetup, RunError, absolute, run_fleet};
use crate::config::Step2Config;
use crate::output::PredictionRow;
use crate::sched::{ItemOutcome, TaskSpec};
use crate::step2::{self, Step2Outputs};

/// Runs step 2 as `cfg` describes; the YAML's `workers` / `batch_size` apply where the command
/// line left them unset.
pub async fn run_step2(cfg: &Step2Config, setup: &FleetSetup) -> Result<Step2Outputs, RunError> {
    // Both step-1 files are checked before any worker starts.
    let rows = step2::read_step1_inputs(&cfg.output_dir)?;
    info!(
        "step2: {} rows from {}",
        rows.len(),
        cfg.output_dir.display()
    );
    let mut setup = setup.merged_with(cfg.fleet_keys());
    let task = step2_task(cfg, &rows);
    // Outcomes come back in the task's item order (queue order); the ids say which row.
    let ids: Vec<String> = task.items.iter().map(|i| i.item_id.clone()).collect();
    let journal = setup.attach_journal(&cfg.output_dir, "step2", slice::from_ref(&task))?;
    let run = run_fleet(vec![task], &setup, "step2").await?;
    let outcomes = run.outcomes.into_iter().next().unwrap_or_default();
    let outputs = finish_step2(cfg, &rows, ids.into_iter().zip(outcomes))?;
    journal.complete()?;
    Ok(outputs)
}

/// Puts the scores of `outcomes` (`(item id, outcome)` in any order) back in row order and writes
/// them into the step-1 files of `cfg.output_dir`, whose `rows` they score; prints the summary.
pub(crate) fn finish_step2(
    cfg: &Step2Config,
    rows: &[PredictionRow],
    outcomes: impl IntoIterator<Item = (String, ItemOutcome)>,
) -> Result<Step2Outputs, RunError> {
    let results = embed_results(outcomes)?;
    let scores = step2::plan::scores_in_row_order(&cfg.output_dir, rows.len(), results)?;
    let outputs = step2::write_step2(&cfg.output_dir, rows, &scores)?;
    println!("{}", outputs.summary);
    Ok(outputs)
}

/// The step-2 task: one embed item per row, in [`step2::plan::queue_order`].
pub fn step2_task(cfg: &Step2Config, rows: &[PredictionRow]) -> TaskSpec {
    let items = step2::plan::queue_order(rows)
        .into_iter()
        .map(|i| pb::WorkItem {
            item_id: i.to_string(),
            payload: Some(embed_payload(&rows[i].label, &rows[i].predict)),
        })
        .collect();
    TaskSpec {
        name: STEP2_TASK.into(),
        template: step2_lease(cfg),
        items,
    }
}

/// The name of the step-2 task.
pub const STEP2_TASK: &str = "step2";

/// What every step-2 lease shares: the embedding model (f32, no generation parameters).
pub fn step2_lease(cfg: &Step2Config) -> pb::Lease {
    let model_path = absolute(&cfg.model_path);
    pb::Lease {
        model: Some(pb::ModelSpec {
            key: format!("embed|{model_path}"),
            model_path,
            adapter_paths: Vec::new(),
            dtype: "f32".into(),
        }),
        ..Default::default()
    }
}

/// The embed item of one (label, predict) row.
pub fn embed_payload(label: &str, predict: &str) -> pb::work_item::Payload {
    pb::work_item::Payload::Embed(pb::EmbedItem {
        label: label.to_string(),
        predict: predict.to_string(),
    })
}

/// `(item id, score)` of every item, or an error naming the rows that failed.
fn embed_results(
    outcomes: impl IntoIterator<Item = (String, ItemOutcome)>,
) -> Result<Vec<(String, f32)>, RunError> {
    super::collect_outcomes("row", outcomes, |id, outcome| match outcome {
        Outcome::Embed(e) => Some((id.to_string(), e.score)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_rows_longest_first_with_an_embed_model() {
        let cfg = Step2Config {
            model_path: "/m/emb".into(),
            output_dir: "/o".into(),
            batch_size: None,
            workers: None,
        };
        let row = |label: &str, predict: &str| PredictionRow {
            label: label.into(),
            predict: predict.into(),
        };
        let task = step2_task(&cfg, &[row("a", "b"), row("long label", "x"), row("", "")]);
        let ids: Vec<&str> = task.items.iter().map(|i| i.item_id.as_str()).collect();
        assert_eq!(ids, ["1", "0", "2"]);
        let Some(pb::work_item::Payload::Embed(e)) = &task.items[0].payload else {
            panic!("not an embed item")
        };
        assert_eq!((e.label.as_str(), e.predict.as_str()), ("long label", "x"));
        let model = task.template.model.as_ref().unwrap();
        assert_eq!(
            (model.key.as_str(), model.dtype.as_str()),
            ("embed|/m/emb", "f32")
        );
        assert!(task.template.generation.is_none());
    }

    #[test]
    fn results_carry_their_row_ids_and_failures_are_named() {
        let done = |score| ItemOutcome::Done(Outcome::Embed(pb::EmbedResult { score }));
        let got = embed_results([("2".into(), done(0.5)), ("0".into(), done(-0.25))]);
        assert_eq!(got.unwrap(), [("2".into(), 0.5), ("0".into(), -0.25)]);
        let failed = ItemOutcome::Failed {
            message: "no modules.json".into(),
            attempts: 3,
        };
        let err = embed_results([("4".into(), failed)]).unwrap_err();
        assert!(err.to_string().contains("row 4: no modules.json"), "{err}");
    }
}
