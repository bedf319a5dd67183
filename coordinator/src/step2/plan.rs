//! Planning step 2's work items and putting the workers' scores back in row order, independent of
//! the wire format: item ids are row indices (as step 1's are sample indices).
//!
//! Items are queued longest first, so that each lease (a run of consecutive queued items) holds
//! texts of similar length and the worker's batches pad little, as sentence-transformers' own
//! length sort does within one `encode` call.

use std::path::Path;

use super::Step2Error;
use crate::output::{GENERATED_PREDICTIONS, PredictionRow};

/// Row indices in queueing order: by the longer of label and predict (in characters, as
/// sentence-transformers measures text length), longest first; ties keep file order.
pub fn queue_order(rows: &[PredictionRow]) -> Vec<usize> {
    let len = |r: &PredictionRow| r.label.chars().count().max(r.predict.chars().count());
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(len(&rows[i])));
    order
}

/// The scores in row order from `(item_id, score)` results in any order. Every row of the
/// `rows`-long file must have exactly one score; `output_dir` only names the file in errors.
pub fn scores_in_row_order(
    output_dir: &Path,
    rows: usize,
    results: impl IntoIterator<Item = (String, f32)>,
) -> Result<Vec<f32>, Step2Error> {
    let path = output_dir.join(GENERATED_PREDICTIONS);
    let bad = |message: String| Step2Error::Results {
        path: path.clone(),
        message,
    };
    let mut scores: Vec<Option<f32>> = vec![None; rows];
    for (id, score) in results {
        let row: usize = id
            .parse()
            .map_err(|_| bad(format!("item id {id:?} is not a row index")))?;
        let slot = scores
            .get_mut(row)
            .ok_or_else(|| bad(format!("item id {row} is past the last row ({rows} rows)")))?;
        if slot.replace(score).is_some() {
            return Err(bad(format!("row {row} was scored twice")));
        }
    }
    let missing: Vec<usize> = (0..rows).filter(|&i| scores[i].is_none()).collect();
    if let Some(first) = missing.first() {
        return Err(bad(format!(
            "{} rows have no score (first: row {first})",
            missing.len()
        )));
    }
    Ok(scores.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, predict: &str) -> PredictionRow {
        PredictionRow {
            label: label.into(),
            predict: predict.into(),
        }
    }

    #[test]
    fn longest_first_ties_in_file_order() {
        let rows = [
            row("ab", "c"),
            row("中文中文", ""),
            row("", "xy"),
            row("a", "b"),
        ];
        assert_eq!(queue_order(&rows), vec![1, 0, 2, 3]);
    }

    #[test]
    fn scores_come_back_in_row_order_and_gaps_are_errors() {
        let dir = Path::new("out");
        let got = scores_in_row_order(
            dir,
            3,
            [("2".into(), 0.5), ("0".into(), 1.0), ("1".into(), -0.25)],
        )
        .unwrap();
        assert_eq!(got, vec![1.0, -0.25, 0.5]);
        let err = scores_in_row_order(dir, 3, [("2".into(), 0.5)])
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("generated_predictions.jsonl: 2 rows have no score (first: row 0)"),
            "{err}"
        );
        let err = scores_in_row_order(dir, 1, [("0".into(), 0.5), ("0".into(), 0.5)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 0 was scored twice"), "{err}");
        let err = scores_in_row_order(dir, 1, [("x".into(), 0.5)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"x\" is not a row index"), "{err}");
        let err = scores_in_row_order(dir, 1, [("5".into(), 0.5)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("past the last row"), "{err}");
    }
}
