//! One forward pass over a batch of questions: suffixes left-padded after an optional shared
//! prefix cache, positions continuing from the prefix, and the choice logits read at each row's
//! last position.
//!
//! Batch invariance rests on two rules kept here: no matmul runs on a single row (the CPU gemm
//! takes a matrix-vector path for one row, which rounds differently), so a one-row batch reads
//! the logits of its last two positions and a one-row, one-token batch gets a pad column; and pad
//! columns are masked keys, which the CPU attention skips exactly.

use candle_core::{DType, Device, IndexOp, Tensor};

use super::{ChoiceJob, RowCache, ScoreOptions};
use crate::Result;
use crate::models::{Decoder, ForwardInput, LogitsAt};

/// Cuts `indices` (jobs sharing one prefix) into batches: longest suffix first (an
/// out-of-memory shows at once), equal lengths in index order, each within `opts`.
pub(super) fn plan(jobs: &[ChoiceJob], indices: &[usize], opts: &ScoreOptions) -> Vec<Vec<usize>> {
    crate::engine::length_batches(
        indices,
        |i| jobs[i].suffix().len(),
        opts.max_batch,
        opts.max_batch_tokens,
    )
}

/// Runs the suffixes of `rows` (all after the same prefix, whose one-row cache is `prefix`, or
/// from scratch when `None`) and returns each row's logits at its choice ids, in `rows` order.
pub(super) fn run<D: Decoder<Cache: RowCache>>(
    decoder: &D,
    jobs: &[ChoiceJob],
    rows: &[usize],
    prefix: Option<&D::Cache>,
) -> Result<Vec<Vec<f32>>> {
    let b = rows.len();
    let past = prefix.map_or(0, RowCache::seq_len);
    let longest = rows
        .iter()
        .map(|&i| jobs[i].suffix().len())
        .max()
        .unwrap_or(0);
    // One row of one token would make every matmul a matrix-vector product: pad it to two.
    let width = if b == 1 { longest.max(2) } else { longest };
    let input = forward_input(jobs, rows, past, width, decoder.device())?;
    let mut cache = match prefix {
        Some(p) => {
            let _s = tracing::trace_span!("prefix_rows").entered();
            p.select_rows(&vec![0; b])?
        }
        None => decoder.new_cache(),
    };
    let logits = if b == 1 {
        one_row_logits(decoder, &input, &mut cache)?
    } else {
        decoder.forward(&input, &mut cache, LogitsAt::Last)?
    };
    let last = logits.dim(1)? - 1;
    let last = logits.i((.., last, ..))?.contiguous()?;
    let n = jobs[rows[0]].choice_ids.len();
    let same_width = rows.iter().all(|&i| jobs[i].choice_ids.len() == n);
    let picked = if same_width {
        let ids: Vec<u32> = rows
            .iter()
            .flat_map(|&i| jobs[i].choice_ids.iter().copied())
            .collect();
        let ids = Tensor::from_vec(ids, (b, n), last.device())?;
        last.gather(&ids, 1)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?
    } else {
        // Items of one lease normally have as many choices each; read whole rows otherwise.
        let all = last
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        rows.iter()
            .zip(all)
            .map(|(&i, row)| {
                jobs[i]
                    .choice_ids
                    .iter()
                    .map(|&c| row[c as usize])
                    .collect()
            })
            .collect()
    };
    Ok(picked)
}

/// The logits of a one-row batch's last two positions. The LM head must see at least two rows
/// (one row takes the gemm's matrix-vector path, other bits than a multi-row batch gives the same
/// row), but not all positions either (`width x vocab` logits): so all tokens but the last two
/// run first (their logits, of one row, are not read), then the last two with all logits. Every
/// pass has at least two rows and attention reads the same keys in the same order, so the split
/// does not change a bit. Three tokens or fewer run in one pass.
fn one_row_logits<D: Decoder<Cache: RowCache>>(
    decoder: &D,
    input: &ForwardInput,
    cache: &mut D::Cache,
) -> Result<Tensor> {
    let width = input.tokens.dim(1)?;
    if width <= 3 {
        return decoder.forward(input, cache, LogitsAt::All);
    }
    let split = width - 2;
    let columns = |t: &Tensor, start: usize, len: usize| t.narrow(1, start, len);
    let past = cache.seq_len();
    let head = ForwardInput {
        tokens: columns(&input.tokens, 0, split)?,
        positions: columns(&input.positions, 0, split)?,
        key_mask: input
            .key_mask
            .as_ref()
            .map(|m| columns(m, 0, past + split))
            .transpose()?,
    };
    decoder.forward(&head, cache, LogitsAt::Last)?;
    let tail = ForwardInput {
        tokens: columns(&input.tokens, split, 2)?,
        positions: columns(&input.positions, split, 2)?,
        key_mask: input.key_mask.clone(),
    };
    decoder.forward(&tail, cache, LogitsAt::All)
}

/// Tokens, positions and key mask of the suffixes, left-padded to `width` after `past` cached
/// prefix positions (visible to every row). Pad columns hold token 0 at position 0, masked.
fn forward_input(
    jobs: &[ChoiceJob],
    rows: &[usize],
    past: usize,
    width: usize,
    device: &Device,
) -> Result<ForwardInput> {
    let b = rows.len();
    let mut tokens = Vec::with_capacity(b * width);
    let mut positions = Vec::with_capacity(b * width);
    let mut mask = Vec::with_capacity(b * (past + width));
    for &i in rows {
        let suffix = jobs[i].suffix();
        let pad = width - suffix.len();
        tokens.extend(std::iter::repeat_n(0u32, pad));
        tokens.extend_from_slice(suffix);
        positions.extend(std::iter::repeat_n(0u32, pad));
        positions.extend((past..past + suffix.len()).map(|p| p as u32));
        mask.extend(std::iter::repeat_n(1u8, past));
        mask.extend(std::iter::repeat_n(0u8, pad));
        mask.extend(std::iter::repeat_n(1u8, suffix.len()));
    }
    let key_mask = if mask.contains(&0) {
        Some(Tensor::from_vec(mask, (b, past + width), device)?)
    } else {
        None
    };
    Ok(ForwardInput {
        tokens: Tensor::from_vec(tokens, (b, width), device)?,
        positions: Tensor::from_vec(positions, (b, width), device)?,
        key_mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(prompt_len: usize, prefix_len: usize) -> ChoiceJob {
        ChoiceJob {
            item_id: format!("j{prompt_len}"),
            prompt_ids: (0..prompt_len as u32).collect(),
            prefix_ends: if prefix_len > 0 {
                vec![prefix_len]
            } else {
                vec![]
            },
            choice_ids: vec![0, 1],
        }
    }

    #[test]
    fn batches_sort_by_suffix_length_and_respect_limits() {
        // Suffix lengths 3, 9, 1, 9, 5.
        let jobs: Vec<_> = [(13, 10), (19, 10), (11, 10), (9, 0), (15, 10)]
            .into_iter()
            .map(|(p, f)| job(p, f))
            .collect();
        let all: Vec<usize> = (0..jobs.len()).collect();
        let opts = |max_batch, max_batch_tokens| ScoreOptions {
            max_batch,
            max_batch_tokens,
        };
        assert_eq!(
            plan(&jobs, &all, &opts(2, 0)),
            vec![vec![1, 3], vec![4, 0], vec![2]]
        );
        assert_eq!(
            plan(&jobs, &all, &opts(8, 18)),
            vec![vec![1, 3], vec![4, 0, 2]]
        );
        assert_eq!(plan(&jobs, &all, &opts(8, 4)).len(), 5);
    }

    #[test]
    fn input_masks_padding_after_the_prefix() {
        let jobs = vec![job(5, 3), job(6, 3)];
        let input = forward_input(&jobs, &[1, 0], 3, 3, &Device::Cpu).unwrap();
        assert_eq!(
            input.tokens.to_vec2::<u32>().unwrap(),
            vec![vec![3, 4, 5], vec![0, 3, 4]]
        );
        assert_eq!(
            input.positions.to_vec2::<u32>().unwrap(),
            vec![vec![3, 4, 5], vec![0, 3, 4]]
        );
        assert_eq!(
            input.key_mask.unwrap().to_vec2::<u8>().unwrap(),
            vec![vec![1, 1, 1, 1, 1, 1], vec![1, 1, 1, 0, 1, 1]]
        );
    }
}
