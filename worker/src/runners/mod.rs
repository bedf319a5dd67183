//! One runner per kind of lease: generate (step 1, step 4's replies), embed (step 2), choice
//! (step 3) and reward (step 4's scores). The executor ([`crate::tasks`]) loads the lease's model
//! and hands it to the runner of the lease's [`LeaseKind`]; the runner is the only place that
//! reads the lease's protobuf items: it converts them into the requests of its engine or scorer
//! (an item of another kind fails alone), calls it, and turns each outcome back into the
//! `ItemResult` the coordinator gets. The engine ([`crate::engine`]), the embedder
//! ([`crate::embed`]) and the scorers ([`crate::score`]) never see protobuf.

pub mod choice;
pub mod embed;
pub mod generate;
pub mod reward;

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use pb::work_item::Payload;

use crate::Error;
use crate::error::item_error;

/// What a lease asks for, by its items' kind (a lease holds one task's items, all of one kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    Generate,
    Embed,
    Choice,
    Reward,
}

impl LeaseKind {
    /// The kind of `lease`'s first item; a lease without items is a generate lease (it has
    /// nothing to run either way).
    pub fn of(lease: &pb::Lease) -> LeaseKind {
        match lease.items.first().and_then(|i| i.payload.as_ref()) {
            Some(Payload::Embed(_)) => LeaseKind::Embed,
            Some(Payload::Choice(_)) => LeaseKind::Choice,
            Some(Payload::Reward(_)) => LeaseKind::Reward,
            Some(Payload::Generate(_)) | None => LeaseKind::Generate,
        }
    }

    fn items(self) -> &'static str {
        match self {
            LeaseKind::Generate => "generate",
            LeaseKind::Embed => "embed",
            LeaseKind::Choice => "choice",
            LeaseKind::Reward => "reward",
        }
    }
}

/// Where a runner sends each item's outcome: the coordinator's `ItemResult`s of one lease.
pub struct Results<'a> {
    lease: &'a pb::Lease,
    sink: &'a mut dyn FnMut(pb::ItemResult),
}

impl<'a> Results<'a> {
    pub fn new(lease: &'a pb::Lease, sink: &'a mut dyn FnMut(pb::ItemResult)) -> Self {
        Results { lease, sink }
    }

    /// Item `item_id`'s result.
    pub fn done(&mut self, item_id: &str, outcome: Outcome) {
        (self.sink)(pb::ItemResult {
            lease_id: self.lease.lease_id,
            item_id: item_id.to_string(),
            outcome: Some(outcome),
        });
    }

    /// Item `item_id` cannot be run (its own fault, not retried).
    pub fn failed(&mut self, item_id: &str, e: &Error) {
        (self.sink)(item_error(self.lease, item_id, e));
    }

    /// Every item of the lease fails with `e` (a lease-wide cause such as an unknown template).
    pub fn fail_all(&mut self, e: &Error) {
        for item in &self.lease.items {
            (self.sink)(item_error(self.lease, &item.item_id, e));
        }
    }
}

/// The items of `lease` that are of `kind` (`pick` returns their payload), with their ids;
/// every other item fails alone, saying what the lease holds.
fn items_of<'l, T>(
    lease: &'l pb::Lease,
    kind: LeaseKind,
    results: &mut Results,
    pick: impl Fn(&'l Payload) -> Option<T>,
) -> Vec<(&'l str, T)> {
    let mut picked = Vec::with_capacity(lease.items.len());
    for item in &lease.items {
        match item.payload.as_ref().and_then(&pick) {
            Some(payload) => picked.push((item.item_id.as_str(), payload)),
            None => results.failed(
                &item.item_id,
                &Error::Item {
                    item: item.item_id.clone(),
                    message: format!("a {0} lease holds only {0} items", kind.items()),
                },
            ),
        }
    }
    picked
}

/// The chat turns of a protobuf conversation.
fn messages(turns: &[pb::ChatMessage]) -> Vec<crate::tokenize::ChatMessage> {
    turns
        .iter()
        .map(|m| crate::tokenize::ChatMessage::new(&m.role, &m.content))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(payloads: Vec<Option<Payload>>) -> pb::Lease {
        pb::Lease {
            lease_id: 7,
            items: payloads
                .into_iter()
                .enumerate()
                .map(|(i, payload)| pb::WorkItem {
                    item_id: i.to_string(),
                    payload,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_items_kind_is_the_leases_and_other_items_fail_alone() {
        let reward = || Some(Payload::Reward(pb::RewardItem::default()));
        let embed = Some(Payload::Embed(pb::EmbedItem::default()));
        let l = lease(vec![reward(), embed, reward(), None]);
        assert_eq!(LeaseKind::of(&l), LeaseKind::Reward);
        assert_eq!(LeaseKind::of(&lease(vec![])), LeaseKind::Generate);
        let mut sent = Vec::new();
        let mut sink = |r: pb::ItemResult| sent.push(r);
        let mut results = Results::new(&l, &mut sink);
        let picked = items_of(&l, LeaseKind::Reward, &mut results, |p| match p {
            Payload::Reward(r) => Some(r),
            _ => None,
        });
        assert_eq!(
            picked.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            ["0", "2"]
        );
        let failed: Vec<(&str, String)> = sent
            .iter()
            .map(|r| match &r.outcome {
                Some(Outcome::Error(e)) => (r.item_id.as_str(), e.message.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(failed.len(), 2);
        for (id, message) in failed {
            assert!(["1", "3"].contains(&id), "{id}");
            assert!(
                message.contains("a reward lease holds only reward items"),
                "{message}"
            );
        }
        assert!(sent.iter().all(|r| r.lease_id == 7));
    }
}
