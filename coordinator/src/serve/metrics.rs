//! Fleet metrics in the Prometheus text exposition format (version 0.0.4): items done per job and
//! step, results and items per second per worker, leases outstanding, connected workers and model
//! loads.
//!
//! [`Metrics`] is fed by whoever owns the worker streams: the `evalfleet serve` hub calls its
//! methods directly; `evalfleet run --listen` installs a [`RunObserver`] on each step's fleet.
//! The two gauges that only the schedulers know exactly (outstanding leases: some expire or are
//! reclaimed without any message; connected workers) are read at scrape time from a
//! [`GaugeSource`].
//!
//! "Model loads" are counted as the coordinator sees them: the first lease of a model to a worker
//! that did not report holding it. A worker keeps a model once loaded, so a second lease of the
//! same model to it is no load.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use evalfleet_proto::v1 as pb;
use pb::coordinator_message::Msg as Down;
use pb::worker_message::Msg as Up;

use crate::rpc::{Fleet, FleetObserver};
use crate::sched::WorkerKey;

/// Items per second are measured over this trailing window (a worker idle for longer reads 0).
pub const RATE_WINDOW: Duration = Duration::from_secs(30);
/// Worker names whose series are kept: when a new name comes and this many are known, the
/// disconnected one seen longest ago is forgotten (worker ids are chosen by the workers, so a
/// client reconnecting under ever new names must not grow the registry without bound).
pub const MAX_WORKER_SERIES: usize = 1024;
/// (job, step) series of `evalfleet_items_done_total` kept; the oldest go first.
pub const MAX_JOB_SERIES: usize = 4096;

/// The gauges read from the schedulers at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub leases_outstanding: usize,
    pub workers: usize,
}

/// Reads [`Gauges`] (from the hub, or from the fleet a run serves now).
pub type GaugeSource = Box<dyn Fn() -> Gauges + Send + Sync>;

/// Counts finished items over a trailing window and turns them into a rate.
#[derive(Debug, Default, Clone)]
pub struct RateWindow {
    stamps: VecDeque<Instant>,
}

impl RateWindow {
    /// One item finished at `now`.
    pub fn push(&mut self, now: Instant) {
        self.stamps.push_back(now);
        self.prune(now);
    }

    /// Items per second over the items of the last [`RATE_WINDOW`]: (n - 1) over the time from
    /// the first to the last of them, so that a burst right after start is not diluted by a
    /// window that was not running yet; 0 with fewer than two items in the window.
    pub fn rate(&mut self, now: Instant) -> f64 {
        self.prune(now);
        match (self.stamps.front(), self.stamps.back()) {
            (Some(first), Some(last)) if self.stamps.len() > 1 => {
                let span = last.duration_since(*first).as_secs_f64();
                if span > 0.0 {
                    (self.stamps.len() - 1) as f64 / span
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&first) = self.stamps.front() {
            if now.duration_since(first) > RATE_WINDOW {
                self.stamps.pop_front();
            } else {
                break;
            }
        }
    }
}

/// What is known about one worker (by the name it gave; a worker that reconnects under the
/// same name continues its counters).
#[derive(Debug, Default, Clone)]
pub struct WorkerStats {
    pub device: String,
    /// Open streams under this name.
    pub connected: usize,
    /// Successful results it sent.
    pub items: u64,
    pub rate: RateWindow,
    /// Model loads by model key.
    pub loads: BTreeMap<String, u64>,
    /// Models it holds (reported at Hello, plus those of its leases).
    pub models: BTreeSet<String>,
    /// When it was last seen ([`State::clock`] ticks): the oldest goes first.
    seen: u64,
}

#[derive(Default)]
struct State {
    /// Worker connection → its name.
    names: HashMap<WorkerKey, String>,
    workers: BTreeMap<String, WorkerStats>,
    /// (job, step) → (successful results, when the series began in [`State::clock`] ticks).
    items_done: BTreeMap<(String, String), (u64, u64)>,
    gauges: Option<GaugeSource>,
    /// Counts events, to order series by age.
    clock: u64,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Makes room for a new worker name: forgets the disconnected worker seen longest ago
    /// when [`MAX_WORKER_SERIES`] are known.
    fn room_for_worker(&mut self, name: &str) {
        if self.workers.len() < MAX_WORKER_SERIES || self.workers.contains_key(name) {
            return;
        }
        let oldest = self
            .workers
            .iter()
            .filter(|(_, w)| w.connected == 0)
            .min_by_key(|(_, w)| w.seen)
            .map(|(n, _)| n.clone());
        if let Some(oldest) = oldest {
            self.workers.remove(&oldest);
        }
    }
}

/// The metrics registry (see the module docs).
#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Counters stay usable after a panic elsewhere; they are never left half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the gauges come from from now on.
    pub fn set_gauges(&self, source: GaugeSource) {
        self.lock().gauges = Some(source);
    }

    /// Worker connection `key` said Hello.
    pub fn worker_joined(&self, key: WorkerKey, hello: &pb::Hello) {
        let mut st = self.lock();
        st.names.insert(key, hello.worker_id.clone());
        st.room_for_worker(&hello.worker_id);
        let seen = st.tick();
        let w = st.workers.entry(hello.worker_id.clone()).or_default();
        w.seen = seen;
        w.connected += 1;
        w.device = hello.device.clone();
        w.models.extend(hello.models_held.iter().cloned());
    }

    /// Its stream closed.
    pub fn worker_left(&self, key: WorkerKey) {
        let mut st = self.lock();
        let seen = st.tick();
        if let Some(name) = st.names.remove(&key)
            && let Some(w) = st.workers.get_mut(&name)
        {
            w.connected = w.connected.saturating_sub(1);
            w.seen = seen;
        }
    }

    /// A lease of model `model` went to worker `key`; returns whether that is a model load
    /// (the worker did not hold the model).
    pub fn lease_given(&self, key: WorkerKey, model: &str) -> bool {
        let mut st = self.lock();
        let Some(name) = st.names.get(&key).cloned() else {
            return false;
        };
        let w = st.workers.entry(name).or_default();
        let load = !model.is_empty() && w.models.insert(model.to_string());
        if load {
            *w.loads.entry(model.to_string()).or_default() += 1;
        }
        load
    }

    /// Worker `key` sent a successful result for an item of `step` of `job`.
    pub fn item_done(&self, key: WorkerKey, job: &str, step: &str) {
        let now = Instant::now();
        let mut st = self.lock();
        let series = (job.to_string(), step.to_string());
        if !st.items_done.contains_key(&series) && st.items_done.len() >= MAX_JOB_SERIES {
            let oldest = st
                .items_done
                .iter()
                .min_by_key(|(_, (_, began))| *began)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                st.items_done.remove(&oldest);
            }
        }
        let began = st.tick();
        st.items_done.entry(series).or_insert((0, began)).0 += 1;
        if let Some(name) = st.names.get(&key).cloned() {
            let w = st.workers.entry(name).or_default();
            w.items += 1;
            w.rate.push(now);
        }
    }

    /// The statistics of every worker seen so far, by name (rates as of now).
    pub fn workers(&self) -> Vec<(String, WorkerStats, f64)> {
        let now = Instant::now();
        let mut st = self.lock();
        st.workers
            .iter_mut()
            .map(|(name, w)| {
                let rate = w.rate.rate(now);
                (name.clone(), w.clone(), rate)
            })
            .collect()
    }

    /// The name worker connection `key` gave.
    pub fn worker_name(&self, key: WorkerKey) -> Option<String> {
        self.lock().names.get(&key).cloned()
    }

    /// The exposition text served at `/metrics`.
    pub fn render(&self) -> String {
        let now = Instant::now();
        let mut st = self.lock();
        let gauges = st.gauges.as_ref().map(|g| g()).unwrap_or_default();
        let mut out = String::new();
        family(
            &mut out,
            "evalfleet_items_done_total",
            "counter",
            "Successful item results received, per job and step.",
        );
        for ((job, step), (n, _)) in &st.items_done {
            sample(
                &mut out,
                "evalfleet_items_done_total",
                &[("job", job), ("step", step)],
                *n as f64,
            );
        }
        family(
            &mut out,
            "evalfleet_worker_items_total",
            "counter",
            "Successful item results received from each worker.",
        );
        for (name, w) in &st.workers {
            sample(
                &mut out,
                "evalfleet_worker_items_total",
                &[("worker", name)],
                w.items as f64,
            );
        }
        family(
            &mut out,
            "evalfleet_worker_items_per_second",
            "gauge",
            "Items per second of each worker over the last 30 seconds.",
        );
        for (name, w) in st.workers.iter_mut() {
            let rate = w.rate.rate(now);
            sample(
                &mut out,
                "evalfleet_worker_items_per_second",
                &[("worker", name)],
                rate,
            );
        }
        family(
            &mut out,
            "evalfleet_model_loads_total",
            "counter",
            "First leases of a model to a worker that did not hold it.",
        );
        for (name, w) in &st.workers {
            for (model, n) in &w.loads {
                sample(
                    &mut out,
                    "evalfleet_model_loads_total",
                    &[("worker", name), ("model", &model_label(model))],
                    *n as f64,
                );
            }
        }
        family(
            &mut out,
            "evalfleet_leases_outstanding",
            "gauge",
            "Leases handed out and not yet done.",
        );
        sample(
            &mut out,
            "evalfleet_leases_outstanding",
            &[],
            gauges.leases_outstanding as f64,
        );
        family(&mut out, "evalfleet_workers", "gauge", "Connected workers.");
        sample(&mut out, "evalfleet_workers", &[], gauges.workers as f64);
        out
    }
}

/// The `model` label of a model key: no paths (the metrics port answers without a token), only
/// each path's last component, and 8 hex digits of the key's SHA-256 so that two models of the
/// same name stay apart: `/models/qwen/checkpoint-100|/x/lora|bf16` reads
/// `checkpoint-100|lora|bf16#1a2b3c4d`.
pub fn model_label(key: &str) -> String {
    use sha2::Digest as _;
    let short: Vec<String> = key
        .split('|')
        .map(|part| {
            part.split(',')
                .map(|p| {
                    let p = p.trim_end_matches('/');
                    p.rsplit('/').next().unwrap_or(p).to_string()
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let digest = sha2::Sha256::digest(key.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}#{hex}", short.join("|"))
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label(val));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the exposition format quotes it: backslash, double quote and newline escaped.
pub fn escape_label(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Feeds [`Metrics`] from the fleets of `evalfleet run --listen` (one per step; the gauges follow
/// the one serving now).
pub struct RunObserver {
    metrics: Arc<Metrics>,
    job: String,
    /// Lease id → task name, for the results that name only the lease (ids restart with each
    /// step's fleet, so this is cleared when a new one starts serving).
    leases: Mutex<HashMap<u64, String>>,
}

impl RunObserver {
    /// Observes the fleets of job `job` (the label in `evalfleet_items_done_total`).
    pub fn new(metrics: Arc<Metrics>, job: &str) -> Arc<Self> {
        Arc::new(RunObserver {
            metrics,
            job: job.to_string(),
            leases: Mutex::new(HashMap::new()),
        })
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<u64, String>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FleetObserver for RunObserver {
    fn joined(&self, worker: WorkerKey, hello: &pb::Hello) {
        self.metrics.worker_joined(worker, hello);
    }

    fn left(&self, worker: WorkerKey) {
        self.metrics.worker_left(worker);
    }

    fn message(&self, worker: WorkerKey, up: &Up, reply: Option<&Down>) {
        if let Some(Down::Lease(lease)) = reply {
            let model = lease.model.as_ref().map_or("", |m| m.key.as_str());
            self.metrics.lease_given(worker, model);
            self.leases().insert(lease.lease_id, lease.task.clone());
        }
        if let Up::Result(result) = up
            && is_success(result)
        {
            let task = self.leases().get(&result.lease_id).cloned();
            self.metrics
                .item_done(worker, &self.job, task.as_deref().unwrap_or("?"));
        }
    }

    fn serving(&self, fleet: &Fleet, _label: &str) {
        self.leases().clear();
        let fleet = fleet.clone();
        let connected = fleet.connected();
        self.metrics.set_gauges(Box::new(move || Gauges {
            leases_outstanding: fleet.with_sched(|s| s.active_leases()),
            workers: *connected.borrow(),
        }));
    }
}

/// A result with an outcome other than an error.
pub fn is_success(result: &pb::ItemResult) -> bool {
    !matches!(
        result.outcome,
        None | Some(pb::item_result::Outcome::Error(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str, models: &[&str]) -> pb::Hello {
        pb::Hello {
            worker_id: name.into(),
            device: "cpu".into(),
            models_held: models.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn counters_gauges_and_loads_render_as_exposition_text() {
        let m = Metrics::new();
        m.set_gauges(Box::new(|| Gauges {
            leases_outstanding: 2,
            workers: 1,
        }));
        m.worker_joined(1, &hello("w\"1", &["held"]));
        assert!(!m.lease_given(1, "held"), "a held model is no load");
        assert!(m.lease_given(1, "new"));
        assert!(!m.lease_given(1, "new"), "loaded once, kept");
        m.item_done(1, "job-1", "step1");
        m.item_done(1, "job-1", "step1");
        m.item_done(1, "job-2", "step3");
        let text = m.render();
        for line in [
            "# TYPE evalfleet_items_done_total counter",
            "evalfleet_items_done_total{job=\"job-1\",step=\"step1\"} 2",
            "evalfleet_items_done_total{job=\"job-2\",step=\"step3\"} 1",
            "evalfleet_worker_items_total{worker=\"w\\\"1\"} 3",
            &format!(
                "evalfleet_model_loads_total{{worker=\"w\\\"1\",model=\"{}\"}} 1",
                model_label("new")
            ),
            "evalfleet_leases_outstanding 2",
            "evalfleet_workers 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(!text.contains("model=\"held#"), "{text}");
    }

    #[test]
    fn model_labels_carry_no_paths_and_keep_models_apart() {
        let a = model_label("/models/team-a/qwen/checkpoint-100|/x/y/lora-7/|bf16");
        assert!(a.starts_with("checkpoint-100|lora-7|bf16#"), "{a}");
        assert!(!a.contains('/'), "{a}");
        let b = model_label("/models/team-b/qwen/checkpoint-100|/x/y/lora-7/|bf16");
        assert_ne!(a, b, "same names, other paths");
        assert_eq!(
            model_label("embed|/m/minilm").split('#').next(),
            Some("embed|minilm")
        );
        let m = Metrics::new();
        m.worker_joined(1, &hello("w", &[]));
        assert!(m.lease_given(1, "/secret/path/model|bf16"));
        let text = m.render();
        assert!(!text.contains("/secret"), "{text}");
        assert!(text.contains("model=\"model|bf16#"), "{text}");
    }

    #[test]
    fn worker_series_are_bounded_and_the_oldest_disconnected_go_first() {
        let m = Metrics::new();
        m.worker_joined(0, &hello("connected", &[]));
        for key in 1..=(MAX_WORKER_SERIES as u64 + 10) {
            m.worker_joined(key, &hello(&format!("w{key}"), &[]));
            m.worker_left(key);
        }
        let names: Vec<String> = m.workers().into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(names.len(), MAX_WORKER_SERIES);
        assert!(
            names.contains(&"connected".to_string()),
            "still connected: kept"
        );
        assert!(!names.contains(&"w1".to_string()), "the oldest went first");
        assert!(names.contains(&format!("w{}", MAX_WORKER_SERIES + 10)));
        for n in 0..(MAX_JOB_SERIES + 5) {
            m.item_done(0, &format!("job-{n}"), "step1");
        }
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("evalfleet_items_done_total{"))
            .count();
        assert_eq!(series, MAX_JOB_SERIES);
        assert!(!text.contains("job=\"job-0\""));
    }

    #[test]
    fn rate_needs_two_items_and_forgets_after_the_window() {
        let t0 = Instant::now();
        let mut r = RateWindow::default();
        r.push(t0);
        assert_eq!(r.rate(t0), 0.0);
        r.push(t0 + Duration::from_secs(1));
        r.push(t0 + Duration::from_secs(2));
        assert_eq!(r.rate(t0 + Duration::from_secs(2)), 1.0);
        assert_eq!(r.rate(t0 + Duration::from_secs(60)), 0.0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
