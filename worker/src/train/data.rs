//! Reward-model training data: JSONL records, one scored response per line, grouped by context
//! and dimension so the ranking loss compares the responses to one context on one dimension.
//!
//! A line: `{"role": "佟湘玉", "context": "…", "response": "…", "dimension": "知识准确率",
//! "score": 4}` with optional `id` (the context's id; grouping uses it, else the context text),
//! `role_info` (the rendered role profile, as step 4 renders `str(profile[role])`; when absent
//! the role name stands in), and the step-4 names `model_output` / `metric_zh` accepted for
//! `response` / `dimension`. `score` is the human score on the 1–5 scale.
//!
//! The model input is the step-4 text (docs/FIDELITY.md §4.4), encoded as step 4 encodes it
//! ([`RewardScorer::encode`]: ids + eos, the last `max_length` kept).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::score::reward::RewardScorer;
use crate::{Error, Result};

#[derive(Debug, Deserialize)]
struct Record {
    #[serde(default)]
    id: Option<serde_json::Value>,
    role: String,
    #[serde(default)]
    role_info: Option<String>,
    context: String,
    #[serde(alias = "model_output")]
    response: String,
    #[serde(alias = "metric_zh")]
    dimension: String,
    score: f64,
}

/// The step-4 reward model input text (docs/FIDELITY.md §4.4).
pub fn reward_text(role_info: &str, context: &str, response: &str, dimension: &str) -> String {
    format!(
        "<RoleInfo>\n\n{role_info}\n\n<Context>\n\n{context}\n\n<Response>\n\n{response}\n\n\
         <Dimension>\n\n{dimension}"
    )
}

/// The encoded responses to one context on one dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The context's key (id or text): the held-out split keeps a context's groups together.
    pub context_key: String,
    pub dimension: String,
    pub seqs: Vec<Vec<u32>>,
    /// Human scores, 1–5.
    pub scores: Vec<f32>,
}

/// Reads the JSONL file `path` and encodes every record with `scorer`'s tokenizer, keeping the
/// last `max_length` ids. Groups are in order of first appearance.
pub fn load_groups(path: &Path, scorer: &RewardScorer, max_length: usize) -> Result<Vec<Group>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: String| Error::bad_file(path, format!("line {}: {m}", n + 1));
        let r: Record = serde_json::from_str(line).map_err(|e| {
            bad(format!(
                "{e} (expected role, context, response, dimension, score)"
            ))
        })?;
        if !(1.0..=5.0).contains(&r.score) {
            return Err(bad(format!("score {} is outside 1..5", r.score)));
        }
        let key = match &r.id {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => r.context.clone(),
        };
        let info = r.role_info.as_deref().unwrap_or(&r.role);
        let text = reward_text(info, &r.context, &r.response, &r.dimension);
        let ids = scorer
            .encode(&text, max_length)
            .map_err(|e| bad(e.to_string()))?
            .ids;
        let slot = *index
            .entry((key.clone(), r.dimension.clone()))
            .or_insert_with(|| {
                groups.push(Group {
                    context_key: key,
                    dimension: r.dimension.clone(),
                    seqs: Vec::new(),
                    scores: Vec::new(),
                });
                groups.len() - 1
            });
        groups[slot].seqs.push(ids);
        groups[slot].scores.push(r.score as f32);
    }
    if groups.is_empty() {
        return Err(Error::bad_file(path, "no training records"));
    }
    Ok(groups)
}

/// A deterministic pseudo-random permutation of `0..n` (splitmix64 Fisher–Yates): the data
/// order of an epoch is a function of the seed and the epoch alone, which makes a resumed run
/// see the same batches.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix::new(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// splitmix64: a tiny seeded generator (data order, LoRA init) that needs no crate.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Splits `groups` into (train, held-out): about `fraction` of the contexts, picked by a seeded
/// permutation of the distinct context keys, go to the held-out side with all their groups.
pub fn split_by_context(groups: Vec<Group>, fraction: f64, seed: u64) -> (Vec<Group>, Vec<Group>) {
    let mut keys: Vec<String> = Vec::new();
    for g in &groups {
        if !keys.contains(&g.context_key) {
            keys.push(g.context_key.clone());
        }
    }
    let held = ((keys.len() as f64) * fraction).round() as usize;
    let perm = permutation(keys.len(), seed.wrapping_add(0x5EED));
    let held_keys: std::collections::HashSet<&String> = perm[..held.min(keys.len())]
        .iter()
        .map(|&i| &keys[i])
        .collect();
    let (eval, train): (Vec<Group>, Vec<Group>) = groups
        .into_iter()
        .partition(|g| held_keys.contains(&g.context_key));
    (train, eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_seeded_shuffle() {
        let p = permutation(50, 3);
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(p, permutation(50, 3));
        assert_ne!(p, permutation(50, 4));
    }

    #[test]
    fn text_follows_protocol_4_4() {
        assert_eq!(
            reward_text("I", "C", "R", "D"),
            "<RoleInfo>\n\nI\n\n<Context>\n\nC\n\n<Response>\n\nR\n\n<Dimension>\n\nD"
        );
    }
}
