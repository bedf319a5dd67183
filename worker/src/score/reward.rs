//! Step 4 reward scoring (docs/FIDELITY.md §4.4, §4.5): a [`RewardScorer`] holds the reward model
//! (BaichuanCharRM-style, or a llama-family decoder with a score head: [`RewardModel`]) and its
//! tokenizer; [`score_texts`] scores texts (the worker's reward runner, `crate::runners::reward`,
//! brings them from a lease).
//!
//! Each text is encoded as the reference does: `encode(text, add_special_tokens=False)` (special
//! token strings in the text become their ids), then eos, and when longer than the lease's
//! `cutoff_len`, only the LAST `cutoff_len` ids are kept (the role information at the start is
//! cut first). The sigmoid is reported in the model dtype widened to f32; the driver computes
//! `sigmoid * 4 + 1` in f64.

use std::path::Path;

use crate::models::RewardModel;
use crate::tokenize::TextTokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device};

/// The reward model with the tokenizer of its folder.
#[derive(Debug, Clone)]
pub struct RewardScorer {
    model: RewardModel,
    tokenizer: TextTokenizer,
    eos: u32,
}

/// One encoded reward input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardInput {
    /// The ids the model reads (the last `cutoff_len` of text ids + eos).
    pub ids: Vec<u32>,
    /// The text ids + eos were longer than `cutoff_len` and their start was cut.
    pub truncated: bool,
}

/// The compute dtype of a reward model from a lease's `ModelSpec.dtype`: bf16 unless told
/// otherwise (docs/FIDELITY.md, decision 6), on any device.
pub fn reward_dtype(dtype: &str) -> Result<DType> {
    match dtype.to_ascii_lowercase().as_str() {
        "" | "auto" | "bf16" | "bfloat16" => Ok(DType::BF16),
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "fp16" => Ok(DType::F16),
        other => Err(Error::Unsupported(format!(
            "reward model dtype {other:?}: expected auto (bf16), bf16, f32 or f16"
        ))),
    }
}

impl RewardScorer {
    /// Loads the model and tokenizer of the reward model folder `dir`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let model = RewardModel::load(dir, dtype, device)?;
        match &model {
            RewardModel::Baichuan(m) => {
                let cfg = m.config();
                // The position encoding is inferred when config.json does not name it: say which.
                tracing::info!(
                    dir = %dir.display(),
                    position = ?cfg.position,
                    layers = cfg.layers,
                    hidden = cfg.hidden,
                    heads = cfg.heads,
                    dtype = ?dtype,
                    "reward model weights loaded"
                );
            }
            RewardModel::Decoder(m) => tracing::info!(
                dir = %dir.display(),
                architecture = %m.config().architecture,
                layers = m.config().layers,
                hidden = m.config().hidden,
                dtype = ?dtype,
                "decoder reward model weights loaded"
            ),
        }
        let tokenizer = TextTokenizer::from_hf_dir(dir)?;
        Self::new(model, tokenizer, dir)
    }

    /// Pairs a loaded model with its tokenizer; the eos id is the tokenizer's eos token, or
    /// config.json's `eos_token_id` when the tokenizer names none.
    pub fn new(
        model: impl Into<RewardModel>,
        tokenizer: TextTokenizer,
        dir: &Path,
    ) -> Result<Self> {
        let model = model.into();
        let eos = tokenizer.eos_id().or(model.eos_token_id()).ok_or_else(|| {
            Error::bad_file(
                dir,
                "no eos token: neither the tokenizer's eos_token nor config.json's eos_token_id",
            )
        })?;
        Ok(Self {
            model,
            tokenizer,
            eos,
        })
    }

    /// Bounds the tokens of one packed forward pass (see
    /// [`crate::models::BaichuanRewardModel::with_max_batch_tokens`]).
    pub fn with_max_batch_tokens(mut self, tokens: usize) -> Self {
        self.model = self.model.with_max_batch_tokens(tokens);
        self
    }

    pub fn model(&self) -> &RewardModel {
        &self.model
    }

    /// The model's vocabulary size.
    pub fn vocab(&self) -> usize {
        self.model.vocab()
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Text ids + eos, keeping the last `cutoff_len` (0 = all).
    pub fn encode(&self, text: &str, cutoff_len: usize) -> Result<RewardInput> {
        let mut ids = self.tokenizer.encode(text)?;
        ids.push(self.eos);
        let truncated = cutoff_len > 0 && ids.len() > cutoff_len;
        if truncated {
            ids.drain(..ids.len() - cutoff_len);
        }
        Ok(RewardInput { ids, truncated })
    }

    /// Sigmoids of already encoded inputs (see [`crate::models::BaichuanRewardModel::score_batch`] and
    /// [`crate::models::DecoderRewardModel::score_batch`]).
    pub fn score_batch(&self, inputs: &[Vec<u32>]) -> Result<Vec<f32>> {
        self.model.score_batch(inputs)
    }
}

/// A reward score (docs/FIDELITY.md §4.5): the sigmoid of the score head at the last token, and
/// what the input was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardScore {
    pub sigmoid: f32,
    pub input_tokens: u32,
    /// The text was cut to the cutoff length.
    pub truncated: bool,
}

/// Scores `texts` (`(item id, text)`, each encoded with `cutoff` as
/// [`RewardScorer::encode`]), `chunk` texts per call of the model, calling `on_done` with each
/// item's score as soon as its chunk is computed. A text that cannot be encoded fails alone; a
/// model failure fails its chunk.
pub fn score_texts(
    scorer: &RewardScorer,
    texts: &[(&str, &str)],
    cutoff: usize,
    chunk: usize,
    on_done: &mut dyn FnMut(&str, Result<RewardScore, &Error>),
) {
    let vocab = scorer.vocab();
    let mut ready: Vec<(&str, RewardInput)> = Vec::with_capacity(texts.len());
    for &(item_id, text) in texts {
        let checked = scorer.encode(text, cutoff).and_then(|input| {
            match input.ids.iter().find(|&&id| id as usize >= vocab) {
                Some(id) => Err(Error::Item {
                    item: item_id.to_string(),
                    message: format!(
                        "token id {id} is outside the reward model's vocabulary of {vocab} \
                         (tokenizer and model do not match?)"
                    ),
                }),
                None => Ok(input),
            }
        });
        match checked {
            Ok(input) => ready.push((item_id, input)),
            Err(e) => on_done(item_id, Err(&e)),
        }
    }
    // Similar lengths together: fewer attention blocks of very different sizes per batch.
    ready.sort_by_key(|(_, input)| std::cmp::Reverse(input.ids.len()));
    let started = std::time::Instant::now();
    let tokens: usize = ready.iter().map(|(_, i)| i.ids.len()).sum();
    for batch in ready.chunks(chunk.max(1)) {
        let ids: Vec<Vec<u32>> = batch.iter().map(|(_, i)| i.ids.clone()).collect();
        match scorer.score_batch(&ids) {
            Ok(sigmoids) => {
                for ((item_id, input), sigmoid) in batch.iter().zip(sigmoids) {
                    let score = RewardScore {
                        sigmoid,
                        input_tokens: input.ids.len() as u32,
                        truncated: input.truncated,
                    };
                    on_done(item_id, Ok(score));
                }
            }
            Err(e) => batch
                .iter()
                .for_each(|(item_id, _)| on_done(item_id, Err(&e))),
        }
    }
    tracing::info!(
        items = ready.len(),
        tokens,
        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
        "reward texts scored"
    );
}
