//! Sub-step 3 (docs/FIDELITY.md §4.4, CE `run_char_rm.py`): the reward model's input text of each
//! transformed row, and the score it gives back.
//!
//! The text is `"<RoleInfo>\n\n" + str(profile) + "\n\n<Context>\n\n" + context +
//! "\n\n<Response>\n\n" + model_output + "\n\n<Dimension>\n\n" + metric_zh`. The worker encodes
//! it without special tokens, appends `</s>` and keeps the last 4096 tokens ([`RM_MAX_TOKENS`]);
//! its sigmoid comes back in the model's dtype, and the score is `sigmoid * 4 + 1` in float64,
//! stored as `record[metric_en]`.

use super::data::Profiles;
use super::{Record, get_str, set};
use crate::output::PyJson;

/// CE's `max_seq_length`: inputs keep their last this many tokens (the appended eos included).
pub const RM_MAX_TOKENS: u32 = 4096;

/// The reward-model input of a transformed row; errors name the row (0-based) and what it lacks.
pub fn rm_input_text(row: &Record, row_no: usize, profiles: &Profiles) -> Result<String, String> {
    let field =
        |key: &str| get_str(row, key).ok_or_else(|| format!("row {row_no}: no string `{key}`"));
    let role = field("role")?;
    let profile = profiles
        .text(role, row_no)
        .map_err(|e| format!("row {row_no}: {e}"))?;
    Ok(format!(
        "<RoleInfo>\n\n{profile}\n\n<Context>\n\n{}\n\n<Response>\n\n{}\n\n<Dimension>\n\n{}",
        field("context")?,
        field("model_output")?,
        field("metric_zh")?
    ))
}

/// The reward item id of metric `k` (0-based, in `id2metric` order) of dialogue `dialogue`
/// (its index in the test data), when scoring is fed from generation as it runs: such an item
/// exists before the rows of later dialogues, so it cannot be named by its row number.
pub fn fed_item_id(dialogue: usize, k: usize) -> String {
    format!("{dialogue}/{k}")
}

/// `rw_model(input_ids)[1].item() * 4 + 1`: the sigmoid (a bf16 or f32 value, exact in f32)
/// widened to a Python float, then the affine map in float64.
pub fn score_from_sigmoid(sigmoid: f32) -> f64 {
    f64::from(sigmoid) * 4.0 + 1.0
}

/// `row[row["metric_en"]] = score`; errors when the row has no string `metric_en`.
pub fn attach_score(row: &mut Record, row_no: usize, score: f64) -> Result<(), String> {
    let metric = get_str(row, "metric_en")
        .ok_or_else(|| format!("row {row_no}: no string `metric_en`"))?
        .to_owned();
    set(row, &metric, PyJson::Float(score));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_affine_in_f64() {
        // The original tool's stored example scores are bf16 sigmoids on the 2^-8 grid.
        assert_eq!(score_from_sigmoid(0.59375), 3.375);
        assert_eq!(score_from_sigmoid(0.8203125), 4.28125);
        // An f32 sigmoid keeps its exact value (no rounding to f32 after the map).
        let s = 0.1_f32;
        assert_eq!(score_from_sigmoid(s), f64::from(s) * 4.0 + 1.0);
        assert_ne!(score_from_sigmoid(s), 1.4);
    }

    #[test]
    fn the_score_goes_under_the_metric_name() {
        let mut row: Record = vec![
            ("id".into(), PyJson::Int(1)),
            ("metric_en".into(), PyJson::Str("Fluency".into())),
        ];
        attach_score(&mut row, 0, 2.5).unwrap();
        assert_eq!(row[2], ("Fluency".into(), PyJson::Float(2.5)));
        assert!(
            attach_score(&mut vec![], 7, 1.0)
                .unwrap_err()
                .contains("row 7")
        );
    }
}
