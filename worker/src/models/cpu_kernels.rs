//! Hand-written f32 loops for the CPU where candle's generic kernels cost more than the matmuls
//! around them (profiled on a 2-core AMD EPYC with SmolLM2-135M, 4 × 512 tokens: attention and
//! SiLU × up were half of a prefill). Each loop is compiled for AVX-512, for AVX2+FMA and
//! without either, and [`vectorized`] picks one at run time. They compute the same bits on
//! every path: only operations that are correctly rounded everywhere are used (`mul_add` is
//! one fused operation, a library call on a CPU without FMA).

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

/// A loop nest that [`vectorized`] compiles once per vector unit. Implement `run` with
/// `#[inline(always)]`, and call only `#[inline(always)]` helpers from it, so that the whole nest
/// is compiled inside each target-feature wrapper.
pub(crate) trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `k` compiled for the widest vector unit this CPU has.
pub(crate) fn vectorized<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the wrapper is compiled for (checked above).
            return unsafe { with_avx512(k) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { with_avx2(k) };
        }
    }
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn with_avx512<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2<K: Kernel>(k: K) -> K::Output {
    k.run()
}

/// Calls `f` with the f32 data of a contiguous CPU tensor, without copying it.
pub(crate) fn with_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Unsupported(
            "a CPU kernel on a non-CPU tensor".into(),
        ));
    };
    let data = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::Unsupported("a CPU kernel on a non-contiguous tensor".into()))?;
    f(&data[start..end])
}

/// Whether every tensor is f32 on the CPU (what these kernels take).
pub(crate) fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu))
}

/// The threads of one CPU product: candle's count (RAYON_NUM_THREADS, else the CPUs), as its
/// own ops use, read once (candle reads it from /proc on every call, which showed in profiles of
/// decoding).
pub(crate) fn cpu_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// Splits `out` into chunks of whole `unit`s, about one per thread, and calls `f(first unit,
/// chunk)` for each on the rayon pool's threads, which wait for work without being started anew
/// for every call (all on this thread when `work`, in multiply-adds, is too small to pay for
/// handing it over).
pub(crate) fn parallel_chunks(
    out: &mut [f32],
    unit: usize,
    work: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    /// Below this many multiply-adds one thread does the whole call.
    const PARALLEL_MIN_WORK: usize = 1 << 18;
    let units = out.len() / unit.max(1);
    let threads = cpu_threads();
    if work < PARALLEL_MIN_WORK || threads < 2 || units < 2 {
        f(0, out);
        return;
    }
    let per = units.div_ceil(threads);
    out.par_chunks_mut(per * unit)
        .enumerate()
        .for_each(|(c, chunk)| f(c * per, chunk));
}

/// `e^x` for `x <= 0` (`-inf` gives 0) within 2 ulp of the correctly rounded value: Cody–Waite
/// reduction by ln 2 and Cephes' degree-6 polynomial, written so that it vectorizes. Below
/// -87.3 (where `e^x` leaves the normal range) it returns 0.
#[inline(always)]
pub(crate) fn exp_non_positive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const MIN: f32 = -87.3;
    let xc = x.max(MIN);
    let n = xc.mul_add(LOG2E, ROUND) - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let mut p = 1.987_569_2e-4_f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = p.mul_add(r, c);
    }
    let y = (p * r).mul_add(r, r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < MIN { 0.0 } else { y * scale }
}

/// `silu(g) · u` = `g · σ(g) · u`, with `σ` from `e^{-|g|}` (never overflows).
#[inline(always)]
fn silu_times(g: f32, u: f32) -> f32 {
    let e = exp_non_positive(-g.abs());
    let sigmoid = if g >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    };
    g * sigmoid * u
}

/// SwiGLU of a fused gate/up projection: `y` `(.., 2 · i)`, each row the gate's `i` outputs
/// then the up projection's, gives `(.., i)` = `silu(gate) · up`.
pub(crate) fn swiglu(y: &Tensor, i: usize) -> Result<Tensor> {
    let dims = y.dims();
    let Some((&last, lead)) = dims.split_last() else {
        return Err(Error::Unsupported("SwiGLU of a scalar".into()));
    };
    if last != 2 * i || !cpu_f32(&[y]) {
        return Err(Error::Unsupported(format!(
            "SwiGLU of {:?} {:?} on {:?} with {i} units",
            y.dtype(),
            dims,
            y.device()
        )));
    }
    let y = y.contiguous()?;
    let mut out = vec![0f32; y.elem_count() / 2];
    with_f32(&y, |ys| {
        parallel_chunks(&mut out, i, ys.len() * 8, |first, chunk| {
            vectorized(SwigluRows {
                y: &ys[first * 2 * i..],
                out: chunk,
                i,
            })
        });
        Ok(())
    })?;
    let mut shape = lead.to_vec();
    shape.push(i);
    Ok(Tensor::from_vec(out, shape, y.device())?)
}

/// GELU with the exact erf, `x · (1 + erf(x / √2)) / 2`, of an f32 CPU tensor: candle's
/// `gelu_erf` formula and erf, so the same bits, computed in parallel chunks on this crate's
/// threads (candle's element-wise ops wait for each other in a spinning pool, which showed in
/// profiles of the BERT encoder).
pub(crate) fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !cpu_f32(&[x]) {
        return Ok(x.gelu_erf()?);
    }
    let x = x.contiguous()?;
    let mut out = vec![0f32; x.elem_count()];
    with_f32(&x, |xs| {
        // erf costs some 20 multiply-adds.
        parallel_chunks(&mut out, 1024, xs.len() * 20, |first, chunk| {
            let src = &xs[first * 1024..first * 1024 + chunk.len()];
            for (o, &v) in chunk.iter_mut().zip(src) {
                *o = (candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.)
                    * 0.5
                    * v;
            }
        });
        Ok(())
    })?;
    Ok(Tensor::from_vec(out, x.dims(), x.device())?)
}

struct SwigluRows<'a> {
    y: &'a [f32],
    out: &'a mut [f32],
    i: usize,
}

impl Kernel for SwigluRows<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        for (o, y) in self
            .out
            .chunks_exact_mut(self.i)
            .zip(self.y.chunks_exact(2 * self.i))
        {
            let (g, u) = y.split_at(self.i);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = silu_times(g, u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::test_values::pseudo;

    #[test]
    fn exp_is_within_two_ulp_and_zero_below_the_normal_range() {
        let mut worst = 0i64;
        for i in 0..=2_000_000 {
            let x = -87.0 * i as f32 / 2_000_000.0;
            let want = (x as f64).exp() as f32;
            let got = exp_non_positive(x);
            worst = worst.max((got.to_bits() as i64 - want.to_bits() as i64).abs());
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_non_positive(0.0), 1.0);
        assert_eq!(exp_non_positive(-90.0), 0.0);
        assert_eq!(exp_non_positive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn gelu_erf_has_candle_bits() {
        // Odd length (a partial chunk), values over ±12 (erf saturated) and near 0.
        let x: Vec<f32> = pseudo(3 * 1731, 3).iter().map(|v| v * 24.0).collect();
        let t = Tensor::from_vec(x, (3, 1731), &Device::Cpu).unwrap();
        let got = gelu_erf(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = t
            .gelu_erf()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }

    #[test]
    fn swiglu_matches_candle_silu_times_up_and_every_path_agrees() {
        let (rows, i) = (37, 48);
        // Gate values over ±40 (saturated σ both ways) and near 0.
        let y: Vec<f32> = pseudo(rows * 2 * i, 12).iter().map(|x| x * 80.0).collect();
        let yt = Tensor::from_vec(y.clone(), (rows, 2 * i), &Device::Cpu).unwrap();
        let got = swiglu(&yt, i).unwrap();
        let g = yt.narrow(1, 0, i).unwrap();
        let u = yt.narrow(1, i, i).unwrap();
        let want = (candle_nn::ops::silu(&g).unwrap() * u).unwrap();
        let (got, want) = (
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} against {b}");
        }
        // The plain loop (no target features) gives the same bits as the dispatched one.
        let mut plain = vec![0f32; rows * i];
        SwigluRows {
            y: &y,
            out: &mut plain,
            i,
        }
        .run();
        assert!(
            plain
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
}
