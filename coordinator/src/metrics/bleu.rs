//! NLTK 3.8.1 `sentence_bleu([reference], hypothesis, smoothing_function=SmoothingFunction().method3)`
//! with the default weights (0.25 × 4), over Unicode code points.

use std::collections::HashMap;

use super::numeric::fsum;

/// Modified precision `(numerator, denominator)` for n-grams of order `n`: clipped hypothesis
/// counts over `max(1, number of hypothesis n-grams)`.
fn modified_precision(hyp: &[char], reference: &[char], n: usize) -> (u64, u64) {
    let mut counts: HashMap<&[char], u64> = HashMap::new();
    for gram in hyp.windows(n) {
        *counts.entry(gram).or_default() += 1;
    }
    let mut ref_counts: HashMap<&[char], u64> = HashMap::new();
    for gram in reference.windows(n) {
        if counts.contains_key(gram) {
            *ref_counts.entry(gram).or_default() += 1;
        }
    }
    let numerator = counts
        .iter()
        .map(|(g, &c)| c.min(ref_counts.get(g).copied().unwrap_or(0)))
        .sum();
    let total: u64 = counts.values().sum();
    (numerator, total.max(1))
}

/// The unrounded sentence BLEU-4 of `hypothesis` against the single `reference`.
pub fn sentence_bleu(hypothesis: &str, reference: &str) -> f64 {
    let hyp: Vec<char> = hypothesis.chars().collect();
    let reference: Vec<char> = reference.chars().collect();
    let precisions: Vec<(u64, u64)> = (1..=4)
        .map(|n| modified_precision(&hyp, &reference, n))
        .collect();
    // NLTK returns 0 when no unigram matches (this also covers an empty hypothesis).
    if precisions[0].0 == 0 {
        return 0.0;
    }
    // method3: the k-th zero precision becomes 1 / (2^k * denominator).
    let mut k = 0;
    let logs = precisions.iter().map(|&(num, den)| {
        let p = if num == 0 {
            k += 1;
            1.0 / ((1u64 << k) * den) as f64
        } else {
            num as f64 / den as f64
        };
        0.25 * p.ln()
    });
    let sum = fsum(logs.collect::<Vec<_>>());
    let (c, r) = (hyp.len(), reference.len());
    let bp = if c > r {
        1.0
    } else {
        (1.0 - r as f64 / c as f64).exp()
    };
    bp * sum.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_and_smoothing() {
        assert_eq!(modified_precision(&['a', 'a', 'a'], &['a', 'b'], 1), (1, 3));
        assert_eq!(modified_precision(&['a'], &['a'], 2), (0, 1));
        assert_eq!(sentence_bleu("", "abc"), 0.0);
        assert_eq!(sentence_bleu("xyz", "abc"), 0.0);
        // Identical texts of 4+ characters score exactly 1.
        assert_eq!(sentence_bleu("我工作一年", "我工作一年"), 1.0);
    }
}
