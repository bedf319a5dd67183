//! Bad data (README "Bad input"): step-1 datasets (a line that is not JSON, a row without the
//! mapped column, an empty file) and step-3 benchmark files (a CSV row with the wrong number of
//! fields, mapping.json naming a subject without files, an answer outside A-D). All are found
//! while the coordinator plans the job, before any worker starts. Each test checks the exit
//! code, that the message names the file and line (or subject) and what was expected, no panic,
//! and the untouched output folder.

mod bad_input_common;
mod fleet_common;

use bad_input_common::{Step1, Step3};

#[test]
fn dataset_line_that_is_not_json_names_file_line_and_column() {
    let job = Step1::new();
    let file = job.data.join("demo_sharegpt.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1] = r#"{"conversations": [oops"#;
    std::fs::write(&file, lines.join("\n")).unwrap();
    job.fails_with(&[&format!(
        "{}: line 2, column 20: invalid JSON: expected value",
        file.display()
    )]);
}

#[test]
fn dataset_row_without_the_mapped_column_names_file_line_and_column() {
    let job = Step1::new();
    let file = job.data.join("demo_sharegpt.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    // dataset_info.json maps `messages` to "conversations"; the first row calls it otherwise.
    let (first, rest) = text.split_once('\n').unwrap();
    let renamed = first.replacen("\"conversations\"", "\"turns\"", 1);
    std::fs::write(&file, format!("{renamed}\n{rest}")).unwrap();
    job.fails_with(&[&format!(
        "{}: line 1: column \"conversations\" is missing",
        file.display()
    )]);
}

#[test]
fn empty_dataset_file_is_named_even_beside_a_good_one() {
    let job = Step1::new();
    let file = job.data.join("demo_sharegpt.jsonl");
    std::fs::write(&file, "").unwrap();
    job.fails_with(&[&format!(
        "no usable samples in dataset(s) demo_sharegpt: {} has no rows (expected a JSON array of \
         objects, or one JSON object per line)",
        file.display()
    )]);
}

#[test]
fn csv_row_with_the_wrong_field_count_names_file_and_line() {
    let job = Step3::new();
    let file = job.task.join("data/test/algebra_test.csv");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("What is 9?,1,2,3,A\n");
    std::fs::write(&file, text).unwrap();
    job.fails_with(&[&format!(
        "{}: line 4: expected 6 fields, found 5",
        file.display()
    )]);
}

#[test]
fn mapping_json_naming_a_missing_subject_names_the_subject_and_file() {
    let job = Step3::new();
    std::fs::write(
        job.task.join("mapping.json"),
        r#"{"algebra": {"name": "algebra", "category": "STEM"},
            "geometry": {"name": "geometry", "category": "STEM"}}"#,
    )
    .unwrap();
    job.fails_with(&[
        "subject `geometry`",
        &job.task
            .join("data/dev/geometry_dev.csv")
            .display()
            .to_string(),
        "file not found (expected for every subject mapping.json lists)",
    ]);
}

#[test]
fn answer_outside_a_to_d_names_file_line_and_the_letters() {
    let job = Step3::new();
    let file = job.task.join("data/test/algebra_test.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[1] = lines[1].replace(",A", ",E");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    job.fails_with(&[&format!(
        "{}: line 2: answer `E` is not one of A, B, C, D",
        file.display()
    )]);
}
