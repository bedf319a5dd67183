//! One optimisation step: the gradients of each micro-batch summed, all-reduced over the ranks
//! of a [`Collective`], then one [`AdamW`] update. Because the losses divide by the step's
//! whole batch ([`LossNorm`]), the summed gradient is the full batch's whatever the split into
//! micro-batches and ranks.

use std::collections::HashMap;

use candle_core::Tensor;

use super::adamw::AdamW;
use super::loss::{GroupScores, LossNorm, batch_loss};
use super::params::TrainableRm;
use crate::Result;
use crate::collective::Collective;

/// Sequences and their groups (group offsets index `seqs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MicroBatch {
    pub seqs: Vec<Vec<u32>>,
    pub groups: Vec<GroupScores>,
}

impl MicroBatch {
    /// Appends a group of encoded responses with their human scores.
    pub fn push_group(&mut self, seqs: Vec<Vec<u32>>, scores: Vec<f32>) {
        self.groups.push(GroupScores {
            offset: self.seqs.len(),
            scores,
        });
        self.seqs.extend(seqs);
    }

    pub fn items(&self) -> usize {
        self.seqs.len()
    }
}

/// The loss values of one step, summed over micro-batches and ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepLoss {
    pub ranking: f64,
    pub regression: f64,
    pub total: f64,
}

/// Adds the gradients of `micro`'s loss to `grads` (by parameter name) and returns its losses.
pub fn accumulate(
    model: &TrainableRm,
    micro: &MicroBatch,
    norm: &LossNorm,
    grads: &mut HashMap<String, Tensor>,
) -> Result<StepLoss> {
    if micro.seqs.is_empty() {
        return Ok(StepLoss::default());
    }
    let seqs: Vec<&[u32]> = micro.seqs.iter().map(|s| &s[..]).collect();
    let logits = model.logits(&seqs, true)?;
    let loss = batch_loss(&logits, &micro.groups, norm)?;
    let store = loss.total.backward()?;
    for name in model.trainable() {
        let Some(g) = store.get(model.param(name)?.as_tensor()) else {
            continue;
        };
        let sum = match grads.remove(name) {
            Some(acc) => (acc + g)?,
            None => g.clone(),
        };
        grads.insert(name.clone(), sum);
    }
    Ok(StepLoss {
        ranking: loss.ranking,
        regression: loss.regression,
        total: loss.total.to_scalar::<f32>()? as f64,
    })
}

/// One optimizer step over this rank's `micros`: gradients accumulated, summed over the ranks
/// of `collective`, AdamW at `lr`. Returns the step's losses summed over all ranks.
pub fn train_step(
    model: &TrainableRm,
    opt: &mut AdamW,
    micros: &[MicroBatch],
    norm: &LossNorm,
    lr: f64,
    collective: &dyn Collective,
) -> Result<StepLoss> {
    let mut grads = HashMap::new();
    let mut local = StepLoss::default();
    for micro in micros {
        let l = accumulate(model, micro, norm, &mut grads)?;
        local.ranking += l.ranking;
        local.regression += l.regression;
        local.total += l.total;
    }
    // Every rank reduces every trainable parameter in the same order, a zero gradient where its
    // batch did not reach the parameter.
    let mut reduced = Vec::with_capacity(model.trainable().len());
    for name in model.trainable() {
        let var = model.param(name)?;
        let g = match grads.remove(name) {
            Some(g) => g,
            None => var.as_tensor().zeros_like()?,
        };
        let g = if collective.world_size() > 1 {
            collective.all_reduce_sum(&g)?
        } else {
            g
        };
        reduced.push((name.as_str(), var, g));
    }
    let params: Vec<(&str, &candle_core::Var, &Tensor)> =
        reduced.iter().map(|(n, v, g)| (*n, *v, g)).collect();
    opt.step(lr, &params)?;
    let losses = Tensor::new(
        &[
            local.ranking as f32,
            local.regression as f32,
            local.total as f32,
        ],
        model.device(),
    )?;
    let sums: Vec<f32> = if collective.world_size() > 1 {
        collective.all_reduce_sum(&losses)?.to_vec1()?
    } else {
        losses.to_vec1()?
    };
    Ok(StepLoss {
        ranking: sums[0] as f64,
        regression: sums[1] as f64,
        total: sums[2] as f64,
    })
}
