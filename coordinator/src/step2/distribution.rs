//! The distribution of the step-2 scores (new in evalfleet; the original tool's TODO list asked for
//! it): summary statistics, NumPy-compatible quantiles and a fixed-bin histogram over [-1, 1].
//!
//! Statistics are computed in float64 over the float32 scores (as
//! `np.asarray(scores, dtype=np.float64)` would), except `mean`, which is the float32 mean written
//! to `predict_results.json` as `avg_sem_sim_score`, so the two files never disagree.

use crate::metrics::numeric::numpy_mean_f32;
use crate::output::PyJson;

/// Number of histogram bins over [-1, 1] (width 0.1).
pub const HISTOGRAM_BINS: usize = 20;
/// The histogram's range: every cosine similarity lies in it, up to float rounding.
pub const HISTOGRAM_RANGE: (f64, f64) = (-1.0, 1.0);
/// The reported quantiles, in percent.
pub const QUANTILES: [u32; 5] = [5, 25, 50, 75, 95];

/// Summary of the scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    /// Number of scores.
    pub count: usize,
    /// `float(np.mean(scores))` with float32 scores: `avg_sem_sim_score` (NaN when empty).
    pub mean: f64,
    /// Population standard deviation (`np.std`, ddof 0), in float64.
    pub std: f64,
    /// Smallest and largest score (NaN when empty).
    pub min: f64,
    pub max: f64,
    /// `np.percentile(scores, q)` (linear interpolation) for each of [`QUANTILES`].
    pub quantiles: Vec<(u32, f64)>,
    /// `np.linspace(-1, 1, HISTOGRAM_BINS + 1)`.
    pub edges: Vec<f64>,
    /// `np.histogram(scores, bins=HISTOGRAM_BINS, range=(-1, 1))` counts, except that scores a
    /// rounding error past ±1 (e.g. 1.0000001 for identical texts) count in the end bins instead
    /// of being dropped; NaN scores are not counted.
    pub counts: Vec<u64>,
}

impl Distribution {
    /// The distribution of `scores` (in any order).
    pub fn new(scores: &[f32]) -> Self {
        let mut sorted: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mean64 = sorted.iter().sum::<f64>() / n as f64;
        let var = sorted
            .iter()
            .map(|x| (x - mean64) * (x - mean64))
            .sum::<f64>()
            / n as f64;
        let edges = linspace(HISTOGRAM_RANGE.0, HISTOGRAM_RANGE.1, HISTOGRAM_BINS + 1);
        let mut counts = vec![0u64; HISTOGRAM_BINS];
        for &x in sorted.iter().filter(|x| !x.is_nan()) {
            counts[bin_index(x, &edges)] += 1;
        }
        let finite: Vec<f64> = sorted.iter().copied().filter(|x| !x.is_nan()).collect();
        Distribution {
            count: n,
            mean: f64::from(numpy_mean_f32(scores)),
            std: if n == 0 { f64::NAN } else { var.sqrt() },
            min: finite.first().copied().unwrap_or(f64::NAN),
            max: finite.last().copied().unwrap_or(f64::NAN),
            quantiles: QUANTILES
                .iter()
                .map(|&q| (q, percentile(&finite, f64::from(q))))
                .collect(),
            edges,
            counts,
        }
    }

    /// The quantile `q` (one of [`QUANTILES`]), NaN if not reported.
    pub fn quantile(&self, q: u32) -> f64 {
        self.quantiles
            .iter()
            .find(|(p, _)| *p == q)
            .map_or(f64::NAN, |(_, v)| *v)
    }

    /// The contents of `sem_sim_distribution.json` (NaN statistics of an empty run are `null`).
    pub fn to_json(&self) -> PyJson {
        let num = |x: f64| {
            if x.is_nan() {
                PyJson::Null
            } else {
                PyJson::Float(x)
            }
        };
        let quantiles = self
            .quantiles
            .iter()
            .map(|(q, v)| (format!("p{q}"), num(*v)))
            .collect();
        let histogram = PyJson::Object(vec![
            (
                "range".into(),
                PyJson::Array(vec![
                    PyJson::Float(HISTOGRAM_RANGE.0),
                    PyJson::Float(HISTOGRAM_RANGE.1),
                ]),
            ),
            ("bins".into(), PyJson::Int(HISTOGRAM_BINS as i128)),
            (
                "edges".into(),
                PyJson::Array(self.edges.iter().map(|&e| PyJson::Float(e)).collect()),
            ),
            (
                "counts".into(),
                PyJson::Array(self.counts.iter().map(|&c| PyJson::Int(c.into())).collect()),
            ),
        ]);
        PyJson::Object(vec![
            ("count".into(), PyJson::Int(self.count as i128)),
            ("mean".into(), num(self.mean)),
            ("std".into(), num(self.std)),
            ("min".into(), num(self.min)),
            ("max".into(), num(self.max)),
            ("quantiles".into(), PyJson::Object(quantiles)),
            ("histogram".into(), histogram),
        ])
    }

    /// The one-line terminal summary.
    pub fn summary_line(&self) -> String {
        format!(
            "semantic similarity: {} pairs, avg_sem_sim_score {:.4}, std {:.4}, min {:.4}, p5 {:.4}, median {:.4}, p95 {:.4}, max {:.4}",
            self.count,
            self.mean,
            self.std,
            self.min,
            self.quantile(5),
            self.quantile(50),
            self.quantile(95),
            self.max
        )
    }
}

/// `np.linspace(start, stop, num)`: `i * step + start`, the last one exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// `np.histogram`'s bin of `x` for uniform `edges`: the scaled index, corrected against the
/// edges themselves; values outside the range go to the end bins (see [`Distribution::counts`]).
fn bin_index(x: f64, edges: &[f64]) -> usize {
    let bins = edges.len() - 1;
    let (first, last) = (edges[0], edges[bins]);
    if x <= first {
        return 0;
    }
    if x >= last {
        return bins - 1;
    }
    let mut i = (((x - first) * (bins as f64 / (last - first))) as usize).min(bins - 1);
    if x < edges[i] {
        i -= 1;
    } else if i + 1 < bins && x >= edges[i + 1] {
        i += 1;
    }
    i
}

/// `np.percentile(sorted, q)` with the default linear method, on ascending values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let q = q / 100.0;
    // NumPy's "linear" method: the virtual index (n - 1) q, gamma its fractional part.
    let virtual_index = (n - 1) as f64 * q;
    let below = virtual_index.floor();
    let gamma = virtual_index - below;
    let lo = (below.max(0.0) as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    lerp(sorted[lo], sorted[hi], gamma)
}

/// NumPy's `_lerp`: `a + (b - a) t`, computed from `b` when `t >= 0.5` for monotonicity.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values printed by NumPy 2 (`np.percentile`, `np.std`, `np.histogram(bins=20,
    /// range=(-1, 1))` on `np.float32` scores widened to float64).
    #[test]
    fn matches_numpy() {
        let d = Distribution::new(&[0.999_999_9, 0.553_859_8, 1.0]);
        let q: Vec<f64> = d.quantiles.iter().map(|(_, v)| *v).collect();
        assert_eq!(
            q,
            [
                0.5984737813472748,
                0.7769298255443573,
                0.9999998807907104,
                0.9999999403953552,
                0.9999999880790711
            ]
        );
        assert_eq!(d.std, 0.21031249309037675);
        assert_eq!(d.mean, 0.8512865900993347);
        assert_eq!((d.min, d.max, d.count), (0.5538597702980042, 1.0, 3));
        assert_eq!(d.counts[15], 1);
        assert_eq!(d.counts[19], 2);

        let d = Distribution::new(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]);
        let q: Vec<f64> = d.quantiles.iter().map(|(_, v)| *v).collect();
        assert_eq!(
            q,
            [
                0.13000000193715094,
                0.2500000074505806,
                0.4000000059604645,
                0.550000011920929,
                0.6699999988079071
            ]
        );
        assert_eq!(d.std, 0.1999999992549422);
        assert_eq!(&d.counts[10..17], &[0, 1, 1, 1, 1, 1, 2]);

        let d = Distribution::new(&[-0.25, 0.5]);
        let q: Vec<f64> = d.quantiles.iter().map(|(_, v)| *v).collect();
        assert_eq!(q, [-0.2125, -0.0625, 0.125, 0.3125, 0.46249999999999997]);
        assert_eq!((d.counts[7], d.counts[15]), (1, 1));
        assert_eq!(d.edges[6], -0.3999999999999999);
        assert_eq!(d.edges[20], 1.0);
    }

    #[test]
    fn rounding_past_one_and_empty_input() {
        let d = Distribution::new(&[1.0000001, -1.0000001]);
        assert_eq!((d.counts[0], d.counts[19]), (1, 1));
        let empty = Distribution::new(&[]);
        assert_eq!(empty.count, 0);
        assert!(empty.mean.is_nan() && empty.min.is_nan() && empty.quantile(50).is_nan());
        let json = crate::output::dumps_pretty(&empty.to_json(), false, false);
        assert!(json.contains("\"mean\": null"), "{json}");
        assert!(
            empty
                .summary_line()
                .starts_with("semantic similarity: 0 pairs")
        );
    }
}
