//! Batched generation over any [`crate::models::Decoder`]: left padding with per-row positions
//! and masks, a KV cache, and sampling whose random stream depends only on (seed, item).
