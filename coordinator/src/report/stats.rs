//! The statistics behind the report's significance marks (issue 7, point 5): McNemar's exact
//! test for paired right/wrong answers, and the paired bootstrap (percentile intervals) for means
//! of per-sample scores. Every random draw comes from [`SplitMix64`] with a fixed seed, so the
//! same inputs give the same report on every machine and every run.

/// Resamples per bootstrap interval.
pub const RESAMPLES: usize = 2000;
/// The seed of every bootstrap: fixed, so reports are reproducible.
pub const SEED: u64 = 0x5EED_0007;
/// Two-sided confidence level of the intervals.
pub const LEVEL: f64 = 0.95;
/// A change is called significant when its test's p-value is below this (McNemar), or when its
/// `LEVEL` interval excludes zero (bootstrap).
pub const ALPHA: f64 = 1.0 - LEVEL;

/// A small, fast, well-mixed 64-bit generator (Steele, Lea and Flood's SplitMix64). Written out
/// here rather than taken from a crate so that its stream can never change under the report.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (`n > 0`): the high half of a 64x64-bit product, whose bias
    /// (below n / 2^64) is far under anything a bootstrap could show.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// A two-sided confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    /// Whether zero lies outside the interval (the change is larger than the noise).
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }
}

/// The `q`-quantile (0..=1) of `sorted` with linear interpolation between order statistics
/// (NumPy's default `percentile` method); `None` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let below = pos.floor() as usize;
    let above = (below + 1).min(last);
    let frac = pos - below as f64;
    Some(sorted[below] + (sorted[above] - sorted[below]) * frac)
}

/// McNemar's exact two-sided test for paired binary outcomes: `b` units that only the first
/// system got right and `c` that only the second did. The p-value is the two-sided binomial test
/// of `min(b, c)` successes in `b + c` trials at 1/2 (`scipy.stats.binomtest(...).pvalue`):
/// `min(1, 2 * P[X <= min(b, c)])`. No discordant pairs give 1.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    let k = b.min(c);
    if n == 0 || 2 * k == n {
        return 1.0;
    }
    // Sum the binomial probabilities in log space: 2^-n underflows for n above ~1074.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_terms = Vec::with_capacity(k as usize + 1);
    let mut ln_choose = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        ln_terms.push(ln_choose + ln_half_n);
    }
    let max = ln_terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * ln_terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// The paired bootstrap over `units` shared units (questions, samples, dialogues).
///
/// `statistic` maps per-unit weights (how often each unit was drawn; all ones for the data as it
/// is) to one value per statistic, NaN where a statistic is undefined for that draw. Returns the
/// point estimates and, per statistic, the percentile interval at [`LEVEL`] from
/// [`RESAMPLES`] draws seeded with `seed` (`None` when no draw gave a finite value).
pub fn paired_bootstrap(
    units: usize,
    seed: u64,
    mut statistic: impl FnMut(&[u32]) -> Vec<f64>,
) -> (Vec<f64>, Vec<Option<Interval>>) {
    let estimate = statistic(&vec![1; units]);
    let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(RESAMPLES); estimate.len()];
    if units > 0 {
        let mut rng = SplitMix64::new(seed);
        let mut weights = vec![0u32; units];
        for _ in 0..RESAMPLES {
            weights.fill(0);
            for _ in 0..units {
                weights[rng.below(units)] += 1;
            }
            for (d, v) in draws.iter_mut().zip(statistic(&weights)) {
                if v.is_finite() {
                    d.push(v);
                }
            }
        }
    }
    let tail = (1.0 - LEVEL) / 2.0;
    let intervals = draws
        .into_iter()
        .map(|mut d| {
            d.sort_by(f64::total_cmp);
            Some(Interval {
                lo: quantile(&d, tail)?,
                hi: quantile(&d, 1.0 - tail)?,
            })
        })
        .collect();
    (estimate, intervals)
}

/// The weighted mean of the present values (`None` entries skipped); NaN when no weight falls on
/// a present value.
pub fn weighted_mean(weights: &[u32], values: &[Option<f64>]) -> f64 {
    let (mut sum, mut count) = (0.0, 0u64);
    for (w, v) in weights.iter().zip(values) {
        if let Some(v) = v
            && *w > 0
        {
            sum += f64::from(*w) * v;
            count += u64::from(*w);
        }
    }
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_stream() {
        // The first outputs for seed 1234567, as Java's `new SplittableRandom(1234567L)`
        // `.nextLong()` prints them (the same generator).
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        let mut rng = SplitMix64::new(7);
        assert!((0..10_000).all(|_| rng.below(3) < 3));
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // np.percentile([1, 2, 3, 4, 10], [0, 2.5, 50, 97.5, 100]) = 1, 1.1, 3, 9.4, 10.
        let xs = [1.0, 2.0, 3.0, 4.0, 10.0];
        let got: Vec<f64> = [0.0, 0.025, 0.5, 0.975, 1.0]
            .iter()
            .map(|q| quantile(&xs, *q).expect("q"))
            .collect();
        for (g, w) in got.iter().zip([1.0, 1.1, 3.0, 9.4, 10.0]) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn mcnemar_small_tables_by_hand() {
        // b = 0, c = 5: 2 * (1/2)^5 = 0.0625. b = 1, c = 6: 2 * (1 + 7) / 128 = 0.125.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-15);
        assert!((mcnemar_exact(6, 1) - 0.125).abs() < 1e-15);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(4, 4), 1.0);
        // 2 * (1 + 7 + 21 + 35) / 128 = 1.
        assert!((mcnemar_exact(3, 4) - 1.0).abs() < 1e-12);
        // Large tables stay finite: 2 * P[X <= 1000] for n = 2100 is tiny but positive.
        let p = mcnemar_exact(1000, 1100);
        assert!(p > 0.0 && p < 0.05, "{p}");
    }

    #[test]
    fn mcnemar_equals_scipy_binomtest() {
        // scripts/goldens/report_mcnemar.py: scipy.stats.binomtest(min(b, c), b + c).pvalue,
        // checked there against the exact rational value.
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/report_mcnemar.json"))
                .expect("golden json");
        let rows = golden.as_array().expect("array");
        assert_eq!(rows.len(), 14);
        for row in rows {
            let (b, c) = (row["b"].as_u64().expect("b"), row["c"].as_u64().expect("c"));
            let want = row["p"].as_f64().expect("p");
            let got = mcnemar_exact(b, c);
            assert!(
                (got - want).abs() <= 1e-9 * want,
                "b={b} c={c}: {got} vs {want}"
            );
            // Tables on both sides of 0.05 are in the golden: the mark follows the value.
            assert_eq!(got < ALPHA, want < ALPHA, "b={b} c={c}");
        }
    }

    #[test]
    fn bootstrap_of_a_constant_difference_is_that_constant() {
        let d = vec![Some(0.5); 40];
        let (est, ci) = paired_bootstrap(40, SEED, |w| vec![weighted_mean(w, &d)]);
        assert_eq!(est, vec![0.5]);
        let ci = ci[0].expect("interval");
        assert_eq!((ci.lo, ci.hi), (0.5, 0.5));
        assert!(ci.excludes_zero());
    }

    #[test]
    fn bootstrap_interval_is_near_the_normal_one_and_reproducible() {
        // 400 differences alternating -1 and +1.5: mean 0.25, sd 1.25, se 0.0625; the normal
        // 95% interval is 0.25 +- 0.1225.
        let d: Vec<Option<f64>> = (0..400)
            .map(|i| Some(if i % 2 == 0 { -1.0 } else { 1.5 }))
            .collect();
        let run = || paired_bootstrap(d.len(), SEED, |w| vec![weighted_mean(w, &d)]);
        let (est, ci) = run();
        let ci = ci[0].expect("interval");
        assert!((est[0] - 0.25).abs() < 1e-12);
        assert!((ci.lo - 0.1275).abs() < 0.015, "{ci:?}");
        assert!((ci.hi - 0.3725).abs() < 0.015, "{ci:?}");
        assert_eq!(run().1[0], Some(ci), "same seed, same interval");
        let other = paired_bootstrap(d.len(), SEED + 1, |w| vec![weighted_mean(w, &d)]);
        assert_ne!(other.1[0], Some(ci), "the seed is used");
    }

    #[test]
    fn undefined_statistics_have_no_interval() {
        let (est, ci) = paired_bootstrap(0, SEED, |w| vec![weighted_mean(w, &[])]);
        assert!(est[0].is_nan());
        assert_eq!(ci, vec![None]);
        assert!(weighted_mean(&[2, 1], &[None, Some(3.0)]) == 3.0);
    }
}
