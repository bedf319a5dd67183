//! `evalfleet report`'s significance marks (issue 7, point 5) and reward-model training curves
//! (issue 10, point 3), end to end:
//!
//! - two checkpoints built so that, on each step, one change is far larger than noise and one is
//!   not: the CSV's change columns, the Markdown change table and the HTML markers say so, with
//!   the deltas, McNemar p-values (scipy's, see below) and intervals that bracket them; the
//!   report is byte-identical when built again (fixed seed);
//! - a real `evalfleet-train train-rm` metrics.jsonl (tests/fixtures/report_train_rm: the
//!   example yamls/train_rm.yaml with max_steps 60, eval_every 10): its loss and held-out
//!   curves are drawn and tabled, from the training folder alone or from an output folder that
//!   holds it.
//!
//! Step-1 lines are rescored with jieba: run scripts/fetch-models.sh once if its data is missing.

mod report_common;

use std::path::Path;

use evalfleet::report::build_report;
use report_common::{cell, copy_tree, fixture, parse_csv, read, svg_count, write};

/// scipy.stats.binomtest(5, 45).pvalue and binomtest(10, 22).pvalue (scipy 1.17.1): McNemar's
/// exact test of the step-3 tables below.
const P_MMLU: f64 = 7.878384167270269e-08;
const P_CMMLU: f64 = 0.8318119049072266;

/// Step 1 and 2 of one checkpoint: 60 lines; `hit(i)` says whether line `i` predicts its label
/// exactly (ROUGE and BLEU 100) or says something unrelated (0); step 2's score per line.
fn step12(dir: &Path, hit: impl Fn(usize) -> bool, score: impl Fn(usize) -> f64) {
    let (mut lines, mut hits, mut sum) = (String::new(), 0usize, 0.0f32);
    for i in 0..60 {
        let label = format!("第{i}个问题的答案是今天天气很好");
        let predict = if hit(i) { label.clone() } else { "xyz".into() };
        hits += usize::from(hit(i));
        sum += score(i) as f32;
        lines.push_str(&format!(
            "{{\"label\": \"{label}\", \"predict\": \"{predict}\", \"score\": {:?}}}\n",
            score(i)
        ));
    }
    write(&dir.join("generated_predictions.jsonl"), &lines);
    let rouge = 100.0 * hits as f64 / 60.0;
    write(
        &dir.join("predict_results.json"),
        &format!(
            "{{\"predict_bleu-4\": {rouge:?}, \"predict_rouge-1\": {rouge:?}, \"predict_rouge-2\": {rouge:?}, \"predict_rouge-l\": {rouge:?}, \"avg_sem_sim_score\": {:?}}}",
            f64::from(sum / 60.0)
        ),
    );
}

/// Step 3 task `task` of one checkpoint: `n` questions (answer A), right where `right(i)`;
/// results.log's average, and results_detail.jsonl unless `detail` is false.
fn step3(dir: &Path, task: &str, n: usize, right: impl Fn(usize) -> bool, detail: bool) {
    let mut lines = String::new();
    let mut k = 0;
    for i in 0..n {
        let prediction = if right(i) { "A" } else { "B" };
        k += usize::from(right(i));
        lines.push_str(&format!(
            "{{\"subject\": \"s{}\", \"index\": {}, \"answer\": \"A\", \"prediction\": \"{prediction}\", \"probabilities\": null}}\n",
            i % 3,
            i / 3
        ));
    }
    let average = 100.0 * k as f64 / n as f64;
    write(
        &dir.join(task).join("results.log"),
        &format!("        Average: {average:.2}"),
    );
    if detail {
        write(&dir.join(task).join("results_detail.jsonl"), &lines);
    }
}

/// Step 4 of one checkpoint: 30 dialogues scored on Fluency and Empathy.
fn step4(dir: &Path, fluency: impl Fn(usize) -> f64, empathy: impl Fn(usize) -> f64) {
    let mut rows = Vec::new();
    let (mut f, mut e) = (0.0, 0.0);
    for i in 0..30 {
        rows.push(format!(
            "{{\"id\": {}, \"role\": \"r\", \"metric_en\": \"Fluency\", \"Fluency\": {:?}}}",
            1000 + i,
            fluency(i)
        ));
        rows.push(format!(
            "{{\"id\": {}, \"role\": \"r\", \"metric_en\": \"Empathy\", \"Empathy\": {:?}}}",
            1000 + i,
            empathy(i)
        ));
        f += fluency(i);
        e += empathy(i);
    }
    write(
        &dir.join("CharacterEval/step3_evaluation.jsonl"),
        &format!("[{}]", rows.join(",\n")),
    );
    write(
        &dir.join("CharacterEval/step4_eval_scores.jsonl"),
        &format!(" Fluency: {:.2}\n Empathy: {:.2}", f / 30.0, e / 30.0),
    );
}

fn num(csv: &[Vec<String>], row: usize, column: &str) -> f64 {
    let text = cell(csv, row, column);
    text.parse()
        .unwrap_or_else(|_| panic!("{column}: not a number: {text:?}"))
}

#[test]
fn one_change_per_step_is_significant_and_one_is_not() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let sweep = tmp.path();
    let (before, after) = (sweep.join("checkpoint-100"), sweep.join("checkpoint-200"));
    // Step 1: half the lines right -> all right (+50 points, far above noise). Step 2: scores
    // move +-0.02 alternately (mean change 0: noise).
    let base = |i: usize| 0.5 + 0.01 * (i % 7) as f64;
    step12(&before, |i| i % 2 == 0, base);
    step12(
        &after,
        |_| true,
        |i| base(i) + if i % 2 == 0 { 0.02 } else { -0.02 },
    );
    // Step 3, mmlu: 5 questions lost, 40 gained of 200 (p = 7.9e-8); cmmlu: 10 lost, 12 gained
    // of 220 (p = 0.83); ceval: no per-question file (no interval, no mark).
    step3(&before, "mmlu", 200, |i| i < 100, true);
    step3(
        &after,
        "mmlu",
        200,
        |i| i < 95 || (100..140).contains(&i),
        true,
    );
    step3(&before, "cmmlu", 220, |i| i < 110, true);
    step3(
        &after,
        "cmmlu",
        220,
        |i| i < 100 || (110..122).contains(&i),
        true,
    );
    step3(&before, "ceval", 100, |i| i < 40, false);
    step3(&after, "ceval", 100, |i| i < 45, false);
    // Step 4: Fluency +0.5 in every dialogue; Empathy +-0.2 alternately.
    let fluency = |i: usize| 2.0 + 0.1 * (i % 5) as f64;
    let empathy = |i: usize| 3.0 + 0.1 * (i % 3) as f64;
    step4(&before, fluency, empathy);
    step4(
        &after,
        |i| fluency(i) + 0.5,
        |i| empathy(i) + if i % 2 == 0 { 0.2 } else { -0.2 },
    );

    let files = build_report(sweep).expect("report");
    assert_eq!(files.checkpoints, ["checkpoint-100", "checkpoint-200"]);
    let csv_text = read(&files.summary_csv);
    let csv = parse_csv(&csv_text);
    assert_eq!(cell(&csv, 0, "model"), "checkpoint-100");
    assert!(
        ["rouge-1_delta", "avg_mmlu_p", "ce_Fluency_significant"]
            .iter()
            .all(|c| cell(&csv, 0, c).is_empty()),
        "the first row has nothing to compare with"
    );

    // Larger than noise: the estimate, an interval around it that excludes 0, the mark.
    for (column, delta, half_width) in [
        ("rouge-1", 50.0, 20.0),
        ("rouge-2", 50.0, 20.0),
        ("rouge-l", 50.0, 20.0),
        ("avg_mmlu", 17.5, 10.0),
        ("ce_Fluency", 0.5, 1e-9),
        ("avg_charactereval", 0.25, 0.1),
    ] {
        let (d, lo, hi) = (
            num(&csv, 1, &format!("{column}_delta")),
            num(&csv, 1, &format!("{column}_ci_low")),
            num(&csv, 1, &format!("{column}_ci_high")),
        );
        assert!((d - delta).abs() < 1e-9, "{column}: delta {d}");
        // (Rounding of the per-sample differences can put the estimate 1e-16 outside.)
        assert!(
            lo > 0.0 && lo <= d + 1e-9 && d <= hi + 1e-9 && hi - lo <= 2.0 * half_width,
            "{column}: [{lo}, {hi}]"
        );
        assert_eq!(
            cell(&csv, 1, &format!("{column}_significant")),
            "yes",
            "{column}"
        );
    }
    // Within noise: the interval holds 0, no mark.
    for (column, delta) in [
        ("sem_sim_score", 0.0),
        ("avg_cmmlu", 200.0 / 220.0),
        ("ce_Empathy", 0.0),
    ] {
        let d = num(&csv, 1, &format!("{column}_delta"));
        let (lo, hi) = (
            num(&csv, 1, &format!("{column}_ci_low")),
            num(&csv, 1, &format!("{column}_ci_high")),
        );
        assert!((d - delta).abs() < 1e-9, "{column}: delta {d}");
        assert!(lo < 0.0 && hi > 0.0, "{column}: [{lo}, {hi}]");
        assert_eq!(
            cell(&csv, 1, &format!("{column}_significant")),
            "no",
            "{column}"
        );
    }
    // BLEU-4 (NIST smoothing gives the unrelated lines a small score): up, significantly.
    let d = num(&csv, 1, "bleu-4_delta");
    assert!(
        d > 40.0 && d <= 50.0 && num(&csv, 1, "bleu-4_ci_low") > 0.0,
        "{d}"
    );
    assert_eq!(cell(&csv, 1, "bleu-4_significant"), "yes");
    let p = num(&csv, 1, "avg_mmlu_p");
    assert!((p - P_MMLU).abs() <= 1e-9 * P_MMLU, "{p}");
    let p = num(&csv, 1, "avg_cmmlu_p");
    assert!((p - P_CMMLU).abs() <= 1e-9 * P_CMMLU, "{p}");
    // No per-question file: the table's difference, untested.
    assert_eq!(cell(&csv, 1, "avg_ceval_delta"), "5.0");
    for suffix in ["ci_low", "ci_high", "significant", "p"] {
        assert_eq!(
            cell(&csv, 1, &format!("avg_ceval_{suffix}")),
            "",
            "{suffix}"
        );
    }
    // Metrics no checkpoint has stay empty.
    assert_eq!(cell(&csv, 1, "ce_Accuracy_delta"), "");

    // summary.md: the change table after the Result table, one row for checkpoint-200.
    let md = read(&files.summary_md);
    let section = md
        .split_once("## Change against the previous checkpoint")
        .expect("change section")
        .1;
    let row = section
        .lines()
        .find(|l| l.starts_with("| checkpoint-200 | checkpoint-100 |"))
        .expect("change row");
    assert!(row.contains("| +50.00 ["), "{row}");
    assert!(row.contains("| +17.50 ["), "{row}");
    assert!(row.contains("| +5.00 (no interval) |"), "{row}");
    assert!(row.contains("| +0.500 [0.500, 0.500] * |"), "{row}");
    assert_eq!(row.matches("] * |").count(), 7, "{row}");
    assert_eq!(row.matches("] |").count(), 3, "{row}");
    assert!(!row.contains("ce_Accuracy") && !section.contains("| ce_Accuracy |"));
    assert!(section.contains("- checkpoint-100 has no ceval/results_detail.jsonl"));
    assert!(section.contains("McNemar") && section.contains("seed 0x5eed0007"));

    // report.html: markers in the Result table, tooltips with the interval, the change table.
    let html = read(&files.report_html);
    let results = html
        .split_once("<h2>Change against the previous checkpoint</h2>")
        .expect("change section")
        .0;
    // ROUGE-1/2/L, avg_mmlu, avg_charactereval, ce_Fluency up; sem-sim, cmmlu, Empathy noise.
    assert_eq!(results.matches("class=\"mark sig-up\"").count(), 6);
    assert_eq!(results.matches("class=\"mark noise\"").count(), 3);
    assert_eq!(results.matches("class=\"mark sig-down\"").count(), 0);
    assert!(
        html.contains("McNemar exact p = 7.878e-8"),
        "tooltip with p"
    );
    assert!(html.contains(
        "vs checkpoint-100: significant (paired bootstrap, 95% interval, 60 shared samples)"
    ));
    assert!(html.contains("<td class=\"num sig-up\" title="));
    // Trend charts ring the same six points (ROUGE x3, mmlu, CharacterEval average, Fluency).
    assert_eq!(html.matches("r=\"7\" fill=\"none\"").count(), 6);
    assert!(!html.contains("<script"));

    // The same inputs give the same report (the bootstrap's seed is fixed).
    let again = build_report(sweep).expect("report again");
    assert_eq!(read(&again.summary_csv), csv_text);
    assert_eq!(read(&again.summary_md), md);
}

#[test]
fn a_decline_is_marked_down() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let sweep = tmp.path();
    step3(&sweep.join("step-10"), "mmlu", 90, |i| i < 60, true);
    step3(&sweep.join("step-20"), "mmlu", 90, |i| i < 20, true);
    let files = build_report(sweep).expect("report");
    assert_eq!(files.checkpoints, ["step-10", "step-20"]);
    let csv = parse_csv(&read(&files.summary_csv));
    assert!((num(&csv, 1, "avg_mmlu_delta") + 400.0 / 9.0).abs() < 1e-9);
    assert_eq!(cell(&csv, 1, "avg_mmlu_significant"), "yes");
    let html = read(&files.report_html);
    assert_eq!(html.matches("class=\"mark sig-down\"").count(), 1);
    assert!(html.contains("<td class=\"num sig-down\""));
}

#[test]
fn training_curves_from_a_training_folder() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("train_rm");
    copy_tree(&fixture("report_train_rm/train_rm"), &dir);
    let files = build_report(&dir).expect("report");
    assert!(files.checkpoints.is_empty());
    assert_eq!(files.training_runs, [dir.join("metrics.jsonl")]);

    // Loss, held-out correlation/accuracy, Spearman per dimension.
    let html = read(&files.report_html);
    assert_eq!((files.charts, svg_count(&html)), (3, 3));
    assert!(html.contains("<h2>Reward-model training: train_rm</h2>"));
    assert!(html.contains("60 optimizer steps, 7 held-out evaluations"));
    assert!(html.contains("train_rm: loss") && html.contains(">training loss</text>"));
    assert!(html.contains("<title>held-out loss @ 60: 0.2151</title>"));
    assert!(html.contains("<title>Spearman (all) @ 0: -0.0424</title>"));
    assert!(
        html.contains(">行为一致性</text>"),
        "a dimension's own curve"
    );
    assert!(
        !html.contains("<h2>Results</h2>"),
        "no evaluation results here"
    );

    let md = read(&files.summary_md);
    assert!(md.starts_with("## Reward-model training: train_rm (metrics.jsonl)\n"));
    assert!(
        md.contains("60 optimizer steps; training loss 0.5748 at step 1 -> "),
        "{md}"
    );
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| ---"))
        .collect();
    assert_eq!(rows.len(), 1 + 7, "header and one row per evaluation");
    assert_eq!(
        rows[7],
        "| 60 | 0.2151 | 0.0894 | 0.1257 | 0.7104 | 0.7071 | 0.9083 |"
    );
    assert!(rows[1].starts_with("| 0 | 0.6145 |"));
    assert_eq!(
        read(&files.summary_csv).lines().count(),
        1,
        "CSV header only"
    );
}

#[test]
fn training_curves_next_to_evaluation_results() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("out");
    copy_tree(&fixture("report_seed_output"), &out);
    copy_tree(&fixture("report_train_rm"), &out);
    // A metrics.jsonl of some other tool is left alone.
    write(
        &out.join("other/metrics.jsonl"),
        "{\"epoch\": 1, \"acc\": 0.5}\n",
    );
    let files = build_report(&out).expect("report");
    assert_eq!(files.checkpoints, ["out"]);
    assert_eq!(files.training_runs, [out.join("train_rm/metrics.jsonl")]);
    // The seed's 9 charts and the training run's 3.
    assert_eq!(files.charts, 12);
    let md = read(&files.summary_md);
    assert!(md.starts_with("| model | rouge-1 |"));
    assert!(md.contains("\n## Reward-model training: train_rm (train_rm/metrics.jsonl)\n"));

    // A broken line of a training run's file is an error naming it.
    write(
        &out.join("train_rm/metrics.jsonl"),
        "{\"step\": 1, \"split\": \"train\", \"loss\": 1.0}\n{\"step\": 2, \"split\"\n",
    );
    let err = build_report(&out).expect_err("broken line").to_string();
    assert!(
        err.contains("train_rm/metrics.jsonl: line 2: expected a JSON object"),
        "{err}"
    );
}
