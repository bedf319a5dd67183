//! Linear layers shared by both weight formats: dense (safetensors, a plain matmul) or quantized
//! (GGUF, candle's `QMatMul`), so the decoder is written once for both.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

use crate::Result;

/// The weight of a linear layer, `(out, in)` as HF and GGUF store it.
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    Quantized(QMatMul),
}

/// `y = x W^T (+ b)`, with a tracing span per call.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    span: tracing::Span,
}

impl Linear {
    pub fn new(weight: Weight, bias: Option<Tensor>, name: &'static str) -> Self {
        Self {
            weight,
            bias,
            span: tracing::trace_span!("linear", name),
        }
    }

    /// Applies the layer to `x` `(..., in)`; `x` must be contiguous.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let y = match &self.weight {
            Weight::Dense(w) => {
                // Fold every leading dimension into the rows of one 2-D matmul: one gemm call
                // instead of a batched one, and no broadcast copy of the weight.
                let dims = x.dims();
                let rows: usize = dims[..dims.len() - 1].iter().product();
                let y = x.reshape((rows, dims[dims.len() - 1]))?.matmul(&w.t()?)?;
                let mut out = dims.to_vec();
                *out.last_mut()
                    .expect("linear input has at least one dimension") = w.dim(0)?;
                y.reshape(out)?
            }
            Weight::Quantized(q) => q.forward(x)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
