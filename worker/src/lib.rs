//! evalfleet worker: loads each model once and keeps it, runs the work items the coordinator
//! leases to it (generation for step 1), and streams one result per item back.
//!
//! - [`models`]: the decoder (llama / qwen2 / mistral through one config), HF safetensors and GGUF
//!   loading, PEFT LoRA merging.
//! - [`tokenize`]: tokenizers (tokenizer.json or GGUF vocabulary), the model's own chat template,
//!   LLaMA-Factory templates with their encoding and `cutoff_len` truncation.
//! - [`engine`]: batched generation with a KV cache, sampling with a per-item random stream.
//! - [`tasks`]: turns a lease into results (builds prompts, generates, decodes).
//! - [`rpc`]: the stream to the coordinator.
//! - [`embed`]: sentence-transformers embedding models and the cosine similarity (step 2).
//! - [`train`]: reward-model training (issue 10): losses, AdamW, data-parallel steps, checkpoints.
//! - [`collective`]: all-reduce/broadcast/barrier between data-parallel ranks (in-process now).
//! - [`tp`]: tensor-parallel groups (k ranks as one worker: the leader's commands, the
//!   followers' loop, status rounds, process liveness).
//! - [`convert`]: a GGUF checkpoint as an f32 HF folder (`evalfleet-worker convert-gguf`).
//! - [`device`]: `--device` parsing (`cpu`, `cuda:N`) and the default dtype per device.

pub mod collective;
pub mod convert;
pub mod device;
pub mod embed;
pub mod engine;
pub mod error;
pub mod models;
pub mod rpc;
pub mod runners;
pub mod score;
pub mod tasks;
pub mod tokenize;
pub mod tp;
pub mod train;

pub use error::{Error, Result};
