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
}

#[derive(Default)]
struct State {
    /// Worker connection → its name.
    names: HashMap<WorkerKey, String>,
    workers: BTreeMap<String, WorkerStats>,
    /// (job, step) → successful results.
    items_done: BTreeMap<(String, String), u64>,
    gauges: Option<GaugeSource>,
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
        let w = st.workers.entry(hello.worker_id.clone()).or_default();
        w.connected += 1;
        w.device = hello.device.clone();
        w.models.extend(hello.models_held.iter().cloned());
    }

    /// Its stream closed.
    pub fn worker_left(&self, key: WorkerKey) {
        let mut st = self.lock();
        if let Some(name) = st.names.remove(&key)
            && let Some(w) = st.workers.get_mut(&name)
        {
            w.connected = w.connected.saturating_sub(1);
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
        *st.items_done
            .entry((job.to_string(), step.to_string()))
            .or_default() += 1;
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
        for ((job, step), n) in &st.items_done {
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
                    &[("worker", name), ("model", model)],
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
            "evalfleet_model_loads_total{worker=\"w\\\"1\",model=\"new\"} 1",
            "evalfleet_leases_outstanding 2",
            "evalfleet_workers 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(!text.contains("model=\"held\""), "{text}");
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
