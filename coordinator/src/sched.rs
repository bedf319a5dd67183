//! The lease scheduler: a pure state machine with no network and no clock of its own.
//!
//! Every task is a list of work items. Workers ask for leases (shards of one task's items: the
//! worker's batch capacity, but no more than an even share of the queue among the connected
//! workers); a lease lives until its deadline, which heartbeats push forward. A lease that expires,
//! or whose worker disconnects, returns its unfinished items to the queue, so a worker may die at any
//! moment and the job still completes. Results are keyed by (task, item id): the first one wins and a
//! duplicate from a re-run shard is dropped. An item that reports an error, or loses its lease, is
//! retried on a new lease until it has used `max_attempts`, then recorded as failed.
//!
//! The caller passes `now` into every time-dependent method, which keeps expiry testable without
//! sleeping (see the tests at the bottom).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;

/// Identifies one worker connection (not the worker's self-chosen name, which may repeat).
pub type WorkerKey = u64;

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct SchedConfig {
    /// How long a lease lives without a heartbeat naming it.
    pub lease_ttl: Duration,
    /// Attempts per item (errors and lost leases both count) before it is recorded as failed.
    pub max_attempts: u32,
    /// Upper bound on items per lease, whatever a worker asks for.
    pub max_lease_items: u32,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            lease_ttl: Duration::from_secs(20),
            max_attempts: 3,
            max_lease_items: 256,
        }
    }
}

/// One task: its items and the lease fields they share (model, prompt, generation parameters).
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Unique task name (for example `step1`).
    pub name: String,
    /// `lease_id`, `task`, `items` and `ttl_ms` are filled per lease; the rest is copied.
    pub template: pb::Lease,
    pub items: Vec<pb::WorkItem>,
}

/// The final state of one item.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// The first successful result (never the `Error` variant).
    Done(Outcome),
    /// Every attempt failed; `message` is the last error.
    Failed { message: String, attempts: u32 },
}

/// Answer to a lease request.
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    Lease(Box<pb::Lease>),
    /// Items remain but all are leased out; ask again later (a lease may still expire).
    NoWork,
    /// Every item of every task has an outcome.
    Finished,
}

/// What [`Scheduler::record`] did with a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Accepted,
    /// The item already had an outcome; the result was dropped.
    Duplicate,
    /// An error result; the item went back to the queue (this was attempt `attempt`).
    Retrying {
        attempt: u32,
    },
    /// An error result on the last allowed attempt (or not retryable): the item failed.
    Failed,
    /// An error from a lease that no longer holds the item (it expired and was re-leased).
    Stale,
    UnknownLease,
    UnknownItem,
}

/// Items finished (including failed) out of all items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub failed: usize,
    pub total: usize,
}

impl Progress {
    pub fn is_complete(&self) -> bool {
        self.done == self.total
    }
}

/// Errors in how the scheduler was set up (never caused by a worker).
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("task {task}: item id {item:?} appears twice")]
    DuplicateItem { task: String, item: String },
    #[error("task {0:?} was added twice")]
    DuplicateTask(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemState {
    Queued,
    Leased(u64),
    Done,
}

#[derive(Debug)]
struct TaskState {
    spec: TaskSpec,
    index: HashMap<String, usize>,
    state: Vec<ItemState>,
    attempts: Vec<u32>,
    outcomes: Vec<Option<ItemOutcome>>,
    /// Item indices waiting for a lease. May hold stale entries (items finished by a late result);
    /// `state` is authoritative and popping skips anything not `Queued`.
    queue: VecDeque<usize>,
    done: usize,
    failed: usize,
}

#[derive(Debug)]
struct LeaseState {
    task: usize,
    worker: WorkerKey,
    items: Vec<usize>,
    deadline: Instant,
}

/// The scheduler state. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedConfig,
    tasks: Vec<TaskState>,
    /// Live leases.
    leases: HashMap<u64, LeaseState>,
    /// Every lease ever issued → its task, so a result arriving after its lease expired still counts.
    lease_task: HashMap<u64, usize>,
    next_lease: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedConfig) -> Self {
        Scheduler {
            cfg,
            tasks: Vec::new(),
            leases: HashMap::new(),
            lease_task: HashMap::new(),
            next_lease: 1,
        }
    }

    /// Adds a task; its items are leased after those of earlier tasks (all work for one model
    /// before the next). Returns the task's index.
    pub fn add_task(&mut self, spec: TaskSpec) -> Result<usize, SchedError> {
        if self.tasks.iter().any(|t| t.spec.name == spec.name) {
            return Err(SchedError::DuplicateTask(spec.name));
        }
        let mut index = HashMap::with_capacity(spec.items.len());
        for (i, item) in spec.items.iter().enumerate() {
            if index.insert(item.item_id.clone(), i).is_some() {
                return Err(SchedError::DuplicateItem {
                    task: spec.name,
                    item: item.item_id.clone(),
                });
            }
        }
        let n = spec.items.len();
        self.tasks.push(TaskState {
            spec,
            index,
            state: vec![ItemState::Queued; n],
            attempts: vec![0; n],
            outcomes: vec![None; n],
            queue: (0..n).collect(),
            done: 0,
            failed: 0,
        });
        Ok(self.tasks.len() - 1)
    }

    /// Leases queued items of the first task that has any: as many as the worker's batch holds
    /// (`max_items`, capped by [`SchedConfig::max_lease_items`]), but no more than an even share of
    /// that task's queue among the `workers` connected, so that on a small job one worker does not
    /// take everything while the others idle. Always at least one item.
    pub fn request_lease(
        &mut self,
        worker: WorkerKey,
        max_items: u32,
        workers: usize,
        now: Instant,
    ) -> Assignment {
        let capacity = max_items.clamp(1, self.cfg.max_lease_items.max(1)) as usize;
        let lease_id = self.next_lease;
        let Some((task_idx, items)) = self.tasks.iter_mut().enumerate().find_map(|(ti, task)| {
            let want = lease_size(capacity, task.queue.len(), workers);
            let items = task.pop_queued(want, lease_id);
            (!items.is_empty()).then_some((ti, items))
        }) else {
            return if self.progress().is_complete() {
                Assignment::Finished
            } else {
                Assignment::NoWork
            };
        };
        self.next_lease += 1;
        let task = &self.tasks[task_idx];
        let mut lease = task.spec.template.clone();
        lease.lease_id = lease_id;
        lease.task = task.spec.name.clone();
        lease.items = items.iter().map(|&i| task.spec.items[i].clone()).collect();
        lease.ttl_ms = self.cfg.lease_ttl.as_millis() as u64;
        self.leases.insert(
            lease_id,
            LeaseState {
                task: task_idx,
                worker,
                items,
                deadline: now + self.cfg.lease_ttl,
            },
        );
        self.lease_task.insert(lease_id, task_idx);
        Assignment::Lease(Box::new(lease))
    }

    /// Renews the named leases if `worker` holds them. Returns how many were renewed.
    pub fn heartbeat(&mut self, worker: WorkerKey, lease_ids: &[u64], now: Instant) -> usize {
        let mut renewed = 0;
        for id in lease_ids {
            if let Some(lease) = self.leases.get_mut(id).filter(|l| l.worker == worker) {
                lease.deadline = now + self.cfg.lease_ttl;
                renewed += 1;
            }
        }
        renewed
    }

    /// Records one item result (success or error).
    pub fn record(&mut self, result: pb::ItemResult) -> Recorded {
        let Some(&task_idx) = self.lease_task.get(&result.lease_id) else {
            return Recorded::UnknownLease;
        };
        let max_attempts = self.cfg.max_attempts;
        let task = &mut self.tasks[task_idx];
        let Some(&item) = task.index.get(&result.item_id) else {
            return Recorded::UnknownItem;
        };
        match result.outcome {
            _ if task.state[item] == ItemState::Done => Recorded::Duplicate,
            Some(Outcome::Error(err)) => {
                if task.state[item] != ItemState::Leased(result.lease_id) {
                    return Recorded::Stale;
                }
                let retryable = err.retryable;
                task.fail_attempt(item, err.message, retryable, max_attempts)
            }
            Some(outcome) => {
                task.finish(item, ItemOutcome::Done(outcome));
                Recorded::Accepted
            }
            None => {
                let message = "result without an outcome".to_string();
                if task.state[item] != ItemState::Leased(result.lease_id) {
                    return Recorded::Stale;
                }
                task.fail_attempt(item, message, true, max_attempts)
            }
        }
    }

    /// The worker says it sent every result of the lease; items still without one are requeued
    /// (counting an attempt, so a worker that keeps skipping an item cannot loop forever).
    pub fn lease_done(&mut self, lease_id: u64) -> usize {
        self.release(
            lease_id,
            "the worker finished its lease without a result for this item",
        )
    }

    /// Reclaims every lease whose deadline has passed. Returns the ids of the reclaimed leases.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let mut expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        expired.sort_unstable();
        for &id in &expired {
            self.release(
                id,
                "its lease expired (the worker died or stopped sending heartbeats)",
            );
        }
        expired
    }

    /// A worker's connection closed: its leases are reclaimed at once instead of at expiry.
    /// Returns the ids of the leases that still had unfinished items (now requeued).
    pub fn worker_left(&mut self, worker: WorkerKey) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.worker == worker)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids.retain(|&id| self.release(id, "its worker disconnected before sending a result") > 0);
        ids
    }

    /// Item counts over all tasks.
    pub fn progress(&self) -> Progress {
        self.tasks
            .iter()
            .fold(Progress::default(), |p, t| Progress {
                done: p.done + t.done,
                failed: p.failed + t.failed,
                total: p.total + t.state.len(),
            })
    }

    /// Number of live leases.
    pub fn active_leases(&self) -> usize {
        self.leases.len()
    }

    /// Number of tasks added.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Index of the task called `name`.
    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.spec.name == name)
    }

    /// The outcomes of task `task` in item order (`None` where an item is not finished yet).
    pub fn outcomes(&self, task: usize) -> &[Option<ItemOutcome>] {
        &self.tasks[task].outcomes
    }

    fn release(&mut self, lease_id: u64, why: &str) -> usize {
        let Some(lease) = self.leases.remove(&lease_id) else {
            return 0;
        };
        let max_attempts = self.cfg.max_attempts;
        let task = &mut self.tasks[lease.task];
        let mut requeued = 0;
        for item in lease.items {
            if task.state[item] == ItemState::Leased(lease_id) {
                task.fail_attempt(item, why.to_string(), true, max_attempts);
                requeued += 1;
            }
        }
        requeued
    }
}

/// Items for one lease: the worker's `capacity`, capped at `ceil(queued / workers)`, at least 1.
/// `queued` may count a few stale queue entries; that only makes the share slightly larger.
fn lease_size(capacity: usize, queued: usize, workers: usize) -> usize {
    capacity.min(queued.div_ceil(workers.max(1))).max(1)
}

impl TaskState {
    fn pop_queued(&mut self, want: usize, lease_id: u64) -> Vec<usize> {
        let mut items = Vec::with_capacity(want.min(self.queue.len()));
        while items.len() < want {
            let Some(i) = self.queue.pop_front() else {
                break;
            };
            if self.state[i] == ItemState::Queued {
                self.state[i] = ItemState::Leased(lease_id);
                items.push(i);
            }
        }
        items
    }

    fn finish(&mut self, item: usize, outcome: ItemOutcome) {
        if matches!(outcome, ItemOutcome::Failed { .. }) {
            self.failed += 1;
        }
        self.state[item] = ItemState::Done;
        self.outcomes[item] = Some(outcome);
        self.done += 1;
    }

    /// Counts a failed attempt of a leased item: requeue it, or fail it for good.
    fn fail_attempt(
        &mut self,
        item: usize,
        message: String,
        retryable: bool,
        max_attempts: u32,
    ) -> Recorded {
        self.attempts[item] += 1;
        let attempts = self.attempts[item];
        if retryable && attempts < max_attempts {
            self.state[item] = ItemState::Queued;
            self.queue.push_back(item);
            Recorded::Retrying { attempt: attempts }
        } else {
            self.finish(item, ItemOutcome::Failed { message, attempts });
            Recorded::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, n: usize) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            template: pb::Lease::default(),
            items: (0..n)
                .map(|i| pb::WorkItem {
                    item_id: i.to_string(),
                    payload: None,
                })
                .collect(),
        }
    }

    fn sched(n: usize) -> Scheduler {
        let mut s = Scheduler::new(SchedConfig {
            lease_ttl: Duration::from_secs(10),
            max_attempts: 3,
            max_lease_items: 100,
        });
        s.add_task(task("t", n)).unwrap();
        s
    }

    fn lease(s: &mut Scheduler, worker: WorkerKey, max: u32, now: Instant) -> pb::Lease {
        match s.request_lease(worker, max, 1, now) {
            Assignment::Lease(l) => *l,
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    fn ok(lease: &pb::Lease, item: &str, text: &str) -> pb::ItemResult {
        pb::ItemResult {
            lease_id: lease.lease_id,
            item_id: item.into(),
            outcome: Some(Outcome::Generate(pb::GenerateResult {
                predict: text.into(),
                ..Default::default()
            })),
        }
    }

    fn err(lease: &pb::Lease, item: &str, retryable: bool) -> pb::ItemResult {
        pb::ItemResult {
            lease_id: lease.lease_id,
            item_id: item.into(),
            outcome: Some(Outcome::Error(pb::ItemError {
                message: "boom".into(),
                retryable,
            })),
        }
    }

    fn ids(lease: &pb::Lease) -> Vec<&str> {
        lease.items.iter().map(|i| i.item_id.as_str()).collect()
    }

    fn predict(s: &Scheduler, item: usize) -> Option<String> {
        match &s.outcomes(0)[item] {
            Some(ItemOutcome::Done(Outcome::Generate(g))) => Some(g.predict.clone()),
            _ => None,
        }
    }

    #[test]
    fn shards_in_order_and_completes() {
        let now = Instant::now();
        let mut s = sched(5);
        let a = lease(&mut s, 1, 2, now);
        let b = lease(&mut s, 2, 2, now);
        let c = lease(&mut s, 1, 8, now);
        assert_eq!(
            (ids(&a), ids(&b), ids(&c)),
            (vec!["0", "1"], vec!["2", "3"], vec!["4"])
        );
        assert_eq!(a.task, "t");
        assert_eq!(a.ttl_ms, 10_000);
        assert_eq!(s.request_lease(3, 4, 1, now), Assignment::NoWork);
        for (l, i) in [(&a, "0"), (&a, "1"), (&b, "2"), (&b, "3"), (&c, "4")] {
            assert_eq!(s.record(ok(l, i, i)), Recorded::Accepted);
        }
        assert_eq!(
            s.progress(),
            Progress {
                done: 5,
                failed: 0,
                total: 5
            }
        );
        assert_eq!(s.request_lease(3, 4, 1, now), Assignment::Finished);
        assert_eq!(predict(&s, 3).as_deref(), Some("3"));
    }

    #[test]
    fn leases_spread_a_small_queue_over_the_connected_workers() {
        let now = Instant::now();
        let mut s = sched(10);
        let sizes: Vec<usize> = (1..=4)
            .map(|w| match s.request_lease(w, 8, 3, now) {
                Assignment::Lease(l) => l.items.len(),
                other => panic!("expected a lease, got {other:?}"),
            })
            .collect();
        // ceil(10/3) = 4, then ceil(6/3) = 2, ceil(4/3) = 2, ceil(2/3) = 1: nobody takes all 8.
        assert_eq!(sizes, [4, 2, 2, 1]);
        // A large queue: the batch capacity is the limit; a near-empty one still gives 1 item.
        assert_eq!(lease_size(8, 1000, 3), 8);
        assert_eq!(lease_size(8, 1, 5), 1);
        assert_eq!(lease_size(8, 10, 0), 8);
    }

    #[test]
    fn expired_lease_returns_items_and_late_duplicate_is_dropped() {
        let t0 = Instant::now();
        let mut s = sched(3);
        let a = lease(&mut s, 1, 3, t0);
        assert_eq!(s.record(ok(&a, "0", "first")), Recorded::Accepted);
        // A heartbeat at 8s moves the deadline to 18s: nothing expires at 15s.
        assert_eq!(
            s.heartbeat(1, &[a.lease_id], t0 + Duration::from_secs(8)),
            1
        );
        assert!(s.expire(t0 + Duration::from_secs(15)).is_empty());
        assert_eq!(s.expire(t0 + Duration::from_secs(18)), vec![a.lease_id]);
        // Only the unfinished items come back.
        let b = lease(&mut s, 2, 10, t0 + Duration::from_secs(19));
        assert_eq!(ids(&b), vec!["1", "2"]);
        // The old worker was merely slow: its late result is accepted (item 1 is not done yet)...
        assert_eq!(s.record(ok(&a, "1", "late")), Recorded::Accepted);
        // ...and the new lease's copy of it is a duplicate.
        assert_eq!(s.record(ok(&b, "1", "new")), Recorded::Duplicate);
        assert_eq!(s.record(ok(&b, "2", "new")), Recorded::Accepted);
        assert_eq!(predict(&s, 0).as_deref(), Some("first"));
        assert_eq!(predict(&s, 1).as_deref(), Some("late"));
        assert!(s.progress().is_complete());
    }

    #[test]
    fn heartbeat_from_another_worker_does_not_renew() {
        let t0 = Instant::now();
        let mut s = sched(1);
        let a = lease(&mut s, 1, 1, t0);
        assert_eq!(
            s.heartbeat(2, &[a.lease_id], t0 + Duration::from_secs(5)),
            0
        );
        assert_eq!(s.expire(t0 + Duration::from_secs(10)), vec![a.lease_id]);
    }

    #[test]
    fn error_is_retried_on_a_new_lease_then_fails() {
        let now = Instant::now();
        let mut s = sched(2);
        let a = lease(&mut s, 1, 2, now);
        assert_eq!(
            s.record(err(&a, "0", true)),
            Recorded::Retrying { attempt: 1 }
        );
        assert_eq!(s.record(ok(&a, "1", "x")), Recorded::Accepted);
        let b = lease(&mut s, 2, 2, now);
        assert_eq!(ids(&b), vec!["0"]);
        // An error for item 0 from the old lease no longer counts.
        assert_eq!(s.record(err(&a, "0", true)), Recorded::Stale);
        assert_eq!(
            s.record(err(&b, "0", true)),
            Recorded::Retrying { attempt: 2 }
        );
        let c = lease(&mut s, 1, 2, now);
        assert_eq!(s.record(err(&c, "0", true)), Recorded::Failed);
        assert_eq!(
            s.progress(),
            Progress {
                done: 2,
                failed: 1,
                total: 2
            }
        );
        assert_eq!(
            s.outcomes(0)[0],
            Some(ItemOutcome::Failed {
                message: "boom".into(),
                attempts: 3
            })
        );
        assert_eq!(s.request_lease(1, 2, 1, now), Assignment::Finished);
    }

    #[test]
    fn non_retryable_error_fails_at_once() {
        let now = Instant::now();
        let mut s = sched(1);
        let a = lease(&mut s, 1, 1, now);
        assert_eq!(s.record(err(&a, "0", false)), Recorded::Failed);
        assert!(s.progress().is_complete());
    }

    #[test]
    fn worker_left_requeues_its_leases_only() {
        let now = Instant::now();
        let mut s = sched(4);
        let a = lease(&mut s, 1, 2, now);
        let b = lease(&mut s, 2, 2, now);
        assert_eq!(s.worker_left(1), vec![a.lease_id]);
        assert_eq!(s.active_leases(), 1);
        let c = lease(&mut s, 2, 4, now);
        assert_eq!(ids(&c), vec!["0", "1"]);
        assert_eq!(s.record(ok(&b, "2", "")), Recorded::Accepted);
    }

    #[test]
    fn worker_left_after_all_results_reports_nothing() {
        let now = Instant::now();
        let mut s = sched(1);
        let a = lease(&mut s, 1, 1, now);
        assert_eq!(s.record(ok(&a, "0", "")), Recorded::Accepted);
        assert!(s.worker_left(1).is_empty());
        assert_eq!(s.active_leases(), 0);
    }

    #[test]
    fn lease_done_requeues_items_without_result() {
        let now = Instant::now();
        let mut s = sched(2);
        let a = lease(&mut s, 1, 2, now);
        assert_eq!(s.record(ok(&a, "0", "")), Recorded::Accepted);
        assert_eq!(s.lease_done(a.lease_id), 1);
        assert_eq!(ids(&lease(&mut s, 1, 2, now)), vec!["1"]);
    }

    #[test]
    fn item_losing_its_lease_too_often_fails() {
        let t0 = Instant::now();
        let mut s = sched(1);
        for k in 0..3u64 {
            let now = t0 + Duration::from_secs(20 * k);
            lease(&mut s, 1, 1, now);
            s.expire(now + Duration::from_secs(10));
        }
        assert_eq!(
            s.progress(),
            Progress {
                done: 1,
                failed: 1,
                total: 1
            }
        );
    }

    #[test]
    fn tasks_are_served_in_order_and_unknowns_reported() {
        let now = Instant::now();
        let mut s = sched(1);
        s.add_task(task("u", 2)).unwrap();
        assert!(matches!(
            s.add_task(task("u", 1)),
            Err(SchedError::DuplicateTask(_))
        ));
        let a = lease(&mut s, 1, 5, now);
        assert_eq!((a.task.as_str(), ids(&a)), ("t", vec!["0"]));
        let b = lease(&mut s, 1, 5, now);
        assert_eq!((b.task.as_str(), ids(&b)), ("u", vec!["0", "1"]));
        assert_eq!(s.record(ok(&b, "9", "")), Recorded::UnknownItem);
        let mut bogus = ok(&b, "0", "");
        bogus.lease_id = 999;
        assert_eq!(s.record(bogus), Recorded::UnknownLease);
    }

    #[test]
    fn duplicate_item_ids_are_refused() {
        let mut s = Scheduler::new(SchedConfig::default());
        let mut t = task("t", 2);
        t.items[1].item_id = "0".into();
        assert!(matches!(
            s.add_task(t),
            Err(SchedError::DuplicateItem { .. })
        ));
    }
}
