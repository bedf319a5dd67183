//! Tensor parallelism inside one model: which part of each weight a rank keeps, and the
//! row-parallel linear layer that sums the ranks' partial outputs.
//!
//! The scheme is Megatron's: a column-parallel layer (q/k/v, gate, up) keeps a block of output
//! rows, so each rank computes its own heads or its own slice of the MLP with no communication; the
//! row-parallel layer that follows (o_proj, down_proj) keeps the matching block of input columns
//! and produces a partial sum of the full output, which one all-reduce completes. Two
//! all-reduces per layer, everything else (embeddings, norms, heads) replicated.
//!
//! Weights are cut after LoRA merging (the weight source merges the full matrix, then hands this
//! rank its block), so a merged adapter is sharded exactly like a base weight.

use candle_core::Tensor;

use super::linear::{Linear, Weight};
use crate::collective::SharedCollective;
use crate::{Error, Result};

/// This rank's place in a tensor-parallel group; without a group it is rank 0 of 1 and every
/// operation here is the identity.
#[derive(Clone, Default)]
pub(crate) struct TpGroup {
    comm: Option<SharedCollective>,
}

impl std::fmt::Debug for TpGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TpGroup(rank {} of {})", self.rank(), self.world())
    }
}

impl TpGroup {
    pub fn new(comm: Option<SharedCollective>) -> Self {
        Self { comm }
    }

    pub fn rank(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank())
    }

    pub fn world(&self) -> usize {
        self.comm.as_ref().map_or(1, |c| c.world_size())
    }

    /// Whether this is a group of more than one rank (weights are cut, outputs summed).
    pub fn is_sharded(&self) -> bool {
        self.world() > 1
    }

    /// `n` divided by the world size: this rank's share of `n` heads, kv heads or MLP units of
    /// `model`, or an error that names the model, the count and the world size.
    pub fn share(&self, model: &str, what: &str, n: usize) -> Result<usize> {
        let world = self.world();
        if !n.is_multiple_of(world) {
            return Err(Error::Unsupported(format!(
                "tensor parallelism: {model} has {n} {what}, which a world size of {world} does \
                 not divide (use a tensor_parallel_size that divides the {what})"
            )));
        }
        Ok(n / world)
    }

    /// The part of a column-parallel weight (or bias) this rank keeps: output rows made of
    /// `groups` equal blocks (3 for a fused q/k/v matrix), each cut into `world` parts.
    pub fn rows(&self, groups: usize) -> Split {
        if !self.is_sharded() {
            return Split::Full;
        }
        Split::Rows {
            rank: self.rank(),
            world: self.world(),
            groups,
        }
    }

    /// The part of a row-parallel weight this rank keeps: a block of input columns.
    pub fn cols(&self) -> Split {
        if !self.is_sharded() {
            return Split::Full;
        }
        Split::Cols {
            rank: self.rank(),
            world: self.world(),
        }
    }

    /// The element-wise sum of `t` over the ranks (`t` itself without a group).
    pub fn all_reduce(&self, t: Tensor) -> Result<Tensor> {
        match &self.comm {
            Some(c) if c.world_size() > 1 => c.all_reduce_sum(&t),
            _ => Ok(t),
        }
    }
}

/// Which part of a weight (stored `(out, in)`, or a 1-D bias over `out`) a rank keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Split {
    /// The whole tensor (replicated, or a group of one).
    Full,
    /// Output rows (dim 0): `groups` equal blocks, each cut into `world` equal parts; the rank
    /// keeps part `rank` of every block, the blocks in order.
    Rows {
        rank: usize,
        world: usize,
        groups: usize,
    },
    /// Input columns (dim 1), cut into `world` equal parts; the rank keeps part `rank`.
    Cols { rank: usize, world: usize },
}

impl Split {
    /// This rank's part of `t` (`name` is for messages). `Full` returns `t` itself (no copy);
    /// a part is a fresh tensor, so the full one can be freed.
    pub fn apply(&self, t: &Tensor, name: &str) -> Result<Tensor> {
        match *self {
            Split::Full => Ok(t.clone()),
            Split::Rows {
                rank,
                world,
                groups,
            } => {
                let n = t.dim(0)?;
                let block = self.check(n, groups * world, name, "rows")?;
                let parts = (0..groups)
                    .map(|g| t.narrow(0, (g * world + rank) * block, block))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(match parts.as_slice() {
                    [one] => one.force_contiguous()?,
                    _ => Tensor::cat(&parts, 0)?,
                })
            }
            Split::Cols { rank, world } => {
                let n = t.dim(1)?;
                let block = self.check(n, world, name, "columns")?;
                Ok(t.narrow(1, rank * block, block)?.force_contiguous()?)
            }
        }
    }

    fn check(&self, n: usize, parts: usize, name: &str, what: &str) -> Result<usize> {
        if !n.is_multiple_of(parts) {
            return Err(Error::Unsupported(format!(
                "tensor parallelism: `{name}` has {n} {what}, which cannot be cut into {parts} \
                 equal parts"
            )));
        }
        Ok(n / parts)
    }

    /// This rank's part of a linear weight. Quantized weights cannot be cut (their blocks span
    /// columns), so only `Full` is accepted for them.
    pub fn apply_weight(&self, w: Weight, name: &str) -> Result<Weight> {
        match (w, self) {
            (w, Split::Full) => Ok(w),
            (Weight::Dense(t), _) => Ok(Weight::Dense(self.apply(&t, name)?)),
            (Weight::Quantized(_), _) => Err(Error::Unsupported(format!(
                "tensor parallelism: `{name}` is quantized and cannot be split between ranks"
            ))),
        }
    }
}

/// A row-parallel linear layer: each rank multiplies its block of input columns, the partial
/// outputs are summed over the ranks, and the bias is added once, after the sum. Without a
/// group it is exactly the plain layer (bias included in it).
#[derive(Debug, Clone)]
pub(crate) struct RowLinear {
    inner: Linear,
    /// The bias, kept apart only when sharded (it must not be added by every rank).
    bias: Option<Tensor>,
    tp: TpGroup,
}

impl RowLinear {
    /// `weight` is already this rank's block of columns.
    pub fn new(
        weight: Weight,
        bias: Option<Tensor>,
        tp: &TpGroup,
        name: &'static str,
    ) -> Result<Self> {
        if !tp.is_sharded() {
            return Ok(Self {
                inner: Linear::new(weight, bias, name)?,
                bias: None,
                tp: tp.clone(),
            });
        }
        Ok(Self {
            inner: Linear::new(weight, None, name)?,
            bias,
            tp: tp.clone(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.inner.forward(x)?;
        if !self.tp.is_sharded() {
            return Ok(y);
        }
        let y = self.tp.all_reduce(y)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(rows: usize, cols: usize) -> Tensor {
        let v: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn rows_of_grouped_blocks_are_taken_from_each_block() {
        // 3 blocks (q, k, v) of 4 rows, 2 ranks: rank 1 keeps rows 2-3, 6-7, 10-11.
        let w = t(12, 2);
        let s = Split::Rows {
            rank: 1,
            world: 2,
            groups: 3,
        };
        let part: Vec<Vec<f32>> = s.apply(&w, "w").unwrap().to_vec2().unwrap();
        let firsts: Vec<f32> = part.iter().map(|r| r[0]).collect();
        assert_eq!(firsts, vec![4.0, 6.0, 12.0, 14.0, 20.0, 22.0]);
    }

    #[test]
    fn columns_and_biases_are_cut_evenly() {
        let w = t(2, 6);
        let s = Split::Cols { rank: 2, world: 3 };
        let part: Vec<Vec<f32>> = s.apply(&w, "w").unwrap().to_vec2().unwrap();
        assert_eq!(part, vec![vec![4.0, 5.0], vec![10.0, 11.0]]);
        let b = Tensor::new(&[0f32, 1., 2., 3.], &Device::Cpu).unwrap();
        let s = Split::Rows {
            rank: 1,
            world: 2,
            groups: 1,
        };
        assert_eq!(
            s.apply(&b, "b").unwrap().to_vec1::<f32>().unwrap(),
            vec![2.0, 3.0]
        );
    }

    #[test]
    fn uneven_cuts_are_refused_with_the_tensor_name() {
        let s = Split::Cols { rank: 0, world: 4 };
        let e = s.apply(&t(2, 6), "model.layers.0.mlp.down_proj.weight");
        let msg = e.unwrap_err().to_string();
        assert!(
            msg.contains("down_proj") && msg.contains("4 equal parts"),
            "{msg}"
        );
        let g = TpGroup::default();
        assert_eq!(g.share("m", "heads", 5).unwrap(), 5);
    }
}
