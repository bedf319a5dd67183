//! Bad job YAMLs (README "Bad input"): malformed YAML, a value of the wrong type, an unknown key.
//! Each runs the real `evalfleet step1` and checks the exit code, that the message names the
//! file, key or line and what was expected, that nothing panicked, and that the output folder's
//! earlier files are untouched.

mod bad_input_common;
mod fleet_common;

use bad_input_common::Step1;

#[test]
fn malformed_yaml_names_the_line_and_column() {
    let mut job = Step1::new();
    job.set("dataset", "dataset: [demo_alpaca, demo_sharegpt");
    let stderr = job.fails_with(&["job.yaml: line ", "invalid YAML"]);
    assert!(stderr.contains("expected ','") || stderr.contains("did not find expected"));
}

#[test]
fn wrong_value_type_names_the_key_and_the_expected_type() {
    let mut job = Step1::new();
    job.set("cutoff_len", "cutoff_len: forty");
    job.fails_with(&[
        "job.yaml: key `cutoff_len`: expected a non-negative integer, found the string \"forty\"",
    ]);
}

#[test]
fn unknown_key_is_refused_with_the_closest_known_key() {
    let mut job = Step1::new();
    job.set("max_new_tokens", "max_new_tokenz: 4");
    job.fails_with(&["job.yaml: unknown key `max_new_tokenz` (did you mean `max_new_tokens`?)"]);
}
