//! The choice runner (step 3, docs/FIDELITY.md §3.3, §3.4): the lease's questions, converted into
//! [`ChoiceQuestion`]s and scored by [`crate::score::choice`] with the model's prefix cache.

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use pb::work_item::Payload;

use super::{LeaseKind, Results, items_of, messages};
use crate::Result;
use crate::models::Decoder;
use crate::score::choice::{
    ChoiceQuestion, PrefixCache, RowCache, ScoreOptions, prepare_job, score_jobs,
};
use crate::tokenize::PromptBuilder;

/// A protobuf choice item as the scorer's question.
pub fn question(item: &pb::ChoiceItem) -> ChoiceQuestion {
    ChoiceQuestion {
        messages: messages(&item.messages),
        system: item.system.clone(),
        shared_prefix_pairs: item.shared_prefix_pairs as usize,
        choice_texts: item.choice_texts.clone(),
    }
}

/// Scores every question of `lease`: each result is sent as soon as its batch is done; a
/// question that cannot be prepared fails alone. A decoder failure fails the lease (its
/// remaining items go back to the queue).
pub fn run<D: Decoder<Cache: RowCache>>(
    decoder: &D,
    builder: &PromptBuilder,
    lease: &pb::Lease,
    opts: &ScoreOptions,
    prefixes: &mut PrefixCache<D::Cache>,
    results: &mut Results,
) -> Result<()> {
    let items = items_of(lease, LeaseKind::Choice, results, |p| match p {
        Payload::Choice(c) => Some(c),
        _ => None,
    });
    let mut jobs = Vec::with_capacity(items.len());
    for (item_id, item) in items {
        match prepare_job(item_id, &question(item), builder, decoder.vocab_size()) {
            Ok(job) => jobs.push(job),
            Err(e) => results.failed(item_id, &e),
        }
    }
    score_jobs(decoder, &jobs, opts, prefixes, &mut |i, probabilities| {
        let job = &jobs[i];
        let choice = pb::ChoiceResult {
            probabilities,
            prompt_tokens: job.prompt_ids.len() as u32,
        };
        results.done(&job.item_id, Outcome::Choice(choice));
    })
}
