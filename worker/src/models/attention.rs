//! Scaled dot-product attention on the CPU whose result for a query depends only on the keys that
//! query can see, never on how many masked (padding, future) keys sit around them.
//!
//! Why: the batched path (`matmul` → mask → `softmax_last_dim` → `matmul`) reduces over the
//! whole padded key axis. Masked keys contribute exact zeros, but candle's SIMD sum and the gemm
//! split the axis into lanes by position, so shifting a row's keys by its left padding changes
//! the rounding. With quantized weights these last-bit differences flip the 8-bit rounding of
//! activations and grow to visible logit changes (0.5 on SmolLM2's Q8_0 GGUF), so batch 8 gave
//! other tokens than batch 1. Here every result is a function of the visible keys alone:
//! - a score is one fused multiply-add chain over `head_dim` in order;
//! - the softmax sum and the weighted sum of values run over keys in order, and a masked key
//!   adds an exact zero (`x + 0 = x`, `fma(0, v, x) = x` for finite `v`), so keys a query does not
//!   see may sit in the block it is computed with (the maximum is exact in any order).
//!
//! How it is fast (the former loop, one query and one key at a time, took a third of a prefill's
//! time at 512 tokens): queries of one head are taken [`QUERY_TILE`] at a time so each key and
//! value row is loaded once per tile; scores are
//! computed [`KEY_BLOCK`] keys at a time from keys transposed to `(head_dim, keys)` (one vector
//! register of keys per multiply-add); `exp` is a polynomial that vectorizes; and the loops are
//! compiled per vector unit (cpu_kernels.rs), every one computing the same bits.

use candle_core::Tensor;

use super::cpu_kernels::{
    Kernel, cpu_f32, exp_non_positive, parallel_chunks, vectorized, with_f32,
};
use crate::{Error, Result};

/// Queries of one head computed together.
const QUERY_TILE: usize = 4;

/// Keys per score block: one AVX-512 register of f32 (two AVX2 ones).
const KEY_BLOCK: usize = 16;

/// Whether [`attend`] handles these tensors (f32 on the CPU).
pub(crate) fn supported(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    cpu_f32(&[q, k, v])
}

/// Attention of `q` `(b, h, s, d)` (already scaled) over `k`, `v` `(b, kvh, t, d)`, query head
/// `i` reading KV head `i / (h / kvh)`. `mask` is the decoder's additive `(b, 1, 1, s, t)` mask
/// (0 where visible); without one, query `i` sees keys `..= t - s + i`. Returns `(b, s, h * d)`;
/// a query that sees no key (padding) gets zeros.
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (_, kvh, t, _) = k.dims4()?;
    let mask_ok = mask.is_none_or(|m| m.dims() == [b, 1, 1, s, t]);
    if kvh == 0
        || h % kvh != 0
        || k.dims4()? != (b, kvh, t, d)
        || v.dims4()? != (b, kvh, t, d)
        || s == 0
        || t < s
        || !mask_ok
    {
        return Err(Error::Unsupported(format!(
            "attention shapes q {:?}, k {:?}, v {:?}, mask {:?}",
            q.dims(),
            k.dims(),
            v.dims(),
            mask.map(|m| m.dims())
        )));
    }
    let contiguous = tracing::trace_span!("attn_copy").entered();
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let mask = mask.map(|m| m.contiguous()).transpose()?;
    drop(contiguous);
    let sh = Shape {
        h,
        s,
        d,
        t,
        rep: h / kvh,
        tiles: s.div_ceil(QUERY_TILE),
    };
    // (b, h, tiles * QUERY_TILE, d): each task (row, head, tile) owns one contiguous chunk.
    let mut by_head = vec![0f32; b * h * sh.tiles * QUERY_TILE * d];
    with_f32(&q, |qs| {
        with_f32(&k, |ks| {
            let kt = {
                let _s = tracing::trace_span!("attn_keys_t").entered();
                keys_transposed(ks, t, d)
            };
            with_f32(&v, |vs| {
                let mut go = |mask: Option<&[f32]>| {
                    let seen = visible_keys(b, s, t, mask);
                    let x = Inputs {
                        q: qs,
                        kt: &kt,
                        v: vs,
                        mask,
                        seen: &seen,
                    };
                    run(&sh, &x, &mut by_head);
                    Ok(())
                };
                match &mask {
                    Some(m) => with_f32(m, |ms| go(Some(ms))),
                    None => go(None),
                }
            })
        })
    })?;
    let _s = tracing::trace_span!("attn_out").entered();
    Ok(Tensor::from_vec(
        tokens_first(&sh, b, &by_head),
        (b, s, h * d),
        q.device(),
    )?)
}

/// The keys one query sees: all of `lo..hi` when `dense`, otherwise those its mask row marks.
#[derive(Debug, Clone, Copy)]
struct Seen {
    lo: usize,
    hi: usize,
    dense: bool,
}

/// [`Seen`] per (row, query), read from the mask once for all heads.
fn visible_keys(b: usize, s: usize, t: usize, mask: Option<&[f32]>) -> Vec<Seen> {
    let Some(mask) = mask else {
        // Query i sees keys ..= t - s + i.
        return (0..b * s)
            .map(|u| Seen {
                lo: 0,
                hi: t - s + u % s + 1,
                dense: true,
            })
            .collect();
    };
    mask.chunks_exact(t)
        .map(|m| {
            let lo = m.iter().position(|&x| x == 0.0).unwrap_or(t);
            let hi = m.iter().rposition(|&x| x == 0.0).map_or(lo, |z| z + 1);
            Seen {
                lo,
                hi,
                dense: m[lo..hi].iter().all(|&x| x == 0.0),
            }
        })
        .collect()
}

/// What every task reads (see [`attend`]; `kt` is `k` with keys last, `seen` per (row, query)).
#[derive(Debug, Clone, Copy)]
struct Inputs<'a> {
    q: &'a [f32],
    kt: &'a [f32],
    v: &'a [f32],
    mask: Option<&'a [f32]>,
    seen: &'a [Seen],
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    h: usize,
    s: usize,
    d: usize,
    t: usize,
    rep: usize,
    /// Query tiles per (row, head).
    tiles: usize,
}

/// Keys per row of [`keys_transposed`]: `t` rounded up to whole [`KEY_BLOCK`]s, plus one, so a
/// block starting at any key `< t` lies inside the row (the extra keys are zeros, never read).
fn padded_keys(t: usize) -> usize {
    t.next_multiple_of(KEY_BLOCK) + KEY_BLOCK
}

/// `(heads, t, d)` → `(heads, d, padded_keys(t))`: a score block then reads [`KEY_BLOCK`]
/// consecutive keys.
fn keys_transposed(k: &[f32], t: usize, d: usize) -> Vec<f32> {
    let tp = padded_keys(t);
    let mut kt = vec![0f32; k.len() / t * tp];
    for (src, dst) in k.chunks_exact(t * d).zip(kt.chunks_exact_mut(tp * d)) {
        for (j, key) in src.chunks_exact(d).enumerate() {
            for (c, &x) in key.iter().enumerate() {
                dst[c * tp + j] = x;
            }
        }
    }
    kt
}

/// `(b, h, tiles * QUERY_TILE, d)` → `(b, s, h, d)`, dropping the tiles' padding queries.
fn tokens_first(sh: &Shape, b: usize, by_head: &[f32]) -> Vec<f32> {
    let Shape { h, s, d, tiles, .. } = *sh;
    let mut out = vec![0f32; b * s * h * d];
    for (rh, src) in by_head.chunks_exact(tiles * QUERY_TILE * d).enumerate() {
        let (row, head) = (rh / h, rh % h);
        for (i, query) in src.chunks_exact(d).take(s).enumerate() {
            out[((row * s + i) * h + head) * d..][..d].copy_from_slice(query);
        }
    }
    out
}

/// Fills `out` (see [`attend`]), its tasks split over threads.
fn run(sh: &Shape, x: &Inputs, out: &mut [f32]) {
    let task_len = QUERY_TILE * sh.d;
    parallel_chunks(out, task_len, out.len() * sh.t * 2, |first, chunk| {
        vectorized(Tasks {
            sh,
            x,
            first,
            out: chunk,
        })
    });
}

/// Tasks `first..` into `out` (see [`compute`]).
struct Tasks<'a> {
    sh: &'a Shape,
    x: &'a Inputs<'a>,
    first: usize,
    out: &'a mut [f32],
}

impl Kernel for Tasks<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        compute(self.sh, self.x, self.first, self.out);
    }
}

/// Computes tasks `first..` (task = (row, head, tile of [`QUERY_TILE`] queries)) into `out`.
#[inline(always)]
fn compute(sh: &Shape, x: &Inputs, first: usize, out: &mut [f32]) {
    let Shape {
        h,
        s,
        d,
        t,
        rep,
        tiles,
    } = *sh;
    let (kvh, tp) = (h / rep, padded_keys(t));
    // Per task: the tile's queries by dimension, scores by query, probabilities by key.
    let (mut qt, mut scores, mut pt) = (Vec::new(), Vec::new(), Vec::new());
    for (n, o) in out.chunks_mut(QUERY_TILE * d).enumerate() {
        o.fill(0.0);
        let task = first + n;
        let (row, head, i0) = (
            task / tiles / h,
            task / tiles % h,
            task % tiles * QUERY_TILE,
        );
        let queries = QUERY_TILE.min(s - i0);
        let seen = &x.seen[row * s + i0..][..queries];
        // The keys any query of the tile sees lie in lo..hi; scores are computed for whole
        // blocks from lo.
        let lo = seen.iter().filter(|k| k.lo < k.hi).map(|k| k.lo).min();
        let hi = seen.iter().map(|k| k.hi).max().unwrap_or(0);
        let Some(lo) = lo else { continue };
        let (width, blocks) = (hi - lo, (hi - lo).div_ceil(KEY_BLOCK));
        let kv = row * kvh + head / rep;
        let q_at = |qi: usize| ((row * h + head) * s + i0 + qi.min(queries - 1)) * d;
        qt.clear();
        qt.extend(
            (0..d).map(|c| std::array::from_fn::<f32, QUERY_TILE, _>(|qi| x.q[q_at(qi) + c])),
        );
        scores.clear();
        scores.resize(QUERY_TILE * blocks * KEY_BLOCK, 0.0);
        block_scores(
            &qt,
            &x.kt[kv * d * tp..][..d * tp],
            tp,
            lo,
            blocks,
            &mut scores,
        );
        let stride = blocks * KEY_BLOCK;
        for (qi, k) in seen.iter().enumerate() {
            let mask_row = x.mask.map(|m| &m[(row * s + i0 + qi) * t + lo..][..width]);
            let row_scores = &mut scores[qi * stride..][..width];
            let (a, z) = (k.lo.max(lo) - lo, k.hi.max(lo) - lo);
            softmax_seen(row_scores, a, z, k.dense, mask_row);
        }
        pt.clear();
        pt.extend((0..width).map(|j| {
            std::array::from_fn::<f32, QUERY_TILE, _>(|qi| {
                if qi < queries {
                    scores[qi * stride + j]
                } else {
                    0.0
                }
            })
        }));
        let sums = weighted_values(&pt, &x.v[(kv * t + lo) * d..][..width * d], o);
        for (oq, sum) in o.chunks_exact_mut(d).zip(sums) {
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            oq.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// Scores of the tile's queries (`qt` `(d, QUERY_TILE)`) against `blocks` blocks of keys from
/// `lo` of one KV head (`kt` `(d, tp)`), into `scores` `(QUERY_TILE, blocks * KEY_BLOCK)`.
/// Each score is `fma` over `d` in order from 0, whichever block its key falls in.
#[inline(always)]
fn block_scores(
    qt: &[[f32; QUERY_TILE]],
    kt: &[f32],
    tp: usize,
    lo: usize,
    blocks: usize,
    scores: &mut [f32],
) {
    let stride = blocks * KEY_BLOCK;
    for block in 0..blocks {
        let j = lo + block * KEY_BLOCK;
        let mut acc = [[0f32; KEY_BLOCK]; QUERY_TILE];
        for (krow, qc) in kt.chunks_exact(tp).zip(qt) {
            let keys: &[f32; KEY_BLOCK] = krow[j..j + KEY_BLOCK].try_into().unwrap();
            for (a, &x) in acc.iter_mut().zip(qc) {
                for (s, &k) in a.iter_mut().zip(keys) {
                    *s = x.mul_add(k, *s);
                }
            }
        }
        for (qi, a) in acc.iter().enumerate() {
            scores[qi * stride + block * KEY_BLOCK..][..KEY_BLOCK].copy_from_slice(a);
        }
    }
}

/// Turns one query's scores into unnormalised probabilities: exact 0 for keys it does not see
/// (outside `a..z`, or masked in `mask_row` unless `dense`), `e^(score - max)` for the others.
#[inline(always)]
fn softmax_seen(scores: &mut [f32], a: usize, z: usize, dense: bool, mask_row: Option<&[f32]>) {
    scores[..a.min(z)].fill(0.0);
    scores[z..].fill(0.0);
    if a >= z {
        return;
    }
    let seen = &mut scores[a..z];
    if let (false, Some(m)) = (dense, mask_row) {
        for (x, &m) in seen.iter_mut().zip(&m[a..z]) {
            if m != 0.0 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    let mut lanes = [f32::NEG_INFINITY; KEY_BLOCK];
    let chunks = seen.chunks_exact(KEY_BLOCK);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = l.max(x);
        }
    }
    let max = lanes.iter().fold(tail, |m, &x| m.max(x));
    for x in seen.iter_mut() {
        *x = exp_non_positive(*x - max);
    }
}

/// `o` `(QUERY_TILE, d)` = probabilities `pt` `(width, QUERY_TILE)` times value rows `v`
/// `(width, d)`, per output element one `fma` chain over keys in order; returns each query's
/// sum of probabilities, also added in key order (a key it does not see adds an exact 0, so the
/// sum is that over its visible keys whatever else the tile spans). [`KEY_BLOCK`] columns at a
/// time, so the tile's accumulators stay in registers while the keys stream past.
#[inline(always)]
fn weighted_values(pt: &[[f32; QUERY_TILE]], v: &[f32], o: &mut [f32]) -> [f32; QUERY_TILE] {
    let d = o.len() / QUERY_TILE;
    let mut sums = [0f32; QUERY_TILE];
    let mut c0 = 0;
    while c0 + KEY_BLOCK <= d {
        let mut acc = [[0f32; KEY_BLOCK]; QUERY_TILE];
        for (vrow, pj) in v.chunks_exact(d).zip(pt) {
            let vj: &[f32; KEY_BLOCK] = vrow[c0..c0 + KEY_BLOCK].try_into().unwrap();
            for (a, &p) in acc.iter_mut().zip(pj) {
                for (s, &x) in a.iter_mut().zip(vj) {
                    *s = p.mul_add(x, *s);
                }
            }
            if c0 == 0 {
                for (s, &p) in sums.iter_mut().zip(pj) {
                    *s += p;
                }
            }
        }
        for (qi, a) in acc.iter().enumerate() {
            o[qi * d + c0..][..KEY_BLOCK].copy_from_slice(a);
        }
        c0 += KEY_BLOCK;
    }
    if d < KEY_BLOCK {
        for pj in pt {
            for (s, &p) in sums.iter_mut().zip(pj) {
                *s += p;
            }
        }
    }
    for c in c0..d {
        for qi in 0..QUERY_TILE {
            let mut s = 0f32;
            for (vrow, pj) in v.chunks_exact(d).zip(pt) {
                s = pj[qi].mul_add(vrow[c], s);
            }
            o[qi * d + c] = s;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::test_values::pseudo;
    use candle_core::{DType, Device};

    /// The batched reference: scores, additive mask, softmax, weighted sum.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
        let (b, h, s, d) = q.dims4().unwrap();
        let scores = q.matmul(&k.t().unwrap()).unwrap();
        let scores = scores
            .broadcast_add(&mask.reshape((b, 1, s, ())).unwrap())
            .unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        p.matmul(v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, s, h * d))
            .unwrap()
    }

    #[test]
    fn matches_batched_attention_and_ignores_left_padding() {
        let dev = Device::Cpu;
        let (h, d, s, t) = (4, 64, 3, 10);
        let q = Tensor::from_vec(pseudo(h * s * d, 1), (1, h, s, d), &dev).unwrap();
        let k = Tensor::from_vec(pseudo(h * t * d, 2), (1, h, t, d), &dev).unwrap();
        let v = Tensor::from_vec(pseudo(h * t * d, 3), (1, h, t, d), &dev).unwrap();
        let causal: Vec<f32> = (0..s * t)
            .map(|x| {
                if x % t <= t - s + x / t {
                    0.0
                } else {
                    f32::MIN
                }
            })
            .collect();
        let mask = Tensor::from_vec(causal.clone(), (1, 1, 1, s, t), &dev).unwrap();
        let got = attend(&q, &k, &v, Some(&mask)).unwrap();
        let diff = max_diff(&got, &reference(&q, &k, &v, &mask));
        assert!(diff < 1e-5, "max difference {diff}");

        // The same keys behind 5 masked padding keys: bitwise the same output.
        let pad = 5;
        let padk = |x: &Tensor| {
            Tensor::cat(
                &[&Tensor::ones((1, h, pad, d), DType::F32, &dev).unwrap(), x],
                2,
            )
            .unwrap()
        };
        let padded_mask: Vec<f32> = causal
            .chunks(t)
            .flat_map(|r| std::iter::repeat_n(f32::MIN, pad).chain(r.iter().copied()))
            .collect();
        let pm = Tensor::from_vec(padded_mask, (1, 1, 1, s, t + pad), &dev).unwrap();
        let got_padded = attend(&q, &padk(&k), &padk(&v), Some(&pm)).unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            got.flatten_all().unwrap().to_vec1().unwrap(),
            got_padded.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// `(b, kvh, t, d)` → `(b, kvh * rep, t, d)`, each KV head repeated for its query heads.
    fn repeat_kv(x: &Tensor, rep: usize) -> Tensor {
        let (b, kvh, t, d) = x.dims4().unwrap();
        x.unsqueeze(2)
            .unwrap()
            .broadcast_as((b, kvh, rep, t, d))
            .unwrap()
            .reshape((b, kvh * rep, t, d))
            .unwrap()
    }

    #[test]
    fn grouped_queries_padding_windows_and_cached_keys_match_the_batched_reference() {
        let dev = Device::Cpu;
        // 6 query heads over 2 KV heads; 7 new queries (not a whole number of tiles) after 30
        // cached keys (more than one key block); row 0 has 4 padding keys, row 1 none; a window
        // of 9 keys leaves visible keys that do not start at a row's first real key.
        let (b, h, kvh, d, s, past, window) = (2, 6, 2, 64, 7, 30, 9);
        let t = past + s;
        let q = Tensor::from_vec(pseudo(b * h * s * d, 4), (b, h, s, d), &dev).unwrap();
        let k = Tensor::from_vec(pseudo(b * kvh * t * d, 5), (b, kvh, t, d), &dev).unwrap();
        let v = Tensor::from_vec(pseudo(b * kvh * t * d, 6), (b, kvh, t, d), &dev).unwrap();
        let mut keys = vec![1f32; b * t];
        keys[..4].fill(0.0);
        let key_mask = Tensor::from_vec(keys, (b, t), &dev).unwrap();
        for win in [None, Some(window)] {
            let mask = crate::models::mask::attention_mask(b, s, past, Some(&key_mask), win, &dev)
                .unwrap()
                .unwrap();
            let got = attend(&q, &k, &v, Some(&mask)).unwrap();
            let want = reference(&q, &repeat_kv(&k, h / kvh), &repeat_kv(&v, h / kvh), &mask);
            let diff = max_diff(&got, &want);
            assert!(diff < 1e-5, "window {win:?}: max difference {diff}");
        }
        // Without a mask: plain causal attention after the cached keys.
        let causal: Vec<f32> = (0..s * t)
            .map(|x| if x % t <= past + x / t { 0.0 } else { f32::MIN })
            .collect();
        let causal = Tensor::from_vec(causal, (1, 1, 1, s, t), &dev).unwrap();
        let causal = causal.broadcast_as((b, 1, 1, s, t)).unwrap();
        let got = attend(&q, &k, &v, None).unwrap();
        let want = reference(
            &q,
            &repeat_kv(&k, h / kvh),
            &repeat_kv(&v, h / kvh),
            &causal,
        );
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-5, "no mask: max difference {diff}");
    }

    #[test]
    fn padding_between_a_cached_prefix_and_the_queries_changes_no_bit() {
        // Rows after a shared prefix are left-padded between the prefix and their own tokens
        // (score/choice/batch.rs): the pad keys sit in the middle of the visible ones.
        let dev = Device::Cpu;
        let (h, d, past, s, pad) = (2, 64, 37, 5, 11);
        let keys = |n: usize, seed: u64| pseudo(n * d * h, seed);
        let (pk, pv) = (keys(past, 20), keys(past, 21));
        let (sk, sv) = (keys(s, 22), keys(s, 23));
        let q = Tensor::from_vec(pseudo(h * s * d, 24), (1, h, s, d), &dev).unwrap();
        // (1, h, n, d) from per-head key rows: prefix, optional pad, suffix.
        let join = |pre: &[f32], suf: &[f32], pad: usize| {
            let mut all = Vec::new();
            for head in 0..h {
                all.extend_from_slice(&pre[head * past * d..][..past * d]);
                all.extend(std::iter::repeat_n(7.0f32, pad * d));
                all.extend_from_slice(&suf[head * s * d..][..s * d]);
            }
            Tensor::from_vec(all, (1, h, past + pad + s, d), &dev).unwrap()
        };
        let run = |pad: usize| {
            let t = past + pad + s;
            let key_mask: Vec<f32> = (0..t)
                .map(|j| {
                    if (past..past + pad).contains(&j) {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            let key_mask = Tensor::from_vec(key_mask, (1, t), &dev).unwrap();
            let mask =
                crate::models::mask::attention_mask(1, s, past + pad, Some(&key_mask), None, &dev)
                    .unwrap()
                    .unwrap();
            let out = attend(&q, &join(&pk, &sk, pad), &join(&pv, &sv, pad), Some(&mask));
            out.unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (plain, padded) = (run(0), run(pad));
        assert!(plain.iter().any(|&x| x != 0.0));
        assert!(
            plain
                .iter()
                .zip(&padded)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }

    #[test]
    fn a_query_that_sees_no_key_gets_zeros() {
        let dev = Device::Cpu;
        let (h, d, s) = (2, 8, 3);
        let q = Tensor::from_vec(pseudo(h * s * d, 7), (1, h, s, d), &dev).unwrap();
        let k = Tensor::from_vec(pseudo(h * s * d, 8), (1, h, s, d), &dev).unwrap();
        let mask = crate::models::mask::attention_mask(
            1,
            s,
            0,
            Some(&Tensor::from_vec(vec![0f32, 1.0, 1.0], (1, s), &dev).unwrap()),
            None,
            &dev,
        )
        .unwrap()
        .unwrap();
        let out = attend(&q, &k, &k, Some(&mask)).unwrap();
        let rows = out.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert!(rows[0].iter().all(|&x| x == 0.0), "{:?}", rows[0]);
        assert!(rows[1].iter().any(|&x| x != 0.0));
    }

    #[test]
    fn every_vector_unit_computes_the_same_bits() {
        let (b, h, d, s, t) = (1, 3, 64, 9, 41);
        let sh = Shape {
            h,
            s,
            d,
            t,
            rep: 3,
            tiles: s.div_ceil(QUERY_TILE),
        };
        let q = pseudo(b * h * s * d, 9);
        let kt = keys_transposed(&pseudo(b * t * d, 10), t, d);
        let v = pseudo(b * t * d, 11);
        let seen = visible_keys(b, s, t, None);
        let x = Inputs {
            q: &q,
            kt: &kt,
            v: &v,
            mask: None,
            seen: &seen,
        };
        let len = b * h * sh.tiles * QUERY_TILE * d;
        let (mut plain, mut fastest) = (vec![0f32; len], vec![0f32; len]);
        compute(&sh, &x, 0, &mut plain);
        run(&sh, &x, &mut fastest);
        assert!(plain.iter().any(|&x| x != 0.0));
        assert!(
            plain
                .iter()
                .zip(&fastest)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
}
