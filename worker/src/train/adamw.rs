//! AdamW as PyTorch's `torch.optim.AdamW` computes it (decoupled weight decay applied first,
//! bias-corrected moments), with its state exposed so that a checkpoint can save it and a
//! resumed run continue bit for bit. candle-nn's `AdamW` does the same arithmetic but keeps its
//! moments private, which rules out resuming.
//!
//! Per parameter, at step `t` with learning rate `lr`:
//! `θ ← θ·(1 − lr·λ)`, `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
//! `θ ← θ − lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + ε)`.
//!
//! [`linear_schedule`] is the learning rate of `transformers`' linear warm-up and decay.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::Result;

/// AdamW settings (PyTorch's defaults except the weight decay, which PyTorch sets to 0.01).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The optimizer state: the step count and the two moments of each trainable parameter.
#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken.
    pub step: u64,
    /// `m` and `v` by parameter name.
    pub moments: HashMap<String, (Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: HashMap::new(),
        }
    }

    /// One update of each `(name, var, grad)` at learning rate `lr` (from the schedule).
    pub fn step(&mut self, lr: f64, params: &[(&str, &Var, &Tensor)]) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for &(name, var, g) in params {
            let theta = var.as_tensor();
            let (m, v) = match self.moments.get(name) {
                Some((m, v)) => (m.clone(), v.clone()),
                None => (theta.zeros_like()?, theta.zeros_like()?),
            };
            let m = ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let decayed = (theta.detach() * (1.0 - lr * c.weight_decay))?;
            let denom = ((&v / bc2)?.sqrt()? + c.eps)?;
            let update = ((&m / bc1)? / denom)?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.moments.insert(name.to_string(), (m, v));
        }
        Ok(())
    }
}

/// The learning rate at optimizer step `step` (0-based, before the update) of `total` steps:
/// linear from 0 to `peak` over `warmup` steps, then linear down to 0 at `total`
/// (`get_linear_schedule_with_warmup`).
pub fn linear_schedule(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let left = total.saturating_sub(step) as f64;
    let span = total.saturating_sub(warmup).max(1) as f64;
    peak * (left / span).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        assert_eq!(linear_schedule(1.0, 0, 2, 10), 0.0);
        assert_eq!(linear_schedule(1.0, 1, 2, 10), 0.5);
        assert_eq!(linear_schedule(1.0, 2, 2, 10), 1.0);
        assert_eq!(linear_schedule(1.0, 6, 2, 10), 0.5);
        assert_eq!(linear_schedule(1.0, 10, 2, 10), 0.0);
        assert_eq!(linear_schedule(1.0, 0, 0, 4), 1.0);
    }
}
