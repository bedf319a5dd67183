//! Step 4 (docs/FIDELITY.md §4, the original tool's `model_utils/charactereval.py`): CharacterEval
//! role-play evaluation in four sub-steps, each writing one file into `output_dir`:
//!
//! 1. generation ([`prompt`]): each dialogue of `test_data.jsonl` becomes chat messages (the role
//!    profile's Python `str(dict)` ([`pyrepr`]) in the first user turn, the opening reply, the
//!    role's turns, the final turn as the query); its reply is `model_output` in
//!    `step1_generation.jsonl`;
//! 2. transform ([`transform`]): the first line of each reply, one row per (dialogue, metric) of
//!    `id2metric.jsonl`, in `step2_generation_trans.jsonl`;
//! 3. reward ([`reward`]): the BaichuanCharRM input text of each row, its `sigmoid * 4 + 1` score
//!    under the row's `metric_en` key, in `step3_evaluation.jsonl`;
//! 4. aggregate ([`aggregate`]): the per-metric means as the original tool's right-aligned log
//!    (`step4_eval_scores.jsonl`, plain text) and evalfleet's `step4_eval_scores.json`.
//!
//! Records stay JSON objects in file order ([`Record`]), so every key of the data files is kept
//! and written back in place, as the original tool's dict updates do. The models run on workers
//! (`crate::run::step4`); everything here is pure and file I/O.

pub mod aggregate;
pub mod data;
pub mod files;
mod nonprintable;
pub mod prompt;
pub mod pyrepr;
pub mod reward;
pub mod transform;

use std::path::PathBuf;

use crate::output::{OutputError, PyJson};

pub use data::TaskData;

/// Sub-step 1's output file.
pub const GENERATION_FILE: &str = "step1_generation.jsonl";
/// Sub-step 2's output file.
pub const TRANSFORM_FILE: &str = "step2_generation_trans.jsonl";
/// Sub-step 3's output file.
pub const EVALUATION_FILE: &str = "step3_evaluation.jsonl";
/// Sub-step 4's score log (plain text despite the name, as the original tool writes it).
pub const SCORES_LOG_FILE: &str = "step4_eval_scores.jsonl";
/// evalfleet's summary: per-metric mean, count, standard deviation; per-character means.
pub const SCORES_JSON_FILE: &str = "step4_eval_scores.json";
/// The `model_output` the original tool and CE write for a dialogue whose generation failed;
/// sub-step 2 skips it.
pub const ERROR_OUTPUT: &str = "ERROR";

/// One record of a step-4 file: a JSON object's entries in file order.
pub type Record = Vec<(String, PyJson)>;

/// Why step 4's data or files cannot be used; each names the file (and record) concerned.
#[derive(Debug, thiserror::Error)]
pub enum Step4Error {
    /// Reading or writing a file failed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A file that is needed does not exist; `hint` says which sub-step writes it.
    #[error("{}: missing: {hint}", path.display())]
    Missing { path: PathBuf, hint: String },
    /// A file's content is not what the sub-step expects.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The value of `key` in `record`.
pub fn get<'a>(record: &'a Record, key: &str) -> Option<&'a PyJson> {
    record.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// The string value of `key`, or `None` when absent or not a string.
pub fn get_str<'a>(record: &'a Record, key: &str) -> Option<&'a str> {
    match get(record, key) {
        Some(PyJson::Str(s)) => Some(s),
        _ => None,
    }
}

/// `record[key] = value` as a Python dict does it: an existing key keeps its place, a new one
/// goes last.
pub fn set(record: &mut Record, key: &str, value: PyJson) {
    match record.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value,
        None => record.push((key.to_owned(), value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keeps_the_place_of_an_existing_key() {
        let mut r: Record = vec![("a".into(), PyJson::Int(1)), ("b".into(), PyJson::Int(2))];
        set(&mut r, "a", PyJson::Int(3));
        set(&mut r, "c", PyJson::Int(4));
        let keys: Vec<&str> = r.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(get(&r, "a"), Some(&PyJson::Int(3)));
        assert_eq!(get_str(&r, "a"), None);
    }
}
