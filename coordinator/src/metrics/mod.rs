//! Step 1 text metrics, bit-compatible with jieba 0.42.1 + rouge-chinese 1.0.3 + nltk 3.8.1.
//!
//! [`score_row`] is LLaMA-Factory's `ComputeMetrics` for one (predict, label) pair
//! (docs/FIDELITY.md §1.6): jieba tokens of both sides, ROUGE-1/2/L on the space-joined tokens (all
//! zero when either side has no non-whitespace token), sentence BLEU-4 on code points, every value
//! stored as `round(x * 100, 4)`. [`summarize`] averages rows as `np.mean` does. Besides the
//! original F scores it keeps ROUGE precision and recall, reported under new keys.
//!
//! - [`jieba`] + [`hmm`]: the segmenter, reading jieba's own data files (fetched from PyPI).
//! - [`rouge`], [`bleu`]: the two scores, unrounded.
//! - [`numeric`]: Python `round`, `math.fsum` and NumPy's pairwise mean.

pub mod bleu;
pub mod hmm;
pub mod jieba;
pub mod numeric;
mod pylit;
pub mod pystr;
pub mod rouge;

use std::path::PathBuf;
use std::sync::OnceLock;

pub use jieba::Jieba;
pub use numeric::{fsum, numpy_mean_f32, numpy_mean_f64, python_round};

/// Why the metrics cannot be computed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetricsError {
    /// jieba's data files are missing or malformed; the message names the file and what is wrong.
    #[error("{0}")]
    Data(String),
}

/// Precision, recall and F1 of one ROUGE variant, each already `round(x * 100, 4)` (in a
/// [`Summary`]: the mean of those).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prf {
    /// Precision.
    pub p: f64,
    /// Recall.
    pub r: f64,
    /// F1, the value the original tool reports.
    pub f: f64,
}

/// The stored scores of one (predict, label) pair.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RowScores {
    /// ROUGE-1.
    pub rouge1: Prf,
    /// ROUGE-2.
    pub rouge2: Prf,
    /// ROUGE-L.
    pub rougel: Prf,
    /// Sentence BLEU-4, `round(bleu * 100, 4)`.
    pub bleu4: f64,
}

/// `np.mean` over rows of every stored value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    /// Means of the ROUGE-1 values.
    pub rouge1: Prf,
    /// Means of the ROUGE-2 values.
    pub rouge2: Prf,
    /// Means of the ROUGE-L values.
    pub rougel: Prf,
    /// Mean BLEU-4.
    pub bleu4: f64,
}

/// Where jieba's data is looked for: `$EVALFLEET_JIEBA_DIR`, else `$EVALFLEET_MODELS/jieba-0.42.1`,
/// else `.models/jieba-0.42.1` in the source checkout this was built from.
pub fn default_jieba_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EVALFLEET_JIEBA_DIR") {
        return dir.into();
    }
    if let Some(models) = std::env::var_os("EVALFLEET_MODELS") {
        return PathBuf::from(models).join("jieba-0.42.1");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".models")
        .join("jieba-0.42.1")
}

/// The process-wide segmenter, loaded from [`default_jieba_dir`] on first use.
pub fn segmenter() -> Result<&'static Jieba, MetricsError> {
    static JIEBA: OnceLock<Result<Jieba, MetricsError>> = OnceLock::new();
    JIEBA
        .get_or_init(|| Jieba::load(&default_jieba_dir()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Scores one pair with the process-wide segmenter; see [`score_row_with`].
pub fn score_row(predict: &str, label: &str) -> Result<RowScores, MetricsError> {
    Ok(score_row_with(segmenter()?, predict, label))
}

fn stored(x: f64) -> f64 {
    python_round(x * 100.0, 4)
}

fn stored_prf(raw: rouge::RawPrf) -> Prf {
    Prf {
        p: stored(raw.p),
        r: stored(raw.r),
        f: stored(raw.f),
    }
}

/// The stored scores of one (predict, label) pair, as LLaMA-Factory's `ComputeMetrics` computes
/// them. Safe to call from many threads at once.
pub fn score_row_with(jieba: &Jieba, predict: &str, label: &str) -> RowScores {
    let hyp = jieba.cut(predict).join(" ");
    let reference = jieba.cut(label).join(" ");
    let empty = |s: &str| pystr::py_split(s).next().is_none();
    // LF's empty rule; rouge-chinese would raise on such a side anyway.
    let scores = if empty(&hyp) || empty(&reference) {
        None
    } else {
        rouge::rouge(&hyp, &reference)
    };
    let (rouge1, rouge2, rougel) = match scores {
        Some(s) => (
            stored_prf(s.rouge1),
            stored_prf(s.rouge2),
            stored_prf(s.rougel),
        ),
        None => Default::default(),
    };
    RowScores {
        rouge1,
        rouge2,
        rougel,
        bleu4: stored(bleu::sentence_bleu(predict, label)),
    }
}

/// `{k: float(np.mean(values))}` for every stored value. All NaN for no rows, as NumPy.
pub fn summarize(rows: &[RowScores]) -> Summary {
    let mean =
        |get: &dyn Fn(&RowScores) -> f64| numpy_mean_f64(&rows.iter().map(get).collect::<Vec<_>>());
    let prf = |get: &dyn Fn(&RowScores) -> Prf| Prf {
        p: mean(&|r| get(r).p),
        r: mean(&|r| get(r).r),
        f: mean(&|r| get(r).f),
    };
    Summary {
        rouge1: prf(&|r| r.rouge1),
        rouge2: prf(&|r| r.rouge2),
        rougel: prf(&|r| r.rougel),
        bleu4: mean(&|r| r.bleu4),
    }
}

impl Summary {
    /// The metrics under their result keys, without the `predict_` prefix: the original tool's
    /// `rouge-1`, `rouge-2`, `rouge-l`, `bleu-4` (F scores) in its order, then the new
    /// `rouge-{1,2,l}-precision` and `-recall`.
    pub fn metric_pairs(&self) -> Vec<(String, f64)> {
        let mut pairs = vec![
            ("rouge-1".to_owned(), self.rouge1.f),
            ("rouge-2".to_owned(), self.rouge2.f),
            ("rouge-l".to_owned(), self.rougel.f),
            ("bleu-4".to_owned(), self.bleu4),
        ];
        for (name, prf) in [
            ("rouge-1", self.rouge1),
            ("rouge-2", self.rouge2),
            ("rouge-l", self.rougel),
        ] {
            pairs.push((format!("{name}-precision"), prf.p));
            pairs.push((format!("{name}-recall"), prf.r));
        }
        pairs
    }
}
