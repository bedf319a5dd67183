//! Python and NumPy float semantics the metrics depend on, reproduced bit for bit:
//! `round(x, n)` (CPython: correctly rounded, half-even on the exact binary value), `math.fsum`
//! (Shewchuk's partials with CPython's final half-even correction) and `np.mean` of a 1-D float64
//! or float32 array (NumPy's pairwise summation, then one division in the array's dtype).

/// CPython's `round(x, ndigits)` for a float.
///
/// CPython formats the exact binary value to `ndigits` decimals with round-half-even (dtoa mode 3)
/// and parses the result back. This does the same on the exact decimal expansion of `x`, which
/// Rust's fixed-precision formatting produces when asked for enough digits.
pub fn python_round(x: f64, ndigits: i32) -> f64 {
    // CPython's limits: beyond them the result is x itself, or a signed zero.
    if !x.is_finite() || x == 0.0 || ndigits > 323 {
        return x;
    }
    if ndigits < -308 {
        return 0.0 * x;
    }
    let precision = exact_fraction_digits(x).max(ndigits.max(0) as usize + 1);
    let text = format!("{:.*}", precision, x.abs());
    let (int_part, frac_part) = text.split_once('.').unwrap_or((text.as_str(), ""));
    let digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let keep = int_part.len() as i64 + i64::from(ndigits);
    let magnitude = if keep < 0 {
        0.0
    } else if keep as usize >= digits.len() {
        return x;
    } else {
        let kept = round_digits_half_even(&digits, keep as usize);
        rebuild(
            &kept,
            int_part.len() as i64 + (kept.len() as i64 - keep),
            ndigits,
        )
    };
    if x.is_sign_negative() {
        -magnitude
    } else {
        magnitude
    }
}

/// How many digits after the point the exact decimal expansion of `x` has at most:
/// `x = m * 2^e` has `-e` of them when `e < 0`.
fn exact_fraction_digits(x: f64) -> usize {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i64;
    let exponent = if biased == 0 { -1074 } else { biased - 1075 };
    (-exponent).max(0) as usize
}

/// The first `keep` digits of `digits`, rounded half-even on everything after them. The result may
/// be one digit longer than `keep` when the carry runs off the front.
fn round_digits_half_even(digits: &[u8], keep: usize) -> Vec<u8> {
    let mut kept = digits[..keep].to_vec();
    let rest = &digits[keep..];
    let first = rest.first().copied().unwrap_or(0);
    let beyond_half = rest.iter().skip(1).any(|&d| d != 0);
    let last_odd = kept.last().is_some_and(|d| d % 2 == 1);
    let up = first > 5 || (first == 5 && (beyond_half || last_odd));
    if up {
        let mut i = kept.len();
        loop {
            if i == 0 {
                kept.insert(0, 1);
                break;
            }
            i -= 1;
            if kept[i] == 9 {
                kept[i] = 0;
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    kept
}

/// Parses the rounded digits back: `int_len` of them are before the point (negative `ndigits`
/// means trailing zeros before the point).
fn rebuild(kept: &[u8], int_len: i64, ndigits: i32) -> f64 {
    let mut s: String = kept.iter().map(|d| char::from(b'0' + d)).collect();
    if ndigits < 0 {
        s.extend(std::iter::repeat_n('0', ndigits.unsigned_abs() as usize));
    } else if int_len >= 0 && (int_len as usize) <= s.len() {
        s.insert(int_len as usize, '.');
    }
    // Rust's float parsing is correctly rounded, like CPython's _Py_dg_strtod.
    s.parse::<f64>().unwrap_or(0.0)
}

/// CPython's `math.fsum`: the correctly rounded sum of `values`.
///
/// Infinities and NaNs follow CPython (`inf + -inf` gives NaN where CPython raises ValueError); an
/// intermediate overflow gives an infinity where CPython raises OverflowError.
pub fn fsum(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    let mut special = 0.0f64;
    let mut inf_sum = 0.0f64;
    for value in values {
        if !value.is_finite() {
            special += value;
            inf_sum += value;
            continue;
        }
        let mut x = value;
        let mut kept = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        partials.truncate(kept);
        partials.push(x);
    }
    if special != 0.0 || special.is_nan() {
        return if inf_sum.is_nan() { f64::NAN } else { special };
    }
    finish_partials(&partials)
}

/// Adds the non-overlapping partials from the top, with CPython's half-even fix-up when the
/// remainder is exactly half an ulp spread across two partials.
fn finish_partials(p: &[f64]) -> f64 {
    let mut n = p.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = p[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = p[n];
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        let yr = x - hi;
        if y == yr {
            hi = x;
        }
    }
    hi
}

/// NumPy's pairwise summation order (`pairwise_sum` in umath's loops_utils.h.src), generic over the
/// accumulation type: a plain loop below 8 elements, 8 interleaved accumulators up to 128, and
/// recursive halving (at a multiple of 8) above that.
macro_rules! pairwise_sum {
    ($name:ident, $t:ty) => {
        fn $name(a: &[$t]) -> $t {
            let n = a.len();
            if n < 8 {
                let mut res: $t = 0.0;
                for &x in a {
                    res += x;
                }
                res
            } else if n <= 128 {
                let mut r: [$t; 8] = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
                let full = n - n % 8;
                let mut i = 8;
                while i < full {
                    for j in 0..8 {
                        r[j] += a[i + j];
                    }
                    i += 8;
                }
                let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
                for &x in &a[full..] {
                    res += x;
                }
                res
            } else {
                let mut n2 = n / 2;
                n2 -= n2 % 8;
                $name(&a[..n2]) + $name(&a[n2..])
            }
        }
    };
}

pairwise_sum!(pairwise_sum_f64, f64);
pairwise_sum!(pairwise_sum_f32, f32);

/// `float(np.mean(xs))` for a list of Python floats (a float64 array). NaN when empty, as NumPy.
///
/// The add-reduction starts from the identity 0.0 (so `-0.0` sums to `0.0`) and adds the pairwise
/// sum; the mean divides by the count in float64.
pub fn numpy_mean_f64(xs: &[f64]) -> f64 {
    (0.0 + pairwise_sum_f64(xs)) / xs.len() as f64
}

/// `np.mean` of a list of `np.float32` values: accumulated in float32 in the same pairwise order
/// and divided by the count in float32 (the step-2 semantic-similarity average).
pub fn numpy_mean_f32(xs: &[f32]) -> f32 {
    (0.0 + pairwise_sum_f32(xs)) / xs.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_gives_exact_expansion() {
        assert_eq!(
            format!("{:.55}", 0.1),
            "0.1000000000000000055511151231257827021181583404541015625"
        );
    }

    #[test]
    fn round_matches_cpython() {
        // Values printed by CPython 3.11.
        assert_eq!(python_round(2.675, 2), 2.67);
        assert_eq!(python_round(0.125, 2), 0.12);
        assert_eq!(python_round(0.375, 2), 0.38);
        assert_eq!(python_round(0.5, 0), 0.0);
        assert_eq!(python_round(1.5, 0), 2.0);
        assert_eq!(python_round(2.5, 0), 2.0);
        assert_eq!(python_round(15.0, -1), 20.0);
        assert_eq!(python_round(25.0, -1), 20.0);
        assert_eq!(python_round(99.99995, 4), 99.9999);
        assert_eq!(python_round(0.999999995 * 100.0, 4), 100.0);
        assert_eq!(python_round(38.095238095238095, 4), 38.0952);
        assert_eq!(python_round(1e300, 4), 1e300);
        assert_eq!(python_round(5e-324, 4), 0.0);
        assert!(python_round(-0.00001, 4).is_sign_negative());
        assert_eq!(python_round(-1.23456, 4), -1.2346);
        assert!(python_round(f64::NAN, 4).is_nan());
        assert_eq!(python_round(123.456, 400), 123.456);
    }

    #[test]
    fn fsum_is_correctly_rounded() {
        assert_eq!(fsum([0.1; 10]), 1.0);
        assert_eq!(
            fsum([1e100, 1.0, -1e100, 1e-100, 1e50, -1.0, -1e50]),
            1e-100
        );
        // The half-even fix-up across partials (CPython test_math).
        assert_eq!(
            fsum([1.0, 2f64.powi(-53), 2f64.powi(-106)]),
            1.0 + 2f64.powi(-52)
        );
        assert_eq!(
            fsum([2f64.powi(53), 1.0, 2f64.powi(-100)]),
            2f64.powi(53) + 2.0
        );
        assert_eq!(fsum(std::iter::empty()), 0.0);
        assert_eq!(fsum([f64::INFINITY, 1.0]), f64::INFINITY);
        assert!(fsum([f64::INFINITY, f64::NEG_INFINITY]).is_nan());
    }

    #[test]
    #[allow(clippy::excessive_precision)] // the float32 inputs as docs/FIDELITY.md §2 prints them
    fn numpy_mean_orders() {
        // Below 8 values the sum is left to right.
        assert_eq!(numpy_mean_f64(&[0.1, 0.2, 0.3]), (0.1 + 0.2 + 0.3) / 3.0);
        assert_eq!(numpy_mean_f64(&[-0.0]), 0.0);
        assert!(!numpy_mean_f64(&[-0.0; 8]).is_sign_negative());
        assert!(numpy_mean_f64(&[]).is_nan());
        // 9 values: 8 accumulators then the tail, not left to right.
        let xs = [1e16, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let left_to_right = xs.iter().fold(0.0, |a, b| a + b);
        assert_eq!(left_to_right, 1e16);
        assert_eq!(pairwise_sum_f64(&xs), 1e16 + 8.0);
        // The original tool's step-2 average (docs/FIDELITY.md §2): float32 accumulation and
        // division.
        let mean = numpy_mean_f32(&[0.99999988, 0.55385977, 1.0]);
        assert_eq!(f64::from(mean), 0.8512865900993347);
    }
}
