//! Elementwise steps computed the way PyTorch computes them in a reduced dtype (bf16/f16), so
//! that a model in bf16 rounds where the reference model, run by PyTorch, rounds: each op works
//! in f32 and rounds its result once. candle's own bf16 ops round differently: `tensor * f64`
//! multiplies by the factor rounded to bf16, and its bf16 SiLU rounds every intermediate.
//! In f32 these are the same maths as candle's ops, with torch's order of operations.

use candle_core::{D, DType, Tensor};

use crate::Result;

/// `scores / math.sqrt(head_dim)` as PyTorch computes it: in f32, with the divisor rounded to
/// f32, rounded once to the scores' dtype. On the CPU torch divides; on CUDA its
/// division-by-a-scalar kernel multiplies by the f32 reciprocal of the divisor, so each device
/// does what torch does there. (A factor rounded to bf16 is off by 1e-4 for head size 128,
/// enough to move a third of a reward model's bf16 scores.)
pub(crate) fn scale_scores(scores: &Tensor, head_dim: usize) -> Result<Tensor> {
    let divisor = (head_dim as f64).sqrt() as f32;
    let s32 = scores.to_dtype(DType::F32)?;
    let scaled = if scores.device().is_cpu() {
        s32.broadcast_div(&Tensor::new(divisor, scores.device())?)?
    } else {
        s32.affine(f64::from(1.0 / divisor), 0.0)?
    };
    Ok(scaled.to_dtype(scores.dtype())?)
}

/// SiLU computed in f32 and rounded once to the input dtype (torch's bf16 kernel does the same).
pub(crate) fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::silu(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?)
}

/// RMSNorm as Llama and Baichuan write it: `x.float()`, `var = x².mean(-1)` (the sum divided by
/// the count), `x · rsqrt(var + eps)` in f32, cast to the input dtype, then times the weight in
/// that dtype (two roundings in bf16, not one).
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x32 = x.to_dtype(DType::F32)?;
    let n = Tensor::new(x32.dim(D::Minus1)? as f32, x.device())?;
    let var = x32.sqr()?.sum_keepdim(D::Minus1)?.broadcast_div(&n)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    let normed = x32.broadcast_mul(&inv)?.to_dtype(x.dtype())?;
    Ok(normed.broadcast_mul(weight)?)
}

/// `x` rounded to `dtype` (bf16/f16) and widened back; f32 unchanged.
pub(crate) fn round_to(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// A reward head's sigmoid from its f32 logit (`h · w + b`, accumulated in f32): the logit
/// rounded once to the model dtype (a bf16 `Linear` with bias rounds once), then the sigmoid
/// computed in f32 and rounded once.
pub(crate) fn reward_sigmoid(logit: f32, dtype: DType) -> f32 {
    let logit = round_to(logit, dtype);
    round_to(1.0 / (1.0 + (-logit).exp()), dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bf16_scaling_divides_in_f32_and_rounds_once() {
        // 1.5 / sqrt(128) = 0.13258...: the f32 quotient rounds to bf16 0.1328125, while times
        // bf16(1/sqrt(128)) = 0.08837890625 it would be 0.1325683... → bf16 0.1323242.
        let s = Tensor::new(&[1.5f32, -7.0, 300.0], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let got: Vec<f32> = scale_scores(&s, 128)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = [1.5f32, -7.0, 300.0]
            .iter()
            .map(|v| half::bf16::from_f32(v / 128f32.sqrt()).to_f32())
            .collect();
        assert_eq!(got, want);
        assert_eq!(got[0], 0.1328125);
    }

    #[test]
    fn bf16_rms_norm_rounds_before_the_weight() {
        let x = Tensor::new(&[[1.0f32, 2.0, 3.0, 4.0]], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let w = Tensor::new(&[1.1f32, 0.9, 1.3, 0.7], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let got: Vec<f32> = rms_norm(&x, &w, 1e-6)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let inv = 1.0 / ((1.0f32 + 4.0 + 9.0 + 16.0) / 4.0 + 1e-6).sqrt();
        let ws = [1.1f32, 0.9, 1.3, 0.7].map(|v| half::bf16::from_f32(v).to_f32());
        let want: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .zip(ws)
            .map(|(v, w)| {
                let normed = half::bf16::from_f32(v * inv).to_f32();
                half::bf16::from_f32(normed * w).to_f32()
            })
            .collect();
        assert_eq!(got, want);
    }
}
