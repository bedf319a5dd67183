//! Planning a user's own benchmark from an extracted tree: layouts, few-shot modes, dev sets of
//! other sizes, errors naming file and line, and the result writers.

use std::fs;
use std::path::{Path, PathBuf};

use super::plan::{FewShotOrder, PlanOptions, plan_task};
use super::results::{ItemResult, TaskResults};
use super::rng::{ShuffleSeeds, permutation};
use super::{Layout, Split, Step3Error};

const MAPPING: &str = r#"{"zeta": {"name": "Zeta \"Z\"", "category": "STEM"},
 "alpha": {"name": "Alpha", "category": "Humanities"}}"#;

/// A C-Eval-layout task `mine` with subjects zeta (3 dev rows) and alpha (5 dev rows).
fn ceval_tree(root: &Path) -> PathBuf {
    let dir = root.join("mine");
    for sub in ["dev", "val"] {
        fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    fs::write(dir.join("mapping.json"), MAPPING).expect("mapping");
    let header = "id,question,A,B,C,D,answer,explanation\n";
    let dev3 = "0,\"q0, with comma\",1,2,3,4,A,x\n1,\"multi\nline\",0.80,+5,1e3,None,B,\n2,q2,7,8,9,10,C,\n";
    fs::write(dir.join("dev/zeta_dev.csv"), format!("{header}{dev3}")).expect("csv");
    let dev5: String = (0..5).map(|i| format!("{i},d{i},a,b,c,d,D,\n")).collect();
    fs::write(dir.join("dev/alpha_dev.csv"), format!("{header}{dev5}")).expect("csv");
    let val = "id,question,A,B,C,D,answer\n0,t0,a,b,c,d,A\n1,t1,a,b,c,d,B\n";
    fs::write(dir.join("val/zeta_val.csv"), val).expect("csv");
    fs::write(dir.join("val/alpha_val.csv"), val).expect("csv");
    dir
}

fn options(order: FewShotOrder) -> PlanOptions {
    PlanOptions {
        order,
        ..PlanOptions::new("zh", Split::Validation)
    }
}

#[test]
fn llamafactory_order_draws_one_shuffle_per_question_across_subjects() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plan = plan_task(
        &ceval_tree(tmp.path()),
        &options(FewShotOrder::LlamaFactory),
    )
    .expect("plan");
    assert_eq!(plan.layout, Layout::Ceval);
    let keys: Vec<&str> = plan
        .subjects
        .iter()
        .map(|s| s.subject.key.as_str())
        .collect();
    assert_eq!(keys, ["zeta", "alpha"]);
    let seeds: Vec<u32> = ShuffleSeeds::new(42).take(4).collect();
    let expected = [
        permutation(seeds[0], 3),
        permutation(seeds[1], 3),
        permutation(seeds[2], 5),
        permutation(seeds[3], 5),
    ];
    let shots: Vec<Vec<usize>> = plan.items.iter().map(|i| i.shots.clone()).collect();
    assert_eq!(shots, expected);
    // The first shot carries the system string; pandas rendered the numeric-looking columns.
    let first = &plan.items[0];
    assert!(
        first.messages[0]
            .content
            .starts_with("以下是中国关于Zeta \"Z\"考试的单项选择题")
    );
    let multi = first
        .messages
        .iter()
        .find(|m| m.content.contains("multi\nline"));
    let multi = multi.expect("the quoted multi-line question");
    assert!(
        multi
            .content
            .ends_with("multi\nline\nA. 0.8\nB. 5\nC. 1000.0\nD. nan\n答案：")
    );
    assert_eq!(first.messages.len(), 2 * 3 + 1);
    assert_eq!(plan.items[1].answer, "B");
    assert_eq!(plan.choice_texts(), [" A", " B", " C", " D"]);
}

#[test]
fn fixed_order_uses_the_dev_rows_in_file_order_and_n_shot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ceval_tree(tmp.path());
    let mut opts = options(FewShotOrder::Fixed);
    opts.n_shot = 4;
    let plan = plan_task(&dir, &opts).expect("plan");
    let shots: Vec<Vec<usize>> = plan.items.iter().map(|i| i.shots.clone()).collect();
    assert_eq!(
        shots,
        [
            vec![0, 1, 2],
            vec![0, 1, 2],
            vec![0, 1, 2, 3],
            vec![0, 1, 2, 3]
        ]
    );
    // Questions of one subject share the whole few-shot prefix.
    let (a, b) = (&plan.items[2].messages, &plan.items[3].messages);
    assert_eq!(a[..a.len() - 1], b[..b.len() - 1]);
    opts.n_shot = 0;
    let plan = plan_task(&dir, &opts).expect("plan");
    assert_eq!(plan.items[0].messages.len(), 1);
}

fn plan_err(dir: &Path) -> String {
    match plan_task(dir, &options(FewShotOrder::LlamaFactory)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn data_errors_name_the_file_and_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ceval_tree(tmp.path());
    let val = dir.join("val/alpha_val.csv");
    fs::write(
        &val,
        "id,question,A,B,C,D,answer\n0,t0,a,b,c,d,A\n1,t1,a,b,c,d,E\n",
    )
    .expect("csv");
    let e = plan_err(&dir);
    assert!(
        e.contains("alpha_val.csv: line 3: answer `E` is not one of A, B, C, D"),
        "{e}"
    );
    fs::write(&val, "id,question,A,B,C,D,answer\n0,t0,a,b,c,A\n").expect("csv");
    let e = plan_err(&dir);
    assert!(
        e.contains("alpha_val.csv: line 2: expected 7 fields, found 6"),
        "{e}"
    );
    fs::write(&val, "id,question,A,B,C,D\n0,t0,a,b,c,d\n").expect("csv");
    let e = plan_err(&dir);
    assert!(
        e.contains("alpha_val.csv: line 2: the split has no answers"),
        "{e}"
    );
    fs::remove_file(&val).expect("rm");
    let e = plan_err(&dir);
    assert!(
        e.contains("alpha_val.csv: subject `alpha`: file not found"),
        "{e}"
    );
    fs::write(
        dir.join("mapping.json"),
        r#"{"zeta": {"name": "Z", "category": "Maths"}}"#,
    )
    .expect("mapping");
    let e = plan_err(&dir);
    assert!(
        e.contains("mapping.json: subject `zeta`: category `Maths`"),
        "{e}"
    );
    let missing = plan_task(&tmp.path().join("nothing"), &options(FewShotOrder::Fixed));
    assert!(matches!(missing, Err(Step3Error::Io { .. })));
}

#[test]
fn writers_produce_python_layouts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plan = plan_task(&ceval_tree(tmp.path()), &options(FewShotOrder::Fixed)).expect("plan");
    let items: Vec<ItemResult> = [[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]]
        .iter()
        .cycle()
        .take(4)
        .map(|p| ItemResult { probabilities: *p })
        .collect();
    let results = TaskResults::from_items(&plan, &items).expect("results");
    assert_eq!(
        results.results_json(),
        "{\n  \"zeta\": {\n    \"0\": \"A\",\n    \"1\": \"C\"\n  },\n  \"alpha\": {\n    \"0\": \"A\",\n    \"1\": \"C\"\n  }\n}"
    );
    assert_eq!(
        results.results_log(),
        "        Average: 50.00\n           STEM: 50.00\n     Humanities: 50.00"
    );
    let detail = results.results_detail();
    let first = detail.lines().next().expect("line");
    assert_eq!(
        first,
        "{\"subject\": \"zeta\", \"index\": 0, \"answer\": \"A\", \"prediction\": \"A\", \"probabilities\": [0.699999988079071, 0.10000000149011612, 0.10000000149011612, 0.10000000149011612]}"
    );
    assert_eq!(detail.lines().count(), 4);
    let table = results.subject_table();
    assert_eq!(
        table.lines().nth(1),
        Some("zeta\tZeta \"Z\"\tSTEM\t2\t1\t50.00")
    );
    let out = tmp.path().join("save/mine");
    let files = results.write(&out).expect("write");
    assert_eq!(files.len(), 4);
    let log = fs::read_to_string(out.join("results.log")).expect("log");
    assert_eq!(log, results.results_log());
    let short = TaskResults::from_predictions(&plan, vec!["A".into()]);
    assert!(short.is_err());
}
