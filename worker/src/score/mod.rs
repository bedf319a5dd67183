//! Scoring work that reads logits or a score head instead of generating text.
//!
//! - [`choice`]: step 3, next-token probabilities of the choice tokens (docs/FIDELITY.md §3.3,
//!   §3.4), with a shared-prefix key/value cache.
//! - [`reward`]: step 4, reward-model scores of (role, context, response, dimension) texts
//!   (docs/FIDELITY.md §4.4, §4.5).

pub mod choice;
pub mod reward;
