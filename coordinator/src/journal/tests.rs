//! Journal lifecycle: a new journal, results appended and read back into a scheduler on reopen,
//! a torn tail cut, another job refused (naming what differs), `--restart`, completion.

use std::time::{Duration, Instant};

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
fn a_completed_step_is_recorded_finished_until_the_job_ends() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(8, 2);
    let j = run_once(dir.path(), &t, &[0, 1]);
    assert!(!j.finished());
    let other = Journal::open(dir.path(), "step2", std::slice::from_ref(&t), false).unwrap();
    j.complete().unwrap();
    assert!(j.path().exists(), "kept until the job ends");
    drop(j);

    // The same step again (the job re-run after a later step was interrupted): finished, every
    // result taken from the journal, none to compute.
    let again = Journal::open(dir.path(), "step1", std::slice::from_ref(&t), false).unwrap();
    assert!(again.finished());
    let mut s = sched_for(&t);
    assert_eq!(again.preload(&mut s).unwrap(), 2);
    assert!(s.progress().is_complete());
    assert_eq!(
        again.counts()["step1"],
        TaskCounts {
            loaded: 2,
            computed: 0
        }
    );
    drop(again);

    // Other settings: not the finished step (and, as before, refused until --restart).
    let changed = task(9, 2);
    assert!(Journal::open(dir.path(), "step1", std::slice::from_ref(&changed), false).is_err());
    let restarted =
        Journal::open(dir.path(), "step1", std::slice::from_ref(&changed), true).unwrap();
    assert!(!restarted.finished(), "--restart discards the record too");
    restarted.complete().unwrap();

    // The job ends: finished journals go; step2's, not finished, stays with its folder.
    remove_finished([dir.path()]).unwrap();
    assert!(!restarted.path().exists());
    assert!(!restarted.path().with_extension(DONE_EXT).exists());
    assert!(other.path().exists(), "step2 did not finish");
    other.complete().unwrap();
    remove_finished([dir.path()]).unwrap();
    assert!(!dir.path().join(JOURNAL_DIR).exists());
}

#[test]
fn timing_lines_give_a_resumed_run_the_earlier_runs_time() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(8, 4);
    let before = Instant::now();
    // This run's generation "started" 5 s ago: every result arrives at least 5 s into it.
    let start = before
        .checked_sub(Duration::from_secs(5))
        .expect("a clock 5 s back");
    let j = Journal::open(dir.path(), "step1", std::slice::from_ref(&t), false).unwrap();
    assert_eq!(j.prior_elapsed(), Duration::ZERO);
    j.set_clock(move || Some(start));
    j.sink()("step1".into(), result(0));
    j.sink()("step1".into(), result(2));
    j.finish_writing().unwrap();
    let took = before.elapsed();

    let again = Journal::open(dir.path(), "step1", std::slice::from_ref(&t), false).unwrap();
    let prior = again.prior_elapsed_of("step1");
    assert!(
        prior >= Duration::from_secs(5) && prior <= Duration::from_secs(5) + took,
        "{prior:?}"
    );
    assert_eq!(again.prior_elapsed(), prior);
    assert_eq!(again.prior_elapsed_of("step2"), Duration::ZERO);
    assert_eq!(again.loaded_count(), 2, "timing lines are not results");

    // The resumed run adds to it: its own 1 s on top of the earlier runs' time.
    let start = Instant::now()
        .checked_sub(Duration::from_secs(1))
        .expect("a clock 1 s back");
    again.set_clock(move || Some(start));
    again.sink()("step1".into(), result(1));
    again.finish_writing().unwrap();
    let third = Journal::open(dir.path(), "step1", std::slice::from_ref(&t), false).unwrap();
    assert!(
        third.prior_elapsed() >= prior + Duration::from_secs(1),
        "{:?}",
        third.prior_elapsed()
    );
    // Without a clock (no fleet), results are kept but no time is added.
    third.sink()("step1".into(), result(3));
    third.finish_writing().unwrap();
    let fourth = Journal::open(dir.path(), "step1", std::slice::from_ref(&t), false).unwrap();
    assert_eq!(fourth.prior_elapsed(), third.prior_elapsed());
    assert_eq!(fourth.loaded_count(), 4);
}

#[test]
fn fed_results_are_marked_after_their_producers_whatever_their_order_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let producer = task(8, 2);
    let consumer = TaskSpec {
        name: "step2".into(),
        template: pb::Lease::default(),
        items: Vec::new(),
    };
    let tasks = [producer.clone(), consumer.clone()];
    let embed = |item: usize| pb::ItemResult {
        lease_id: 2,
        item_id: item.to_string(),
        outcome: Some(Outcome::Embed(pb::EmbedResult { score: 0.5 })),
    };
    let j = Journal::open(dir.path(), "chain", &tasks, false).unwrap();
    let sink = j.sink();
    // Two gRPC threads may hand the journal a fed result before its producer's.
    sink("step2".into(), embed(1));
    sink("step1".into(), result(1));
    sink("step1".into(), result(0));
    j.finish_writing().unwrap();

    let j = Journal::open(dir.path(), "chain", &tasks, false).unwrap();
    let mut s = Scheduler::new(SchedConfig::default());
    let p = s.add_task(producer).unwrap();
    let c = s.add_streaming_task(consumer).unwrap();
    s.feed(
        p,
        c,
        Box::new(|_, _| Some(pb::work_item::Payload::Embed(pb::EmbedItem::default()))),
    )
    .unwrap();
    assert_eq!(j.preload(&mut s).unwrap(), 3);
    // Both step-1 results fed step 2; item 1's score was kept, item 0 is still to compute.
    assert!(s.task_complete(p));
    assert_eq!(s.items(c).len(), 2);
    assert_eq!(s.progress().done, 3);
    let Assignment::Lease(lease) = s.request_lease(1, 10, 1, Instant::now()) else {
        panic!("expected a lease")
    };
    assert_eq!((lease.task.as_str(), lease.items.len()), ("step2", 1));
    assert_eq!(lease.items[0].item_id, "0");
}
