//! Step 3 multiple-choice scoring (docs/FIDELITY.md §3.3, §3.4): each question's prompt is built as
//! LLaMA-Factory's evaluator builds it (`encode_oneturn` without truncation, or the model's chat
//! template), one forward pass reads the logits at the last prompt position only, and the
//! probabilities are the f32 softmax over the choice tokens' logits.
//!
//! **Shared prefix.** An item's first `shared_prefix_pairs` (user, assistant) pairs (its
//! few-shot examples) encode to a token prefix of its prompt. Items with the same prefix tokens
//! share one key/value cache of it: the prefix runs once (batch of one row), is kept in a small
//! LRU ([`PrefixCache`]) across leases, and is expanded to the rows of each batch of suffixes,
//! which run left-padded after it with positions continuing from the prefix length.
//!
//! **Why the split is per item.** Where an item's prompt is cut depends only on the item (its
//! `shared_prefix_pairs` and its own tokens), never on which other items are in the lease or the
//! batch; and every forward pass gives a row the same bits whatever the other rows and their
//! padding are (the CPU attention reduces over visible keys only, and no matmul runs on a single
//! row: a one-row batch reads the logits of its last two positions, a one-token one gets a pad
//! column). So an item's probabilities are bit-identical for any batch size, lease split or
//! number of workers on the CPU. Sharing a prefix may change the rounding against one
//! full-prompt pass (tested within 1e-5; on the CPU it measured bit-identical), the same for
//! every run. On a GPU the batched attention and cuBLAS do not promise this invariance.

mod batch;
mod prefix;

pub use prefix::PrefixCache;

use crate::models::{Decoder, KvCache};
use crate::tokenize::{ChatMessage, PromptBuilder, TextTokenizer};
use crate::{Error, Result};

/// What choice scoring needs of a decoder's cache besides [`Decoder`]: its length and size, and a
/// new cache of some of its rows (a kept prefix expanded into a batch). [`KvCache`] has it, and
/// so has the tensor-parallel leader's cache (`crate::tp`), whose copies its followers mirror.
pub trait RowCache: Sized {
    /// Positions held (the same for every row).
    fn seq_len(&self) -> usize;
    /// Bytes of the key and value buffers (this rank's share under tensor parallelism).
    fn bytes(&self) -> usize;
    /// A new cache of `rows` of this one, in that order (repeats allowed).
    fn select_rows(&self, rows: &[usize]) -> Result<Self>;
}

impl RowCache for KvCache {
    fn seq_len(&self) -> usize {
        KvCache::seq_len(self)
    }
    fn bytes(&self) -> usize {
        KvCache::bytes(self)
    }
    fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        KvCache::select_rows(self, rows)
    }
}

/// LLaMA-Factory's evaluator encodes with `cutoff_len=1_000_000`: in effect no truncation.
pub const NO_TRUNCATION: usize = 1_000_000;

/// One question ready to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceJob {
    pub item_id: String,
    /// The whole prompt, shared prefix included.
    pub prompt_ids: Vec<u32>,
    /// Where each shared (user, assistant) pair ends in `prompt_ids`: increasing token offsets,
    /// the last (the shared prefix's length) less than `prompt_ids.len()`; empty = no prefix.
    pub prefix_ends: Vec<usize>,
    /// One token per choice, whose logit is read at the last prompt position.
    pub choice_ids: Vec<u32>,
}

impl ChoiceJob {
    /// Tokens of the shared prefix (0 when there is none).
    pub fn prefix_len(&self) -> usize {
        self.prefix_ends.last().copied().unwrap_or(0)
    }

    fn suffix(&self) -> &[u32] {
        &self.prompt_ids[self.prefix_len()..]
    }
}

/// Batch limits (the worker's [`crate::tasks::ExecutorOptions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreOptions {
    /// Most rows in one forward pass (at least 1).
    pub max_batch: usize,
    /// Most padded suffix tokens (rows x longest suffix) in one pass; 0 = no limit. A batch
    /// always holds at least one row.
    pub max_batch_tokens: usize,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions {
            max_batch: 8,
            max_batch_tokens: 0,
        }
    }
}

/// One multiple-choice question as the coordinator plans it (docs/FIDELITY.md §3.3): the
/// conversation (few-shot pairs, then the question turn and its answer), the system prompt, how
/// many leading (user, assistant) pairs are the prefix it shares with other questions, and the
/// choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceQuestion {
    pub messages: Vec<ChatMessage>,
    pub system: String,
    pub shared_prefix_pairs: usize,
    /// One text per choice ("A", "B", ...): the last token of each is scored.
    pub choice_texts: Vec<String>,
}

/// Builds the question's prompt (docs/FIDELITY.md §3.3) and finds its shared prefix and choice
/// ids. `vocab` is the model's; ids past it are an error rather than a failed forward pass.
pub fn prepare_job(
    item_id: &str,
    question: &ChoiceQuestion,
    builder: &PromptBuilder,
    vocab: usize,
) -> Result<ChoiceJob> {
    let fail = |message: String| Error::Item {
        item: item_id.to_string(),
        message,
    };
    let messages = &question.messages;
    let pairs = question.shared_prefix_pairs;
    let conversation = messages.len() - usize::from(messages.first().is_some_and(is_system));
    if pairs > 0 && 2 * pairs >= conversation {
        return Err(fail(format!(
            "shared_prefix_pairs {pairs} leaves no question turn in {conversation} messages"
        )));
    }
    let prompt_ids = builder
        .build(messages, &question.system, NO_TRUNCATION, 1)
        .map_err(|e| fail(e.to_string()))?
        .prompt_ids;
    if prompt_ids.is_empty() {
        return Err(fail("the prompt is empty after templating".into()));
    }
    if let Some(&id) = prompt_ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(fail(format!(
            "prompt token id {id} is outside the model's vocabulary of {vocab} (a template token \
             the model was not trained with?)"
        )));
    }
    let prefix_ends = builder
        .pair_prefix_ends(messages, &question.system, pairs, &prompt_ids)
        .map_err(|e| fail(e.to_string()))?
        // Pairs that are not a token prefix of the prompt (or are all of it) are not shared.
        .filter(|ends| ends.last().is_none_or(|&n| n < prompt_ids.len()))
        .unwrap_or_default();
    let choice_ids =
        choice_ids(builder.tokenizer(), &question.choice_texts, vocab).map_err(fail)?;
    Ok(ChoiceJob {
        item_id: item_id.to_string(),
        prompt_ids,
        prefix_ends,
        choice_ids,
    })
}

fn is_system(m: &ChatMessage) -> bool {
    m.role == "system"
}

/// LLaMA-Factory's choice inputs: the last id of each text encoded without special tokens.
pub fn choice_ids(
    tokenizer: &TextTokenizer,
    texts: &[String],
    vocab: usize,
) -> Result<Vec<u32>, String> {
    if texts.is_empty() {
        return Err("the item has no choice texts".into());
    }
    texts
        .iter()
        .map(|text| {
            let ids = tokenizer.encode(text).map_err(|e| e.to_string())?;
            match ids.last() {
                None => Err(format!("choice text {text:?} encodes to no token")),
                Some(&id) if id as usize >= vocab => Err(format!(
                    "choice text {text:?} ends with token id {id}, outside the model's \
                     vocabulary of {vocab}"
                )),
                Some(&id) => Ok(id),
            }
        })
        .collect()
}

/// Softmax in f32 with the maximum subtracted first, as torch computes it.
pub fn probabilities(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Scores every job, calling `on_done(index into jobs, probabilities)` for each as soon as its
/// batch is done. Jobs are grouped by prefix (tokens and pair ends; first appearance first);
/// each group's prefix comes from `prefixes` or is computed there, pair by pair.
pub fn score_jobs<D: Decoder<Cache: RowCache>>(
    decoder: &D,
    jobs: &[ChoiceJob],
    opts: &ScoreOptions,
    prefixes: &mut PrefixCache<D::Cache>,
    on_done: &mut dyn FnMut(usize, Vec<f32>),
) -> Result<()> {
    for group in group_by_prefix(jobs) {
        let first = &jobs[group[0]];
        let cache = if first.prefix_ends.is_empty() {
            None
        } else {
            Some(prefixes.get_or_compute(decoder, &first.prompt_ids, &first.prefix_ends)?)
        };
        for rows in batch::plan(jobs, &group, opts) {
            let logits = batch::run(decoder, jobs, &rows, cache)?;
            for (&i, row) in rows.iter().zip(logits) {
                on_done(i, probabilities(&row));
            }
        }
    }
    Ok(())
}

/// Job indices grouped by prefix (tokens and pair ends), groups in order of first appearance.
fn group_by_prefix(jobs: &[ChoiceJob]) -> Vec<Vec<usize>> {
    let mut index: std::collections::HashMap<(&[u32], &[usize]), usize> = Default::default();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let key = (
            &job.prompt_ids[..job.prefix_len()],
            job.prefix_ends.as_slice(),
        );
        let g = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_a_max_subtracted_softmax() {
        let p = probabilities(&[1.0, 2.0, 3.0, 4.0]);
        let e: Vec<f32> = [-3.0f32, -2.0, -1.0, 0.0].iter().map(|x| x.exp()).collect();
        let s: f32 = e.iter().sum();
        assert_eq!(p, e.iter().map(|x| x / s).collect::<Vec<_>>());
        // Large logits do not overflow.
        let p = probabilities(&[1000.0, 1000.0]);
        assert_eq!(p, vec![0.5, 0.5]);
    }

    fn job(id: &str, prompt: &[u32], prefix_ends: &[usize]) -> ChoiceJob {
        ChoiceJob {
            item_id: id.into(),
            prompt_ids: prompt.to_vec(),
            prefix_ends: prefix_ends.to_vec(),
            choice_ids: vec![1, 2],
        }
    }

    #[test]
    fn groups_follow_prefix_tokens_in_first_appearance_order() {
        let jobs = vec![
            job("a", &[1, 2, 3, 4], &[2]),
            job("b", &[5, 6, 7], &[]),
            job("c", &[1, 2, 9], &[2]),
            job("d", &[1, 3, 9], &[2]),
            job("e", &[8, 9], &[]),
            // The same tokens cut into other pairs: another prefix.
            job("f", &[1, 2, 9], &[1, 2]),
        ];
        assert_eq!(
            group_by_prefix(&jobs),
            vec![vec![0, 2], vec![1, 4], vec![3], vec![5]]
        );
    }
}
