//! The shared-prefix key/value caches kept between batches and leases: a small LRU of one-row
//! caches, one per prefix *level* (the first j pairs of a prompt), bounded in entries and in
//! bytes (each cached token costs `layers x 2 x kv_heads x head_dim` values: about 46 KB for
//! SmolLM2-135M in f32, 512 KB for a 7B llama without grouped KV heads in f16).
//!
//! A prefix is always computed pair by pair: level j runs the tokens of pair j after a copy of
//! level j - 1. So its bits never depend on which levels happened to be held (a level is the same
//! whether it was extended from a kept parent or built from scratch), and questions whose shots
//! agree only on their first pairs still share those pairs' keys and values.

use candle_core::Tensor;

use super::RowCache;
use crate::Result;
use crate::models::{Decoder, ForwardInput, KvCache, LogitsAt};

/// Prefix levels kept by [`PrefixCache::default`]: a 5-shot chain and its recent siblings.
const DEFAULT_PREFIXES: usize = 12;
/// Bytes of key/value buffers kept by [`PrefixCache::default`] (levels count their whole
/// prefix): about 23 000 SmolLM2-135M f32 tokens, 2 000 of a 7B llama in f16.
const DEFAULT_BYTES: usize = 1 << 30;

struct Entry<C> {
    /// The prefix's tokens and where its pairs end (the same tokens cut otherwise are another
    /// computation, hence another entry).
    ids: Vec<u32>,
    ends: Vec<usize>,
    cache: C,
    bytes: usize,
}

/// One-row KV caches of prompt prefixes, most recently used last (`C`: the decoder's cache).
pub struct PrefixCache<C = KvCache> {
    entries: Vec<Entry<C>>,
    max_prefixes: usize,
    max_bytes: usize,
    hits: u64,
    misses: u64,
}

impl<C> Default for PrefixCache<C> {
    fn default() -> Self {
        PrefixCache::new(DEFAULT_PREFIXES, DEFAULT_BYTES)
    }
}

impl<C> PrefixCache<C> {
    /// Keeps at most `max_prefixes` levels (at least 1) and `max_bytes` of key/value buffers in
    /// all; a larger level is still computed and kept alone until the next one comes.
    pub fn new(max_prefixes: usize, max_bytes: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            max_prefixes: max_prefixes.max(1),
            max_bytes,
            hits: 0,
            misses: 0,
        }
    }

    /// Levels held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the key/value buffers held now.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// (hits, levels computed) of [`PrefixCache::get_or_compute`] so far: a hit is a whole
    /// prefix found held.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Drops every kept prefix.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The one-row cache of `prompt[..ends.last()]`, whose pairs end at `ends` (increasing, not
    /// empty). Missing levels are computed from the deepest one held; each becomes the most
    /// recently used.
    pub fn get_or_compute<D: Decoder<Cache = C>>(
        &mut self,
        decoder: &D,
        prompt: &[u32],
        ends: &[usize],
    ) -> Result<&C>
    where
        C: RowCache,
    {
        let top = ends.len();
        let mut held = top;
        while held > 0 && !self.touch(&prompt[..ends[held - 1]], &ends[..held]) {
            held -= 1;
        }
        if held == top {
            self.hits += 1;
        }
        for level in held..top {
            self.misses += 1;
            let start = level.checked_sub(1).map_or(0, |p| ends[p]);
            let mut cache = match level {
                0 => decoder.new_cache(),
                // The parent was touched or pushed last.
                _ => self.last().select_rows(&[0])?,
            };
            extend(decoder, &mut cache, &prompt[start..ends[level]], start)?;
            let bytes = cache.bytes();
            self.make_room(bytes);
            self.entries.push(Entry {
                ids: prompt[..ends[level]].to_vec(),
                ends: ends[..=level].to_vec(),
                cache,
                bytes,
            });
        }
        Ok(self.last())
    }

    fn last(&self) -> &C {
        &self
            .entries
            .last()
            .expect("a level was just placed last")
            .cache
    }

    /// Moves the entry of (`ids`, `ends`) last, if held.
    fn touch(&mut self, ids: &[u32], ends: &[usize]) -> bool {
        match self
            .entries
            .iter()
            .position(|e| e.ends == ends && e.ids == ids)
        {
            Some(pos) => {
                let entry = self.entries.remove(pos);
                self.entries.push(entry);
                true
            }
            None => false,
        }
    }

    /// Drops the least recently used levels until one of `bytes` more fits both bounds.
    fn make_room(&mut self, bytes: usize) {
        while !self.entries.is_empty()
            && (self.entries.len() >= self.max_prefixes || self.bytes() + bytes > self.max_bytes)
        {
            self.entries.remove(0);
        }
    }
}

/// Runs `ids` (one row, no padding) at positions from `start` after what `cache` holds; the
/// logits are not read.
fn extend<D: Decoder>(decoder: &D, cache: &mut D::Cache, ids: &[u32], start: usize) -> Result<()> {
    let n = ids.len();
    let device = decoder.device();
    let positions: Vec<u32> = (start..start + n).map(|p| p as u32).collect();
    let input = ForwardInput {
        tokens: Tensor::from_vec(ids.to_vec(), (1, n), device)?,
        positions: Tensor::from_vec(positions, (1, n), device)?,
        key_mask: None,
    };
    decoder.forward(&input, cache, LogitsAt::Last)?;
    Ok(())
}
