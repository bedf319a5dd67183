//! f32 matrix products of the CPU linear layers, `y = x W (+ b)`: the weight is packed once into
//! column panels and each product runs register-tiled kernels written for AVX-512, for AVX2 with
//! FMA, and in plain code, one chosen at run time.
//!
//! Summation order (why a row's bits never depend on the batch, see docs/ARCHITECTURE.md on batch
//! invariance): every output element is one fused multiply-add chain over the input features in
//! order, starting from +0, then the bias is added:
//! `acc = fma(x[0], w[0], 0); acc = fma(x[1], w[1], acc); …; y = acc + b`.
//! Tiles, threads and the vector unit only choose which elements are computed side by side, never
//! how one element is summed; `fma` is correctly rounded on every path. So a row has the same bits
//! alone or among any number of rows, on every CPU, which the former gemm path only gave from two
//! rows up.
//!
//! Layout: the `(in, out)` weight is cut into panels of [`PANEL`] output columns; a panel holds its
//! `in` rows of [`PANEL`] values one after the other (the last panel padded with zeros), so a
//! kernel reads each panel as one stream.

use rayon::prelude::*;

/// Output columns per panel: two AVX-512 registers, four AVX2 ones.
pub(crate) const PANEL: usize = 32;

/// Most rows of one AVX-512 tile: 8 rows × 2 registers of accumulators, 2 of weights and one
/// broadcast input use 19 of the 32 vector registers. 12 rows (27 registers) were as fast in a
/// release build but spilled accumulators to the stack in the dev profile that tests use
/// (overflow checks): up to 2x slower there.
const AVX512_ROWS: usize = 8;

/// Most rows of one AVX2 tile: 3 rows × 4 registers of accumulators of the 16 registers.
const AVX2_ROWS: usize = 3;

/// Panels of one cache block: the weights a tile of rows reuses stay in the core's L2 cache.
const BLOCK_BYTES: usize = 512 << 10;

/// Below this many multiply-adds one thread computes the whole product.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Rows of a product from which threads split the rows instead of the columns (each thread then
/// writes its own rows in place; below, each writes its columns into its own buffer).
const SPLIT_ROWS_FROM: usize = 4 * AVX512_ROWS;

/// A weight `W` `(in, out)` packed into panels of output columns.
#[derive(Clone)]
pub(crate) struct PackedWeight {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeight")
            .field("in", &self.k)
            .field("out", &self.n)
            .finish_non_exhaustive()
    }
}

impl PackedWeight {
    /// Packs `w` given `(out, in)` row-major (as HF and GGUF store a linear weight).
    pub(crate) fn from_out_in(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n} x {k}");
        Self::pack(k, n, |i, j| w[j * k + i])
    }

    /// Packs `w` given `(in, out)` row-major.
    #[cfg(test)]
    pub(crate) fn from_in_out(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "weight of {k} x {n}");
        Self::pack(k, n, |i, j| w[i * n + j])
    }

    fn pack(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0f32; panels * k * PANEL];
        for (p, panel) in data.chunks_exact_mut(k * PANEL).enumerate() {
            let cols = (n - p * PANEL).min(PANEL);
            // Column by column: reads of a `(out, in)` source stay sequential.
            for j in 0..cols {
                for (i, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                    row[j] = at(i, p * PANEL + j);
                }
            }
        }
        Self { k, n, data }
    }

    /// The weight back as `(out, in)` row-major.
    pub(crate) fn to_out_in(&self) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let mut w = vec![0f32; n * k];
        for (p, panel) in self.data.chunks_exact(k * PANEL).enumerate() {
            for j in 0..(n - p * PANEL).min(PANEL) {
                let row = &mut w[(p * PANEL + j) * k..(p * PANEL + j + 1) * k];
                for (v, src) in row.iter_mut().zip(panel.chunks_exact(PANEL)) {
                    *v = src[j];
                }
            }
        }
        w
    }

    /// Input features.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Output features.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// `x W (+ bias)` for `x` of `m` rows of `k` values, as `m` rows of `n`, on up to `threads`
    /// threads.
    pub(crate) fn matmul(&self, x: &[f32], bias: Option<&[f32]>, threads: usize) -> Vec<f32> {
        self.matmul_on(Isa::detect(), x, bias, threads)
    }

    fn matmul_on(&self, isa: Isa, x: &[f32], bias: Option<&[f32]>, threads: usize) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        assert!(
            k > 0 && x.len().is_multiple_of(k),
            "input of {} values for {k} features",
            x.len()
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias of {} for {n} outputs", b.len());
        }
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        if m == 0 {
            return out;
        }
        let panels = self.panels();
        let threads = if m * k * n < PARALLEL_MIN_WORK {
            1
        } else {
            threads.max(1)
        };
        if threads == 1 || (m < SPLIT_ROWS_FROM && panels < 2) {
            self.block(isa, x, 0..panels, bias, &mut out, n);
        } else if m >= SPLIT_ROWS_FROM {
            // Whole rows per thread, in multiples of a tile.
            let per = m.div_ceil(threads).next_multiple_of(AVX512_ROWS);
            x.par_chunks(per * k)
                .zip(out.par_chunks_mut(per * n))
                .for_each(|(xs, os)| self.block(isa, xs, 0..panels, bias, os, n));
        } else {
            // Few rows: each thread computes a range of panels into its own buffer.
            let per = panels.div_ceil(threads.min(panels));
            let parts: Vec<(usize, Vec<f32>)> = (0..panels.div_ceil(per))
                .into_par_iter()
                .map(|t| {
                    let (p0, p1) = (t * per, ((t + 1) * per).min(panels));
                    let cols = (n - p0 * PANEL).min((p1 - p0) * PANEL);
                    let bias = bias.map(|b| &b[p0 * PANEL..]);
                    let mut buf = vec![0f32; m * cols];
                    self.block(isa, x, p0..p1, bias, &mut buf, cols);
                    (p0 * PANEL, buf)
                })
                .collect();
            for (c0, buf) in parts {
                let cols = buf.len() / m;
                for (row, part) in out.chunks_exact_mut(n).zip(buf.chunks_exact(cols)) {
                    row[c0..c0 + cols].copy_from_slice(part);
                }
            }
        }
        out
    }

    /// Computes panels `ps` for every row of `x` into `out` (rows of `ldo` values; column 0 is the
    /// first column of panel `ps.start`, as is `bias[0]`).
    fn block(
        &self,
        isa: Isa,
        x: &[f32],
        ps: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        out: &mut [f32],
        ldo: usize,
    ) {
        let k = self.k;
        let rows = x.len() / k;
        let cols = (self.n - ps.start * PANEL).min(ps.len() * PANEL);
        // The bounds every kernel relies on (see `Tile`).
        assert!(ps.end <= self.panels() && cols <= ldo && ps.len() * PANEL >= cols);
        assert!(rows == 0 || out.len() >= (rows - 1) * ldo + cols);
        assert!(bias.is_none_or(|b| b.len() >= cols));
        let per_block = (BLOCK_BYTES / (k * PANEL * 4)).max(1);
        let mut p0 = ps.start;
        while p0 < ps.end {
            let p1 = (p0 + per_block).min(ps.end);
            let c0 = (p0 - ps.start) * PANEL;
            let tile = Tile {
                x,
                k,
                w: &self.data[p0 * k * PANEL..p1 * k * PANEL],
                out: &mut out[c0..],
                ldo,
                cols: (cols - c0).min((p1 - p0) * PANEL),
                bias: bias.map(|b| &b[c0..]),
            };
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::detect` only gives `Avx512` where the CPU has AVX-512F and FMA.
                Isa::Avx512 => unsafe { x86::rows_avx512(tile) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::detect` only gives `Avx2` where the CPU has AVX2 and FMA.
                Isa::Avx2 => unsafe { x86::rows_avx2(tile) },
                Isa::Plain => rows_plain(tile),
            }
            p0 = p1;
        }
    }
}

/// The vector unit a product runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Plain,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                return Self::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Self::Avx2;
            }
        }
        Self::Plain
    }
}

/// The operands of one kernel call: every row of `x` (rows of `k`) times the panels in `w`,
/// written to the first `cols` columns of `out` (rows of `ldo`), plus `bias[..cols]`.
/// [`PackedWeight::block`] checks that `w` holds whole panels covering `cols`, that `out` holds
/// `(rows - 1) * ldo + cols` values and `bias` at least `cols`: the kernels index only within
/// these bounds.
struct Tile<'a> {
    x: &'a [f32],
    k: usize,
    w: &'a [f32],
    out: &'a mut [f32],
    ldo: usize,
    cols: usize,
    bias: Option<&'a [f32]>,
}

/// The plain kernel: one panel of one row at a time, each column its own chain.
fn rows_plain(t: Tile) {
    let k = t.k;
    for (r, xr) in t.x.chunks_exact(k).enumerate() {
        for (p, panel) in t.w.chunks_exact(k * PANEL).enumerate() {
            let c0 = p * PANEL;
            if c0 >= t.cols {
                break;
            }
            let mut acc = [0f32; PANEL];
            for (&a, wr) in xr.iter().zip(panel.chunks_exact(PANEL)) {
                for (acc, &w) in acc.iter_mut().zip(wr) {
                    *acc = a.mul_add(w, *acc);
                }
            }
            let valid = (t.cols - c0).min(PANEL);
            let out = &mut t.out[r * t.ldo + c0..r * t.ldo + c0 + valid];
            for (j, o) in out.iter_mut().enumerate() {
                *o = match t.bias {
                    Some(b) => acc[j] + b[c0 + j],
                    None => acc[j],
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86 kernels. Each tile keeps its accumulators in registers for the whole `k` loop;
    //! pointers stay within the bounds [`Tile`] documents.

    use std::arch::x86_64::*;

    use super::{AVX2_ROWS, AVX512_ROWS, PANEL, Tile};

    /// Pointers and sizes of one tile: `MR` rows from `x`, `NP` panels from `w`.
    #[derive(Clone, Copy)]
    struct Ptrs {
        x: *const f32,
        k: usize,
        w: *const f32,
        out: *mut f32,
        ldo: usize,
        /// Valid columns from the tile's first (≥ 1; may be fewer than `NP * PANEL`).
        cols: usize,
        /// Null for no bias.
        bias: *const f32,
    }

    /// Walks the rows of `t` in tiles of `max_rows` (the last one shorter) and the panels of each
    /// in groups, calling `f(rows, panels, ptrs)`.
    #[inline(always)]
    fn for_tiles(
        t: Tile,
        max_rows: usize,
        group: impl Fn(usize) -> usize,
        f: impl Fn(usize, usize, Ptrs),
    ) {
        let k = t.k;
        let rows = t.x.len() / k;
        let panels = t.cols.div_ceil(PANEL);
        let out = t.out.as_mut_ptr();
        let bias = t.bias.map_or(std::ptr::null(), <[f32]>::as_ptr);
        let mut r = 0;
        while r < rows {
            let mr = (rows - r).min(max_rows);
            let np = group(mr);
            let mut p = 0;
            while p < panels {
                let g = if p + np <= panels { np } else { 1 };
                let c0 = p * PANEL;
                // SAFETY (pointer offsets): row `r < rows` of `x` and of `out`, column
                // `c0 < cols` of `out` and `bias`, panel `p < panels` of `w`, all within the
                // bounds `Tile` documents.
                let ptrs = unsafe {
                    Ptrs {
                        x: t.x.as_ptr().add(r * k),
                        k,
                        w: t.w.as_ptr().add(p * k * PANEL),
                        out: out.add(r * t.ldo + c0),
                        ldo: t.ldo,
                        cols: t.cols - c0,
                        bias: if bias.is_null() { bias } else { bias.add(c0) },
                    }
                };
                f(mr, g, ptrs);
                p += g;
            }
            r += mr;
        }
    }

    /// AVX-512 rows of `t`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn rows_avx512(t: Tile) {
        // Few rows reuse each weight load little: more panels keep more chains in flight.
        let group = |mr: usize| match mr {
            1 => 4,
            2 => 3,
            3 | 4 => 2,
            _ => 1,
        };
        for_tiles(t, AVX512_ROWS, group, |mr, np, p| {
            // SAFETY: this function has the features the tiles need, and `for_tiles` gives
            // pointers to `mr` rows and `np` panels within the bounds of `t`.
            unsafe {
                match (mr, np) {
                    (1, 4) => tile512::<1, 4>(p),
                    (1, _) => tile512::<1, 1>(p),
                    (2, 3) => tile512::<2, 3>(p),
                    (2, _) => tile512::<2, 1>(p),
                    (3, 2) => tile512::<3, 2>(p),
                    (3, _) => tile512::<3, 1>(p),
                    (4, 2) => tile512::<4, 2>(p),
                    (4, _) => tile512::<4, 1>(p),
                    (5, _) => tile512::<5, 1>(p),
                    (6, _) => tile512::<6, 1>(p),
                    (7, _) => tile512::<7, 1>(p),
                    _ => tile512::<8, 1>(p),
                }
            }
        });
    }

    /// One AVX-512 tile: `MR` rows × `NP` panels.
    ///
    /// # Safety
    /// AVX-512F and FMA; `p` points to `MR` rows of `x` and `out` and `NP` whole panels of `w`.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn tile512<const MR: usize, const NP: usize>(p: Ptrs) {
        let mut acc = [[[_mm512_setzero_ps(); 2]; NP]; MR];
        // Pointers that advance by one feature per step: no index arithmetic in the loop (which
        // overflow checks would keep from being unrolled into registers).
        // SAFETY: row `r < MR` of `x`, panel `q < NP` of `w`.
        let mut xs: [*const f32; MR] = std::array::from_fn(|r| unsafe { p.x.add(r * p.k) });
        let mut ws: [*const f32; NP] = std::array::from_fn(|q| unsafe { p.w.add(q * p.k * PANEL) });
        for _ in 0..p.k {
            let mut w = [[_mm512_setzero_ps(); 2]; NP];
            for (w, src) in w.iter_mut().zip(ws.iter_mut()) {
                // SAFETY: the current row of a panel, 32 values; the pointer moves to the next
                // row (one past the panel after the last step, never read).
                unsafe {
                    *w = [_mm512_loadu_ps(*src), _mm512_loadu_ps(src.add(16))];
                    *src = src.add(PANEL);
                }
            }
            for (acc, x) in acc.iter_mut().zip(xs.iter_mut()) {
                // SAFETY: the current feature of a row of `x`; then the next one (one past the
                // row after the last step, never read).
                let a = unsafe {
                    let a = _mm512_set1_ps(**x);
                    *x = x.add(1);
                    a
                };
                for (acc, w) in acc.iter_mut().zip(&w) {
                    acc[0] = _mm512_fmadd_ps(a, w[0], acc[0]);
                    acc[1] = _mm512_fmadd_ps(a, w[1], acc[1]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (q, acc) in acc.iter().enumerate() {
                for (h, &v) in acc.iter().enumerate() {
                    let c = q * PANEL + h * 16;
                    if c >= p.cols {
                        continue;
                    }
                    let valid = (p.cols - c).min(16);
                    let mask: __mmask16 = if valid == 16 { !0 } else { (1 << valid) - 1 };
                    // SAFETY: columns `c..c + valid` of row `r` of `out` and of `bias` are
                    // within the tile's valid columns; masked lanes are neither read nor written.
                    unsafe {
                        let v = if p.bias.is_null() {
                            v
                        } else {
                            _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, p.bias.add(c)))
                        };
                        _mm512_mask_storeu_ps(p.out.add(r * p.ldo + c), mask, v);
                    }
                }
            }
        }
    }

    /// AVX2 rows of `t`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_avx2(t: Tile) {
        let group = |mr: usize| if mr == 1 { 2 } else { 1 };
        for_tiles(t, AVX2_ROWS, group, |mr, np, p| {
            // SAFETY: as in `rows_avx512`, for AVX2 and FMA.
            unsafe {
                match (mr, np) {
                    (1, 2) => tile256::<1, 2>(p),
                    (1, _) => tile256::<1, 1>(p),
                    (2, _) => tile256::<2, 1>(p),
                    _ => tile256::<3, 1>(p),
                }
            }
        });
    }

    /// One AVX2 tile: `MR` rows × `NP` panels.
    ///
    /// # Safety
    /// AVX2 and FMA; `p` points to `MR` rows of `x` and `out` and `NP` whole panels of `w`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile256<const MR: usize, const NP: usize>(p: Ptrs) {
        let mut acc = [[[_mm256_setzero_ps(); 4]; NP]; MR];
        let pstride = p.k * PANEL;
        for i in 0..p.k {
            let mut w = [[_mm256_setzero_ps(); 4]; NP];
            for (q, w) in w.iter_mut().enumerate() {
                for (h, w) in w.iter_mut().enumerate() {
                    // SAFETY: values `8h..8h + 8` of row `i < k` of panel `q < NP`.
                    *w = unsafe { _mm256_loadu_ps(p.w.add(q * pstride + i * PANEL + 8 * h)) };
                }
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: value `i < k` of row `r < MR`.
                let a = _mm256_set1_ps(unsafe { *p.x.add(r * p.k + i) });
                for (acc, w) in acc.iter_mut().zip(&w) {
                    for (acc, &w) in acc.iter_mut().zip(w) {
                        *acc = _mm256_fmadd_ps(a, w, *acc);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (q, acc) in acc.iter().enumerate() {
                for (h, &v) in acc.iter().enumerate() {
                    let c = q * PANEL + h * 8;
                    if c >= p.cols {
                        continue;
                    }
                    if c + 8 <= p.cols {
                        // SAFETY: columns `c..c + 8` of row `r` of `out` and of `bias` are valid.
                        unsafe {
                            let v = if p.bias.is_null() {
                                v
                            } else {
                                _mm256_add_ps(v, _mm256_loadu_ps(p.bias.add(c)))
                            };
                            _mm256_storeu_ps(p.out.add(r * p.ldo + c), v);
                        }
                        continue;
                    }
                    let mut lanes = [0f32; 8];
                    // SAFETY: `lanes` holds 8 values.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
                    for (j, &v) in lanes.iter().enumerate().take(p.cols - c) {
                        // SAFETY: column `c + j < cols` of row `r` of `out` and of `bias`.
                        unsafe {
                            let v = if p.bias.is_null() {
                                v
                            } else {
                                v + *p.bias.add(c + j)
                            };
                            *p.out.add(r * p.ldo + c + j) = v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::test_values::pseudo;

    /// The specified order, written out: one fused multiply-add chain per element, then the bias.
    fn reference(
        x: &[f32],
        w_in_out: &[f32],
        bias: Option<&[f32]>,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let m = x.len() / k;
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut acc = 0f32;
                for i in 0..k {
                    acc = x[r * k + i].mul_add(w_in_out[i * n + c], acc);
                }
                y[r * n + c] = bias.map_or(acc, |b| acc + b[c]);
            }
        }
        y
    }

    /// Every vector unit this CPU can run, the plain code included.
    fn isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Plain];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// Odd shapes (`k` not a multiple of 16, `n` not a multiple of a panel or of a vector, one
    /// column, one feature) and row counts that leave partial tiles, with and without bias, on
    /// one thread and several: exactly the reference's bits, on every path.
    #[test]
    fn every_path_computes_the_specified_order() {
        let shapes = [
            (1, 1, 1),
            (3, 37, 45),
            (13, 16, 32),
            (5, 100, 33),
            (27, 7, 1),
            (50, 64, 200),
            (2, 576, 960),
            (64, 300, 70),
        ];
        for (m, k, n) in shapes {
            let x = pseudo(m * k, 1 + m as u64);
            let w = pseudo(k * n, 2 + k as u64);
            let b = pseudo(n, 3);
            let packed = PackedWeight::from_in_out(&w, k, n);
            for bias in [None, Some(b.as_slice())] {
                let want = reference(&x, &w, bias, k, n);
                for isa in isas() {
                    for threads in [1, 2, 3] {
                        let got = packed.matmul_on(isa, &x, bias, threads);
                        assert!(
                            same_bits(&got, &want),
                            "{isa:?} {m}x{k}x{n} bias {} threads {threads}",
                            bias.is_some()
                        );
                    }
                }
            }
        }
    }

    /// The same rows computed in batches of 1, 2, 7 and 32 rows (and as the tail of a larger
    /// batch) give the same bits, for the decode and prefill shapes of a small model.
    #[test]
    fn a_row_does_not_depend_on_the_rows_around_it() {
        for (k, n) in [(576, 960), (1536, 576), (40, 77)] {
            let w = pseudo(n * k, 9);
            let packed = PackedWeight::from_out_in(&w, n, k);
            let x = pseudo(70 * k, 4);
            let all = packed.matmul(&x, None, 2);
            for rows in [1, 2, 7, 32] {
                for start in [0, 3, 70 - rows] {
                    let part = &x[start * k..(start + rows) * k];
                    for threads in [1, 2] {
                        let got = packed.matmul(part, None, threads);
                        assert!(
                            same_bits(&got, &all[start * n..(start + rows) * n]),
                            "{k}x{n}: {rows} rows from {start}, {threads} threads"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn both_source_layouts_pack_alike() {
        let (k, n) = (19, 70);
        let w_out_in = pseudo(n * k, 5);
        let mut w_in_out = vec![0f32; k * n];
        for j in 0..n {
            for i in 0..k {
                w_in_out[i * n + j] = w_out_in[j * k + i];
            }
        }
        let a = PackedWeight::from_out_in(&w_out_in, n, k);
        let b = PackedWeight::from_in_out(&w_in_out, k, n);
        assert!(same_bits(&a.data, &b.data));
        assert_eq!((a.k(), a.n()), (k, n));
        assert!(same_bits(&a.to_out_in(), &w_out_in));
        // The padding of the last panel is zero.
        assert_eq!(a.data.len(), 3 * k * PANEL);
        assert!(
            a.data[2 * k * PANEL..]
                .chunks(PANEL)
                .all(|r| r[6..] == [0.0; 26])
        );
    }

    #[test]
    fn no_rows_give_no_output() {
        let packed = PackedWeight::from_in_out(&pseudo(12, 1), 3, 4);
        assert!(packed.matmul(&[], None, 2).is_empty());
    }
}
