//! ALiBi (attention with linear biases) as Baichuan-13B / BaichuanCharRM use it
//! (docs/FIDELITY.md §4.5): per-head slopes from the "interleave" rule, and a bias of `slope · j`
//! on the absolute key index `j`, built in f32 and then cast to the model dtype the way
//! `.to(inputs_embeds)` does.
//!
//! Under softmax, `slope · j` is the same as the textbook `-slope · (i - j)` (a per-query constant
//! drops out), but only in exact arithmetic: in bf16 the large `slope · j` values are rounded
//! coarsely (steps of 8 at 1024), and a faithful reimplementation must round the same way.

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// The slopes of `heads` heads, as Python floats (`_get_interleave`): for a power of two `n`,
/// `start · start^i` with `start = 2^(-2^-(log2 n - 3))`; otherwise the slopes of the closest
/// smaller power of two, then every other slope of twice that count.
pub fn alibi_slopes(heads: usize) -> Vec<f64> {
    fn power_of_two(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
        (0..n).map(|i| start * start.powf(i as f64)).collect()
    }
    if heads == 0 {
        return Vec::new();
    }
    if heads.is_power_of_two() {
        return power_of_two(heads);
    }
    let closest = 1usize << heads.ilog2();
    let mut slopes = power_of_two(closest);
    slopes.extend(
        alibi_slopes(2 * closest)
            .into_iter()
            .step_by(2)
            .take(heads - closest),
    );
    slopes
}

/// The `(heads, 1, len)` bias `slope_h · j` for keys `j = 0..len`: the f32 product of the f32
/// slope and `j` (torch promotes the int64 `arange` to the slopes' f32), cast to `dtype`.
pub fn alibi_bias(slopes: &[f64], len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = slopes
        .iter()
        .flat_map(|&s| {
            let s = s as f32;
            (0..len).map(move |j| s * j as f32)
        })
        .collect();
    let bias = Tensor::from_vec(values, (slopes.len(), 1, len), device)?;
    Ok(bias.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forty_heads_follow_protocol_4_5() {
        let s = alibi_slopes(40);
        assert_eq!(s.len(), 40);
        for (i, v) in s.iter().take(32).enumerate() {
            let want = 2f64.powf(-((i + 1) as f64) / 4.0);
            assert!((v - want).abs() < 1e-15, "slope {i}: {v} vs {want}");
        }
        for (k, v) in s.iter().skip(32).enumerate() {
            let want = 2f64.powf(-((2 * k + 1) as f64) / 8.0);
            assert!((v - want).abs() < 1e-15, "slope {}: {v} vs {want}", 32 + k);
        }
    }

    #[test]
    fn small_head_counts() {
        assert_eq!(alibi_slopes(4), vec![0.25, 0.0625, 0.015625, 0.00390625]);
        // 5 heads: the 4-head slopes, then the first of the 8-head slopes taken every other.
        assert_eq!(
            alibi_slopes(5),
            vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5]
        );
        assert_eq!(alibi_slopes(1), vec![2f64.powf(-8.0)]);
    }

    #[test]
    fn bf16_bias_is_rounded_like_torch() {
        let b = alibi_bias(&[0.5], 4096, DType::BF16, &Device::Cpu).unwrap();
        let v: Vec<f32> = b
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // 0.5 · 2049 = 1024.5 is exact in f32; bf16 keeps 8 bits, so it rounds to 1024.
        assert_eq!(v[2049], 1024.0);
        assert_eq!(v[2063], 1032.0); // 1031.5 → 1032, the nearest multiple of 8
        assert_eq!(v[3], 1.5);
    }
}
