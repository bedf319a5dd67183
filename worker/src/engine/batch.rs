//! One batch from prefill to its last row: left padding, per-row positions (HF's
//! `cumsum(attention_mask) - 1`), the key mask over past and current columns, and rows leaving
//! the batch as they finish.

use std::time::{Duration, Instant};

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

    // Where the time goes, for the debug log: queueing the forward passes (on a GPU this is the
    // host's launch cost), waiting for and fetching the logits, and sampling on the CPU.
    let mut times = StepTimes::default();
    let mut cache = decoder.new_cache();
    let mut logits = times.forward(|| {
        decoder.forward(
            &prefill_input(&rows, width, decoder.device())?,
            &mut cache,
            LogitsAt::Last,
        )
    })?;
    let mut new_tokens = 0usize;
    loop {
        match times.fetch(|| device_greedy(&logits, &rows))? {
            Some(tokens) => {
                for (row, token) in rows.iter_mut().zip(tokens) {
                    row.sampler.observe(token);
                    row.generated.push(token);
                }
            }
            None => {
                let (mut scores, width) = times.fetch(|| row_logits(&logits, rows.len()))?;
                let sampling = Instant::now();
                for (row, scores) in rows.iter_mut().zip(scores.chunks_mut(width.max(1))) {
                    let token = row.sampler.next_token(scores);
                    row.generated.push(token);
                }
                times.sample += sampling.elapsed();
            }
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
        logits = times.forward(|| {
            decoder.forward(
                &step_input(&rows, decoder.device())?,
                &mut cache,
                LogitsAt::Last,
            )
        })?;
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::debug!(
        rows = indices.len(),
        prompt_width = width,
        new_tokens,
        secs,
        tokens_per_s = new_tokens as f64 / secs.max(1e-9),
        forward_s = times.forward.as_secs_f64(),
        fetch_s = times.fetch.as_secs_f64(),
        sample_s = times.sample.as_secs_f64(),
        "batch done"
    );
    Ok(())
}

/// Time spent in the three phases of a decode step (see [`run`]).
#[derive(Debug, Default)]
struct StepTimes {
    forward: Duration,
    fetch: Duration,
    sample: Duration,
}

impl StepTimes {
    fn forward<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let out = f();
        self.forward += t.elapsed();
        out
    }

    fn fetch<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let out = f();
        self.fetch += t.elapsed();
        out
    }
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

/// On a GPU, when every row decodes greedily without a repetition penalty: each row's first
/// maximum, found on the device, so only one id per row crosses to the host instead of the whole
/// vocabulary's logits. `None` (use the host path) on the CPU, for sampling or penalised rows, and
/// when a row holds NaN or an infinity (the host path's `remove_inf_nan` decides those).
///
/// The first maximum is `vocab - max((logits == row max) * (vocab - index))`: candle's argmax
/// kernel does not promise the first index among equal values, and bf16 logits tie often.
fn device_greedy(logits: &Tensor, rows: &[Row]) -> Result<Option<Vec<u32>>> {
    let plain_greedy =
        |r: &Row| r.request.sampling.is_greedy() && r.request.sampling.repetition_penalty == 1.0;
    if logits.device().is_cpu() || !rows.iter().all(plain_greedy) {
        return Ok(None);
    }
    let vocab = logits.dim(candle_core::D::Minus1)?;
    let x = logits.to_dtype(DType::F32)?.reshape((rows.len(), vocab))?;
    let max = x.max_keepdim(1)?;
    let finite_max: Vec<f32> = max.flatten_all()?.to_vec1()?;
    // NaN never wins a comparison, so a NaN row could hide behind a finite max: count them too.
    let nans = x
        .ne(&x)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    if nans > 0.0 || finite_max.iter().any(|m| !m.is_finite()) {
        return Ok(None);
    }
    Ok(Some(first_argmax(&x, &max)?))
}

/// Each row's index of its first maximum, for `x` `(rows, vocab)` f32 and its row maxima `max`
/// `(rows, 1)`, computed on `x`'s device (see [`device_greedy`]).
fn first_argmax(x: &Tensor, max: &Tensor) -> Result<Vec<u32>> {
    let vocab = x.dim(1)?;
    let rank = Tensor::arange(0u32, vocab as u32, x.device())?
        .to_dtype(DType::F32)?
        .affine(-1.0, vocab as f64)?;
    let first = x
        .broadcast_eq(max)?
        .to_dtype(DType::F32)?
        .broadcast_mul(&rank)?
        .max_keepdim(1)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(first.iter().map(|&r| (vocab as f32 - r) as u32).collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sampling::argmax;

    #[test]
    fn first_argmax_on_a_device_matches_the_host_argmax_with_ties() {
        let rows: [&[f32]; 4] = [
            &[1.0, 3.0, 3.0, 2.0],
            &[5.0, 1.0, 5.0, 5.0],
            &[-1.0, -2.0, -3.0, -1.0],
            &[0.0, 0.0, 0.0, 7.5],
        ];
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let x = Tensor::from_vec(flat, (4, 4), &Device::Cpu).unwrap();
        let max = x.max_keepdim(1).unwrap();
        let want: Vec<u32> = rows.iter().map(|r| argmax(r)).collect();
        assert_eq!(want, vec![1, 0, 0, 3]);
        assert_eq!(first_argmax(&x, &max).unwrap(), want);
    }
}
