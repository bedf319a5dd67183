//! Rotary position embeddings with per-row positions.
//!
//! The cos/sin tables are computed once per model for every position up to the maximum, the way
//! transformers computes them (f32 inverse frequencies, f32 angles), so that left-padded rows can
//! each gather their own positions with one `index_select`.

use candle_core::{DType, Device, Tensor};

use super::config::{DecoderConfig, RopeLayout, RopeScaling};
use crate::{Error, Result};

/// Precomputed `(max_positions, head_dim / 2)` cos and sin tables.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    layout: RopeLayout,
    max_positions: usize,
}

/// The inverse frequencies `theta^(-2i/d)`, with the configured scaling applied.
pub fn inverse_frequencies(cfg: &DecoderConfig) -> Result<Vec<f32>> {
    let d = cfg.head_dim;
    let base = cfg.rope_theta as f32;
    let mut inv: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / d as f32))
        .collect();
    match &cfg.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => inv.iter_mut().for_each(|f| *f /= *factor as f32),
        Some(RopeScaling::FreqFactors(ff)) => {
            if ff.len() != inv.len() {
                return Err(Error::Unsupported(format!(
                    "rope frequency factors have {} entries, expected head_dim/2 = {}",
                    ff.len(),
                    inv.len()
                )));
            }
            inv.iter_mut().zip(ff).for_each(|(f, s)| *f /= *s);
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_positions,
        }) => {
            let (factor, lo, hi) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
            );
            let old = *original_max_positions as f32;
            let (low_wavelen, high_wavelen) = (old / lo, old / hi);
            for f in inv.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_wavelen {
                    // Long wavelengths: fully interpolated.
                    *f /= factor;
                } else if wavelen >= high_wavelen {
                    // The band between: a linear ramp from interpolated to untouched.
                    let smooth = (old / wavelen - lo) / (hi - lo);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
    }
    Ok(inv)
}

impl Rope {
    pub fn new(cfg: &DecoderConfig, dtype: DType, device: &Device) -> Result<Self> {
        let inv = inverse_frequencies(cfg)?;
        let half = inv.len();
        let n = cfg.max_positions;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for f in &inv {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let table = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (n, half), device)?.to_dtype(dtype)?)
        };
        Ok(Self {
            cos: table(cos)?,
            sin: table(sin)?,
            layout: cfg.rope_layout,
            max_positions: n,
        })
    }

    /// Gathers the `(batch, seq, head_dim / 2)` cos/sin rows for `positions` `(batch, seq)` u32.
    /// Done once per forward pass and shared by every layer.
    pub fn gather(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, s) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let max = flat.max(0)?.to_scalar::<u32>()? as usize;
        if max >= self.max_positions {
            return Err(Error::Unsupported(format!(
                "position {max} is beyond the model's maximum of {} positions",
                self.max_positions
            )));
        }
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, s, ()))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, s, ()))?;
        Ok((cos, sin))
    }

    /// Rotates `x` `(batch, heads, seq, head_dim)` (contiguous) by the gathered angles.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(match self.layout {
            RopeLayout::HalfSplit => candle_nn::rotary_emb::rope(x, cos, sin)?,
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin)?,
        })
    }

    /// [`Self::apply`] by plain tensor ops, which have a backward pass (candle's rope kernels
    /// have none): for training.
    pub fn apply_differentiable(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, h, s, d) = x.dims4()?;
        // (b, s, d/2) → (b, 1, s, d/2): one angle table for every head.
        let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
        Ok(match self.layout {
            RopeLayout::HalfSplit => {
                let (x1, x2) = (x.narrow(3, 0, d / 2)?, x.narrow(3, d / 2, d / 2)?);
                let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
                Tensor::cat(&[y1, y2], 3)?
            }
            RopeLayout::Interleaved => {
                let pairs = x.reshape((b, h, s, d / 2, 2))?;
                let (x1, x2) = (
                    pairs.narrow(4, 0, 1)?.squeeze(4)?,
                    pairs.narrow(4, 1, 1)?.squeeze(4)?,
                );
                let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
                Tensor::stack(&[y1, y2], 4)?.reshape((b, h, s, d))?
            }
        })
    }
}
