//! Batched generation over any [`crate::models::Decoder`]: left padding with per-row positions
//! and masks, a KV cache, and sampling whose random stream depends only on (seed, item).
//!
//! Requests are sorted by prompt length and cut into batches of similar lengths (little padding);
//! each batch is prefilled in one forward pass, then decoded one token per step for every live
//! row. Rows that finish leave the batch ([`crate::models::Decoder::retain_rows`]) so the work
//! shrinks with them. Results come back in input order ([`generate`]) or as each request
//! finishes ([`generate_each`]).

mod batch;
pub mod sampling;

use std::collections::HashSet;

use crate::models::Decoder;
use crate::{Error, Result};

pub use sampling::{SamplingParams, item_rng};

/// One prompt to continue.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Used only to key the random stream (and in error messages).
    pub item_id: String,
    /// Must not be empty.
    pub prompt_ids: Vec<u32>,
    /// Generating any of these ends the request (the stop id is part of the output).
    pub stop_ids: HashSet<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// The job seed; the item's random stream is `item_rng(seed, item_id)`.
    pub seed: u64,
}

/// Why a request stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It generated one of its stop ids.
    Stop,
    /// It reached `max_new_tokens`.
    Length,
}

impl FinishReason {
    /// The protocol's spelling: "stop" or "length".
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What one request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenOutput {
    /// The new tokens, ending with the stop id when `finish` is [`FinishReason::Stop`].
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

/// Batch limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenOptions {
    /// Most rows decoded together (at least 1).
    pub max_batch: usize,
    /// Most padded prompt tokens (rows x longest prompt) in one prefill; 0 = no limit. A batch
    /// always holds at least one row.
    pub max_batch_tokens: usize,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_batch: 8,
            max_batch_tokens: 0,
        }
    }
}

/// Generates a continuation for every request; outputs are in the order of `requests`.
pub fn generate<D: Decoder>(
    decoder: &D,
    requests: &[GenRequest],
    opts: &GenOptions,
) -> Result<Vec<GenOutput>> {
    let mut outputs: Vec<Option<GenOutput>> = vec![None; requests.len()];
    generate_each(decoder, requests, opts, &mut |i, out| {
        outputs[i] = Some(out)
    })?;
    Ok(outputs
        .into_iter()
        .map(|o| o.expect("generate_each reports every request"))
        .collect())
}

/// Like [`generate`], but calls `on_done(index into requests, output)` as soon as each request
/// finishes, so results can be forwarded before the rest of its batch is done.
pub fn generate_each<D: Decoder>(
    decoder: &D,
    requests: &[GenRequest],
    opts: &GenOptions,
    on_done: &mut dyn FnMut(usize, GenOutput),
) -> Result<()> {
    for r in requests {
        validate(r)?;
    }
    let mut todo = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        if r.max_new_tokens == 0 {
            on_done(
                i,
                GenOutput {
                    tokens: Vec::new(),
                    finish: FinishReason::Length,
                },
            );
        } else {
            todo.push(i);
        }
    }
    for rows in plan_batches(requests, &todo, opts) {
        batch::run(decoder, requests, &rows, on_done)?;
    }
    Ok(())
}

fn validate(r: &GenRequest) -> Result<()> {
    let fail = |message: String| {
        Err(Error::Item {
            item: r.item_id.clone(),
            message,
        })
    };
    if r.prompt_ids.is_empty() {
        return fail("the prompt is empty".into());
    }
    r.sampling.validate().or_else(fail)
}

/// Cuts the requests `todo` into batches: longest prompts first (an out-of-memory shows at once),
/// equal lengths in input order, each batch within `opts`.
fn plan_batches(requests: &[GenRequest], todo: &[usize], opts: &GenOptions) -> Vec<Vec<usize>> {
    length_batches(
        todo,
        |i| requests[i].prompt_ids.len(),
        opts.max_batch,
        opts.max_batch_tokens,
    )
}

/// Cuts `indices` into batches by `len`: longest first, equal lengths in index order, at most
/// `max_batch` rows and (when `max_batch_tokens` > 0) `max_batch_tokens` padded tokens each. One
/// policy for generation and choice scoring.
pub(crate) fn length_batches(
    indices: &[usize],
    len: impl Fn(usize) -> usize,
    max_batch: usize,
    max_batch_tokens: usize,
) -> Vec<Vec<usize>> {
    let mut order = indices.to_vec();
    order.sort_by_key(|&i| (std::cmp::Reverse(len(i)), i));
    let max_batch = max_batch.max(1);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted longest first, so the first row of a batch sets its padded width.
        let width = current.first().map_or(len(i), |&f| len(f));
        let over_tokens = max_batch_tokens > 0 && (current.len() + 1) * width > max_batch_tokens;
        if !current.is_empty() && (current.len() == max_batch || over_tokens) {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(len: usize) -> GenRequest {
        GenRequest {
            item_id: format!("i{len}"),
            prompt_ids: vec![1; len],
            stop_ids: HashSet::new(),
            max_new_tokens: 4,
            sampling: SamplingParams::greedy(),
            seed: 0,
        }
    }

    #[test]
    fn batches_are_sorted_by_length_and_capped() {
        let reqs: Vec<_> = [3, 9, 1, 9, 5].into_iter().map(req).collect();
        let all: Vec<usize> = (0..reqs.len()).collect();
        let b = plan_batches(
            &reqs,
            &all,
            &GenOptions {
                max_batch: 2,
                max_batch_tokens: 0,
            },
        );
        assert_eq!(b, vec![vec![1, 3], vec![4, 0], vec![2]]);
        let b = plan_batches(
            &reqs,
            &all,
            &GenOptions {
                max_batch: 8,
                max_batch_tokens: 18,
            },
        );
        assert_eq!(b, vec![vec![1, 3], vec![4, 0, 2]]);
        let b = plan_batches(
            &reqs,
            &all,
            &GenOptions {
                max_batch: 8,
                max_batch_tokens: 4,
            },
        );
        assert_eq!(
            b.len(),
            5,
            "a batch always holds one row even over the token limit"
        );
    }
}
