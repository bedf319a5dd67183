//! `evalfleet report` end to end: on a copy of the seed's output directory and on a synthetic
//! sweep of three checkpoints, the CSV and Markdown tables repeat the input files' numbers, the
//! CSV is well formed, missing steps are empty cells, the page has one SVG per chart, no script,
//! and escapes text; malformed inputs are errors that name the file.

mod report_common;

use std::path::Path;

use report_common::{
    aligned, cell, copy_tree, fixture, parse_csv, parse_markdown, read, svg_count, write,
};

use evalfleet::report::{ReportError, build_report};

/// The Result-table columns that open summary.csv, in order (the change columns follow).
const HEADER: [&str; 23] = [
    "model",
    "rouge-1",
    "rouge-2",
    "rouge-l",
    "samples_per_second",
    "steps_per_second",
    "sem_sim_score",
    "avg_mmlu",
    "avg_cmmlu",
    "avg_ceval",
    "avg_charactereval",
    "ce_Accuracy",
    "ce_Communication_skills",
    "ce_Coherence",
    "ce_Diversity",
    "ce_Fluency",
    "ce_Exposure",
    "ce_Utterance",
    "ce_Consistency",
    "ce_Behavior",
    "ce_Hallucination",
    "ce_Empathy",
    "ce_Humanlikeness",
];

const CE_METRICS: [&str; 12] = [
    "Accuracy",
    "Communication_skills",
    "Coherence",
    "Diversity",
    "Fluency",
    "Exposure",
    "Utterance",
    "Consistency",
    "Behavior",
    "Hallucination",
    "Empathy",
    "Humanlikeness",
];

#[test]
fn seed_output_dir_table_equals_its_files() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("output");
    copy_tree(&fixture("report_seed_output"), &dir);
    let files = build_report(&dir).expect("report");
    assert_eq!(files.checkpoints, ["output"]);

    let csv = parse_csv(&read(&files.summary_csv));
    assert_eq!(csv[0][..HEADER.len()], HEADER);
    assert_eq!(csv[0][HEADER.len()], "rouge-1_delta");
    // One checkpoint: nothing to compare, every change field is empty.
    assert!(csv[1][HEADER.len()..].iter().all(String::is_empty));
    assert_eq!(csv.len(), 2);
    let predict: serde_json::Value =
        serde_json::from_str(&read(&dir.join("predict_results.json"))).expect("json");
    for (column, key) in [
        ("rouge-1", "predict_rouge-1"),
        ("rouge-2", "predict_rouge-2"),
        ("rouge-l", "predict_rouge-l"),
        ("samples_per_second", "predict_samples_per_second"),
        ("steps_per_second", "predict_steps_per_second"),
        ("sem_sim_score", "avg_sem_sim_score"),
    ] {
        let got: f64 = cell(&csv, 0, column).parse().expect(column);
        assert_eq!(Some(got), predict[key].as_f64(), "{column}");
    }
    assert_eq!(cell(&csv, 0, "rouge-1"), "79.36506666666666");
    assert_eq!(cell(&csv, 0, "sem_sim_score"), "0.8512865900993347");
    for task in ["mmlu", "cmmlu", "ceval"] {
        let log = aligned(&dir.join(task).join("results.log"));
        assert_eq!(log[0].0, "Average");
        assert_eq!(cell(&csv, 0, &format!("avg_{task}")), log[0].1);
    }
    assert_eq!(cell(&csv, 0, "avg_mmlu"), "66.91");
    let ce = aligned(&dir.join("CharacterEval/step4_eval_scores.jsonl"));
    assert_eq!(ce.len(), 12);
    for (name, value) in &ce {
        assert_eq!(cell(&csv, 0, &format!("ce_{name}")), value, "{name}");
    }
    let mean = ce
        .iter()
        .map(|(_, v)| v.parse::<f64>().expect("f64"))
        .sum::<f64>()
        / 12.0;
    let got: f64 = cell(&csv, 0, "avg_charactereval").parse().expect("avg");
    assert!(
        (got - mean).abs() < 1e-12 && (got - 2.5941666).abs() < 1e-6,
        "{got}"
    );

    // The Markdown table shows the same numbers, long fractions rounded to 4 decimals.
    let md = parse_markdown(&read(&files.summary_md));
    assert_eq!(md[0], HEADER);
    for column in &HEADER[1..] {
        let shown: f64 = cell(&md, 0, column).parse().expect(column);
        let exact: f64 = cell(&csv, 0, column).parse().expect(column);
        assert!(
            (shown - exact).abs() <= 5e-5,
            "{column}: {shown} vs {exact}"
        );
    }
    assert_eq!(cell(&md, 0, "rouge-1"), "79.3651");

    // 5 trend/throughput charts (bars for a single checkpoint), 3 step-3 tasks, 1 histogram.
    let html = read(&files.report_html);
    assert_eq!(files.charts, 9);
    assert_eq!(svg_count(&html), 9);
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<style>"));
    assert!(!html.contains("<script"));
    assert!(html.contains("Semantic similarity: 3 pairs, mean 0.8513"));
    assert!(html.contains("<td class=\"num\" title=\"79.36506666666666\">79.3651</td>"));
    assert!(html.contains(">Social Sciences</text>"));
}

/// Writes one synthetic output directory in the seed's formats; `None` leaves a step out.
struct Synthetic {
    rouge: [f64; 3],
    speed: (f64, f64),
    scores: Option<Vec<f64>>,
    step3: Vec<(&'static str, [f64; 5])>,
    ce: Option<[f64; 12]>,
}

impl Synthetic {
    fn write(&self, dir: &Path) {
        let mut metrics = format!(
            "{{\n    \"predict_bleu-4\": 10.5,\n    \"predict_rouge-1\": {:?},\n    \"predict_rouge-2\": {:?},\n    \"predict_rouge-l\": {:?},\n    \"predict_runtime\": 3.9457,\n    \"predict_samples_per_second\": {:?},\n    \"predict_steps_per_second\": {:?}",
            self.rouge[0], self.rouge[1], self.rouge[2], self.speed.0, self.speed.1
        );
        write(&dir.join("all_results.json"), &format!("{metrics}\n}}"));
        let mut lines = String::new();
        if let Some(scores) = &self.scores {
            let mean = scores.iter().map(|&s| s as f32).sum::<f32>() / scores.len() as f32;
            metrics.push_str(&format!(
                ",\n    \"avg_sem_sim_score\": {:?}",
                f64::from(mean)
            ));
            for s in scores {
                lines.push_str(&format!(
                    "{{\"label\": \"l\", \"predict\": \"p\", \"score\": {s:?}}}\n"
                ));
            }
        } else {
            lines.push_str("{\"label\": \"l\", \"predict\": \"p\"}");
        }
        write(&dir.join("predict_results.json"), &format!("{metrics}\n}}"));
        write(&dir.join("generated_predictions.jsonl"), &lines);
        let categories = ["Average", "STEM", "Social Sciences", "Humanities", "Other"];
        for (task, accuracies) in &self.step3 {
            let log: Vec<String> = categories
                .iter()
                .zip(accuracies)
                .map(|(c, a)| format!("{c:>15}: {a:.2}"))
                .collect();
            write(&dir.join(task).join("results.log"), &log.join("\n"));
        }
        if let Some(ce) = &self.ce {
            let log: Vec<String> = CE_METRICS
                .iter()
                .zip(ce)
                .map(|(m, v)| format!("{m:>20}: {v:.2}"))
                .collect();
            write(
                &dir.join("CharacterEval/step4_eval_scores.jsonl"),
                &log.join("\n"),
            );
        }
    }
}

#[test]
fn sweep_of_three_checkpoints_with_missing_steps() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let sweep = tmp.path();
    let ce: [f64; 12] = std::array::from_fn(|i| 2.0 + i as f64 / 10.0);
    let all_tasks = |base: f64| {
        vec![
            (
                "mmlu",
                [base, base - 5.0, base + 5.0, base - 1.0, base + 1.0],
            ),
            ("cmmlu", [base + 10.0, 60.0, 70.0, 80.0, 90.0]),
            ("ceval", [base + 8.0, 61.25, 71.5, 81.75, 91.0]),
        ]
    };
    // Written out of step order: the table must come out 500, 1000, 1500.
    Synthetic {
        rouge: [30.25, 10.5, 28.125],
        speed: (1.5, 0.75),
        scores: None,
        step3: all_tasks(50.0),
        ce: Some(ce.map(|v| v + 0.5)),
    }
    .write(&sweep.join("checkpoint-1500"));
    Synthetic {
        rouge: [20.0, 8.0, 19.5],
        speed: (1.25, 0.625),
        scores: Some(vec![0.25, 0.5]),
        step3: all_tasks(40.0),
        ce: Some(ce),
    }
    .write(&sweep.join("checkpoint-500"));
    Synthetic {
        rouge: [25.5, 9.0, 24.0],
        speed: (1.0, 0.5),
        scores: Some(vec![0.75, 0.5, 1.0]),
        step3: vec![("mmlu", [45.0, 40.0, 50.0, 44.0, 46.0])],
        ce: None,
    }
    .write(&sweep.join("checkpoint-1000"));
    std::fs::create_dir(sweep.join("logs")).expect("mkdir");

    let files = build_report(sweep).expect("report");
    assert_eq!(
        files.checkpoints,
        ["checkpoint-500", "checkpoint-1000", "checkpoint-1500"]
    );
    assert_eq!(files.summary_csv, sweep.join("summary.csv"));
    let csv = parse_csv(&read(&files.summary_csv));
    assert_eq!(csv[0][..HEADER.len()], HEADER);
    assert_eq!(csv.len(), 4);
    let models: Vec<&str> = csv[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(models, files.checkpoints);
    for (row, rouge1, samples) in [(0, "20.0", "1.25"), (1, "25.5", "1.0"), (2, "30.25", "1.5")] {
        assert_eq!(cell(&csv, row, "rouge-1"), rouge1);
        assert_eq!(cell(&csv, row, "samples_per_second"), samples);
    }
    assert_eq!(cell(&csv, 2, "rouge-l"), "28.125");
    assert_eq!(cell(&csv, 0, "sem_sim_score"), "0.375");
    assert_eq!(cell(&csv, 1, "sem_sim_score"), "0.75");
    // Step 2 did not run for checkpoint-1500; step 3 cmmlu/ceval and step 4 not for -1000.
    assert_eq!(cell(&csv, 2, "sem_sim_score"), "");
    assert_eq!(cell(&csv, 1, "avg_mmlu"), "45.00");
    for column in ["avg_cmmlu", "avg_ceval", "avg_charactereval", "ce_Accuracy"] {
        assert_eq!(cell(&csv, 1, column), "", "{column}");
    }
    assert_eq!(cell(&csv, 0, "avg_cmmlu"), "50.00");
    assert_eq!(cell(&csv, 2, "avg_ceval"), "58.00");
    assert_eq!(cell(&csv, 0, "ce_Humanlikeness"), "3.10");
    assert_eq!(cell(&csv, 2, "ce_Humanlikeness"), "3.60");
    let avg: f64 = cell(&csv, 2, "avg_charactereval").parse().expect("avg");
    assert!((avg - 3.05).abs() < 1e-12, "{avg}");

    let md = parse_markdown(&read(&files.summary_md));
    assert_eq!(md.len(), 4);
    assert_eq!(cell(&md, 1, "avg_ceval"), "");
    assert_eq!(cell(&md, 2, "rouge-l"), "28.125");

    // 5 trend charts + 3 step-3 bar charts + histograms for the 2 checkpoints with scores.
    let html = read(&files.report_html);
    assert_eq!((files.charts, svg_count(&html)), (10, 10));
    assert!(html.contains("<polyline"), "trends are lines for a sweep");
    assert_eq!(html.matches("Semantic similarity: ").count(), 2);
    let (results, rest) = html
        .split_once("<h2>Change against the previous checkpoint</h2>")
        .expect("change section");
    assert_eq!(
        results.matches("<td class=\"empty\"></td>").count(),
        1 + 2 + 1 + 12
    );
    // Changes: -1000 vs -500 on mmlu (no results_detail.jsonl: no interval, no mark) ...
    let change_table = rest.split_once("<h2>").expect("next section").0;
    assert!(
        change_table.contains("checkpoint-1000 has no mmlu/results_detail.jsonl"),
        "{change_table}"
    );
    assert!(change_table.contains(">+5.00 (no interval)</td>"));
    // ... and on ROUGE, over the one line both have, with an interval.
    assert_eq!(cell(&csv, 1, "rouge-1_significant"), "no");
    assert_eq!(cell(&csv, 0, "rouge-1_delta"), "");
    assert_eq!(cell(&csv, 1, "avg_mmlu_delta"), "5.0");
    assert_eq!(cell(&csv, 1, "avg_mmlu_significant"), "");
}

#[test]
fn text_is_escaped_and_quoted() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("run <b>&\"x\",1");
    write(
        &dir.join("mmlu/results.log"),
        "        Average: 12.50\n   <i>Other: 7.00",
    );
    let files = build_report(&dir).expect("report");
    let html = read(&files.report_html);
    assert!(html.contains("run &lt;b&gt;&amp;&quot;x&quot;,1"));
    assert!(html.contains("&lt;i&gt;Other"));
    assert!(!html.contains("<b>") && !html.contains("<i>"));
    // Only the mmlu chart and the step-3 average trend have data.
    assert_eq!((files.charts, svg_count(&html)), (2, 2));
    assert!(html.contains("No step-2 scores"));
    let csv = parse_csv(&read(&files.summary_csv));
    assert_eq!(cell(&csv, 0, "model"), "run <b>&\"x\",1");
    assert_eq!(cell(&csv, 0, "avg_mmlu"), "12.50");
    assert_eq!(cell(&csv, 0, "rouge-1"), "");
}

#[test]
fn malformed_files_name_the_file_and_write_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    write(&dir.join("ceval/results.log"), "Average: 50.00\nSTEM 40");
    let err = build_report(dir).expect_err("bad log").to_string();
    assert!(
        err.contains("ceval/results.log: line 2: expected `<name>: <number>`"),
        "{err}"
    );
    write(&dir.join("ceval/results.log"), "Average: 50.00");
    write(
        &dir.join("predict_results.json"),
        "{\"predict_rouge-1\": 1.0,",
    );
    let err = build_report(dir).expect_err("bad json");
    assert!(matches!(err, ReportError::Json { .. }), "{err}");
    assert!(
        err.to_string().contains("predict_results.json: line 1"),
        "{err}"
    );
    write(&dir.join("predict_results.json"), "[]");
    let err = build_report(dir).expect_err("not an object").to_string();
    assert!(
        err.contains("predict_results.json: expected a JSON object"),
        "{err}"
    );
    assert!(!dir.join("report.html").exists() && !dir.join("summary.csv").exists());

    let empty = tempfile::tempdir().expect("temp dir");
    let err = build_report(empty.path()).expect_err("nothing");
    assert!(matches!(err, ReportError::NoResults { .. }), "{err}");
}
