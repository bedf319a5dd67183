//! Gradients of one training batch against reference gradients (PyTorch's, written by
//! scripts/goldens/train_rm_bf16_goldens.py): the bf16 parity test runs it on the CPU and the GPU
//! device check (`evalfleet-bench train-grads`) on the GPU, so both compare the same way.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::loss::LossNorm;
use super::params::TrainableRm;
use super::step::{MicroBatch, accumulate};
use crate::{Error, Result};

/// The reference batch and its loss cases (the goldens' JSON).
#[derive(Debug, Deserialize)]
pub struct GradGoldens {
    pub groups: Vec<GoldenGroup>,
    pub cases: Vec<GoldenCase>,
}

#[derive(Debug, Deserialize)]
pub struct GoldenGroup {
    pub seqs: Vec<Vec<u32>>,
    pub scores: Vec<f32>,
}

/// One loss weighting and PyTorch's loss values for it.
#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub name: String,
    pub w_ranking: f64,
    pub w_regression: f64,
    pub loss_1: f64,
    pub loss_2: f64,
    pub loss: f64,
}

/// How one case's losses and gradients compare with the reference's, whose gradient file holds,
/// per parameter, the gradient of the reference's own scheme (`<case>/<param>`) and the same
/// gradient computed all in f32 (`<case>/f32/<param>`): their distance is how far rounding alone
/// moves that gradient, the yardstick for evalfleet's.
#[derive(Debug, Clone, Serialize)]
pub struct GradReport {
    pub case: String,
    /// evalfleet's `[loss_1, loss_2, loss]` and the reference's.
    pub losses: [f64; 3],
    pub reference_losses: [f64; 3],
    /// The largest `‖g − g_ref‖ / max(5 % · ‖g_ref‖, ‖g_ref − g_ref_f32‖)` over the parameters
    /// (at most 1: no gradient is further from the reference's than 5 % or the reference's own
    /// rounding noise), and which parameter.
    pub worst_excess: f32,
    pub worst_param: String,
    /// `‖g − g_ref‖` and `‖g − g_ref_f32‖` over all parameters, relative to `‖g_ref‖`: a bf16
    /// computation like the reference's lies nearer its bf16 gradients than its f32 ones.
    pub distance_to_reference: f32,
    pub distance_to_f32: f32,
    /// Parameters compared (those whose reference gradient is not zero but for rounding) and in
    /// all.
    pub compared: usize,
    pub params: usize,
    /// Every gradient came back in f32 (the master weights' dtype).
    pub gradients_f32: bool,
}

impl GradReport {
    /// The largest difference of a loss value, relative to the reference's (at least 0.01).
    pub fn worst_loss_error(&self) -> f64 {
        self.losses
            .iter()
            .zip(&self.reference_losses)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-2))
            .fold(0.0, f64::max)
    }
}

/// Reads `goldens` (JSON) and `grads` (safetensors, `<case>/<param>`), then for each case
/// computes the batch's gradients with the model folder `model` on `device` in `dtype`.
pub fn gradient_reports(
    model: &Path,
    goldens: &Path,
    grads: &Path,
    device: &Device,
    dtype: DType,
) -> Result<Vec<GradReport>> {
    let text = std::fs::read_to_string(goldens).map_err(|e| Error::io(goldens, e))?;
    let g: GradGoldens = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(goldens, format!("invalid goldens: {e}")))?;
    let want = candle_core::safetensors::load(grads, &Device::Cpu)
        .map_err(|e| Error::bad_file(grads, format!("cannot read the gradients: {e}")))?;
    let mut micro = MicroBatch::default();
    for group in &g.groups {
        micro.push_group(group.seqs.clone(), group.scores.clone());
    }
    let mut out = Vec::with_capacity(g.cases.len());
    for case in &g.cases {
        let rm = TrainableRm::load(model, &[], device)?.with_compute_dtype(dtype)?;
        let norm = LossNorm {
            groups: g.groups.len(),
            items: micro.items(),
            w_ranking: case.w_ranking,
            w_regression: case.w_regression,
        };
        let mut got = HashMap::new();
        let loss = accumulate(&rm, &micro, &norm, &mut got)?;
        out.push(compare(
            case,
            [loss.ranking, loss.regression, loss.total],
            &got,
            &want,
        )?);
    }
    Ok(out)
}

fn compare(
    case: &GoldenCase,
    losses: [f64; 3],
    got: &HashMap<String, Tensor>,
    want: &HashMap<String, Tensor>,
) -> Result<GradReport> {
    let mut report = GradReport {
        case: case.name.clone(),
        losses,
        reference_losses: [case.loss_1, case.loss_2, case.loss],
        worst_excess: 0.0,
        worst_param: String::new(),
        distance_to_reference: 0.0,
        distance_to_f32: 0.0,
        compared: 0,
        params: got.len(),
        gradients_f32: got.values().all(|t| t.dtype() == DType::F32),
    };
    let reference = |key: String| {
        want.get(&key)
            .ok_or_else(|| Error::Unsupported(format!("no reference gradient `{key}`")))
    };
    let (mut to_ref, mut to_f32, mut norm) = (0f32, 0f32, 0f32);
    let mut names: Vec<&String> = got.keys().collect();
    names.sort();
    for name in names {
        let w = reference(format!("{}/{name}", case.name))?;
        let w32 = reference(format!("{}/f32/{name}", case.name))?;
        let g = got[name].to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let (d, d32, w_norm) = (l2(&(&g - w)?)?, l2(&(&g - w32)?)?, l2(w)?);
        to_ref += d * d;
        to_f32 += d32 * d32;
        norm += w_norm * w_norm;
        // A gradient that is zero but for rounding (the score bias under loss_1 alone) has no
        // size to compare against.
        if w_norm < 1e-6 {
            continue;
        }
        let noise = l2(&(w - w32)?)?;
        let excess = d / (0.05 * w_norm).max(noise);
        if excess > report.worst_excess {
            report.worst_excess = excess;
            report.worst_param = name.clone();
        }
        report.compared += 1;
    }
    report.distance_to_reference = (to_ref / norm).sqrt();
    report.distance_to_f32 = (to_f32 / norm).sqrt();
    Ok(report)
}

fn l2(t: &Tensor) -> Result<f32> {
    Ok(t.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt())
}
