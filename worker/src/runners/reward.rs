//! The reward runner (step 4's scores, docs/FIDELITY.md §4.5): the lease's reward texts, scored
//! by [`crate::score::reward::score_texts`] with the lease's cutoff length.

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use pb::work_item::Payload;

use super::{LeaseKind, Results, items_of};
use crate::score::reward::{RewardScorer, score_texts};

/// Scores every reward item of `lease`, `chunk` texts per call of the model.
pub fn run(scorer: &RewardScorer, lease: &pb::Lease, chunk: usize, results: &mut Results) {
    let cutoff = lease.prompt.as_ref().map_or(0, |p| p.cutoff_len as usize);
    let items = items_of(lease, LeaseKind::Reward, results, |p| match p {
        Payload::Reward(r) => Some(r.text.as_str()),
        _ => None,
    });
    score_texts(
        scorer,
        &items,
        cutoff,
        chunk,
        &mut |item_id, score| match score {
            Ok(s) => results.done(
                item_id,
                Outcome::Reward(pb::RewardResult {
                    sigmoid: s.sigmoid,
                    input_tokens: s.input_tokens,
                    truncated: s.truncated,
                }),
            ),
            Err(e) => results.failed(item_id, e),
        },
    );
}
