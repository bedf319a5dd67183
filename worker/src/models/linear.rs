//! Linear layers shared by both weight formats: dense (safetensors, a plain matmul) or quantized
//! (GGUF, candle's `QMatMul`), so the decoder is written once for both. Projections that read
//! the same input (q/k/v, gate/up) can be fused into one layer: one larger matmul instead of
//! several small ones, which is what makes small-batch CPU decoding efficient.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::cpu_gemm::PackedWeight;
use super::cpu_kernels::{cpu_f32, cpu_threads, with_f32};
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
    /// f32 on the CPU: packed for the project's kernels (cpu_gemm.rs), whose rows do not depend
    /// on the row count, one row included.
    Packed(Arc<PackedWeight>),
    /// `(in, out)` contiguous, other dtypes on the CPU: measured about 1.6x faster than a
    /// transposed view for the `(rows, 576) x (576, 1536)` shapes of small models on the CPU gemm.
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
    /// A layer whose dense weight is re-laid out on the CPU: packed when f32, else `(in, out)`.
    pub fn new(weight: Weight, bias: Option<Tensor>, name: &'static str) -> Result<Self> {
        let weight = match weight {
            Weight::Dense(w) if packable(&w) => Stored::Packed(Arc::new(pack(&w)?)),
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
    /// embedding matrix; except an f32 weight on the CPU, which is packed (a copy: the CPU kernels
    /// are several times faster than the gemm on a transposed view, and only they compute one row
    /// as they compute it among others).
    pub fn new_as_stored(weight: Weight, name: &'static str) -> Result<Self> {
        let weight = match weight {
            Weight::Dense(w) if packable(&w) => Stored::Packed(Arc::new(pack(&w)?)),
            Weight::Dense(w) => Stored::OutIn(w),
            Weight::Quantized(q) => Stored::Quantized(q),
        };
        Ok(Self {
            weight,
            bias: None,
            span: tracing::trace_span!("linear", name),
        })
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
            // An input that carries a backward pass (training: a trainable parameter upstream)
            // goes through candle's matmul, which has one; the weight itself is constant.
            Stored::Packed(w) if x.track_op() => {
                let w = Tensor::from_vec(w.to_out_in(), (w.n(), w.k()), &Device::Cpu)?;
                matmul_rows(x, &w.t()?, w.dim(0)?)?
            }
            Stored::Packed(w) => return packed_rows(x, w, self.bias.as_ref()),
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

/// Whether a dense weight is packed for the CPU kernels: f32 on the CPU and constant (a
/// trainable one must stay a tensor for its gradient).
fn packable(w: &Tensor) -> bool {
    cpu_f32(&[w]) && !w.track_op()
}

/// Packs an f32 CPU weight `(out, in)`.
fn pack(w: &Tensor) -> Result<PackedWeight> {
    let (out, inp) = w.dims2()?;
    with_f32(&w.contiguous()?, |ws| {
        Ok(PackedWeight::from_out_in(ws, out, inp))
    })
}

/// `x (..., in) W (+ b)` on the CPU kernels, every leading dimension folded into the rows; each
/// row's bits are the same whatever the row count (cpu_gemm.rs). An input in another dtype is
/// computed in f32 and rounded back.
fn packed_rows(x: &Tensor, w: &PackedWeight, bias: Option<&Tensor>) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = w.n();
    }
    let threads = cpu_threads();
    let y = with_f32(&x, |xs| match bias {
        Some(b) => with_f32(&b.to_dtype(DType::F32)?.contiguous()?, |bs| {
            Ok(w.matmul(xs, Some(bs), threads))
        }),
        None => Ok(w.matmul(xs, None, threads)),
    })?;
    Ok(Tensor::from_vec(y, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

/// `x (..., in) @ w (in, out)`, folding every leading dimension into the rows of one 2-D matmul:
/// one gemm call instead of a batched one, and no broadcast of the weight.
///
/// Row invariance (weights other than f32 on the CPU, which take [`packed_rows`]): every row
/// count from 2 up gives a row the same bits, but one row takes the CPU gemm's matrix-vector
/// path, which rounds differently; quantized layers are invariant for all row counts.
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
        let f32s =
            |t: Tensor| -> Vec<Vec<f32>> { t.to_dtype(DType::F32).unwrap().to_vec2().unwrap() };
        let all = f32s(layer.forward(x).unwrap());
        for m in counts {
            let part = f32s(layer.forward(&x.narrow(0, n - m, m).unwrap()).unwrap());
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

    /// Dense f32 layers on the CPU (packed, from `new` and `new_as_stored`, with and without
    /// bias): a row's bits do not depend on the row count, one row included. bf16 layers (the CPU
    /// gemm): from 2 rows up (one row: see `matmul_rows`).
    #[test]
    fn dense_rows_do_not_depend_on_the_row_count() {
        let (inp, out) = (576, 1536);
        let w = Tensor::from_vec(pseudo(out * inp, 3), (out, inp), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(pseudo(out, 5), out, &Device::Cpu).unwrap();
        let x = Tensor::from_vec(pseudo(40 * inp, 7), (40, inp), &Device::Cpu).unwrap();
        let layers = [
            (
                "new",
                Linear::new(Weight::Dense(w.clone()), None, "test").unwrap(),
            ),
            (
                "new with bias",
                Linear::new(Weight::Dense(w.clone()), Some(b), "test").unwrap(),
            ),
            (
                "new_as_stored",
                Linear::new_as_stored(Weight::Dense(w.clone()), "test").unwrap(),
            ),
        ];
        for (name, layer) in layers {
            assert!(matches!(layer.weight, Stored::Packed(_)), "{name}");
            assert_rows_invariant(&layer, &x, 1..=40, name);
        }
        let w16 = w.to_dtype(DType::BF16).unwrap();
        let x16 = x.to_dtype(DType::BF16).unwrap();
        let layer = Linear::new(Weight::Dense(w16), None, "test").unwrap();
        assert!(matches!(layer.weight, Stored::InOut(_)));
        assert_rows_invariant(&layer, &x16, 2..=40, "bf16");
    }

    /// Training: a trainable weight stays a tensor, and an input carrying a backward pass gets
    /// its gradient through a packed (constant) weight.
    #[test]
    fn gradients_pass_through_dense_layers() {
        let (inp, out, m) = (20, 9, 3);
        let w = Tensor::from_vec(pseudo(out * inp, 3), (out, inp), &Device::Cpu).unwrap();
        let var = candle_core::Var::from_tensor(&w).unwrap();
        let trainable = Linear::new(Weight::Dense(var.as_tensor().clone()), None, "t").unwrap();
        assert!(matches!(trainable.weight, Stored::InOut(_)));
        let layer = Linear::new(Weight::Dense(w.clone()), None, "t").unwrap();
        assert!(matches!(layer.weight, Stored::Packed(_)));
        let x = candle_core::Var::from_tensor(
            &Tensor::from_vec(pseudo(m * inp, 7), (m, inp), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let y = layer.forward(x.as_tensor()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let got: Vec<Vec<f32>> = grads.get(x.as_tensor()).unwrap().to_vec2().unwrap();
        // d sum(x W^T) / dx = ones (m, out) W.
        let want: Vec<Vec<f32>> = Tensor::ones((m, out), DType::F32, &Device::Cpu)
            .unwrap()
            .matmul(&w)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() <= 1e-5, "{a} against {b}");
        }
    }

    /// The packed layers compute what candle's matmul computes, up to the summation order.
    #[test]
    fn packed_layers_agree_with_candle() {
        let (inp, out) = (300, 77);
        let w = Tensor::from_vec(pseudo(out * inp, 3), (out, inp), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(pseudo(out, 5), out, &Device::Cpu).unwrap();
        let x = Tensor::from_vec(pseudo(2 * 5 * inp, 7), (2, 5, inp), &Device::Cpu).unwrap();
        let layer = Linear::new(Weight::Dense(w.clone()), Some(b.clone()), "test").unwrap();
        let got: Vec<f32> = layer
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = x
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5, "{a} against {b}");
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
