//! [`RewardModel`]: the reward models step 4 scores with, chosen by the folder's config.json —
//! a decoder architecture step 1 also runs (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
//! `MistralForCausalLM`) is a [`DecoderRewardModel`] (its weights hold a `score` head); anything
//! else is read as BaichuanCharRM ([`BaichuanRewardModel`], whose config parser names what it
//! cannot read).

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::Value;

use super::baichuan::BaichuanRewardModel;
use super::config::SUPPORTED_ARCHITECTURES;
use super::decoder_rm::DecoderRewardModel;
use crate::{Error, Result};

/// A loaded reward model of either family.
#[derive(Debug, Clone)]
pub enum RewardModel {
    Baichuan(BaichuanRewardModel),
    Decoder(DecoderRewardModel),
}

impl From<BaichuanRewardModel> for RewardModel {
    fn from(m: BaichuanRewardModel) -> Self {
        RewardModel::Baichuan(m)
    }
}

impl From<DecoderRewardModel> for RewardModel {
    fn from(m: DecoderRewardModel) -> Self {
        RewardModel::Decoder(m)
    }
}

/// Whether the folder `dir` holds a llama-family decoder (by config.json's `architectures`).
pub fn is_decoder_folder(dir: &Path) -> Result<bool> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(&path, format!("invalid JSON: {e}")))?;
    let arch = json
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("");
    Ok(SUPPORTED_ARCHITECTURES.contains(&arch))
}

impl RewardModel {
    /// Loads the reward model folder `dir` to compute in `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Ok(if is_decoder_folder(dir)? {
            DecoderRewardModel::load(dir, dtype, device)?.into()
        } else {
            BaichuanRewardModel::load(dir, dtype, device)?.into()
        })
    }

    pub fn vocab(&self) -> usize {
        match self {
            RewardModel::Baichuan(m) => m.config().vocab,
            RewardModel::Decoder(m) => m.config().vocab,
        }
    }

    /// The longest input the model takes (the default training `max_length`).
    pub fn max_length(&self) -> usize {
        match self {
            RewardModel::Baichuan(m) => m.config().max_length,
            RewardModel::Decoder(m) => m.config().max_positions,
        }
    }

    /// config.json's `eos_token_id`.
    pub fn eos_token_id(&self) -> Option<u32> {
        match self {
            RewardModel::Baichuan(m) => m.config().eos_token_id,
            RewardModel::Decoder(m) => m.eos_token_id(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            RewardModel::Baichuan(m) => m.dtype(),
            RewardModel::Decoder(m) => m.dtype(),
        }
    }

    /// Bounds the tokens of one packed forward pass (Baichuan; a decoder runs one sequence per
    /// pass anyway).
    pub fn with_max_batch_tokens(self, tokens: usize) -> Self {
        match self {
            RewardModel::Baichuan(m) => m.with_max_batch_tokens(tokens).into(),
            d => d,
        }
    }

    /// The sigmoids of the scores of `seqs` (f32), in input order.
    pub fn score_batch(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        match self {
            RewardModel::Baichuan(m) => m.score_batch(seqs),
            RewardModel::Decoder(m) => m.score_batch(seqs),
        }
    }
}
