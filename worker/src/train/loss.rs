//! The two CharacterEval reward-model losses (docs/FIDELITY.md §5), on the logits `r` of a
//! batch laid out group after group. A *group* is the responses to one context scored on one
//! dimension (the model reads the dimension, so responses are only compared on the same one).
//!
//! Exact normalisation (the paper's definitions are unverified; this is our reading):
//! - `loss_1 = (1/G) Σ_g −1/(C(N_g,2)+1) · Σ_{(a,b) ∈ P_g} log σ(r_a − r_b)`, where `N_g` is the
//!   number of responses of group `g`, `P_g` its ordered pairs with human score `s_a > s_b`
//!   (ties give no pair), `G` the number of groups in the optimisation step's whole batch.
//! - `loss_2 = (1/T) Σ_i (σ(r_i) − (s_i − 1)/4)²` over the `T` scored responses of the step's
//!   batch: the released BaichuanCharRM's `MSELoss(sigmoid(score), labels/4)` with labels
//!   `s − 1`, so a trained model scores on the same 1–5 scale in step 4 (`σ·4 + 1`).
//! - `loss = w_1 · loss_1 + w_2 · loss_2`.
//!
//! `G` and `T` count the whole step (all micro-batches, all ranks), so summing the gradients of
//! micro-batches and ranks gives the gradient of the full batch's loss.

use candle_core::{D, DType, Device, Tensor};

use crate::Result;

/// Where one group's responses sit in the logits, and their human scores (1–5).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupScores {
    pub offset: usize,
    pub scores: Vec<f32>,
}

/// The step-level counts the losses divide by, and the weights of the two losses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossNorm {
    /// `G`: groups in the step's batch.
    pub groups: usize,
    /// `T`: responses in the step's batch.
    pub items: usize,
    pub w_ranking: f64,
    pub w_regression: f64,
}

/// The losses of a (micro-)batch as tensors, and their values.
#[derive(Debug)]
pub struct BatchLoss {
    /// `w_1 · loss_1 + w_2 · loss_2` (this micro-batch's share), differentiable.
    pub total: Tensor,
    /// This micro-batch's share of loss_1 and loss_2 (unweighted).
    pub ranking: f64,
    pub regression: f64,
}

/// `log σ(x)` computed stably: `min(x, 0) − log(1 + e^{−|x|})`.
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let min0 = (x - x.relu()?)?;
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((min0 - tail)?)
}

/// The pairs `(a, b)` of all groups (indices into the logits) and each pair's weight
/// `1 / (G · (C(N_g,2) + 1))`.
pub fn ranking_pairs(
    groups: &[GroupScores],
    total_groups: usize,
) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let (mut a_idx, mut b_idx, mut w) = (Vec::new(), Vec::new(), Vec::new());
    for g in groups {
        let n = g.scores.len();
        let weight = 1.0 / (total_groups as f64 * ((n * n.saturating_sub(1) / 2) as f64 + 1.0));
        for (a, sa) in g.scores.iter().enumerate() {
            for (b, sb) in g.scores.iter().enumerate() {
                if sa > sb {
                    a_idx.push((g.offset + a) as u32);
                    b_idx.push((g.offset + b) as u32);
                    w.push(weight as f32);
                }
            }
        }
    }
    (a_idx, b_idx, w)
}

/// The losses of `logits` `(n,)` for `groups` (which cover the logits in order).
pub fn batch_loss(logits: &Tensor, groups: &[GroupScores], norm: &LossNorm) -> Result<BatchLoss> {
    let device = logits.device();
    let ranking = ranking_loss(logits, groups, norm.groups, device)?;
    let regression = regression_loss(logits, groups, norm.items, device)?;
    let total = ((&ranking * norm.w_ranking)? + (&regression * norm.w_regression)?)?;
    Ok(BatchLoss {
        total,
        ranking: ranking.to_scalar::<f32>()? as f64,
        regression: regression.to_scalar::<f32>()? as f64,
    })
}

/// This batch's share of loss_1 (a scalar; 0 when it holds no pair).
pub fn ranking_loss(
    logits: &Tensor,
    groups: &[GroupScores],
    total_groups: usize,
    device: &Device,
) -> Result<Tensor> {
    let (a, b, w) = ranking_pairs(groups, total_groups.max(1));
    if a.is_empty() {
        return Ok(Tensor::zeros((), DType::F32, device)?);
    }
    let n = a.len();
    let ra = logits.index_select(&Tensor::from_vec(a, n, device)?, 0)?;
    let rb = logits.index_select(&Tensor::from_vec(b, n, device)?, 0)?;
    let w = Tensor::from_vec(w, n, device)?;
    Ok((log_sigmoid(&(ra - rb)?)? * w)?.sum_all()?.neg()?)
}

/// This batch's share of loss_2 (a scalar).
pub fn regression_loss(
    logits: &Tensor,
    groups: &[GroupScores],
    total_items: usize,
    device: &Device,
) -> Result<Tensor> {
    let labels: Vec<f32> = groups
        .iter()
        .flat_map(|g| g.scores.iter().map(|s| (s - 1.0) / 4.0))
        .collect();
    let n = labels.len();
    let labels = Tensor::from_vec(labels, n, device)?;
    let diff = (candle_nn::ops::sigmoid(logits)? - labels)?;
    Ok((diff.sqr()?.sum(D::Minus1)? / total_items.max(1) as f64)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_weights_follow_the_normalisation() {
        // Group of 3 with a tie: pairs (0,1), (0,2); C(3,2)+1 = 4; G = 2.
        let groups = [
            GroupScores {
                offset: 0,
                scores: vec![5.0, 3.0, 3.0],
            },
            GroupScores {
                offset: 3,
                scores: vec![1.0, 2.0],
            },
        ];
        let (a, b, w) = ranking_pairs(&groups, 2);
        assert_eq!(a, vec![0, 0, 4]);
        assert_eq!(b, vec![1, 2, 3]);
        assert_eq!(w, vec![0.125, 0.125, 0.25]);
    }

    #[test]
    fn losses_match_hand_computed_values() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[0.5f32, -0.25, 1.0], &dev).unwrap();
        let groups = [GroupScores {
            offset: 0,
            scores: vec![4.0, 2.0, 5.0],
        }];
        let norm = LossNorm {
            groups: 1,
            items: 3,
            w_ranking: 1.0,
            w_regression: 1.0,
        };
        let l = batch_loss(&logits, &groups, &norm).unwrap();
        let ls = |x: f64| -(1.0 + (-x).exp()).ln();
        // Pairs: (0,1) 0.75, (2,0) 0.5, (2,1) 1.25, normaliser C(3,2)+1 = 4.
        let want1 = -(ls(0.75) + ls(0.5) + ls(1.25)) / 4.0;
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let want2 =
            ((sig(0.5) - 0.75).powi(2) + (sig(-0.25) - 0.25).powi(2) + (sig(1.0) - 1.0).powi(2))
                / 3.0;
        assert!((l.ranking - want1).abs() < 1e-6, "{} vs {want1}", l.ranking);
        assert!(
            (l.regression - want2).abs() < 1e-6,
            "{} vs {want2}",
            l.regression
        );
        let total = l.total.to_scalar::<f32>().unwrap() as f64;
        assert!((total - want1 - want2).abs() < 1e-6);
    }
}
