//! Model code: one decoder for the llama / qwen2 / mistral family (configured, not copied),
//! loaded from HF folders (safetensors, sharded or not) or GGUF files, with PEFT LoRA adapters
//! merged at load.
//!
//! The engine drives models only through [`Decoder`], so batching, caching and sampling code never
//! depends on which architecture or weight format is behind it.
//!
//! - `config`: [`DecoderConfig`] and the registry from HF `architectures` to it.
//! - `decoder`: the transformer itself; `linear` (dense or quantized, fusable), `rope`, `mask`,
//!   `cache` ([`KvCache`]) are its parts.
//! - `hf` (safetensors folders), `gguf` (GGUF files), `lora` (PEFT adapters): weight sources.
//! - `loader`: [`load_causal_lm`] and [`LoadedModel`]; `convert`: [`convert_gguf_to_hf`];
//!   `base_cache`: [`BaseCache`], one base read once for many adapters (sweeps).
//! - `shard`: tensor parallelism (which part of each weight a rank keeps, the row-parallel
//!   layer's all-reduce); a group is given as [`LoadOptions::tp`].
//! - `baichuan`: step 4's reward model ([`BaichuanRewardModel`], docs/FIDELITY.md §4.5), not a
//!   [`Decoder`]: its `baichuan_config`, `baichuan_weights` (safetensors or PyTorch `.bin`
//!   shards) and `alibi` are its parts.
//! - `decoder_rm`: [`DecoderRewardModel`], the decoder with a `Linear(hidden, 1)` score head;
//!   `reward_model`: [`RewardModel`], either reward model, chosen by config.json.
//! - `torch_ops`: elementwise steps rounded where PyTorch rounds them in bf16 (attention
//!   scaling, SiLU, RMSNorm, the reward head), shared by both reward models and the decoder.

use candle_core::{Device, Tensor};

use crate::Result;

mod alibi;
mod attention;
mod baichuan;
mod baichuan_config;
mod baichuan_weights;
mod base_cache;
pub(crate) use baichuan_weights::RmWeights;
pub(crate) use cpu_kernels::gelu_erf;
pub(crate) use linear::{Linear, Weight};
mod cache;
mod config;
mod convert;
mod cpu_gemm;
mod cpu_kernels;
mod decoder;
mod decoder_rm;
mod gguf;
mod hf;
mod linear;
mod loader;
mod lora;
mod mask;
mod reward_model;
mod rope;
mod shard;
mod torch_ops;

pub use alibi::{alibi_bias, alibi_slopes};
pub use baichuan::{BaichuanRewardModel, DEFAULT_MAX_BATCH_TOKENS};
pub use baichuan_config::{BaichuanConfig, PositionEncoding};
pub use base_cache::{BaseCache, load_decoder};
pub use cache::KvCache;
/// The GGUF header type (metadata and tensor table), re-exported for the tokenizer.
pub use candle_core::quantized::gguf_file::{Content as GgufContent, Value as GgufValue};
pub use config::{DecoderConfig, RopeLayout, RopeScaling, SUPPORTED_ARCHITECTURES};
pub use convert::convert_gguf_to_hf;
pub use decoder::DecoderModel;
pub use decoder_rm::{DecoderRewardModel, config_eos, decoder_rm_param_shapes};
pub use gguf::{SUPPORTED_GGUF_ARCHITECTURES, gguf_config, read_gguf_content};
pub use loader::{
    DTypeChoice, LoadOptions, LoadedModel, SourceKind, load_causal_lm, resolve_model_path,
};
pub use lora::Adapter;
pub use reward_model::{RewardModel, is_decoder_folder};

/// Which positions' logits a forward pass must return. The LM head is the most expensive matmul
/// for small models, so it is computed only where the caller reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsAt {
    /// Every position: `(batch, seq, vocab)`.
    All,
    /// Only the last position of each row: `(batch, 1, vocab)`.
    Last,
}

/// One forward step over a left-padded batch.
#[derive(Debug)]
pub struct ForwardInput {
    /// `(batch, seq)` u32 token ids (pad positions hold any valid id).
    pub tokens: Tensor,
    /// `(batch, seq)` u32 position ids per row (HF: cumulative sum of the attention mask - 1).
    pub positions: Tensor,
    /// `(batch, past + seq)` u8, 1 where a key may be attended to, 0 for padding. `None` means
    /// no padding anywhere (plain causal attention).
    pub key_mask: Option<Tensor>,
}

/// What the generation engine needs from a causal LM.
pub trait Decoder {
    /// Per-sequence state kept between forward passes (the KV cache).
    type Cache;
    fn new_cache(&self) -> Self::Cache;
    /// Runs `input` after what `cache` already holds and appends to the cache. Returns f32 logits
    /// shaped as [`LogitsAt`] says. Causal masking is the decoder's job; `key_mask` only adds
    /// padding.
    fn forward(
        &self,
        input: &ForwardInput,
        cache: &mut Self::Cache,
        at: LogitsAt,
    ) -> Result<Tensor>;
    /// Keeps only the given batch rows of the cache, in that order (finished sequences leave the
    /// batch). A row may be repeated, which expands a shared-prefix cache into a batch.
    fn retain_rows(&self, cache: &mut Self::Cache, rows: &[usize]) -> Result<()>;
    fn device(&self) -> &Device;
    fn vocab_size(&self) -> usize;
}

/// Deterministic test inputs shared by the model modules' unit tests.
#[cfg(test)]
pub(crate) mod test_values {
    /// `n` xorshift values, uniform in [-0.5, 0.5), fixed by `seed`.
    pub(crate) fn pseudo(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }
}
