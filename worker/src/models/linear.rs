//! Linear layers shared by both weight formats: dense (safetensors, a plain matmul) or quantized
//! (GGUF, candle's `QMatMul`), so the decoder is written once for both. Projections that read
//! the same input (q/k/v, gate/up) can be fused into one layer: one larger matmul instead of
//! several small ones, which is what makes small-batch CPU decoding efficient.

use std::borrow::Cow;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::Result;

/// The weight of a linear layer as the loader hands it over, `(out, in)` as HF and GGUF store it.
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    Quantized(QMatMul),
}

/// How a dense weight is kept for the matmul.
#[derive(Debug, Clone)]
enum Stored {
    /// `(in, out)` contiguous: measured about 1.6x faster than a transposed view for the
    /// `(rows, 576) x (576, 1536)` shapes of small models on the CPU gemm.
    InOut(Tensor),
    /// `(out, in)`, used through a transposed view (better for very wide layers such as the LM
    /// head, and shared with the embedding when tied).
    OutIn(Tensor),
    Quantized(QMatMul),
}

/// `y = x W^T (+ b)`, with a tracing span per call.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Stored,
    bias: Option<Tensor>,
    span: tracing::Span,
}

impl Linear {
    /// A layer whose dense weight is re-laid out as `(in, out)` on the CPU.
    pub fn new(weight: Weight, bias: Option<Tensor>, name: &'static str) -> Result<Self> {
        let weight = match weight {
            Weight::Dense(w) if w.device().is_cpu() => Stored::InOut(w.t()?.contiguous()?),
            Weight::Dense(w) => Stored::OutIn(w),
            Weight::Quantized(q) => Stored::Quantized(q),
        };
        Ok(Self {
            weight,
            bias,
            span: tracing::trace_span!("linear", name),
        })
    }

    /// A layer that keeps a dense weight as stored (no copy), e.g. an LM head tied to the
    /// embedding matrix.
    pub fn new_as_stored(weight: Weight, name: &'static str) -> Self {
        let weight = match weight {
            Weight::Dense(w) => Stored::OutIn(w),
            Weight::Quantized(q) => Stored::Quantized(q),
        };
        Self {
            weight,
            bias: None,
            span: tracing::trace_span!("linear", name),
        }
    }

    /// One layer computing all of `parts` side by side (outputs concatenated in order), or
    /// `None` when they cannot share one matmul (different quant types, mixed formats).
    pub fn fused(parts: Vec<(Weight, Option<Tensor>)>, name: &'static str) -> Result<Option<Self>> {
        let has_bias = parts.iter().all(|(_, b)| b.is_some());
        if !has_bias && parts.iter().any(|(_, b)| b.is_some()) {
            return Ok(None);
        }
        let bias = if has_bias {
            let bs: Vec<&Tensor> = parts.iter().filter_map(|(_, b)| b.as_ref()).collect();
            Some(Tensor::cat(&bs, 0)?)
        } else {
            None
        };
        let weights: Vec<Weight> = parts.into_iter().map(|(w, _)| w).collect();
        let weight = if weights.iter().all(|w| matches!(w, Weight::Dense(_))) {
            let ws: Vec<&Tensor> = weights
                .iter()
                .filter_map(|w| {
                    if let Weight::Dense(t) = w {
                        Some(t)
                    } else {
                        None
                    }
                })
                .collect();
            Weight::Dense(Tensor::cat(&ws, 0)?)
        } else {
            match concat_quantized(&weights)? {
                Some(q) => q,
                None => return Ok(None),
            }
        };
        Self::new(weight, bias, name).map(Some)
    }

    /// Applies the layer to `x` `(..., in)`; `x` must be contiguous.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        if let (Some(b), Stored::InOut(w)) = (&self.bias, &self.weight)
            && x.dtype() != DType::F32
        {
            // A bf16 `Linear` with bias in PyTorch (addmm) adds the bias to the f32 accumulator
            // and rounds once; the CPU gemm widens bf16 to f32 anyway, so this costs nothing
            // more there. (Dense weights are kept `InOut` only on the CPU.)
            let y = matmul_rows(
                &x.to_dtype(DType::F32)?,
                &w.to_dtype(DType::F32)?,
                w.dim(1)?,
            )?;
            return Ok(y
                .broadcast_add(&b.to_dtype(DType::F32)?)?
                .to_dtype(x.dtype())?);
        }
        let y = match &self.weight {
            Stored::InOut(w) => matmul_rows(x, w, w.dim(1)?)?,
            Stored::OutIn(w) => matmul_rows(x, &w.t()?, w.dim(0)?)?,
            Stored::Quantized(q) => q.forward(x)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// `x (..., in) @ w (in, out)`, folding every leading dimension into the rows of one 2-D matmul:
/// one gemm call instead of a batched one, and no broadcast of the weight.
///
/// Row invariance: every row count from 2 up gives a row the same bits, but one row takes the
/// CPU gemm's matrix-vector path, which rounds differently. Forcing one row through the
/// multi-row kernel (as the first of two) was measured to halve batch-1 decoding (SmolLM2 f32:
/// 17.7 → 9.3 tokens per CPU second), so it is not done; quantized layers are invariant for all
/// row counts.
fn matmul_rows(x: &Tensor, w: &Tensor, out: usize) -> Result<Tensor> {
    let dims = x.dims();
    let (lead, inp) = dims.split_at(dims.len() - 1);
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, inp[0]))?.matmul(w)?;
    let mut shape = lead.to_vec();
    shape.push(out);
    Ok(y.reshape(shape)?)
}

/// Concatenates quantized weights along the output rows. Every row of a GGML tensor is
/// quantized on its own, so stacking rows is stacking their bytes.
fn concat_quantized(weights: &[Weight]) -> Result<Option<Weight>> {
    let mut qs: Vec<&QTensor> = Vec::new();
    for w in weights {
        match w {
            Weight::Quantized(QMatMul::QTensor(q)) => qs.push(q),
            _ => return Ok(None),
        }
    }
    let Some(first) = qs.first() else {
        return Ok(None);
    };
    let (dtype, device) = (first.dtype(), first.device());
    let inp = first.shape().dims2()?.1;
    let mut rows = 0;
    let mut bytes = Vec::new();
    for q in &qs {
        let (r, i) = q.shape().dims2()?;
        if q.dtype() != dtype || i != inp {
            return Ok(None);
        }
        rows += r;
        bytes.extend_from_slice(&q.data()?);
    }
    let storage = QStorage::from_data(Cow::Owned(bytes), &device, dtype)?;
    let q = QTensor::new(storage, (rows, inp))?;
    Ok(Some(Weight::Quantized(QMatMul::from_qtensor(q)?)))
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Tensor};

    use super::*;

    /// Small weights and inputs: the shared test values scaled by 0.2.
    fn pseudo(n: usize, seed: u64) -> Vec<f32> {
        crate::models::test_values::pseudo(n, seed)
            .into_iter()
            .map(|v| v * 0.2)
            .collect()
    }

    /// Asserts that every row of `layer` applied to the last `m` rows of `x` (for each `m` in
    /// `counts`) has the same bits as that row computed among all rows of `x`.
    fn assert_rows_invariant(
        layer: &Linear,
        x: &Tensor,
        counts: std::ops::RangeInclusive<usize>,
        name: &str,
    ) {
        let n = x.dim(0).unwrap();
        let all: Vec<Vec<f32>> = layer.forward(x).unwrap().to_vec2().unwrap();
        for m in counts {
            let part: Vec<Vec<f32>> = layer
                .forward(&x.narrow(0, n - m, m).unwrap())
                .unwrap()
                .to_vec2()
                .unwrap();
            for (r, row) in part.iter().enumerate() {
                let same = row
                    .iter()
                    .zip(&all[n - m + r])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{name}: row {r} of {m} differs");
            }
        }
    }

    fn quantized(out: usize, inp: usize, dtype: GgmlDType) -> Linear {
        let w = Tensor::from_vec(pseudo(out * inp, out as u64), (out, inp), &Device::Cpu).unwrap();
        let q = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
        Linear::new(Weight::Quantized(q), None, "test").unwrap()
    }

    /// Dense layers, `(in, out)` and transposed `(out, in)`: a row's bits do not depend on the
    /// row count from 2 rows up (one row: see `matmul_rows`).
    #[test]
    fn dense_rows_do_not_depend_on_the_row_count() {
        let (inp, out) = (576, 1536);
        let w = Tensor::from_vec(pseudo(out * inp, 3), (out, inp), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(pseudo(40 * inp, 7), (40, inp), &Device::Cpu).unwrap();
        let layers = [
            (
                "(in, out)",
                Linear::new(Weight::Dense(w.clone()), None, "test").unwrap(),
            ),
            ("(out, in)", Linear::new_as_stored(Weight::Dense(w), "test")),
        ];
        for (name, layer) in layers {
            assert_rows_invariant(&layer, &x, 2..=40, name);
        }
    }

    /// Batch invariance of quantized models rests on this: candle picks kernels by row count
    /// (m == 1 vs tiles of rows, repacked x86 tiles when `in` is a multiple of 256), and each
    /// must give a row the same bits whatever rows surround it.
    #[test]
    fn quantized_rows_do_not_depend_on_the_row_count() {
        // SmolLM2-135M's fused qkv (in 576, not repacked) and down projection (in 1536, repacked).
        for (out, inp, dtype) in [
            (960, 576, GgmlDType::Q8_0),
            (576, 1536, GgmlDType::Q8_0),
            (576, 1536, GgmlDType::Q4_1),
        ] {
            let layer = quantized(out, inp, dtype);
            let x = Tensor::from_vec(pseudo(40 * inp, 7), (40, inp), &Device::Cpu).unwrap();
            assert_rows_invariant(&layer, &x, 1..=40, &format!("{dtype:?} {out}x{inp}"));
        }
    }
}
