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
//! **Who may report what.** A result counts only for an item of the lease it names, sent by the
//! worker that lease was given to, and only if it fits its item ([`check::outcome`]: the kind
//! the item asks for, one probability per choice, finite scores, bounded texts). Anything else
//! is refused, never kept: an unfit result of a leased item counts as a failed attempt (the item
//! is leased again), and a worker that sends [`SchedConfig::max_invalid_results`] refused results
//! gets no more leases ([`Assignment::Refused`]). `LeaseDone` and returns are only taken from the
//! lease's worker, so no worker can burn another's attempts.
//!
//! **Progress deadline.** Heartbeats come from a timer, so they prove the worker process is alive,
//! not that its lease advances. A lease also has a progress deadline
//! ([`SchedConfig::lease_progress_timeout`]), pushed forward by the lease's results and its
//! `ModelReady` only: a lease without either for that long is taken back like an expired one, and
//! the worker is told to stop when its next heartbeat names it ([`Scheduler::stalled_lease`]).
//!
//! Results kept from an earlier run (the journal) enter through [`Scheduler::mark_done`] before
//! any lease: those items are done and never leased. A worker that stops (SIGTERM) gives its lease
//! back with [`Scheduler::lease_returned`]: its items are requeued at once, no attempt counted.
//!
//! The caller passes `now` into every time-dependent method, which keeps expiry testable without
//! sleeping (see the tests at the bottom).
//!
//! ## Streaming tasks and feeds
//!
//! A task added with [`Scheduler::add_streaming_task`] has an open input: items may be added to it
//! while it runs ([`Scheduler::add_items`]) until [`Scheduler::close_input`]; it is complete only
//! once its input is closed and every item has an outcome (an open task keeps the job unfinished,
//! so idle workers get `NoWork`, not `Finished`). [`Scheduler::feed`] links a producer task to such
//! a task: every successful result of the producer becomes an item of the consumer (same item id,
//! payload made by a pure function of the producer's item and result), in the same call that
//! records the result, and the consumer's input closes when the producer completes. This is how
//! `evalfleet run` chains step 2 onto step 1 (`run::chain`). [`Scheduler::feed_many`] is the same
//! with any number of items (each with its own id) per producer result: step 4 expands each
//! generated dialogue into its (dialogue, metric) reward items (`run::step4`).
//!
//! Which task a lease comes from: a fed task that has a full lease (the asking worker's batch)
//! queued goes first, so downstream work drains as it arrives, in well-filled batches, while the
//! producer still runs; otherwise the first task (in the order added) with queued items.
//!
//! [`Scheduler::timeline`] records, in order, every lease handed out and every task completed: a
//! logical clock that tests read to check what happened before what.

mod check;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use prost::Message as _;

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
    /// The job's batch size: items per lease (fewer when the worker's own cap is lower), sent
    /// with each lease as `Lease.batch_size`. `None`: the worker's request alone decides.
    pub batch_size: Option<u32>,
    /// A lease without a result (or its `ModelReady`) for this long is taken back, however often
    /// its worker sends heartbeats (`None`: never).
    pub lease_progress_timeout: Option<Duration>,
    /// Refused results (see the module docs) after which a worker gets no more leases (0: no
    /// limit).
    pub max_invalid_results: u32,
}

/// Default of [`SchedConfig::lease_progress_timeout`]: longer than any model load or batch we
/// expect, short enough that a wedged GPU does not hold its items for hours.
pub const DEFAULT_LEASE_PROGRESS_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The largest lease handed out: a worker decodes messages of up to 4 MiB (gRPC's default),
/// and the envelope around a lease takes a few bytes.
pub const MAX_LEASE_BYTES: usize = (4 << 20) - 1024;

/// Default of [`SchedConfig::max_invalid_results`].
pub const DEFAULT_MAX_INVALID_RESULTS: u32 = 10;

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            lease_ttl: Duration::from_secs(20),
            max_attempts: 3,
            max_lease_items: 256,
            batch_size: None,
            lease_progress_timeout: Some(DEFAULT_LEASE_PROGRESS_TIMEOUT),
            max_invalid_results: DEFAULT_MAX_INVALID_RESULTS,
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
    /// This worker sent too many refused results and gets no more leases; `reason` says so.
    Refused {
        reason: String,
    },
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
    /// Refused and not kept (see the module docs): `why` says what was wrong. It counts against
    /// the sending worker; `worker_stopped` is true when it made the worker reach
    /// [`SchedConfig::max_invalid_results`].
    Refused {
        why: String,
        worker_stopped: bool,
    },
}

/// Items finished (including failed) out of all items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub failed: usize,
    /// Items added so far (streaming tasks may add more while `open > 0`).
    pub total: usize,
    /// Streaming tasks whose input is not closed yet.
    pub open: usize,
}

impl Progress {
    pub fn is_complete(&self) -> bool {
        self.done == self.total && self.open == 0
    }
}

/// Errors in how the scheduler was set up (never caused by a worker).
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("task {task}: item id {item:?} appears twice")]
    DuplicateItem { task: String, item: String },
    #[error("task {0:?} was added twice")]
    DuplicateTask(String),
    #[error("task {0:?}: its input is closed; no items can be added")]
    InputClosed(String),
    #[error("task {consumer:?} cannot be fed by {producer:?}: {why}")]
    BadFeed {
        producer: String,
        consumer: String,
        why: &'static str,
    },
}

/// Makes the payload of a fed task's item from a producer's item and its successful result
/// (`None`: that result needs no further work). See [`Scheduler::feed`].
pub type Derive = Box<dyn FnMut(&pb::WorkItem, &Outcome) -> Option<pb::work_item::Payload> + Send>;

/// Makes the items of a fed task (0 or more, each with its own item id, unique across the
/// task) from a producer's item and its successful result. See [`Scheduler::feed_many`].
pub type DeriveMany = Box<dyn FnMut(&pb::WorkItem, &Outcome) -> Vec<pb::WorkItem> + Send>;

/// How a feed makes its items.
enum FeedFn {
    /// One item under the producer's item id ([`Scheduler::feed`]).
    One(Derive),
    /// Any number of items with their own ids ([`Scheduler::feed_many`]).
    Many(DeriveMany),
}

/// One entry of [`Scheduler::timeline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Lease `lease_id` of `items` items of task `task` was handed out.
    Leased {
        task: usize,
        lease_id: u64,
        items: usize,
    },
    /// Every item of task `task` has an outcome and its input is closed.
    TaskComplete { task: usize },
}

/// A producer's link to the task it feeds.
struct Feed {
    consumer: usize,
    derive: FeedFn,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Feed {{ consumer: {} }}", self.consumer)
    }
}

/// Why [`Scheduler::mark_done`] refused a result.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreloadError {
    #[error("there is no task number {0}")]
    UnknownTask(usize),
    #[error("task {task} has no item {item:?}")]
    UnknownItem { task: String, item: String },
    #[error("task {task}, item {item:?}: an error is not a result")]
    NotAResult { task: String, item: String },
    #[error("task {task}, item {item:?}: {why}")]
    Invalid {
        task: String,
        item: String,
        why: String,
    },
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
    /// Items may still be added (a streaming task before [`Scheduler::close_input`]).
    open: bool,
    /// Takes its items from a producer ([`Scheduler::feed`]); may jump ahead of earlier tasks.
    fed: bool,
    /// The task this one feeds, if any.
    feed: Option<Feed>,
    /// Items finished since the feed last looked at them (kept only when `feed` is set).
    unfed: Vec<usize>,
    /// [`Event::TaskComplete`] was recorded.
    completed: bool,
}

#[derive(Debug)]
struct LeaseState {
    deadline: Instant,
    /// When the lease is taken back for lack of progress (see the module docs).
    progress_deadline: Option<Instant>,
}

/// What a lease was given: kept for every lease ever issued, so that a late result (after its
/// lease expired) is still checked against the lease's items and worker.
#[derive(Debug)]
struct Issued {
    task: usize,
    worker: WorkerKey,
    items: Vec<usize>,
}

/// The scheduler state. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedConfig,
    tasks: Vec<TaskState>,
    /// Live leases.
    leases: HashMap<u64, LeaseState>,
    /// Every lease ever issued, so a result arriving after its lease expired still counts.
    issued: HashMap<u64, Issued>,
    next_lease: u64,
    timeline: Vec<Event>,
    /// Refused results per worker.
    invalid: HashMap<WorkerKey, u32>,
    /// Workers that reached `max_invalid_results`.
    refused: HashSet<WorkerKey>,
    /// Leases taken back for lack of progress → their worker (told to stop at its next heartbeat).
    stalled: HashMap<u64, WorkerKey>,
}

impl Scheduler {
    pub fn new(cfg: SchedConfig) -> Self {
        Scheduler {
            cfg,
            tasks: Vec::new(),
            leases: HashMap::new(),
            issued: HashMap::new(),
            next_lease: 1,
            timeline: Vec::new(),
            invalid: HashMap::new(),
            refused: HashSet::new(),
            stalled: HashMap::new(),
        }
    }

    /// Adds a task; its items are leased after those of earlier tasks (all work for one model
    /// before the next). Returns the task's index.
    pub fn add_task(&mut self, spec: TaskSpec) -> Result<usize, SchedError> {
        self.push_task(spec, false)
    }

    /// Adds a task whose input stays open: [`Scheduler::add_items`] adds to it until
    /// [`Scheduler::close_input`] (see the module docs). Returns the task's index.
    pub fn add_streaming_task(&mut self, spec: TaskSpec) -> Result<usize, SchedError> {
        self.push_task(spec, true)
    }

    fn push_task(&mut self, spec: TaskSpec, open: bool) -> Result<usize, SchedError> {
        if self.tasks.iter().any(|t| t.spec.name == spec.name) {
            return Err(SchedError::DuplicateTask(spec.name));
        }
        let items = spec.items.clone();
        let mut task = TaskState {
            spec: TaskSpec {
                items: Vec::new(),
                ..spec
            },
            index: HashMap::new(),
            state: Vec::new(),
            attempts: Vec::new(),
            outcomes: Vec::new(),
            queue: VecDeque::new(),
            done: 0,
            failed: 0,
            open,
            fed: false,
            feed: None,
            unfed: Vec::new(),
            completed: false,
        };
        task.push_items(items)?;
        self.tasks.push(task);
        let idx = self.tasks.len() - 1;
        self.settle();
        Ok(idx)
    }

    /// Queues `items` on the streaming task `task` (after those already there); a task whose
    /// input is closed (every plain task) refuses them.
    pub fn add_items(&mut self, task: usize, items: Vec<pb::WorkItem>) -> Result<(), SchedError> {
        let t = &mut self.tasks[task];
        if !t.open {
            return Err(SchedError::InputClosed(t.spec.name.clone()));
        }
        t.push_items(items)
    }

    /// No more items will be added to `task`; it completes once every item has an outcome.
    pub fn close_input(&mut self, task: usize) {
        self.tasks[task].open = false;
        self.settle();
    }

    /// Feeds `consumer` (a streaming task added after `producer`) from `producer`: each
    /// successful result of `producer` becomes an item of `consumer` with the same item id and the
    /// payload `derive` makes, queued in the call that records the result; `consumer`'s input
    /// closes once `producer` completes. Results already recorded are fed at once.
    pub fn feed(
        &mut self,
        producer: usize,
        consumer: usize,
        derive: Derive,
    ) -> Result<(), SchedError> {
        self.link(producer, consumer, FeedFn::One(derive))
    }

    /// [`Scheduler::feed`] where each successful result of `producer` becomes any number of
    /// items of `consumer`, which `derive` makes with their own item ids (unique across
    /// `consumer`: a repeated id is dropped with the items fed after it in that call).
    pub fn feed_many(
        &mut self,
        producer: usize,
        consumer: usize,
        derive: DeriveMany,
    ) -> Result<(), SchedError> {
        self.link(producer, consumer, FeedFn::Many(derive))
    }

    fn link(&mut self, producer: usize, consumer: usize, derive: FeedFn) -> Result<(), SchedError> {
        let bad = |why| SchedError::BadFeed {
            producer: self.tasks[producer].spec.name.clone(),
            consumer: self.tasks[consumer].spec.name.clone(),
            why,
        };
        if consumer <= producer {
            return Err(bad("the fed task must be added after its producer"));
        }
        if !self.tasks[consumer].open || self.tasks[consumer].fed {
            return Err(bad(
                "the fed task must be a streaming task, open and not yet fed",
            ));
        }
        if self.tasks[producer].feed.is_some() {
            return Err(bad("the producer already feeds a task"));
        }
        let p = &mut self.tasks[producer];
        p.unfed = (0..p.state.len())
            .filter(|&i| p.state[i] == ItemState::Done)
            .collect();
        p.feed = Some(Feed { consumer, derive });
        self.tasks[consumer].fed = true;
        self.settle();
        Ok(())
    }

    /// Leases queued items (which task: see the module docs): the job's batch size
    /// ([`SchedConfig::batch_size`]) or the worker's cap `max_items` (0 = none) if lower, at most
    /// [`SchedConfig::max_lease_items`], but, except for a fed
    /// task's full lease, no more than an even share of that task's queue among the `workers`
    /// connected, so that on a small job one worker does not take everything while the others
    /// idle. Always at least one item.
    pub fn request_lease(
        &mut self,
        worker: WorkerKey,
        max_items: u32,
        workers: usize,
        now: Instant,
    ) -> Assignment {
        if self.refused.contains(&worker) {
            return Assignment::Refused {
                reason: format!(
                    "this worker sent {} refused results; it gets no more leases",
                    self.invalid.get(&worker).copied().unwrap_or_default()
                ),
            };
        }
        let capacity = lease_capacity(self.cfg.batch_size, max_items)
            .clamp(1, self.cfg.max_lease_items.max(1)) as usize;
        let lease_id = self.next_lease;
        // Fed tasks with a full lease queued first, then every task in order. The queue lengths
        // may count stale entries, so a candidate can come up empty: then try the next.
        let full_fed = (0..self.tasks.len())
            .filter(|&t| self.tasks[t].fed && self.tasks[t].queue.len() >= capacity)
            .map(|t| (t, capacity));
        let in_order = (0..self.tasks.len())
            .map(|t| (t, lease_size(capacity, self.tasks[t].queue.len(), workers)));
        let candidates: Vec<(usize, usize)> = full_fed.chain(in_order).collect();
        let Some((task_idx, mut items)) = candidates.into_iter().find_map(|(t, want)| {
            let items = self.tasks[t].pop_queued(want, lease_id);
            (!items.is_empty()).then_some((t, items))
        }) else {
            return if self.progress().is_complete() {
                Assignment::Finished
            } else {
                Assignment::NoWork
            };
        };
        let task = &mut self.tasks[task_idx];
        let mut lease = task.spec.template.clone();
        lease.lease_id = lease_id;
        lease.task = task.spec.name.clone();
        lease.items = items.iter().map(|&i| task.spec.items[i].clone()).collect();
        lease.ttl_ms = self.cfg.lease_ttl.as_millis() as u64;
        lease.batch_size = self.cfg.batch_size.unwrap_or(capacity as u32);
        // A lease larger than a worker decodes would end its stream: fewer items, the rest back
        // at the front of the queue, in order.
        while lease.items.len() > 1 && lease.encoded_len() > MAX_LEASE_BYTES {
            lease.items.pop();
            if let Some(i) = items.pop() {
                task.state[i] = ItemState::Queued;
                task.queue.push_front(i);
            }
        }
        if lease.encoded_len() > MAX_LEASE_BYTES {
            // One item alone is too large: no worker could ever take it.
            let size = lease.encoded_len();
            let message = format!(
                "its lease would be {size} bytes, more than the {MAX_LEASE_BYTES} a worker \
                 accepts (shorten the item)"
            );
            task.finish(
                items[0],
                ItemOutcome::Failed {
                    message,
                    attempts: 0,
                },
            );
            self.settle();
            return self.request_lease(worker, max_items, workers, now);
        }
        self.next_lease += 1;
        self.timeline.push(Event::Leased {
            task: task_idx,
            lease_id,
            items: items.len(),
        });
        self.leases.insert(
            lease_id,
            LeaseState {
                deadline: now + self.cfg.lease_ttl,
                progress_deadline: self.progress_deadline(now),
            },
        );
        self.issued.insert(
            lease_id,
            Issued {
                task: task_idx,
                worker,
                items,
            },
        );
        Assignment::Lease(Box::new(lease))
    }

    /// Records `outcome` for item `item_id` of task `task` without any lease: a result kept from
    /// an earlier run (the journal, on resume). A queued item is finished and will never be
    /// leased; a leased one is finished too (its lease's later result is a duplicate); a
    /// producer's result feeds its consumer as a worker's would. Returns `Ok(false)` if the item
    /// already had an outcome (the first one stays).
    pub fn mark_done(
        &mut self,
        task: usize,
        item_id: &str,
        outcome: Outcome,
    ) -> Result<bool, PreloadError> {
        let Some(state) = self.tasks.get_mut(task) else {
            return Err(PreloadError::UnknownTask(task));
        };
        let Some(&item) = state.index.get(item_id) else {
            return Err(PreloadError::UnknownItem {
                task: state.spec.name.clone(),
                item: item_id.to_string(),
            });
        };
        if matches!(outcome, Outcome::Error(_)) {
            return Err(PreloadError::NotAResult {
                task: state.spec.name.clone(),
                item: item_id.to_string(),
            });
        }
        if let Err(why) = check::outcome(&state.spec.items[item], &outcome) {
            return Err(PreloadError::Invalid {
                task: state.spec.name.clone(),
                item: item_id.to_string(),
                why,
            });
        }
        if state.state[item] == ItemState::Done {
            return Ok(false);
        }
        // The queue may keep the index: popping skips items that are not `Queued`.
        state.finish(item, ItemOutcome::Done(outcome));
        self.settle();
        Ok(true)
    }

    /// The name of the task that lease `lease_id` (live or not) belongs to.
    pub fn lease_task_name(&self, lease_id: u64) -> Option<&str> {
        let issued = self.issued.get(&lease_id)?;
        Some(self.tasks[issued.task].spec.name.as_str())
    }

    /// Whether `worker` was given lease `lease_id`.
    fn holds(&self, worker: WorkerKey, lease_id: u64) -> bool {
        self.issued
            .get(&lease_id)
            .is_some_and(|l| l.worker == worker)
    }

    /// When a lease that progresses at `now` is taken back if it makes no more progress.
    fn progress_deadline(&self, now: Instant) -> Option<Instant> {
        self.cfg
            .lease_progress_timeout
            .and_then(|t| now.checked_add(t))
    }

    /// Renews the named leases if `worker` holds them. Returns how many were renewed.
    pub fn heartbeat(&mut self, worker: WorkerKey, lease_ids: &[u64], now: Instant) -> usize {
        let mut renewed = 0;
        for &id in lease_ids {
            if !self.holds(worker, id) {
                continue;
            }
            if let Some(lease) = self.leases.get_mut(&id) {
                lease.deadline = now + self.cfg.lease_ttl;
                renewed += 1;
            }
        }
        renewed
    }

    /// The first of `lease_ids` (what `worker`'s heartbeat names) that was taken back from it
    /// for lack of progress: its runner looks stuck, so the caller tells it to stop.
    pub fn stalled_lease(&self, worker: WorkerKey, lease_ids: &[u64]) -> Option<u64> {
        lease_ids
            .iter()
            .copied()
            .find(|id| self.stalled.get(id) == Some(&worker))
    }

    /// Lease `lease_id` of `worker` made progress (its model is loaded): its progress deadline
    /// moves forward.
    pub fn progressed(&mut self, worker: WorkerKey, lease_id: u64, now: Instant) {
        if !self.holds(worker, lease_id) {
            return;
        }
        let deadline = self.progress_deadline(now);
        if let Some(lease) = self.leases.get_mut(&lease_id) {
            lease.progress_deadline = deadline;
        }
    }

    /// Records one item result (success or error) that `worker` sent at `now`.
    pub fn record(&mut self, worker: WorkerKey, result: pb::ItemResult, now: Instant) -> Recorded {
        let recorded = self.record_one(worker, result, now);
        self.settle();
        recorded
    }

    fn record_one(&mut self, worker: WorkerKey, result: pb::ItemResult, now: Instant) -> Recorded {
        let Some(issued) = self.issued.get(&result.lease_id) else {
            return Recorded::UnknownLease;
        };
        if issued.worker != worker {
            return self.refuse(
                worker,
                format!("lease {} is not this worker's", result.lease_id),
            );
        }
        let task_idx = issued.task;
        let item = self.tasks[task_idx]
            .index
            .get(&result.item_id)
            .copied()
            .filter(|i| issued.items.contains(i));
        let Some(item) = item else {
            return self.refuse(
                worker,
                format!(
                    "item {:?} is not in lease {}",
                    result.item_id, result.lease_id
                ),
            );
        };
        self.progressed(worker, result.lease_id, now);
        let max_attempts = self.cfg.max_attempts;
        let task = &mut self.tasks[task_idx];
        if let Some(outcome) = &result.outcome
            && let Err(why) = check::outcome(&task.spec.items[item], outcome)
        {
            let why = format!("item {:?}: {why}", result.item_id);
            // A leased item's attempt failed: it is leased again (or fails after max_attempts).
            if task.state[item] == ItemState::Leased(result.lease_id) {
                task.fail_attempt(item, format!("invalid result: {why}"), true, max_attempts);
            }
            return self.refuse(worker, why);
        }
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

    /// Counts a refused result against `worker`; at [`SchedConfig::max_invalid_results`] the
    /// worker gets no more leases and its live leases go back to the queue (no attempt counted:
    /// their items were not at fault).
    fn refuse(&mut self, worker: WorkerKey, why: String) -> Recorded {
        let count = self.invalid.entry(worker).or_default();
        *count += 1;
        let limit = self.cfg.max_invalid_results;
        let worker_stopped = limit > 0 && *count == limit;
        if worker_stopped {
            self.refused.insert(worker);
            let mut held: Vec<u64> = self
                .leases
                .keys()
                .copied()
                .filter(|&id| self.holds(worker, id))
                .collect();
            held.sort_unstable();
            for id in held {
                self.requeue(id);
            }
        }
        Recorded::Refused {
            why,
            worker_stopped,
        }
    }

    /// The worker says it sent every result of the lease; items still without one are requeued
    /// (counting an attempt, so a worker that keeps skipping an item cannot loop forever). Only
    /// from the lease's own worker. Returns how many were requeued.
    pub fn lease_done(&mut self, worker: WorkerKey, lease_id: u64) -> usize {
        if !self.holds(worker, lease_id) {
            return 0;
        }
        self.release(
            lease_id,
            "the worker finished its lease without a result for this item",
        )
    }

    /// The worker gives the lease back unfinished because it is stopping (SIGTERM): items still
    /// without a result go back to the queue at once, without counting an attempt (the worker
    /// did not fail them). Only from the lease's own worker. Returns how many were requeued.
    pub fn lease_returned(&mut self, worker: WorkerKey, lease_id: u64) -> usize {
        if !self.holds(worker, lease_id) {
            return 0;
        }
        self.requeue(lease_id)
    }

    /// Ends live lease `lease_id`, requeueing its unfinished items without counting an attempt.
    fn requeue(&mut self, lease_id: u64) -> usize {
        if self.leases.remove(&lease_id).is_none() {
            return 0;
        }
        let issued = &self.issued[&lease_id];
        let task = &mut self.tasks[issued.task];
        let mut requeued = 0;
        for &item in &issued.items {
            if task.state[item] == ItemState::Leased(lease_id) {
                task.state[item] = ItemState::Queued;
                task.queue.push_back(item);
                requeued += 1;
            }
        }
        requeued
    }

    /// Reclaims every lease whose heartbeat deadline or progress deadline has passed.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let mut expired = Expired::default();
        for (&id, lease) in &self.leases {
            if lease.deadline <= now {
                expired.silent.push(id);
            } else if lease.progress_deadline.is_some_and(|d| d <= now) {
                expired.stalled.push(id);
            }
        }
        expired.silent.sort_unstable();
        expired.stalled.sort_unstable();
        for &id in &expired.silent {
            self.release(
                id,
                "its lease expired (the worker died or stopped sending heartbeats)",
            );
        }
        for &id in &expired.stalled {
            self.release(
                id,
                "its lease made no progress within the progress deadline (the worker looks stuck)",
            );
            self.stalled.insert(id, self.issued[&id].worker);
        }
        expired
    }

    /// A worker's connection closed: its leases are reclaimed at once instead of at expiry.
    /// Returns the ids of the leases that still had unfinished items (now requeued).
    pub fn worker_left(&mut self, worker: WorkerKey) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .leases
            .keys()
            .copied()
            .filter(|&id| self.holds(worker, id))
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
                open: p.open + usize::from(t.open),
            })
    }

    /// The model keys (`ModelSpec.key` of each task's lease template, `""` for none) of the
    /// tasks that have items waiting for a lease, in task order: what this scheduler's next
    /// leases will need, so that a front end serving several jobs can prefer a worker that
    /// already holds one.
    pub fn queued_models(&self) -> Vec<&str> {
        self.tasks
            .iter()
            // The queue may hold stale entries; the first live one answers (usually at once).
            .filter(|t| t.queue.iter().any(|&i| t.state[i] == ItemState::Queued))
            .map(|t| {
                t.spec
                    .template
                    .model
                    .as_ref()
                    .map_or("", |m| m.key.as_str())
            })
            .collect()
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

    /// The items of task `task` in item order (for a streaming task, the order they were added).
    pub fn items(&self, task: usize) -> &[pb::WorkItem] {
        &self.tasks[task].spec.items
    }

    /// Whether task `task` has its input closed and an outcome for every item.
    pub fn task_complete(&self, task: usize) -> bool {
        self.tasks[task].is_complete()
    }

    /// Every lease handed out and task completed so far, in order (see the module docs).
    pub fn timeline(&self) -> &[Event] {
        &self.timeline
    }

    /// After any change: feeds every producer's newly finished items to its consumer, closes
    /// the input of consumers whose producer completed, and records completions. One pass in
    /// task order suffices, as a consumer always comes after its producer.
    fn settle(&mut self) {
        for t in 0..self.tasks.len() {
            if let Some((consumer, fed, producer_complete)) = self.tasks[t].take_fed() {
                let c = &mut self.tasks[consumer];
                // Producer item ids are unique, so the fed ids are too.
                let _ = c.push_items(fed);
                if producer_complete {
                    c.open = false;
                }
            }
            let task = &mut self.tasks[t];
            if !task.completed && task.is_complete() {
                task.completed = true;
                self.timeline.push(Event::TaskComplete { task: t });
            }
        }
    }

    fn release(&mut self, lease_id: u64, why: &str) -> usize {
        if self.leases.remove(&lease_id).is_none() {
            return 0;
        }
        let max_attempts = self.cfg.max_attempts;
        let issued = &self.issued[&lease_id];
        let task = &mut self.tasks[issued.task];
        let mut requeued = 0;
        for &item in &issued.items {
            if task.state[item] == ItemState::Leased(lease_id) {
                task.fail_attempt(item, why.to_string(), true, max_attempts);
                requeued += 1;
            }
        }
        self.settle();
        requeued
    }
}

/// Most items one lease may hold: the job's batch size, lowered to the worker's own cap
/// (`max_items`, 0 = none); without a job batch size, the worker's request.
fn lease_capacity(job_batch: Option<u32>, max_items: u32) -> u32 {
    match (job_batch, max_items) {
        (Some(batch), 0) => batch,
        (Some(batch), cap) => batch.min(cap),
        (None, requested) => requested,
    }
}

/// The leases [`Scheduler::expire`] reclaimed, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// No heartbeat named them within the lease TTL.
    pub silent: Vec<u64>,
    /// Heartbeats came, but no result within the progress deadline.
    pub stalled: Vec<u64>,
}

impl Expired {
    pub fn is_empty(&self) -> bool {
        self.silent.is_empty() && self.stalled.is_empty()
    }
}

/// Items for one lease: the worker's `capacity`, capped at `ceil(queued / (2 * workers))` when
/// several workers share the queue, at least 1. Leases shrink as the queue drains, so no slow worker takes a long lease at the very
/// end: in the 64-worker simulation (`evalfleet-schedsim`, speeds spanning 4x) this keeps the
/// makespan within 0.5% of the ideal for leases of up to 256 items, where a cap of
/// `ceil(queued / workers)` was up to 12% over. `queued` may count a few stale queue entries;
/// that only makes the share slightly larger.
fn lease_size(capacity: usize, queued: usize, workers: usize) -> usize {
    // A lone worker takes what it can carry: halving its share would only add round trips.
    let shares = if workers > 1 { 2 * workers } else { 1 };
    capacity.min(queued.div_ceil(shares)).max(1)
}

impl TaskState {
    /// Appends `items` (queued), refusing an id the task already has.
    fn push_items(&mut self, items: Vec<pb::WorkItem>) -> Result<(), SchedError> {
        for item in items {
            let i = self.spec.items.len();
            if self.index.contains_key(&item.item_id) {
                return Err(SchedError::DuplicateItem {
                    task: self.spec.name.clone(),
                    item: item.item_id,
                });
            }
            self.index.insert(item.item_id.clone(), i);
            self.spec.items.push(item);
            self.state.push(ItemState::Queued);
            self.attempts.push(0);
            self.outcomes.push(None);
            self.queue.push_back(i);
        }
        Ok(())
    }

    fn is_complete(&self) -> bool {
        !self.open && self.done == self.state.len()
    }

    /// For a producer: (its consumer, the items derived from the results finished since the
    /// last call, whether this task is complete).
    fn take_fed(&mut self) -> Option<(usize, Vec<pb::WorkItem>, bool)> {
        let complete = self.is_complete();
        let TaskState {
            feed: Some(feed),
            unfed,
            outcomes,
            spec,
            ..
        } = self
        else {
            return None;
        };
        let mut items = Vec::new();
        for i in std::mem::take(unfed) {
            let Some(ItemOutcome::Done(outcome)) = &outcomes[i] else {
                continue;
            };
            let item = &spec.items[i];
            match &mut feed.derive {
                FeedFn::One(derive) => {
                    items.extend(derive(item, outcome).map(|payload| pb::WorkItem {
                        item_id: item.item_id.clone(),
                        payload: Some(payload),
                    }))
                }
                FeedFn::Many(derive) => items.extend(derive(item, outcome)),
            }
        }
        Some((feed.consumer, items, complete))
    }

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
        if self.feed.is_some() {
            self.unfed.push(item);
        }
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
            ..SchedConfig::default()
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

    #[test]
    fn the_jobs_batch_size_sizes_leases_and_travels_with_them() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(SchedConfig {
            batch_size: Some(4),
            ..SchedConfig::default()
        });
        s.add_task(task("t", 20)).unwrap();
        // A worker with no cap of its own (an external worker started without --batch-size).
        let free = lease(&mut s, 1, 0, t0);
        assert_eq!((free.items.len(), free.batch_size), (4, 4));
        // A worker capped at 2 gets 2 items, still told the job's batch size.
        let capped = lease(&mut s, 2, 2, t0);
        assert_eq!((capped.items.len(), capped.batch_size), (2, 4));
        // A cap above the job's batch does not enlarge the lease.
        let big = lease(&mut s, 3, 64, t0);
        assert_eq!((big.items.len(), big.batch_size), (4, 4));
    }

    #[test]
    fn without_a_job_batch_size_the_workers_request_decides() {
        let t0 = Instant::now();
        let mut s = sched(20);
        let l = lease(&mut s, 1, 3, t0);
        assert_eq!((l.items.len(), l.batch_size), (3, 3));
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

    /// Records `result` as sent by the worker holding its lease.
    fn record(s: &mut Scheduler, result: pb::ItemResult) -> Recorded {
        let worker = s.issued.get(&result.lease_id).map_or(0, |l| l.worker);
        s.record(worker, result, Instant::now())
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
            assert_eq!(record(&mut s, ok(l, i, i)), Recorded::Accepted);
        }
        assert_eq!(
            s.progress(),
            Progress {
                done: 5,
                failed: 0,
                total: 5,
                open: 0,
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
        // ceil(10/6) = 2, then ceil(8/6) = 2, ceil(6/6) = 1, ceil(5/6) = 1: nobody takes all 8.
        assert_eq!(sizes, [2, 2, 1, 1]);
        // A large queue: the batch capacity is the limit; a near-empty one still gives 1 item.
        assert_eq!(lease_size(8, 1000, 3), 8);
        assert_eq!(lease_size(8, 1, 5), 1);
        assert_eq!(lease_size(8, 10, 0), 8);
        assert_eq!(lease_size(8, 10, 1), 8);
    }

    #[test]
    fn expired_lease_returns_items_and_late_duplicate_is_dropped() {
        let t0 = Instant::now();
        let mut s = sched(3);
        let a = lease(&mut s, 1, 3, t0);
        assert_eq!(record(&mut s, ok(&a, "0", "first")), Recorded::Accepted);
        // A heartbeat at 8s moves the deadline to 18s: nothing expires at 15s.
        assert_eq!(
            s.heartbeat(1, &[a.lease_id], t0 + Duration::from_secs(8)),
            1
        );
        assert!(s.expire(t0 + Duration::from_secs(15)).silent.is_empty());
        assert_eq!(
            s.expire(t0 + Duration::from_secs(18)).silent,
            vec![a.lease_id]
        );
        // Only the unfinished items come back.
        let b = lease(&mut s, 2, 10, t0 + Duration::from_secs(19));
        assert_eq!(ids(&b), vec!["1", "2"]);
        // The old worker was merely slow: its late result is accepted (item 1 is not done yet)...
        assert_eq!(record(&mut s, ok(&a, "1", "late")), Recorded::Accepted);
        // ...and the new lease's copy of it is a duplicate.
        assert_eq!(record(&mut s, ok(&b, "1", "new")), Recorded::Duplicate);
        assert_eq!(record(&mut s, ok(&b, "2", "new")), Recorded::Accepted);
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
        assert_eq!(
            s.expire(t0 + Duration::from_secs(10)).silent,
            vec![a.lease_id]
        );
    }

    #[test]
    fn error_is_retried_on_a_new_lease_then_fails() {
        let now = Instant::now();
        let mut s = sched(2);
        let a = lease(&mut s, 1, 2, now);
        assert_eq!(
            record(&mut s, err(&a, "0", true)),
            Recorded::Retrying { attempt: 1 }
        );
        assert_eq!(record(&mut s, ok(&a, "1", "x")), Recorded::Accepted);
        let b = lease(&mut s, 2, 2, now);
        assert_eq!(ids(&b), vec!["0"]);
        // An error for item 0 from the old lease no longer counts.
        assert_eq!(record(&mut s, err(&a, "0", true)), Recorded::Stale);
        assert_eq!(
            record(&mut s, err(&b, "0", true)),
            Recorded::Retrying { attempt: 2 }
        );
        let c = lease(&mut s, 1, 2, now);
        assert_eq!(record(&mut s, err(&c, "0", true)), Recorded::Failed);
        assert_eq!(
            s.progress(),
            Progress {
                done: 2,
                failed: 1,
                total: 2,
                open: 0,
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
        assert_eq!(record(&mut s, err(&a, "0", false)), Recorded::Failed);
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
        assert_eq!(record(&mut s, ok(&b, "2", "")), Recorded::Accepted);
    }

    #[test]
    fn worker_left_after_all_results_reports_nothing() {
        let now = Instant::now();
        let mut s = sched(1);
        let a = lease(&mut s, 1, 1, now);
        assert_eq!(record(&mut s, ok(&a, "0", "")), Recorded::Accepted);
        assert!(s.worker_left(1).is_empty());
        assert_eq!(s.active_leases(), 0);
    }

    #[test]
    fn lease_done_requeues_items_without_result() {
        let now = Instant::now();
        let mut s = sched(2);
        let a = lease(&mut s, 1, 2, now);
        assert_eq!(record(&mut s, ok(&a, "0", "")), Recorded::Accepted);
        assert_eq!(s.lease_done(1, a.lease_id), 1);
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
                total: 1,
                open: 0,
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
        assert!(matches!(
            record(&mut s, ok(&b, "9", "")),
            Recorded::Refused { .. }
        ));
        let mut bogus = ok(&b, "0", "");
        bogus.lease_id = 999;
        assert_eq!(record(&mut s, bogus), Recorded::UnknownLease);
    }

    #[test]
    fn marked_items_are_never_leased_and_count_as_done() {
        let now = Instant::now();
        let mut s = sched(4);
        let kept = Outcome::Generate(pb::GenerateResult {
            predict: "kept".into(),
            ..Default::default()
        });
        assert_eq!(s.mark_done(0, "1", kept.clone()), Ok(true));
        assert_eq!(s.mark_done(0, "3", kept.clone()), Ok(true));
        assert_eq!(s.mark_done(0, "3", kept.clone()), Ok(false));
        assert_eq!(
            s.progress(),
            Progress {
                done: 2,
                failed: 0,
                total: 4,
                open: 0,
            }
        );
        let a = lease(&mut s, 1, 10, now);
        assert_eq!(ids(&a), vec!["0", "2"]);
        assert_eq!(predict(&s, 1).as_deref(), Some("kept"));
        assert!(matches!(
            s.mark_done(0, "9", kept.clone()),
            Err(PreloadError::UnknownItem { .. })
        ));
        assert_eq!(
            s.mark_done(5, "0", kept.clone()),
            Err(PreloadError::UnknownTask(5))
        );
        let error = Outcome::Error(pb::ItemError::default());
        assert!(matches!(
            s.mark_done(0, "0", error),
            Err(PreloadError::NotAResult { .. })
        ));
        // A leased item marked done: the lease's own result is then a duplicate.
        assert_eq!(s.mark_done(0, "0", kept), Ok(true));
        assert_eq!(record(&mut s, ok(&a, "0", "late")), Recorded::Duplicate);
        assert_eq!(record(&mut s, ok(&a, "2", "x")), Recorded::Accepted);
        assert!(s.progress().is_complete());
        assert_eq!(s.lease_task_name(a.lease_id), Some("t"));
        assert_eq!(s.lease_task_name(999), None);
    }

    #[test]
    fn a_returned_lease_requeues_without_counting_an_attempt() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(SchedConfig {
            lease_ttl: Duration::from_secs(10),
            max_attempts: 1,
            max_lease_items: 100,
            ..SchedConfig::default()
        });
        s.add_task(task("t", 3)).unwrap();
        let a = lease(&mut s, 1, 3, t0);
        assert_eq!(record(&mut s, ok(&a, "0", "")), Recorded::Accepted);
        assert_eq!(s.lease_returned(1, a.lease_id), 2);
        assert_eq!(s.active_leases(), 0);
        // With max_attempts 1 a counted attempt would have failed the items; they are leased again.
        let b = lease(&mut s, 2, 3, t0);
        assert_eq!(ids(&b), vec!["1", "2"]);
        assert_eq!(s.progress().failed, 0);
        assert_eq!(s.lease_returned(1, a.lease_id), 0, "already returned");
    }

    fn choice_task(n: usize) -> TaskSpec {
        let mut t = task("q", n);
        for item in &mut t.items {
            item.payload = Some(pb::work_item::Payload::Choice(pb::ChoiceItem {
                choice_texts: ["A", "B", "C", "D"].map(String::from).to_vec(),
                ..Default::default()
            }));
        }
        t
    }

    fn choice(lease: &pb::Lease, item: &str, p: &[f32]) -> pb::ItemResult {
        pb::ItemResult {
            lease_id: lease.lease_id,
            item_id: item.into(),
            outcome: Some(Outcome::Choice(pb::ChoiceResult {
                probabilities: p.to_vec(),
                prompt_tokens: 1,
            })),
        }
    }

    #[test]
    fn a_result_counts_only_for_an_item_of_its_lease_from_the_worker_holding_it() {
        let now = Instant::now();
        let mut s = sched(4);
        let a = lease(&mut s, 1, 2, now);
        let b = lease(&mut s, 2, 2, now);
        // Worker 2 answers worker 1's lease; worker 1 answers an item it was never given.
        for (worker, result) in [(2, ok(&a, "0", "forged")), (1, ok(&a, "2", "forged"))] {
            assert!(matches!(
                s.record(worker, result, now),
                Recorded::Refused {
                    worker_stopped: false,
                    ..
                }
            ));
        }
        // Neither can end or return the other's lease (which would burn its attempts).
        assert_eq!(s.lease_done(2, a.lease_id), 0);
        assert_eq!(s.lease_returned(2, a.lease_id), 0);
        assert_eq!(s.active_leases(), 2);
        assert_eq!(s.progress().done, 0);
        assert_eq!(s.record(1, ok(&a, "0", "a0"), now), Recorded::Accepted);
        assert_eq!(s.record(2, ok(&b, "2", "b2"), now), Recorded::Accepted);
        assert_eq!(predict(&s, 0).as_deref(), Some("a0"));
        assert_eq!(predict(&s, 2).as_deref(), Some("b2"));
        assert_eq!(s.lease_done(1, a.lease_id), 1);
    }

    #[test]
    fn invalid_results_are_refused_the_item_leased_again_and_the_worker_stopped_at_the_limit() {
        let now = Instant::now();
        let mut s = Scheduler::new(SchedConfig {
            max_invalid_results: 2,
            ..SchedConfig::default()
        });
        s.add_task(choice_task(2)).unwrap();
        let a = lease(&mut s, 1, 2, now);
        let refused = s.record(1, choice(&a, "0", &[0.5, 0.25, 0.25]), now);
        assert_eq!(
            refused,
            Recorded::Refused {
                why: "item \"0\": 3 probabilities for 4 choices".into(),
                worker_stopped: false
            }
        );
        // Item 0 is queued again; worker 1 sends one more bad result and is stopped.
        let stopped = s.record(1, choice(&a, "1", &[f32::NAN, 0.0, 0.0, 1.0]), now);
        assert!(
            matches!(
                stopped,
                Recorded::Refused {
                    worker_stopped: true,
                    ..
                }
            ),
            "{stopped:?}"
        );
        assert_eq!(s.active_leases(), 0);
        assert!(matches!(
            s.request_lease(1, 2, 1, now),
            Assignment::Refused { .. }
        ));
        // Worker 2 gets both items and its results are the ones kept.
        let b = lease(&mut s, 2, 2, now);
        assert_eq!(ids(&b), ["0", "1"]);
        for i in ["0", "1"] {
            let r = choice(&b, i, &[0.1, 0.2, 0.3, 0.4]);
            assert_eq!(s.record(2, r, now), Recorded::Accepted);
        }
        assert!(s.progress().is_complete());
        assert_eq!(s.progress().failed, 0);
        let kept = Outcome::Choice(pb::ChoiceResult {
            probabilities: vec![0.1, 0.2, 0.3, 0.4],
            prompt_tokens: 1,
        });
        assert_eq!(s.outcomes(0)[0], Some(ItemOutcome::Done(kept)));
    }

    #[test]
    fn an_invalid_journaled_result_is_refused_by_mark_done() {
        let mut s = Scheduler::new(SchedConfig::default());
        s.add_task(choice_task(1)).unwrap();
        let three = Outcome::Choice(pb::ChoiceResult {
            probabilities: vec![0.2, 0.3, 0.5],
            prompt_tokens: 1,
        });
        assert!(matches!(
            s.mark_done(0, "0", three),
            Err(PreloadError::Invalid { .. })
        ));
        assert_eq!(s.progress().done, 0);
    }

    #[test]
    fn a_lease_without_progress_is_taken_back_despite_heartbeats() {
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        let mut s = Scheduler::new(SchedConfig {
            lease_ttl: Duration::from_secs(10),
            lease_progress_timeout: Some(Duration::from_secs(30)),
            ..SchedConfig::default()
        });
        s.add_task(task("t", 3)).unwrap();
        let a = lease(&mut s, 1, 3, t0);
        // ModelReady at 10 s and a result at 25 s: the deadline moves to 55 s.
        s.progressed(1, a.lease_id, secs(10));
        assert_eq!(s.record(1, ok(&a, "0", "x"), secs(25)), Recorded::Accepted);
        // Heartbeats every 5 s keep the lease alive but do not count as progress.
        for t in (5..=55).step_by(5) {
            assert_eq!(s.heartbeat(1, &[a.lease_id], secs(t)), 1);
            let expired = s.expire(secs(t));
            assert!(expired.silent.is_empty());
            assert_eq!(
                expired.stalled,
                if t == 55 { vec![a.lease_id] } else { vec![] }
            );
        }
        // Its next heartbeat names the lease: the worker is told; no one else is.
        assert_eq!(s.stalled_lease(1, &[a.lease_id]), Some(a.lease_id));
        assert_eq!(s.stalled_lease(2, &[a.lease_id]), None);
        let b = lease(&mut s, 2, 3, secs(56));
        assert_eq!(ids(&b), ["1", "2"]);
        for i in ["1", "2"] {
            assert_eq!(s.record(2, ok(&b, i, i), secs(57)), Recorded::Accepted);
        }
        assert!(s.progress().is_complete());
        // No timeout configured: only heartbeats count.
        let mut s = Scheduler::new(SchedConfig {
            lease_progress_timeout: None,
            ..SchedConfig::default()
        });
        s.add_task(task("t", 1)).unwrap();
        let c = lease(&mut s, 1, 1, t0);
        s.heartbeat(1, &[c.lease_id], secs(3600 * 24));
        assert!(s.expire(secs(3600 * 24 + 1)).is_empty());
    }

    #[test]
    fn leases_stay_under_the_workers_message_limit() {
        let now = Instant::now();
        let mut s = Scheduler::new(SchedConfig::default());
        let mut t = task("t", 4);
        for (i, item) in t.items.iter_mut().enumerate() {
            // Items 0, 1 and 3 of 1.5 MiB: two fit a lease, three do not; item 2 fits none.
            let size = if i == 2 { 5 << 20 } else { 3 << 19 };
            item.payload = Some(pb::work_item::Payload::Reward(pb::RewardItem {
                text: "x".repeat(size),
            }));
        }
        s.add_task(t).unwrap();
        let a = lease(&mut s, 1, 4, now);
        assert_eq!(ids(&a), ["0", "1"]);
        assert!(a.encoded_len() <= MAX_LEASE_BYTES);
        // Item 2 comes next, fails for good without a lease, and item 3 is leased instead.
        let b = lease(&mut s, 1, 4, now);
        assert_eq!(ids(&b), ["3"]);
        let Some(ItemOutcome::Failed { message, attempts }) = &s.outcomes(0)[2] else {
            panic!("{:?}", s.outcomes(0)[2])
        };
        assert!(
            message.contains("more than the 4193280 a worker accepts"),
            "{message}"
        );
        assert_eq!(*attempts, 0);
        assert_eq!(s.progress().failed, 1);
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

    fn streaming(name: &str, n: usize) -> TaskSpec {
        task(name, n)
    }

    /// The producer's "generate" result `text` becomes an embed item of the fed task.
    fn to_embed() -> Derive {
        Box::new(|item, outcome| match outcome {
            Outcome::Generate(g) => Some(pb::work_item::Payload::Embed(pb::EmbedItem {
                label: item.item_id.clone(),
                predict: g.predict.clone(),
            })),
            _ => None,
        })
    }

    fn leased_tasks(s: &Scheduler) -> Vec<usize> {
        s.timeline()
            .iter()
            .filter_map(|e| match e {
                Event::Leased { task, .. } => Some(*task),
                Event::TaskComplete { .. } => None,
            })
            .collect()
    }

    fn position(s: &Scheduler, event: &Event) -> usize {
        s.timeline()
            .iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("{event:?} not in {:?}", s.timeline()))
    }

    #[test]
    fn streaming_task_stays_open_until_its_input_closes() {
        let now = Instant::now();
        let mut s = Scheduler::new(SchedConfig::default());
        let t = s.add_streaming_task(streaming("s", 0)).unwrap();
        assert!(!s.progress().is_complete());
        // Nothing queued but more may come: idle workers wait instead of leaving.
        assert_eq!(s.request_lease(1, 4, 1, now), Assignment::NoWork);
        s.add_items(t, task("x", 2).items).unwrap();
        let a = lease(&mut s, 1, 4, now);
        assert_eq!(ids(&a), ["0", "1"]);
        let mut again = task("x", 1).items;
        assert!(matches!(
            s.add_items(t, again.clone()),
            Err(SchedError::DuplicateItem { .. })
        ));
        again[0].item_id = "2".into();
        s.add_items(t, again).unwrap();
        for i in ["0", "1"] {
            assert_eq!(record(&mut s, ok(&a, i, i)), Recorded::Accepted);
        }
        let b = lease(&mut s, 1, 4, now);
        assert_eq!(record(&mut s, ok(&b, "2", "2")), Recorded::Accepted);
        assert_eq!((s.progress().done, s.progress().open), (3, 1));
        assert_eq!(s.request_lease(1, 4, 1, now), Assignment::NoWork);
        assert!(!s.task_complete(t));
        s.close_input(t);
        assert!(s.task_complete(t));
        assert_eq!(s.request_lease(1, 4, 1, now), Assignment::Finished);
        assert!(matches!(
            s.add_items(t, task("y", 1).items),
            Err(SchedError::InputClosed(_))
        ));
        assert_eq!(s.timeline().last(), Some(&Event::TaskComplete { task: t }));
        // A plain task takes no added items.
        let plain = s.add_task(task("p", 1)).unwrap();
        assert!(matches!(
            s.add_items(plain, task("y", 1).items),
            Err(SchedError::InputClosed(_))
        ));
    }

    #[test]
    fn fed_task_gets_each_result_and_starts_before_its_producer_ends() {
        let now = Instant::now();
        let mut s = sched(5);
        let c = s.add_streaming_task(streaming("c", 0)).unwrap();
        s.feed(0, c, to_embed()).unwrap();
        // One worker with batch 2: the producer's first lease...
        let a = lease(&mut s, 1, 2, now);
        assert_eq!((a.task.as_str(), ids(&a)), ("t", vec!["0", "1"]));
        assert_eq!(record(&mut s, ok(&a, "1", "p1")), Recorded::Accepted);
        // One fed item is not a full lease: the producer's queue goes first.
        let b = lease(&mut s, 1, 2, now);
        assert_eq!((b.task.as_str(), ids(&b)), ("t", vec!["2", "3"]));
        assert_eq!(record(&mut s, ok(&a, "0", "p0")), Recorded::Accepted);
        // Two fed items fill a lease: it jumps ahead of the producer's remaining item 4.
        let d = lease(&mut s, 2, 2, now);
        assert_eq!((d.task.as_str(), ids(&d)), ("c", vec!["1", "0"]));
        let Some(pb::work_item::Payload::Embed(e)) = &d.items[0].payload else {
            panic!("not an embed item: {d:?}")
        };
        assert_eq!((e.label.as_str(), e.predict.as_str()), ("1", "p1"));
        // A failed producer item feeds nothing.
        assert_eq!(record(&mut s, err(&b, "2", false)), Recorded::Failed);
        assert_eq!(record(&mut s, ok(&b, "3", "p3")), Recorded::Accepted);
        // One fed item queued again: the producer's last item comes first, then the fed one.
        let f = lease(&mut s, 1, 2, now);
        assert_eq!((f.task.as_str(), ids(&f)), ("t", vec!["4"]));
        let g = lease(&mut s, 2, 2, now);
        assert_eq!((g.task.as_str(), ids(&g)), ("c", vec!["3"]));
        assert!(!s.task_complete(c));
        assert_eq!(record(&mut s, ok(&f, "4", "p4")), Recorded::Accepted);
        // The producer completed: the fed task's input is closed, with item 4 still to run.
        assert!(s.task_complete(0));
        assert_eq!(s.progress().open, 0);
        let h = lease(&mut s, 1, 2, now);
        assert_eq!((h.task.as_str(), ids(&h)), ("c", vec!["4"]));
        for (l, i) in [(&d, "1"), (&d, "0"), (&g, "3"), (&h, "4")] {
            let mut r = ok(l, i, "");
            r.outcome = Some(Outcome::Embed(pb::EmbedResult { score: 0.5 }));
            assert_eq!(record(&mut s, r), Recorded::Accepted);
        }
        assert!(s.progress().is_complete());
        assert_eq!(s.request_lease(1, 2, 1, now), Assignment::Finished);
        let ids: Vec<&str> = s.items(c).iter().map(|i| i.item_id.as_str()).collect();
        assert_eq!(ids, ["1", "0", "3", "4"]);
        assert_eq!(leased_tasks(&s), [0, 0, 1, 0, 1, 1]);
        let first_fed_lease = Event::Leased {
            task: c,
            lease_id: d.lease_id,
            items: 2,
        };
        assert!(
            position(&s, &first_fed_lease) < position(&s, &Event::TaskComplete { task: 0 }),
            "{:?}",
            s.timeline()
        );
        assert!(
            position(&s, &Event::TaskComplete { task: 0 })
                < position(&s, &Event::TaskComplete { task: c })
        );
    }

    #[test]
    fn feed_ignores_lost_leases_and_late_duplicates() {
        let t0 = Instant::now();
        let mut s = sched(2);
        let c = s.add_streaming_task(streaming("c", 0)).unwrap();
        s.feed(0, c, to_embed()).unwrap();
        let a = lease(&mut s, 1, 2, t0);
        assert_eq!(record(&mut s, ok(&a, "0", "first")), Recorded::Accepted);
        // The lease expires: item 1 is requeued, nothing is fed for it.
        assert_eq!(
            s.expire(t0 + Duration::from_secs(10)).silent,
            vec![a.lease_id]
        );
        assert_eq!(s.items(c).len(), 1);
        let b = lease(&mut s, 2, 1, t0 + Duration::from_secs(11));
        assert_eq!((b.task.as_str(), ids(&b)), ("c", vec!["0"]));
        let d = lease(&mut s, 2, 1, t0 + Duration::from_secs(11));
        assert_eq!((d.task.as_str(), ids(&d)), ("t", vec!["1"]));
        assert_eq!(record(&mut s, ok(&a, "1", "late")), Recorded::Accepted);
        assert_eq!(record(&mut s, ok(&d, "1", "again")), Recorded::Duplicate);
        let fed: Vec<String> = s
            .items(c)
            .iter()
            .map(|i| match &i.payload {
                Some(pb::work_item::Payload::Embed(e)) => e.predict.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(fed, ["first", "late"]);
        assert_eq!(s.progress().open, 0);
    }

    /// A producer result `text` becomes one item `<id>/<k>` per character of `text`.
    fn per_char() -> DeriveMany {
        Box::new(|item, outcome| match outcome {
            Outcome::Generate(g) => g
                .predict
                .chars()
                .enumerate()
                .map(|(k, c)| pb::WorkItem {
                    item_id: format!("{}/{k}", item.item_id),
                    payload: Some(pb::work_item::Payload::Reward(pb::RewardItem {
                        text: c.to_string(),
                    })),
                })
                .collect(),
            _ => Vec::new(),
        })
    }

    #[test]
    fn feed_many_expands_each_result_and_preloaded_results_feed_too() {
        let now = Instant::now();
        let mut s = sched(3);
        let c = s.add_streaming_task(streaming("c", 0)).unwrap();
        s.feed_many(0, c, per_char()).unwrap();
        // A journaled result, as on resume: its items exist at once, before any lease.
        let kept = Outcome::Generate(pb::GenerateResult {
            predict: "xy".into(),
            ..Default::default()
        });
        assert_eq!(s.mark_done(0, "1", kept), Ok(true));
        let fed: Vec<&str> = s.items(c).iter().map(|i| i.item_id.as_str()).collect();
        assert_eq!(fed, ["1/0", "1/1"]);
        let reward = Outcome::Reward(pb::RewardResult::default());
        assert_eq!(s.mark_done(c, "1/1", reward.clone()), Ok(true));
        // Batch 2: "1/0" is all the fed task has left; then the producer's remaining items.
        let a = lease(&mut s, 1, 2, now);
        assert_eq!((a.task.as_str(), ids(&a)), ("c", vec!["1/0"]));
        let b = lease(&mut s, 1, 2, now);
        assert_eq!((b.task.as_str(), ids(&b)), ("t", vec!["0", "2"]));
        assert_eq!(record(&mut s, ok(&b, "0", "abc")), Recorded::Accepted);
        // Three new items: a full lease of the fed task while the producer still runs.
        let d = lease(&mut s, 2, 2, now);
        assert_eq!((d.task.as_str(), ids(&d)), ("c", vec!["0/0", "0/1"]));
        // An empty result feeds nothing; the producer completes and closes the input.
        assert_eq!(record(&mut s, ok(&b, "2", "")), Recorded::Accepted);
        assert!(s.task_complete(0) && !s.task_complete(c));
        assert_eq!(s.progress().open, 0);
        let e = lease(&mut s, 1, 8, now);
        assert_eq!(ids(&e), ["0/2"]);
        for (l, i) in [(&a, "1/0"), (&d, "0/0"), (&d, "0/1"), (&e, "0/2")] {
            let mut res = ok(l, i, "");
            res.outcome = Some(reward.clone());
            assert_eq!(record(&mut s, res), Recorded::Accepted);
        }
        assert!(s.progress().is_complete());
        assert_eq!(s.items(c).len(), 5);
        assert!(matches!(
            s.feed_many(0, c, per_char()),
            Err(SchedError::BadFeed { .. })
        ));
    }

    #[test]
    fn feed_takes_earlier_results_and_checks_its_tasks() {
        let now = Instant::now();
        let mut s = sched(2);
        let a = lease(&mut s, 1, 1, now);
        assert_eq!(record(&mut s, ok(&a, "0", "early")), Recorded::Accepted);
        let plain = s.add_task(task("plain", 1)).unwrap();
        let c = s.add_streaming_task(streaming("c", 0)).unwrap();
        assert!(matches!(
            s.feed(0, plain, to_embed()),
            Err(SchedError::BadFeed { .. })
        ));
        assert!(matches!(
            s.feed(c, 0, to_embed()),
            Err(SchedError::BadFeed { .. })
        ));
        s.feed(0, c, to_embed()).unwrap();
        assert_eq!(s.items(c).len(), 1, "the result recorded before the feed");
        assert!(matches!(
            s.feed(0, c, to_embed()),
            Err(SchedError::BadFeed { .. })
        ));
    }
}
