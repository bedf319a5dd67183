//! The external KV cache: per layer, keys and values `(batch, kv_heads, capacity, head_dim)` in
//! buffers that grow in steps, so appending one decode step copies only that step
//! (`slice_set`), not the whole history as a `cat` would.

use candle_core::Tensor;

use crate::Result;

/// Positions added to a buffer's capacity whenever it has to grow.
const GROW_STEP: usize = 128;

/// One layer's keys and values.
#[derive(Debug, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl LayerCache {
    /// Appends `k`, `v` `(batch, kv_heads, s, head_dim)` (contiguous) and returns views of all
    /// keys and values held so far, `(batch, kv_heads, len, head_dim)`.
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let _s = tracing::trace_span!("kv_append").entered();
        let s = k.dim(2)?;
        let need = self.len + s;
        let cap = self.k.as_ref().map(|t| t.dim(2)).transpose()?.unwrap_or(0);
        if need > cap {
            let new_cap = need.div_ceil(GROW_STEP) * GROW_STEP;
            self.k = Some(grow(self.k.as_ref(), k, self.len, new_cap)?);
            self.v = Some(grow(self.v.as_ref(), v, self.len, new_cap)?);
        }
        let (kb, vb) = (
            self.k.as_ref().expect("allocated above"),
            self.v.as_ref().expect("allocated above"),
        );
        kb.slice_set(k, 2, self.len)?;
        vb.slice_set(v, 2, self.len)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }

    fn retain_rows(&mut self, rows: &Tensor) -> Result<()> {
        for buf in [&mut self.k, &mut self.v] {
            if let Some(t) = buf.as_ref() {
                *buf = Some(t.index_select(rows, 0)?);
            }
        }
        Ok(())
    }

    /// A new layer cache of the `rows` (an index tensor) of this one.
    fn select(&self, rows: &Tensor) -> Result<Self> {
        let pick = |t: &Option<Tensor>| t.as_ref().map(|t| t.index_select(rows, 0)).transpose();
        Ok(Self {
            k: pick(&self.k)?,
            v: pick(&self.v)?,
            len: self.len,
        })
    }

    fn deep_copy(&self) -> Result<Self> {
        let copy = |t: &Option<Tensor>| t.as_ref().map(|t| t.copy()).transpose();
        Ok(Self {
            k: copy(&self.k)?,
            v: copy(&self.v)?,
            len: self.len,
        })
    }
}

/// A new zeroed buffer of `cap` positions shaped like `like`, holding the first `len` positions
/// of `old`.
fn grow(old: Option<&Tensor>, like: &Tensor, len: usize, cap: usize) -> Result<Tensor> {
    let (b, h, _, d) = like.dims4()?;
    let buf = Tensor::zeros((b, h, cap, d), like.dtype(), like.device())?;
    if let Some(old) = old
        && len > 0
    {
        buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
    }
    Ok(buf)
}

/// Keys and values for every layer of one batch. Not `Clone`: the buffers are written in place,
/// so a copy must be deep ([`KvCache::deep_copy`]).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| LayerCache::default()).collect(),
        }
    }

    /// Positions held (including left padding), the same for every row and layer.
    pub fn seq_len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    /// Bytes of the key and value buffers (their whole capacity).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.k, &l.v])
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Rows held, or `None` before the first forward pass.
    pub fn batch(&self) -> Option<usize> {
        self.layers
            .first()
            .and_then(|l| l.k.as_ref())
            .and_then(|t| t.dim(0).ok())
    }

    pub(crate) fn layers_mut(&mut self) -> impl Iterator<Item = &mut LayerCache> {
        self.layers.iter_mut()
    }

    /// Keeps only `rows` (in that order) of every layer. A row may be named several times: a
    /// one-row cache of a shared prompt prefix becomes an n-row batch with `&[0; n]`.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        let Some(device) = self
            .layers
            .first()
            .and_then(|l| l.k.as_ref())
            .map(|t| t.device().clone())
        else {
            return Ok(());
        };
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, rows.len(), &device)?;
        self.layers.iter_mut().try_for_each(|l| l.retain_rows(&idx))
    }

    /// A new cache of `rows` of this one (in that order, repeats allowed), leaving this one as it
    /// is: a kept one-row prefix cache becomes an n-row batch with `&[0; n]` in one copy, where
    /// [`KvCache::deep_copy`] then [`KvCache::retain_rows`] would copy twice.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        let Some(device) = self
            .layers
            .first()
            .and_then(|l| l.k.as_ref())
            .map(|t| t.device().clone())
        else {
            return Ok(Self::new(self.layers.len()));
        };
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, rows.len(), &device)?;
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(|l| l.select(&idx))
                .collect::<Result<_>>()?,
        })
    }

    /// An independent copy (for reusing a shared prompt prefix).
    pub fn deep_copy(&self) -> Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(LayerCache::deep_copy)
                .collect::<Result<_>>()?,
        })
    }
}
