//! Choosing the next token from one row's logits, as HF transformers' `generate` does with the
//! processors LLaMA-Factory configures: repetition penalty, `InfNanRemoveLogitsProcessor`, then
//! (when sampling) temperature, top-k, top-p, softmax and a multinomial draw; greedy is the first
//! maximum.
//!
//! Everything runs on the CPU in f32 on one row at a time. The random stream of a row is a ChaCha
//! generator keyed by (seed, item id) only, so a row draws the same numbers whatever batch it is in.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand_chacha::ChaCha12Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// The sampling settings of one request (LLaMA-Factory's `GeneratingArguments`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub do_sample: bool,
    /// Divides the logits before top-k/top-p; 0 (or `do_sample == false`) means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables top-p.
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1 disables the penalty; must be > 0.
    pub repetition_penalty: f32,
}

impl SamplingParams {
    /// Greedy decoding without any penalty.
    pub fn greedy() -> Self {
        SamplingParams {
            do_sample: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
        }
    }

    /// True when the next token is the argmax (no random draw is made).
    pub fn is_greedy(&self) -> bool {
        !self.do_sample || self.temperature <= 0.0
    }

    /// Rejects values HF transformers would refuse, naming the parameter.
    pub fn validate(&self) -> Result<(), String> {
        // Written so that NaN is refused too.
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.is_greedy() {
            return Ok(());
        }
        if !self.temperature.is_finite() {
            return Err(format!(
                "temperature must be finite, got {}",
                self.temperature
            ));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(format!("top_p must be in [0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// The random generator of one item: ChaCha12 keyed by the job seed and a stable 128-bit hash of
/// the item id (FNV-1a with two offsets; std's hasher is randomised per process, so unusable).
pub fn item_rng(seed: u64, item_id: &str) -> ChaCha12Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&fnv1a(item_id.as_bytes(), 0xcbf2_9ce4_8422_2325).to_le_bytes());
    key[16..24].copy_from_slice(&fnv1a(item_id.as_bytes(), 0x6c62_272e_07bb_0142).to_le_bytes());
    key[24..32].copy_from_slice(&(item_id.len() as u64).to_le_bytes());
    ChaCha12Rng::from_seed(key)
}

fn fnv1a(bytes: &[u8], offset: u64) -> u64 {
    bytes.iter().fold(offset, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A uniform draw in [0, 1) from the top 53 bits of one 64-bit output.
fn uniform(rng: &mut ChaCha12Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The sampling state of one row: its parameters, random stream and the ids seen so far (for
/// the repetition penalty).
#[derive(Debug, Clone)]
pub struct RowSampler {
    params: SamplingParams,
    rng: ChaCha12Rng,
    /// `seen[id]` for ids already in prompt or output; empty when there is no penalty.
    seen: Vec<bool>,
    seen_ids: Vec<u32>,
}

impl RowSampler {
    /// A sampler whose history starts with `prompt` (the penalty covers prompt and output ids).
    pub fn new(params: SamplingParams, rng: ChaCha12Rng, vocab: usize, prompt: &[u32]) -> Self {
        let penalised = params.repetition_penalty != 1.0;
        let mut s = RowSampler {
            params,
            rng,
            seen: if penalised {
                vec![false; vocab]
            } else {
                Vec::new()
            },
            seen_ids: Vec::new(),
        };
        prompt.iter().for_each(|&t| s.observe(t));
        s
    }

    /// Records a token as part of the row's history.
    pub fn observe(&mut self, token: u32) {
        if let Some(flag) = self.seen.get_mut(token as usize)
            && !*flag
        {
            *flag = true;
            self.seen_ids.push(token);
        }
    }

    /// Picks the next token from `logits` (modified in place) and records it.
    pub fn next_token(&mut self, logits: &mut [f32]) -> u32 {
        apply_repetition_penalty(logits, &self.seen_ids, self.params.repetition_penalty);
        remove_inf_nan(logits);
        let token = if self.params.is_greedy() {
            argmax(logits)
        } else {
            let candidates = warp(logits, &self.params);
            draw(&candidates, uniform(&mut self.rng))
        };
        self.observe(token);
        token
    }
}

/// HF `RepetitionPenaltyLogitsProcessor`: each distinct seen id once; negative logits are
/// multiplied by the penalty, the others divided.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for &id in seen {
        if let Some(x) = logits.get_mut(id as usize) {
            *x = if *x < 0.0 { *x * penalty } else { *x / penalty };
        }
    }
}

/// HF `InfNanRemoveLogitsProcessor`: NaN becomes 0, ±inf the largest/smallest finite f32.
pub fn remove_inf_nan(logits: &mut [f32]) {
    for x in logits.iter_mut().filter(|x| !x.is_finite()) {
        *x = if x.is_nan() {
            0.0
        } else if *x > 0.0 {
            f32::MAX
        } else {
            f32::MIN
        };
    }
}

/// Index of the first maximum (torch's argmax on CPU).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Temperature, top-k and top-p: the surviving `(token, scaled logit)` pairs, in token order.
///
/// Temperature divides by a positive constant, which keeps the order, so top-k selects on the
/// raw logits and only the survivors are scaled: the full vocabulary is scanned once.
pub fn warp(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f32)> {
    let mut kept = top_k_candidates(logits, p.top_k);
    if p.temperature != 1.0 {
        kept.iter_mut().for_each(|(_, x)| *x /= p.temperature);
    }
    if p.top_p < 1.0 {
        kept = top_p_filter(kept, p.top_p);
    }
    kept
}

/// HF `TopKLogitsWarper`: keeps every token whose logit is >= the k-th largest (ties with the
/// k-th are kept). `k == 0` or `k >= vocab` keeps everything.
fn top_k_candidates(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let all = || logits.iter().enumerate().map(|(i, &x)| (i as u32, x));
    if k == 0 || k >= logits.len() {
        return all().collect();
    }
    let threshold = kth_largest(logits, k);
    all().filter(|&(_, x)| x >= threshold).collect()
}

/// The k-th largest value (1-based) with a size-k min-heap: one comparison per logit for most of
/// a large vocabulary.
fn kth_largest(logits: &[f32], k: usize) -> f32 {
    let mut heap: BinaryHeap<Reverse<TotalF32>> = BinaryHeap::with_capacity(k + 1);
    for &x in logits {
        if heap.len() < k {
            heap.push(Reverse(TotalF32(x)));
        } else if let Some(Reverse(min)) = heap.peek()
            && x > min.0
        {
            heap.pop();
            heap.push(Reverse(TotalF32(x)));
        }
    }
    heap.peek().map_or(f32::MIN, |Reverse(m)| m.0)
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct TotalF32(f32);
impl Eq for TotalF32 {}
impl PartialOrd for TotalF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TotalF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// HF `TopPLogitsWarper`: sort ascending, softmax, cumulative sum; drop tokens whose cumulative
/// probability is <= 1 - top_p, always keeping the most likely one. Returns token order.
fn top_p_filter(mut kept: Vec<(u32, f32)>, top_p: f32) -> Vec<(u32, f32)> {
    // Ascending by logit; equal logits by token id so the order is reproducible.
    kept.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let probs = softmax(kept.iter().map(|&(_, x)| x));
    let limit = 1.0 - top_p;
    let mut cumulative = 0.0f32;
    let mut first_kept = kept.len() - 1;
    for (i, p) in probs.iter().enumerate() {
        cumulative += p;
        if cumulative > limit {
            first_kept = i.min(kept.len() - 1);
            break;
        }
    }
    let mut survivors = kept.split_off(first_kept);
    survivors.sort_by_key(|&(t, _)| t);
    survivors
}

/// Numerically stable softmax in f32.
fn softmax(xs: impl Iterator<Item = f32> + Clone) -> Vec<f32> {
    let max = xs.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = xs.map(|x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Multinomial draw over `softmax(candidates)` with the uniform number `u` in [0, 1).
pub fn draw(candidates: &[(u32, f32)], u: f64) -> u32 {
    let probs = softmax(candidates.iter().map(|&(_, x)| x));
    let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
    let target = u * total;
    let mut cumulative = 0.0f64;
    for (&(token, _), &p) in candidates.iter().zip(&probs) {
        cumulative += f64::from(p);
        if cumulative > target && p > 0.0 {
            return token;
        }
    }
    // Rounding left `target` at the very top: the last token with any mass.
    candidates
        .iter()
        .zip(&probs)
        .rev()
        .find(|(_, p)| **p > 0.0)
        .map_or(candidates[0].0, |(c, _)| c.0)
}

#[cfg(test)]
mod tests;
