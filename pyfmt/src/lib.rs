//! Values written as CPython writes them, for the two crates that must match Python byte for byte:
//! the coordinator's result files (`json.dump`, `str(dict)`, pandas cells) and the worker's chat
//! templates (transformers' `tojson` filter).
//!
//! - [`float_repr`] / [`json_float`]: `repr(float)`, and `json.dumps`'s spelling of it.
//! - [`push_json_string`]: a `json.dumps` string literal, with or without `ensure_ascii`.

mod float;
mod string;

pub use float::{float_repr, json_float};
pub use string::push_json_string;
