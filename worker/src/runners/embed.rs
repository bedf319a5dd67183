//! The embed runner (step 2, docs/FIDELITY.md §2): the lease's (label, predict) pairs, scored by
//! [`Embedder::score_pairs`] `chunk` pairs at a time.

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use pb::work_item::Payload;

use super::{LeaseKind, Results, items_of};
use crate::embed::Embedder;

/// Scores every embed item of `lease`, sending each chunk's results as soon as it is scored. A
/// failed chunk fails its items only. Returns how many pairs were scored or failed by the model.
pub fn run(embedder: &Embedder, lease: &pb::Lease, chunk: usize, results: &mut Results) -> usize {
    let pairs = items_of(lease, LeaseKind::Embed, results, |p| match p {
        Payload::Embed(e) => Some((e.label.as_str(), e.predict.as_str())),
        _ => None,
    });
    for batch in pairs.chunks(chunk.max(1)) {
        let texts: Vec<(&str, &str)> = batch.iter().map(|(_, texts)| *texts).collect();
        match embedder.score_pairs(&texts) {
            Ok(scores) => {
                for ((item_id, _), score) in batch.iter().zip(scores) {
                    results.done(item_id, Outcome::Embed(pb::EmbedResult { score }));
                }
            }
            Err(e) => batch
                .iter()
                .for_each(|(item_id, _)| results.failed(item_id, &e)),
        }
    }
    pairs.len()
}
