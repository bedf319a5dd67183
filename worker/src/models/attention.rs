//! Scaled dot-product attention on the CPU whose result for a query depends only on the keys that
//! query can see, never on how many masked (padding, future) keys sit around them.
//!
//! Why: the batched path (`matmul` → mask → `softmax_last_dim` → `matmul`) reduces over the
//! whole padded key axis. Masked keys contribute exact zeros, but candle's SIMD sum and the gemm
//! split the axis into lanes by position, so shifting a row's keys by its left padding changes
//! the rounding. With quantized weights these last-bit differences flip the 8-bit rounding of
//! activations and grow to visible logit changes (0.5 on SmolLM2's Q8_0 GGUF), so batch 8 gave
//! other tokens than batch 1. Here every reduction runs over the visible keys only, in key
//! order, with a fixed lane layout over `head_dim`.

use candle_core::{DType, Device, Storage, Tensor};

use crate::{Error, Result};

/// Eight independent lanes: the dot product over `head_dim` vectorizes while its summation
/// order stays a function of `head_dim` alone.
const LANES: usize = 8;

/// Below this many multiply-adds one thread does the whole call (thread start-up would cost more).
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Whether [`attend`] handles these tensors (f32 on the CPU).
pub(crate) fn supported(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    [q, k, v]
        .iter()
        .all(|t| t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu))
}

/// Attention of `q` `(b, h, s, d)` (already scaled) over `k`, `v` `(b, kvh, t, d)`, query head
/// `i` reading KV head `i / (h / kvh)`. `mask` is the decoder's additive `(b, 1, 1, s, t)` mask
/// (0 where visible); without one, query `i` sees keys `..= t - s + i`. Returns `(b, s, h * d)`;
/// a query that sees no key (padding) gets zeros.
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (_, kvh, t, _) = k.dims4()?;
    if kvh == 0 || h % kvh != 0 || k.dims4()? != (b, kvh, t, d) || v.dims4()? != (b, kvh, t, d) {
        return Err(Error::Unsupported(format!(
            "attention shapes q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let mask = mask.map(|m| m.contiguous()).transpose()?;
    let shape = Shape {
        h,
        s,
        d,
        t,
        rep: h / kvh,
    };
    let mut out = vec![0f32; b * s * h * d];
    with_f32(&q, |qs| {
        with_f32(&k, |ks| {
            with_f32(&v, |vs| match &mask {
                Some(m) => with_f32(m, |ms| {
                    run(&shape, qs, ks, vs, Some(ms), &mut out);
                    Ok(())
                }),
                None => {
                    run(&shape, qs, ks, vs, None, &mut out);
                    Ok(())
                }
            })
        })
    })?;
    Ok(Tensor::from_vec(out, (b, s, h * d), q.device())?)
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    h: usize,
    s: usize,
    d: usize,
    t: usize,
    rep: usize,
}

/// Calls `f` with the f32 data of a contiguous CPU tensor, without copying it.
fn with_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Unsupported(
            "CPU attention on a non-CPU tensor".into(),
        ));
    };
    let data = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::Unsupported("CPU attention on a non-contiguous tensor".into()))?;
    f(&data[start..end])
}

/// Fills `out` `(b, s, h, d)`, one `d`-sized chunk per (row, query, head), split over threads.
fn run(sh: &Shape, q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>, out: &mut [f32]) {
    let work = out.len() * sh.t * 2;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let units = out.len() / sh.d;
    if work < PARALLEL_MIN_WORK || threads < 2 || units < 2 {
        compute(sh, q, k, v, mask, 0, out);
        return;
    }
    let per = units.div_ceil(threads);
    std::thread::scope(|scope| {
        for (c, chunk) in out.chunks_mut(per * sh.d).enumerate() {
            scope.spawn(move || compute(sh, q, k, v, mask, c * per, chunk));
        }
    });
}

/// Computes the output chunks `first..` (unit = (row, query, head)) into `out`.
fn compute(
    sh: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    first: usize,
    out: &mut [f32],
) {
    let Shape { h, s, d, t, rep } = *sh;
    let kvh = h / rep;
    let mut scores = Vec::with_capacity(t);
    let mut keys = Vec::with_capacity(t);
    for (u, o) in out.chunks_mut(d).enumerate() {
        let unit = first + u;
        let (row, i, head) = (unit / (s * h), (unit / h) % s, unit % h);
        let qv = &q[((row * h + head) * s + i) * d..][..d];
        let kv_base = (row * kvh + head / rep) * t * d;
        keys.clear();
        match mask {
            Some(m) => {
                let mrow = &m[(row * s + i) * t..][..t];
                keys.extend((0..t).filter(|&j| mrow[j] == 0.0));
            }
            None => keys.extend(0..=(t - s + i).min(t - 1)),
        }
        scores.clear();
        scores.extend(keys.iter().map(|&j| dot(qv, &k[kv_base + j * d..][..d])));
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in scores.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        o.fill(0.0);
        for (&j, &p) in keys.iter().zip(&scores) {
            let p = p / sum;
            for (acc, &x) in o.iter_mut().zip(&v[kv_base + j * d..][..d]) {
                *acc += p * x;
            }
        }
    }
}

/// `a · b` with [`LANES`] partial sums combined in a fixed order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::test_values::pseudo;

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
        let want = reference(&q, &k, &v, &mask);
        let diff: f32 = (got.clone() - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
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
}
