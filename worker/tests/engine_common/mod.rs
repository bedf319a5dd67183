//! A tiny deterministic decoder for the engine tests: learned token and position embeddings, one
//! single-head attention layer with a KV cache, an LM head. Its weights come from a seeded
//! generator, so every run sees the same model.

#![allow(dead_code)]

use std::collections::HashSet;

use candle_core::{D, DType, Device, Tensor};
use evalfleet_worker::Result;
use evalfleet_worker::engine::{GenRequest, SamplingParams, item_rng};
use evalfleet_worker::models::{Decoder, ForwardInput, LogitsAt};
use rand_chacha::rand_core::Rng;

pub const VOCAB: usize = 61;
const DIM: usize = 32;
const MAX_POS: usize = 128;

pub struct TinyLm {
    tok: Tensor,
    pos: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    head: Tensor,
    device: Device,
}

/// Keys and values of every row so far: `(batch, columns, DIM)` each.
pub type TinyCache = Option<(Tensor, Tensor)>;

impl TinyLm {
    pub fn new(seed: u64) -> Self {
        let device = Device::Cpu;
        let mut rng = item_rng(seed, "tiny-lm-weights");
        let mut weights = |rows: usize, cols: usize, scale: f32| {
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| ((rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0) * scale)
                .collect();
            Tensor::from_vec(data, (rows, cols), &Device::Cpu).expect("weight tensor")
        };
        TinyLm {
            tok: weights(VOCAB, DIM, 1.0),
            pos: weights(MAX_POS, DIM, 1.0),
            wq: weights(DIM, DIM, 0.5),
            wk: weights(DIM, DIM, 0.5),
            wv: weights(DIM, DIM, 0.5),
            wo: weights(DIM, DIM, 0.5),
            head: weights(DIM, VOCAB, 1.0),
            device,
        }
    }

    fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        Ok(table
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, s, DIM))?)
    }

    /// Additive mask `(b, s, columns)`: causal over the cache, plus the key padding mask.
    /// Masked entries get -1e30 rather than -inf so all-masked pad queries give no NaN.
    fn mask(&self, input: &ForwardInput, b: usize, s: usize, columns: usize) -> Result<Tensor> {
        let past = columns - s;
        let keys: Option<Vec<Vec<u8>>> = input
            .key_mask
            .as_ref()
            .map(|m| m.to_vec2::<u8>())
            .transpose()?;
        let mut data = Vec::with_capacity(b * s * columns);
        for row in 0..b {
            for q in 0..s {
                for k in 0..columns {
                    let visible = k <= past + q && keys.as_ref().is_none_or(|m| m[row][k] == 1);
                    data.push(if visible { 0.0f32 } else { -1e30 });
                }
            }
        }
        Ok(Tensor::from_vec(data, (b, s, columns), &self.device)?)
    }
}

impl Decoder for TinyLm {
    type Cache = TinyCache;

    fn new_cache(&self) -> TinyCache {
        None
    }

    fn forward(&self, input: &ForwardInput, cache: &mut TinyCache, at: LogitsAt) -> Result<Tensor> {
        let (b, s) = input.tokens.dims2()?;
        let x =
            (Self::embed(&self.tok, &input.tokens)? + Self::embed(&self.pos, &input.positions)?)?;
        let q = x.broadcast_matmul(&self.wq)?;
        let mut k = x.broadcast_matmul(&self.wk)?;
        let mut v = x.broadcast_matmul(&self.wv)?;
        if let Some((pk, pv)) = cache.take() {
            k = Tensor::cat(&[&pk, &k], 1)?;
            v = Tensor::cat(&[&pv, &v], 1)?;
        }
        let columns = k.dim(1)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? / (DIM as f64).sqrt())?;
        let scores = (scores + self.mask(input, b, s, columns)?)?;
        let attn = candle_nn::ops::softmax_last_dim(&scores)?;
        let h = (x + attn.matmul(&v)?.broadcast_matmul(&self.wo)?.tanh()?)?;
        *cache = Some((k, v));
        let h = match at {
            LogitsAt::All => h,
            LogitsAt::Last => h.narrow(1, s - 1, 1)?,
        };
        Ok(h.broadcast_matmul(&self.head)?.to_dtype(DType::F32)?)
    }

    fn retain_rows(&self, cache: &mut TinyCache, rows: &[usize]) -> Result<()> {
        if let Some((k, v)) = cache.take() {
            let ids = Tensor::from_vec(
                rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                rows.len(),
                &self.device,
            )?;
            *cache = Some((k.index_select(&ids, 0)?, v.index_select(&ids, 0)?));
        }
        Ok(())
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn vocab_size(&self) -> usize {
        VOCAB
    }
}

/// Greedy generation without cache, padding or batching: the whole sequence is re-run for every
/// new token. The reference the engine must agree with.
pub fn reference_greedy(
    lm: &TinyLm,
    prompt: &[u32],
    stop: &HashSet<u32>,
    max_new: usize,
) -> Result<Vec<u32>> {
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_new {
        let n = seq.len();
        let input = ForwardInput {
            tokens: Tensor::from_vec(seq.clone(), (1, n), &lm.device)?,
            positions: Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), (1, n), &lm.device)?,
            key_mask: None,
        };
        let logits = lm.forward(&input, &mut None, LogitsAt::Last)?;
        let token = logits
            .flatten_all()?
            .argmax(D::Minus1)?
            .to_scalar::<u32>()?;
        seq.push(token);
        out.push(token);
        if stop.contains(&token) {
            break;
        }
    }
    Ok(out)
}

/// `n` requests with prompt lengths spread over 1..=17 and token ids over the vocabulary.
pub fn requests(n: usize, sampling: SamplingParams, max_new: usize) -> Vec<GenRequest> {
    (0..n)
        .map(|i| {
            let len = 1 + (i * 7) % 17;
            GenRequest {
                item_id: format!("item-{i}"),
                prompt_ids: (0..len)
                    .map(|j| ((i * 13 + j * 5) % VOCAB) as u32)
                    .collect(),
                stop_ids: HashSet::new(),
                max_new_tokens: max_new,
                sampling,
                seed: 42,
            }
        })
        .collect()
}
