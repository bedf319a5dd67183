//! The worker side of `evalfleet serve`: one `Fleet.Connect` stream per worker (the same protocol
//! and handshake as `evalfleet run`), routed to the job fleets attached at the moment.
//!
//! Every running job step is an ordinary [`Fleet`] (a scheduler with its journal sink), started by
//! the unchanged run drivers, which attach it here through [`crate::run::FleetHost`] instead of
//! serving it. The hub owns the worker streams and turns each worker message into the same call
//! the fleet's own stream handler would make ([`Fleet::handle_message`]):
//!
//! - a lease request goes to the attached fleets in preference order (below) until one hands out
//!   a lease; none: `NoWork` (never `Finished`: the fleet outlives its jobs);
//! - lease ids are per fleet, so each lease gets a hub-wide id on its way down, and results,
//!   heartbeats, `ModelReady` and `LeaseDone` are translated back and routed to the fleet that
//!   issued it. Messages about a lease of a fleet that was detached (its job ended or was
//!   cancelled) are dropped: that lease was returned when the fleet detached;
//! - a worker that disconnects loses its leases in every attached fleet; the hub expires leases
//!   without heartbeats in every attached fleet, as a served fleet's reaper does.
//!
//! **Preference.** A worker is offered first to the fleets whose queued tasks need a model it
//! holds (what it reported at Hello, plus the models of the leases it was given), then to the
//! others; in job submission order within each group. Leases of one model
//! thus stay on the workers that loaded it while other jobs wait for a worker that is free.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use evalfleet_proto::v1 as pb;
use evalfleet_proto::v1::fleet_server::Fleet as FleetRpc;
use pb::coordinator_message::Msg as Down;
use pb::worker_message::Msg as Up;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::metrics::{Gauges, Metrics, RateWindow, is_success};
use crate::rpc::limits::ClientGate;
use crate::rpc::{
    DownSender, DownStream, Fleet, FleetOptions, read_hello, relay_worker_stream, welcome,
};
use crate::sched::{Progress, WorkerKey};

/// Lease ids handed to workers; at most this many per worker are remembered for status.
const LEASE_LOG: usize = 1000;

/// A fleet attached by a job's driver.
struct Attached {
    id: u64,
    job: String,
    /// The job's submission order: fleets are offered workers in this order.
    seq: u64,
    label: String,
    fleet: Fleet,
    rate: RateWindow,
    /// Hub-wide ids of the leases it issued.
    leases: Vec<u64>,
}

/// A connected worker.
struct Worker {
    name: String,
    models: BTreeSet<String>,
    /// Hub-wide ids of its leases not yet done.
    leases: BTreeSet<u64>,
    /// The job of each lease it was given, in order (the last [`LEASE_LOG`]).
    lease_jobs: Vec<String>,
}

#[derive(Default)]
struct State {
    fleets: Vec<Attached>,
    workers: HashMap<WorkerKey, Worker>,
    /// Hub-wide lease id → (attachment, the fleet's own lease id).
    leases: HashMap<u64, (u64, u64)>,
    next_lease: u64,
    next_attachment: u64,
}

/// Progress of one attached fleet, for status.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetProgress {
    pub label: String,
    pub progress: Progress,
    pub leases: usize,
    pub items_per_second: f64,
}

/// One connected worker, for status.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub key: WorkerKey,
    pub name: String,
    pub models: Vec<String>,
    pub leases: usize,
    pub lease_jobs: Vec<String>,
}

/// The hub (see the module docs).
pub struct Hub {
    opts: FleetOptions,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    next_worker: AtomicU64,
    /// `Some(reason)` once every worker should exit.
    shutdown: watch::Sender<Option<String>>,
    connected: watch::Sender<usize>,
    /// The per-client limits of the hub's server, and each worker stream's message rate.
    gate: ClientGate,
}

impl Hub {
    /// A hub with no fleet attached; `opts` gives the heartbeat, retry and handshake timing and
    /// the lease TTL its reaper works with (the job fleets should use the same).
    pub fn new(opts: FleetOptions, metrics: Arc<Metrics>) -> Arc<Self> {
        let hub = Arc::new(Hub {
            gate: ClientGate::new(&opts.limits),
            opts,
            metrics: metrics.clone(),
            state: Mutex::new(State {
                next_lease: 1,
                next_attachment: 1,
                ..Default::default()
            }),
            next_worker: AtomicU64::new(1),
            shutdown: watch::Sender::new(None),
            connected: watch::Sender::new(0),
        });
        let weak = Arc::downgrade(&hub);
        metrics.set_gauges(Box::new(move || {
            weak.upgrade().map(|h| h.gauges()).unwrap_or_default()
        }));
        hub
    }

    /// The call, connection and message limits of the hub's server (its `FleetOptions`' limits).
    pub fn gate(&self) -> &ClientGate {
        &self.gate
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lends the workers to `fleet` (step `label` of job `job`, submitted as the `seq`th) until
    /// [`Hub::detach`].
    pub fn attach(&self, job: &str, seq: u64, fleet: &Fleet, label: &str) -> u64 {
        let mut st = self.lock();
        let id = st.next_attachment;
        st.next_attachment += 1;
        fleet.expect_workers(st.workers.len());
        st.fleets.push(Attached {
            id,
            job: job.to_string(),
            seq,
            label: label.to_string(),
            fleet: fleet.clone(),
            rate: RateWindow::default(),
            leases: Vec::new(),
        });
        // Submission order, whatever order the jobs' drivers got here in.
        st.fleets.sort_by_key(|f| (f.seq, f.id));
        info!("job {job}: {label} attached to the fleet");
        id
    }

    /// Stops lending workers to attachment `id`: its leases are forgotten (the workers' results
    /// for them are dropped). Returns its label and progress, `None` if it was not attached.
    pub fn detach(&self, id: u64) -> Option<(String, Progress)> {
        let mut st = self.lock();
        let pos = st.fleets.iter().position(|f| f.id == id)?;
        let gone = st.fleets.remove(pos);
        for lease in &gone.leases {
            st.leases.remove(lease);
            for w in st.workers.values_mut() {
                w.leases.remove(lease);
            }
        }
        drop(st);
        let progress = gone.fleet.with_sched(|s| s.progress());
        info!(
            "job {}: {} detached ({}/{} items)",
            gone.job, gone.label, progress.done, progress.total
        );
        Some((gone.label, progress))
    }

    /// Detaches every fleet of `job` (a cancel: its leases are returned at once); returns what
    /// [`Hub::detach`] returned for each.
    pub fn detach_job(&self, job: &str) -> Vec<(String, Progress)> {
        let ids: Vec<u64> = self
            .lock()
            .fleets
            .iter()
            .filter(|f| f.job == job)
            .map(|f| f.id)
            .collect();
        ids.into_iter().filter_map(|id| self.detach(id)).collect()
    }

    /// The attached fleets of `job`.
    pub fn job_progress(&self, job: &str) -> Vec<FleetProgress> {
        let now = Instant::now();
        let mut st = self.lock();
        st.fleets
            .iter_mut()
            .filter(|f| f.job == job)
            .map(|f| {
                let (progress, leases) = f.fleet.with_sched(|s| (s.progress(), s.active_leases()));
                FleetProgress {
                    label: f.label.clone(),
                    progress,
                    leases,
                    items_per_second: f.rate.rate(now),
                }
            })
            .collect()
    }

    /// The connected workers, in connection order.
    pub fn workers(&self) -> Vec<WorkerView> {
        let st = self.lock();
        let mut out: Vec<WorkerView> = st
            .workers
            .iter()
            .map(|(&key, w)| WorkerView {
                key,
                name: w.name.clone(),
                models: w.models.iter().cloned().collect(),
                leases: w.leases.len(),
                lease_jobs: w.lease_jobs.clone(),
            })
            .collect();
        out.sort_by_key(|w| w.key);
        out
    }

    /// Outstanding leases (in every attached fleet) and connected workers.
    pub fn gauges(&self) -> Gauges {
        let (fleets, workers) = {
            let st = self.lock();
            let fleets: Vec<Fleet> = st.fleets.iter().map(|f| f.fleet.clone()).collect();
            // The same count status shows.
            (fleets, st.workers.len())
        };
        Gauges {
            leases_outstanding: fleets
                .iter()
                .map(|f| f.with_sched(|s| s.active_leases()))
                .sum(),
            workers,
        }
    }

    /// Tells every worker (and any that connects later) to exit.
    pub fn shutdown_workers(&self, reason: &str) {
        self.shutdown.send_replace(Some(reason.to_string()));
    }

    /// After [`Hub::shutdown_workers`]: waits until every stream closed, or `timeout`.
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&n| n == 0))
            .await
            .is_ok()
    }

    /// Expires the leases without heartbeats of every attached fleet, every quarter TTL.
    pub async fn reap_expired_leases(self: Arc<Self>) {
        let period = (self.opts.sched.lease_ttl / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let fleets: Vec<(String, Fleet)> = self
                .lock()
                .fleets
                .iter()
                .map(|f| (f.job.clone(), f.fleet.clone()))
                .collect();
            for (job, fleet) in fleets {
                let expired = fleet.with_sched(|s| s.expire(Instant::now()));
                crate::rpc::log_expired(&format!("job {job}: "), &expired);
            }
        }
    }

    fn joined(&self, key: WorkerKey, hello: &pb::Hello) {
        self.metrics.worker_joined(key, hello);
        let mut st = self.lock();
        st.workers.insert(
            key,
            Worker {
                name: hello.worker_id.clone(),
                models: hello.models_held.iter().cloned().collect(),
                leases: BTreeSet::new(),
                lease_jobs: Vec::new(),
            },
        );
        let n = st.workers.len();
        for f in &st.fleets {
            f.fleet.expect_workers(n);
        }
        drop(st);
        self.connected.send_modify(|c| *c += 1);
    }

    fn left(&self, key: WorkerKey) {
        self.metrics.worker_left(key);
        let mut st = self.lock();
        st.workers.remove(&key);
        let n = st.workers.len();
        let fleets: Vec<Fleet> = st.fleets.iter().map(|f| f.fleet.clone()).collect();
        drop(st);
        for fleet in fleets {
            fleet.expect_workers(n);
            fleet.with_sched(|s| s.worker_left(key));
        }
        self.connected.send_modify(|c| *c -= 1);
    }

    /// One worker message → the fleet it concerns → the reply to send down, if any.
    fn handle(&self, key: WorkerKey, name: &str, msg: Up) -> Option<Down> {
        match msg {
            Up::Hello(_) => {
                warn!("worker {name:?} sent a second Hello; ignored");
                None
            }
            Up::LeaseRequest(req) => Some(self.lease(key, name, req)),
            Up::Heartbeat(hb) => {
                let mut by_fleet: HashMap<u64, (Fleet, Vec<u64>)> = HashMap::new();
                {
                    let st = self.lock();
                    for global in hb.active_leases {
                        if let Some((fleet, local)) = route(&st, global) {
                            by_fleet
                                .entry(fleet.0)
                                .or_insert((fleet.1, Vec::new()))
                                .1
                                .push(local);
                        }
                    }
                }
                // A fleet that took one of these leases back for lack of progress answers with a
                // Shutdown for this worker (see crate::sched, progress deadline).
                let mut reply = None;
                for (_, (fleet, active_leases)) in by_fleet {
                    let hb = pb::Heartbeat { active_leases };
                    reply = reply.or(fleet.handle_message(key, name, Up::Heartbeat(hb)));
                }
                reply
            }
            Up::Result(mut result) => {
                let success = is_success(&result);
                let routed = {
                    let mut st = self.lock();
                    let routed = route(&st, result.lease_id);
                    let job = routed.as_ref().and_then(|((id, _), _)| {
                        let f = st.fleets.iter_mut().find(|f| f.id == *id)?;
                        if success {
                            f.rate.push(Instant::now());
                        }
                        Some(f.job.clone())
                    });
                    routed.zip(job)
                };
                let Some((((_, fleet), local), job)) = routed else {
                    debug!(
                        "worker {name:?}: result for lease {} of a detached fleet dropped",
                        result.lease_id
                    );
                    return None;
                };
                if success {
                    let step = fleet
                        .with_sched(|s| s.lease_task_name(local).map(str::to_string))
                        .unwrap_or_default();
                    self.metrics.item_done(key, &job, &step);
                }
                result.lease_id = local;
                fleet.handle_message(key, name, Up::Result(result));
                None
            }
            Up::ModelReady(mut ready) => {
                if let Some(((_, fleet), local)) = route(&self.lock(), ready.lease_id) {
                    ready.lease_id = local;
                    fleet.handle_message(key, name, Up::ModelReady(ready));
                }
                None
            }
            Up::LeaseDone(mut done) => {
                let stopping = done.stopping;
                let routed = {
                    let mut st = self.lock();
                    if let Some(w) = st.workers.get_mut(&key) {
                        w.leases.remove(&done.lease_id);
                    }
                    route(&st, done.lease_id)
                };
                if let Some(((_, fleet), local)) = routed {
                    done.lease_id = local;
                    fleet.handle_message(key, name, Up::LeaseDone(done));
                }
                // A stopping worker waits for this acknowledgement before it exits.
                stopping.then(|| {
                    Down::Shutdown(pb::Shutdown {
                        reason: "lease returned".into(),
                    })
                })
            }
        }
    }

    /// Offers the worker to the attached fleets in preference order (module docs).
    fn lease(&self, key: WorkerKey, name: &str, req: pb::LeaseRequest) -> Down {
        let (candidates, held) = {
            let st = self.lock();
            let held = st
                .workers
                .get(&key)
                .map(|w| w.models.clone())
                .unwrap_or_default();
            let mut with_model = Vec::new();
            let mut others = Vec::new();
            for f in &st.fleets {
                let (queued, holds) = f.fleet.with_sched(|s| {
                    let models = s.queued_models();
                    (!models.is_empty(), models.iter().any(|m| held.contains(*m)))
                });
                match (queued, holds) {
                    (false, _) => {}
                    (true, true) => with_model.push((f.id, f.fleet.clone())),
                    (true, false) => others.push((f.id, f.fleet.clone())),
                }
            }
            with_model.extend(others);
            (with_model, held)
        };
        for (id, fleet) in candidates {
            let Some(Down::Lease(mut lease)) =
                fleet.handle_message(key, name, Up::LeaseRequest(req))
            else {
                continue;
            };
            let model = lease
                .model
                .as_ref()
                .map_or("", |m| m.key.as_str())
                .to_string();
            let mut st = self.lock();
            let Some(pos) = st.fleets.iter().position(|f| f.id == id) else {
                // Detached meanwhile: that fleet is stopping, its lease goes nowhere.
                continue;
            };
            let global = st.next_lease;
            st.next_lease += 1;
            st.leases.insert(global, (id, lease.lease_id));
            st.fleets[pos].leases.push(global);
            let job = st.fleets[pos].job.clone();
            if let Some(w) = st.workers.get_mut(&key) {
                w.leases.insert(global);
                w.models.insert(model.clone());
                w.lease_jobs.push(job.clone());
                if w.lease_jobs.len() > LEASE_LOG {
                    w.lease_jobs.remove(0);
                }
            }
            drop(st);
            let load = self.metrics.lease_given(key, &model);
            debug!(
                "lease {global} ({} items of job {job}, {}) → worker {name:?}{}",
                lease.items.len(),
                lease.task,
                if held.contains(&model) {
                    ", which holds its model"
                } else if load {
                    ", which loads its model"
                } else {
                    ""
                }
            );
            lease.lease_id = global;
            return Down::Lease(lease);
        }
        Down::NoWork(pb::NoWork {
            retry_after_ms: self.opts.no_work_retry.as_millis() as u64,
        })
    }
}

/// The attachment and fleet of hub-wide lease `global`, and the fleet's own lease id.
fn route(st: &State, global: u64) -> Option<((u64, Fleet), u64)> {
    let &(id, local) = st.leases.get(&global)?;
    let fleet = st.fleets.iter().find(|f| f.id == id)?.fleet.clone();
    Some(((id, fleet), local))
}

/// The `Fleet` gRPC service of the hub.
pub struct HubService {
    pub hub: Arc<Hub>,
}

#[tonic::async_trait]
impl FleetRpc for HubService {
    type ConnectStream = DownStream;

    async fn connect(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<DownStream>, Status> {
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let hub = &self.hub;
        let hello = read_hello(&mut inbound, hub.opts.hello_timeout).await?;
        let key = hub.next_worker.fetch_add(1, Ordering::Relaxed);
        let from = peer.map_or_else(|| "?".into(), |a| a.to_string());
        info!(
            "worker {:?} joined from {from} (device {}, holding {:?})",
            hello.worker_id, hello.device, hello.models_held
        );
        hub.joined(key, &hello);
        let job_id = match hub.opts.job_id.as_str() {
            "" => "serve",
            id => id,
        };
        let (tx, rx) = welcome(job_id, hub.opts.heartbeat_interval);
        tokio::spawn(session(hub.clone(), key, hello.worker_id, inbound, tx));
        Ok(Response::new(rx))
    }
}

/// Serves one worker stream until it closes or the hub shuts down.
async fn session(
    hub: Arc<Hub>,
    key: WorkerKey,
    name: String,
    mut inbound: Streaming<pb::WorkerMessage>,
    tx: DownSender,
) {
    relay_worker_stream(
        &name,
        &mut inbound,
        &tx,
        hub.shutdown.subscribe(),
        &hub.gate,
        |msg| hub.handle(key, &name, msg),
    )
    .await;
    hub.left(key);
    info!("worker {name:?} left");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{Scheduler, TaskSpec};

    /// A fleet with one task of `n` generate items needing model `model`.
    fn fleet(model: &str, n: usize) -> Fleet {
        let mut sched = Scheduler::new(Default::default());
        let template = pb::Lease {
            model: Some(pb::ModelSpec {
                key: model.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let items = (0..n)
            .map(|i| pb::WorkItem {
                item_id: i.to_string(),
                payload: Some(pb::work_item::Payload::Generate(Default::default())),
            })
            .collect();
        sched
            .add_task(TaskSpec {
                name: "step1".into(),
                template,
                items,
            })
            .unwrap();
        Fleet::new(FleetOptions::default(), sched)
    }

    fn lease(hub: &Hub) -> pb::Lease {
        match hub.handle(7, "w", Up::LeaseRequest(pb::LeaseRequest { max_items: 2 })) {
            Some(Down::Lease(lease)) => lease,
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    fn result(lease_id: u64, item: &str) -> Up {
        Up::Result(pb::ItemResult {
            lease_id,
            item_id: item.into(),
            outcome: Some(pb::item_result::Outcome::Generate(Default::default())),
        })
    }

    #[test]
    fn a_held_model_goes_first_lease_ids_are_translated_and_detached_fleets_drop_results() {
        let hub = Hub::new(FleetOptions::default(), Metrics::new());
        let (a, b) = (fleet("A", 2), fleet("B", 2));
        let id_a = hub.attach("job-1", 1, &a, "step1");
        hub.attach("job-2", 2, &b, "step1");
        hub.joined(
            7,
            &pb::Hello {
                worker_id: "w".into(),
                models_held: vec!["B".into()],
                ..Default::default()
            },
        );
        // Job 2 is younger, but the worker holds its model.
        let first = lease(&hub);
        assert_eq!(first.model.as_ref().unwrap().key, "B");
        assert_eq!(first.lease_id, 1);
        // Both fleets number their first lease 1; the hub's ids differ.
        let second = lease(&hub);
        assert_eq!(second.model.as_ref().unwrap().key, "A");
        assert_eq!(second.lease_id, 2);
        assert_eq!(hub.gauges().leases_outstanding, 2);

        assert_eq!(hub.handle(7, "w", result(2, "0")), None);
        assert_eq!(a.with_sched(|s| s.progress().done), 1);
        assert_eq!(b.with_sched(|s| s.progress().done), 0);
        assert_eq!(hub.job_progress("job-1")[0].progress.done, 1);

        let (label, progress) = hub.detach(id_a).unwrap();
        assert_eq!((label.as_str(), progress.done), ("step1", 1));
        hub.handle(7, "w", result(2, "1"));
        assert_eq!(a.with_sched(|s| s.progress().done), 1, "dropped");
        assert_eq!(hub.gauges().leases_outstanding, 1);
        assert_eq!(hub.workers()[0].leases, 1);
        assert_eq!(hub.workers()[0].lease_jobs, ["job-2", "job-1"]);

        // Nothing left to lease: NoWork, never Shutdown (the fleet outlives its jobs).
        assert!(matches!(
            hub.handle(7, "w", Up::LeaseRequest(pb::LeaseRequest { max_items: 2 })),
            Some(Down::NoWork(_))
        ));
        // A stopping worker's LeaseDone is acknowledged even for a lease nobody knows.
        assert!(matches!(
            hub.handle(
                7,
                "w",
                Up::LeaseDone(pb::LeaseDone {
                    lease_id: 99,
                    stopping: true
                })
            ),
            Some(Down::Shutdown(_))
        ));
    }
}
