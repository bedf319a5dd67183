//! One batch from prefill to its last row: left padding, per-row positions (HF's
//! `cumsum(attention_mask) - 1`), the key mask over past and current columns, and rows leaving
//! the batch as they finish.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::sampling::{RowSampler, item_rng};
use super::{FinishReason, GenOutput, GenRequest};
use crate::Result;
use crate::models::{Decoder, ForwardInput, LogitsAt};

/// A live row: which request it is, its sampler, what it generated and its key mask so far.
struct Row<'a> {
    index: usize,
    /// This row's index in the decoder's batch (its cache row).
    slot: usize,
    request: &'a GenRequest,
    sampler: RowSampler,
    generated: Vec<u32>,
    /// One entry per cache column: 1 for a real token, 0 for left padding.
    mask: Vec<u8>,
}

impl Row<'_> {
    /// Position of the token generated last (the next input): prompt and output tokens before it.
    fn next_position(&self) -> u32 {
        (self.request.prompt_ids.len() + self.generated.len() - 1) as u32
    }

    fn finish(&self) -> Option<FinishReason> {
        let last = *self.generated.last()?;
        if self.request.stop_ids.contains(&last) {
            Some(FinishReason::Stop)
        } else if self.generated.len() >= self.request.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}

/// Runs the requests `indices` (already sorted into one batch) to completion, reporting each
/// through `on_done` as it finishes.
pub(super) fn run<D: Decoder>(
    decoder: &D,
    requests: &[GenRequest],
    indices: &[usize],
    on_done: &mut dyn FnMut(usize, GenOutput),
) -> Result<()> {
    let started = Instant::now();
    let vocab = decoder.vocab_size();
    let width = indices
        .iter()
        .map(|&i| requests[i].prompt_ids.len())
        .max()
        .unwrap_or(0);
    let mut rows: Vec<Row> = indices
        .iter()
        .enumerate()
        .map(|(slot, &index)| {
            let request = &requests[index];
            let pad = width - request.prompt_ids.len();
            let mut mask = vec![0u8; pad];
            mask.resize(width, 1);
            Row {
                index,
                slot,
                request,
                sampler: RowSampler::new(
                    request.sampling,
                    item_rng(request.seed, &request.item_id),
                    vocab,
                    &request.prompt_ids,
                ),
                generated: Vec::new(),
                mask,
            }
        })
        .collect();

    let mut cache = decoder.new_cache();
    let mut logits = decoder.forward(
        &prefill_input(&rows, width, decoder.device())?,
        &mut cache,
        LogitsAt::Last,
    )?;
    let mut new_tokens = 0usize;
    loop {
        let (mut scores, width) = row_logits(&logits, rows.len())?;
        for (row, scores) in rows.iter_mut().zip(scores.chunks_mut(width.max(1))) {
            let token = row.sampler.next_token(scores);
            row.generated.push(token);
        }
        new_tokens += rows.len();
        let before = rows.len();
        retire_finished(&mut rows, on_done);
        if rows.is_empty() {
            break;
        }
        if rows.len() < before {
            let keep: Vec<usize> = rows.iter().map(|r| r.slot).collect();
            decoder.retain_rows(&mut cache, &keep)?;
        }
        rows.iter_mut().enumerate().for_each(|(slot, r)| {
            r.slot = slot;
            r.mask.push(1);
        });
        logits = decoder.forward(
            &step_input(&rows, decoder.device())?,
            &mut cache,
            LogitsAt::Last,
        )?;
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::debug!(
        rows = indices.len(),
        prompt_width = width,
        new_tokens,
        secs,
        tokens_per_s = new_tokens as f64 / secs.max(1e-9),
        "batch done"
    );
    Ok(())
}

/// Reports and removes the rows that just finished.
fn retire_finished(rows: &mut Vec<Row>, on_done: &mut dyn FnMut(usize, GenOutput)) {
    rows.retain_mut(|row| match row.finish() {
        Some(finish) => {
            on_done(
                row.index,
                GenOutput {
                    tokens: std::mem::take(&mut row.generated),
                    finish,
                },
            );
            false
        }
        None => true,
    });
}

/// The whole left-padded prompts; pad columns hold token 0 and position 0 (they are masked).
fn prefill_input(rows: &[Row], width: usize, device: &Device) -> Result<ForwardInput> {
    let mut tokens = Vec::with_capacity(rows.len() * width);
    let mut positions = Vec::with_capacity(rows.len() * width);
    for row in rows {
        let pad = width - row.request.prompt_ids.len();
        tokens.extend(std::iter::repeat_n(0u32, pad));
        tokens.extend_from_slice(&row.request.prompt_ids);
        positions.extend(std::iter::repeat_n(0u32, pad));
        positions.extend(0..row.request.prompt_ids.len() as u32);
    }
    let shape = (rows.len(), width);
    Ok(ForwardInput {
        tokens: Tensor::from_vec(tokens, shape, device)?,
        positions: Tensor::from_vec(positions, shape, device)?,
        key_mask: key_mask(rows, device)?,
    })
}

/// One new token per live row at its own position.
fn step_input(rows: &[Row], device: &Device) -> Result<ForwardInput> {
    let tokens: Vec<u32> = rows
        .iter()
        .map(|r| *r.generated.last().expect("a live row has generated"))
        .collect();
    let positions: Vec<u32> = rows.iter().map(Row::next_position).collect();
    let shape = (rows.len(), 1);
    Ok(ForwardInput {
        tokens: Tensor::from_vec(tokens, shape, device)?,
        positions: Tensor::from_vec(positions, shape, device)?,
        key_mask: key_mask(rows, device)?,
    })
}

/// `(rows, columns)` u8 mask, or `None` when no live row has padding (plain causal attention).
fn key_mask(rows: &[Row], device: &Device) -> Result<Option<Tensor>> {
    if rows.iter().all(|r| r.mask.iter().all(|&m| m == 1)) {
        return Ok(None);
    }
    let columns = rows[0].mask.len();
    let flat: Vec<u8> = rows.iter().flat_map(|r| r.mask.iter().copied()).collect();
    Ok(Some(Tensor::from_vec(flat, (rows.len(), columns), device)?))
}

/// The `(rows, 1, vocab)` logits as one flat f32 vector on the CPU, row after row, and the
/// width of a row.
fn row_logits(logits: &Tensor, rows: usize) -> Result<(Vec<f32>, usize)> {
    let width = logits.dim(candle_core::D::Minus1)?;
    if logits.elem_count() != rows * width {
        return Err(candle_core::Error::Msg(format!(
            "decoder returned logits of shape {:?} for {rows} rows with LogitsAt::Last",
            logits.dims()
        ))
        .into());
    }
    let flat = logits
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?;
    Ok((flat.to_vec1::<f32>()?, width))
}
