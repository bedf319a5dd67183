//! The shared-prefix key/value caches kept between batches and leases: a small LRU keyed by the
//! prefix's token ids, bounded in entries and in prefix tokens (each cached token costs
//! `layers x 2 x kv_heads x head_dim` values, about 46 KB for SmolLM2-135M in f32).

use candle_core::Tensor;

use crate::Result;
use crate::models::{Decoder, ForwardInput, KvCache, LogitsAt};

/// Prefixes kept by [`PrefixCache::default`]: the few-shot prefixes of a handful of subjects.
const DEFAULT_PREFIXES: usize = 8;
/// Prefix tokens kept by [`PrefixCache::default`] (about 8 MMLU 5-shot prefixes).
const DEFAULT_TOKENS: usize = 8192;

struct Entry {
    ids: Vec<u32>,
    cache: KvCache,
}

/// One-row KV caches of prompt prefixes, most recently used last.
pub struct PrefixCache {
    entries: Vec<Entry>,
    max_prefixes: usize,
    max_tokens: usize,
    hits: u64,
    misses: u64,
}

impl Default for PrefixCache {
    fn default() -> Self {
        PrefixCache::new(DEFAULT_PREFIXES, DEFAULT_TOKENS)
    }
}

impl PrefixCache {
    /// Keeps at most `max_prefixes` prefixes (at least 1) and `max_tokens` prefix tokens in all;
    /// a prefix longer than that is still computed and kept alone until the next one comes.
    pub fn new(max_prefixes: usize, max_tokens: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            max_prefixes: max_prefixes.max(1),
            max_tokens,
            hits: 0,
            misses: 0,
        }
    }

    /// Prefixes held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (hits, misses) of [`PrefixCache::get_or_compute`] so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Drops every kept prefix (their model is being unloaded, or memory is needed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The one-row cache of `ids` (not empty), computed now in one forward pass when it is not
    /// held; it becomes the most recently used.
    pub fn get_or_compute<D: Decoder<Cache = KvCache>>(
        &mut self,
        decoder: &D,
        ids: &[u32],
    ) -> Result<&KvCache> {
        if let Some(pos) = self.entries.iter().position(|e| e.ids == ids) {
            self.hits += 1;
            let entry = self.entries.remove(pos);
            self.entries.push(entry);
        } else {
            self.misses += 1;
            let cache = compute(decoder, ids)?;
            self.make_room(ids.len());
            self.entries.push(Entry {
                ids: ids.to_vec(),
                cache,
            });
        }
        Ok(&self
            .entries
            .last()
            .expect("an entry was just placed last")
            .cache)
    }

    /// Drops the least recently used prefixes until one of `tokens` more fits both bounds.
    fn make_room(&mut self, tokens: usize) {
        let held = |entries: &[Entry]| entries.iter().map(|e| e.ids.len()).sum::<usize>();
        while !self.entries.is_empty()
            && (self.entries.len() >= self.max_prefixes
                || held(&self.entries) + tokens > self.max_tokens)
        {
            self.entries.remove(0);
        }
    }
}

/// Runs `ids` alone (one row, no padding) into a new cache; the logits are not read.
fn compute<D: Decoder<Cache = KvCache>>(decoder: &D, ids: &[u32]) -> Result<KvCache> {
    let n = ids.len();
    let device = decoder.device();
    let input = ForwardInput {
        tokens: Tensor::from_vec(ids.to_vec(), (1, n), device)?,
        positions: Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), (1, n), device)?,
        key_mask: None,
    };
    let mut cache = decoder.new_cache();
    decoder.forward(&input, &mut cache, LogitsAt::Last)?;
    Ok(cache)
}
