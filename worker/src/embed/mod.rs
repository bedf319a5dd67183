//! Sentence embeddings for step 2 (docs/FIDELITY.md §2): a sentence-transformers folder loaded as
//! `SentenceTransformer(path)` loads it, and the original tool's cosine similarity.
//!
//! - [`folder`]: `modules.json` (Transformer → Pooling → optional Normalize),
//!   `sentence_bert_config.json`, the Pooling config.
//! - [`tokens`]: strip, lower-case, `tokenizer.json` with truncation to `max_seq_length`.
//! - [`bert`]: the BERT encoder (f32).
//! - [`pooling`]: CLS, max, mean, mean-sqrt-len and last-token pooling.
//!
//! [`Embedder::embed`] batches as `encode` does: texts sorted by length, each batch padded to its
//! longest text and masked, so results do not depend on which texts share a batch (up to float
//! rounding).

pub mod bert;
pub mod folder;
pub mod pooling;
pub mod tokens;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::Result;
use bert::{BertConfig, BertModel};
use folder::StFolder;
use tokens::TextEncoder;

/// Texts per forward pass by default: sentence-transformers' `encode` default.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// A loaded sentence-embedding model.
pub struct Embedder {
    folder: StFolder,
    encoder: TextEncoder,
    model: BertModel,
    batch_size: usize,
}

impl Embedder {
    /// Loads the sentence-transformers folder `dir` onto `device` (weights in f32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let folder = StFolder::read(dir, |tdir| {
            Ok(BertConfig::read(tdir)?.max_position_embeddings)
        })?;
        let config = BertConfig::read(&folder.transformer_dir)?;
        if folder.pooling.word_embedding_dimension != config.hidden_size {
            return Err(crate::Error::bad_file(
                dir,
                format!(
                    "Pooling word_embedding_dimension {} differs from the encoder's hidden_size {}",
                    folder.pooling.word_embedding_dimension, config.hidden_size
                ),
            ));
        }
        // More positions than the model has would index past its position table.
        let max_len = folder.max_seq_length.min(config.max_position_embeddings);
        let encoder = TextEncoder::load(&folder.transformer_dir, max_len, folder.do_lower_case)?;
        let model = BertModel::load(&folder.transformer_dir, config, device)?;
        Ok(Self {
            folder,
            encoder,
            model,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Sets the number of texts per forward pass (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.set_batch_size(batch_size);
        self
    }

    /// Sets the number of texts per forward pass (at least 1) of a loaded embedder (each lease
    /// brings its job's batch size).
    pub fn set_batch_size(&mut self, batch_size: usize) {
        self.batch_size = batch_size.max(1);
    }

    /// The length of an embedding.
    pub fn dim(&self) -> usize {
        self.folder.pooling.output_dim()
    }

    /// Tokens per text after truncation, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.folder.max_seq_length
    }

    /// What the folder's modules say (pooling, normalisation, truncation).
    pub fn folder(&self) -> &StFolder {
        &self.folder
    }

    /// One embedding per text, in the order of `texts`, as `model.encode(texts)` returns them
    /// (float32; normalised only if the folder has a Normalize module).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = self.encoder.encode(texts)?;
        // Longest first, as `encode` sorts, so each batch pads little.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, emb) in chunk.iter().zip(self.embed_batch(&batch)?) {
                out[i] = emb;
            }
        }
        Ok(out)
    }

    /// The original tool's score of each `(label, predict)` pair: both texts embedded (all texts of
    /// all pairs batched together, which changes nothing but float rounding), then [`cosine`].
    pub fn score_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>> {
        let texts: Vec<&str> = pairs
            .iter()
            .flat_map(|&(label, predict)| [label, predict])
            .collect();
        let embeddings = self.embed(&texts)?;
        Ok(embeddings
            .chunks(2)
            .map(|ab| cosine(&ab[0], &ab[1]))
            .collect())
    }

    /// Pads `batch` to its longest sequence, runs the encoder and pooling.
    fn embed_batch(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        let width = lens.iter().copied().max().unwrap_or(0).max(1);
        let mut flat_ids = Vec::with_capacity(batch.len() * width);
        let mut flat_mask = Vec::with_capacity(batch.len() * width);
        for seq in batch {
            flat_ids.extend_from_slice(seq);
            // Pad id 0: masked out of attention and pooling, so its value does not matter.
            flat_ids.extend(std::iter::repeat_n(0u32, width - seq.len()));
            flat_mask.extend(std::iter::repeat_n(1f32, seq.len()));
            flat_mask.extend(std::iter::repeat_n(0f32, width - seq.len()));
        }
        let device = self.model.device();
        let ids = Tensor::from_vec(flat_ids, (batch.len(), width), device)?;
        let mask = Tensor::from_vec(flat_mask, (batch.len(), width), device)?;
        let hidden = self.model.forward(&ids, &mask)?;
        let pooled = self.folder.pooling.forward(&hidden, &mask, &lens)?;
        let mut rows: Vec<Vec<f32>> = pooled.to_dtype(DType::F32)?.to_vec2()?;
        if self.folder.normalize {
            rows.iter_mut().for_each(|r| normalize(r));
        }
        Ok(rows)
    }
}

/// `torch.nn.functional.normalize(x, p=2, eps=1e-12)` in place: `x / max(‖x‖, eps)`.
///
/// The norm is accumulated in f64 and rounded to f32: torch's vectorised f32 reduction order is
/// not reproducible, and the exactly rounded sum is the closest estimate of it.
pub fn normalize(x: &mut [f32]) {
    let norm = (x
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt() as f32)
        .max(1e-12);
    x.iter_mut().for_each(|v| *v /= norm);
}

/// The original tool's similarity (docs/FIDELITY.md §2): `cos_sim(a, b)` = both vectors
/// `F.normalize`d (eps 1e-12) in f32, then their dot product, read as f32. The dot is accumulated
/// in f64 and rounded once, for the same reason as in [`normalize`].
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    normalize(&mut a);
    normalize(&mut b);
    a.iter()
        .zip(&b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum::<f64>() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert_eq!(cosine(&[3., 4.], &[6., 8.]), 1.0);
        assert_eq!(cosine(&[1., 0.], &[0., 2.]), 0.0);
        assert_eq!(cosine(&[1., 0.], &[-1., 0.]), -1.0);
        // Zero vectors stay zero under F.normalize, so their similarity is 0, not NaN.
        assert_eq!(cosine(&[0., 0.], &[1., 0.]), 0.0);
    }
}
