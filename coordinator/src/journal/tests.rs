//! Journal lifecycle: a new journal, results appended and read back into a scheduler on reopen,
//! a torn tail cut, another job refused (naming what differs), `--restart`, completion.

use std::time::Instant;

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;

use super::*;
use crate::sched::{Assignment, SchedConfig};

fn task(max_new_tokens: u32, n: usize) -> TaskSpec {
    TaskSpec {
        name: "step1".into(),
        template: pb::Lease {
            generation: Some(pb::GenerationParams {
                max_new_tokens,
                ..Default::default()
            }),
            ..Default::default()
        },
        items: (0..n)
            .map(|i| pb::WorkItem {
                item_id: i.to_string(),
                payload: None,
            })
            .collect(),
    }
}

fn result(item: usize) -> pb::ItemResult {
    pb::ItemResult {
        lease_id: 1,
        item_id: item.to_string(),
        outcome: Some(Outcome::Generate(pb::GenerateResult {
            predict: format!("answer {item}"),
            ..Default::default()
        })),
    }
}

fn sched_for(t: &TaskSpec) -> Scheduler {
    let mut s = Scheduler::new(SchedConfig::default());
    s.add_task(t.clone()).unwrap();
    s
}

/// Opens a journal for `t`, appends results for `items`, flushes.
fn run_once(dir: &Path, t: &TaskSpec, items: &[usize]) -> Journal {
    let j = Journal::open(dir, "step1", std::slice::from_ref(t), false).unwrap();
    let sink = j.sink();
    for &i in items {
        sink("step1".into(), result(i));
    }
    assert_eq!(j.finish_writing().unwrap(), items.len() as u64);
    j
}

#[test]
fn a_reopened_journal_marks_its_results_done_and_only_the_rest_is_leased() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(8, 5);
    let first = run_once(dir.path(), &t, &[0, 3]);
    assert_eq!(
        first.path(),
        dir.path().join(".evalfleet-journal/step1.jsonl")
    );

    let j = Journal::open(dir.path(), "step1", std::slice::from_ref(&t), false).unwrap();
    assert_eq!(j.loaded_count(), 2);
    let mut s = sched_for(&t);
    assert_eq!(j.preload(&mut s).unwrap(), 2);
    assert_eq!(s.progress().done, 2);
    let Assignment::Lease(lease) = s.request_lease(1, 10, 1, Instant::now()) else {
        panic!("expected a lease")
    };
    let ids: Vec<&str> = lease.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "4"]);
    match &s.outcomes(0)[3] {
        Some(crate::sched::ItemOutcome::Done(Outcome::Generate(g))) => {
            assert_eq!(g.predict, "answer 3")
        }
        other => panic!("item 3: {other:?}"),
    }
    // Appending goes on after the kept results.
    j.sink()("step1".into(), result(1));
    assert_eq!(j.finish_writing().unwrap(), 1);
    let again = Journal::open(dir.path(), "step1", std::slice::from_ref(&t), false).unwrap();
    assert_eq!(again.loaded_count(), 3);
}

#[test]
fn a_torn_last_line_is_ignored_and_cut_before_appending() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(8, 4);
    let j = run_once(dir.path(), &t, &[0, 1]);
    let path = j.path().to_path_buf();
    let whole = std::fs::read(&path).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(br#"{"task":"step1","item":"2","kind":"generate","res"#);
    std::fs::write(&path, &torn).unwrap();

    let j = Journal::open(dir.path(), "step1", std::slice::from_ref(&t), false).unwrap();
    assert_eq!(j.loaded_count(), 2);
    assert_eq!(std::fs::read(&path).unwrap(), whole, "the torn tail is cut");
    j.sink()("step1".into(), result(2));
    j.finish_writing().unwrap();
    let j = Journal::open(dir.path(), "step1", std::slice::from_ref(&t), false).unwrap();
    assert_eq!(
        j.loaded_count(),
        3,
        "the appended line is whole and readable"
    );
}

#[test]
fn another_jobs_journal_is_refused_unless_restart() {
    let dir = tempfile::tempdir().unwrap();
    run_once(dir.path(), &task(8, 4), &[0]);
    let other = task(16, 4);
    let err = Journal::open(dir.path(), "step1", std::slice::from_ref(&other), false).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, JournalError::OtherJob { results: 1, .. }),
        "{text}"
    );
    assert!(text.contains("its generation differs"), "{text}");
    assert!(
        text.contains("max_new_tokens: 8") && text.contains("max_new_tokens: 16"),
        "{text}"
    );
    assert!(text.contains("--restart"), "{text}");

    let j = Journal::open(dir.path(), "step1", std::slice::from_ref(&other), true).unwrap();
    assert_eq!(j.loaded_count(), 0);
    j.finish_writing().unwrap();
    // The new job's journal now stands; the old job's is the foreign one.
    let j = Journal::open(dir.path(), "step1", std::slice::from_ref(&other), false).unwrap();
    assert_eq!(j.loaded_count(), 0);
}

#[test]
fn damage_inside_is_refused_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(8, 4);
    let j = run_once(dir.path(), &t, &[0, 1, 2]);
    let text = std::fs::read_to_string(j.path()).unwrap();
    std::fs::write(j.path(), text.replacen(r#""item":"1""#, r#""item":1"#, 1)).unwrap();
    let err = Journal::open(dir.path(), "step1", std::slice::from_ref(&t), false).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("line 3") && text.contains("--restart"),
        "{text}"
    );
}

#[test]
fn complete_deletes_the_journal_and_its_empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(8, 2);
    let j = run_once(dir.path(), &t, &[0, 1]);
    let other = Journal::open(dir.path(), "step2", std::slice::from_ref(&t), false).unwrap();
    j.complete().unwrap();
    assert!(!j.path().exists());
    assert!(
        dir.path().join(JOURNAL_DIR).is_dir(),
        "step2's journal is still there"
    );
    other.complete().unwrap();
    assert!(!dir.path().join(JOURNAL_DIR).exists());
}
