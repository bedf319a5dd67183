//! Runs tasks on a fleet: binds the server, gets workers (spawned locally, external, or both),
//! waits for what the caller needs, then shuts the workers down.
//!
//! [`run_fleet`] runs a fixed set of tasks to completion and returns every outcome in item order.
//! [`RunningFleet`] is the same in steps, for drivers that act while the fleet still runs (the
//! step-1 → step-2 chain writes step 1's files as soon as step 1 completes, with step 2 going on).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::FleetKeys;
use crate::journal::{Journal, JournalError};
use crate::local::{self, LocalWorkers, SpawnOptions};
use crate::rpc::tls::ServerTls;
use crate::rpc::{Fleet, FleetObserver, FleetOptions, Listener, ServerHandle};
use crate::sched::{ItemOutcome, Scheduler, TaskSpec};
use evalfleet_console::ItemsBar;

use super::RunError;

/// Where the workers come from.
#[derive(Debug, Clone, Default)]
pub struct FleetSetup {
    /// Local worker processes to spawn; `None` = one per visible GPU, else one CPU worker.
    pub workers: Option<usize>,
    /// Tensor parallelism of each local worker: `k` makes every worker a group of k ranks (k GPUs
    /// with a process each, or k threads on the CPU), one worker to the fleet; `None` = 1.
    pub tensor_parallel_size: Option<usize>,
    /// Serve on this address (external workers may join) instead of an ephemeral loopback port.
    pub listen: Option<SocketAddr>,
    /// Token for an external fleet (else `$EVALFLEET_TOKEN`); local-only runs make a random one.
    pub token_file: Option<PathBuf>,
    /// `--batch-size`: the job's batch size (items per lease, sequences run together). After
    /// [`FleetSetup::merged_with`] it is in `options.sched.batch_size`, which every lease carries.
    pub batch_size: Option<u32>,
    /// Spawn CPU workers even when GPUs are visible.
    pub cpu_only: bool,
    /// The worker binary (default: `$EVALFLEET_WORKER_BIN`, else next to this executable).
    pub worker_bin: Option<PathBuf>,
    /// Extra arguments for every spawned worker.
    pub worker_args: Vec<String>,
    pub options: FleetOptions,
    /// The step's result journal (set by [`FleetSetup::attach_journal`]): its results are
    /// preloaded, every accepted result is appended to it, and it is flushed when the fleet stops.
    pub journal: Option<Arc<Journal>>,
    /// `--restart`: discard a journal found in the output directory instead of resuming from it.
    pub restart: bool,
    /// A long-lived fleet (`evalfleet serve`) whose workers run the tasks: no port is bound and
    /// no worker spawned; `listen`, `workers` and the worker options are then unused.
    pub host: Option<Arc<dyn FleetHost>>,
    /// Shown every served fleet's worker traffic (the metrics of `evalfleet run
    /// --metrics-listen`); unused with `host`, which observes its own workers.
    pub observer: Option<Observer>,
}

/// A job's batch size when neither the command line nor the YAML sets one.
pub const DEFAULT_BATCH_SIZE: u32 = 8;

impl FleetSetup {
    /// The one merge of the fleet options: each option from the command line, else the job
    /// YAML's key, else its default (workers: one per visible GPU or one CPU worker;
    /// tensor parallelism 1; batch size [`DEFAULT_BATCH_SIZE`]). The batch size goes into the
    /// scheduler's config, so every lease carries it to local and external workers alike.
    pub fn merged_with(&self, yaml: FleetKeys) -> FleetSetup {
        let mut setup = self.clone();
        setup.workers = self.workers.or(yaml.workers);
        setup.tensor_parallel_size = self.tensor_parallel_size.or(yaml.tensor_parallel_size);
        let yaml_batch = yaml
            .batch_size
            .map(|b| u32::try_from(b).unwrap_or(u32::MAX));
        setup.batch_size = self.batch_size.or(yaml_batch);
        setup.options.sched.batch_size = Some(setup.batch_size.unwrap_or(DEFAULT_BATCH_SIZE));
        setup
    }
}

impl FleetSetup {
    /// Opens the journal of `step` under `output_dir` for `tasks` (restarting it if
    /// `self.restart`) and sets it as `self.journal`, for `run_fleet`.
    pub fn attach_journal(
        &mut self,
        output_dir: &Path,
        step: &str,
        tasks: &[TaskSpec],
    ) -> Result<Arc<Journal>, JournalError> {
        let journal = Arc::new(Journal::open_with(
            output_dir,
            step,
            tasks,
            &[],
            self.restart,
        )?);
        self.journal = Some(journal.clone());
        Ok(journal)
    }
}

/// [`FleetSetup::observer`]: a [`FleetObserver`] (named only, in `Debug` output).
#[derive(Clone)]
pub struct Observer(pub Arc<dyn FleetObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// A long-lived fleet that lends its workers to jobs (`evalfleet serve`). A driver's
/// [`RunningFleet::start`] attaches its fleet here instead of serving it: the host routes its
/// workers' lease requests and results to the attached fleets.
pub trait FleetHost: Send + Sync + std::fmt::Debug {
    /// Starts lending workers to `fleet` (`label` names the step in status and metrics);
    /// returns the attachment for [`FleetHost::detach`]. Fails with [`RunError::Cancelled`] if
    /// the job was cancelled meanwhile, or with why the workers could not be started.
    fn attach<'a>(
        &'a self,
        fleet: &'a Fleet,
        label: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<u64, RunError>>;
    /// Stops lending workers to that fleet (it stopped, finished or not).
    fn detach(&self, attachment: u64);
    /// Resolves with what ends the job's steps early: a cancel ([`RunError::Cancelled`]),
    /// every local worker dead ([`RunError::AllWorkersDied`]); never, if nothing does.
    fn ended(&self) -> futures::future::BoxFuture<'static, RunError>;
}

/// The outcome of every item of every task, in task and item order.
#[derive(Debug)]
pub struct FleetRun {
    pub outcomes: Vec<Vec<ItemOutcome>>,
    /// The generation phase: from the first worker with its model loaded until the last result
    /// (see the [`super`] module docs).
    pub elapsed: Duration,
}

/// Runs `tasks` to completion. `label` titles the progress bar.
pub async fn run_fleet(
    tasks: Vec<TaskSpec>,
    setup: &FleetSetup,
    label: &str,
) -> Result<FleetRun, RunError> {
    let mut sched = Scheduler::new(setup.options.sched.clone());
    for task in tasks {
        sched.add_task(task)?;
    }
    let mut running = RunningFleet::start(sched, setup, label).await?;
    let result = running.wait_until(|s| s.progress().is_complete()).await;
    let elapsed = running.elapsed();
    running.stop(result.is_ok()).await;
    running.journal_stopped(result)?;
    let p = running.fleet.with_sched(|s| s.progress());
    info!("{label}: all {} items done ({} failed)", p.total, p.failed);
    let outcomes = running.fleet.with_sched(|s| {
        (0..s.task_count())
            .map(|t| {
                s.outcomes(t)
                    .iter()
                    .map(|o| o.clone().expect("complete"))
                    .collect()
            })
            .collect()
    });
    Ok(FleetRun { outcomes, elapsed })
}

/// A fleet serving a scheduler's tasks, with its workers started: wait for what you need
/// ([`RunningFleet::wait_until`]), read the scheduler ([`RunningFleet::fleet`]), then
/// [`RunningFleet::stop`].
pub struct RunningFleet {
    fleet: Fleet,
    server: Option<ServerHandle>,
    workers: Option<LocalWorkers>,
    /// External workers may join (`--listen`): all local workers dying is not the end.
    external: bool,
    label: String,
    started: Instant,
    /// `setup.journal`: preloaded, fed every accepted result, flushed by [`RunningFleet::stop`].
    journal: Option<Arc<Journal>>,
    /// `setup.host` and the attachment it gave (detached by [`RunningFleet::stop`] or on drop).
    host: Option<(Arc<dyn FleetHost>, u64)>,
    /// Every result came from the journal: nothing ran, no worker was started.
    replayed: bool,
}

impl Drop for RunningFleet {
    /// A driver dropped without [`RunningFleet::stop`] (an error, a cancelled task) must not
    /// leave its fleet attached to a host's workers.
    fn drop(&mut self) {
        if let Some((host, attachment)) = self.host.take() {
            host.detach(attachment);
        }
    }
}

impl RunningFleet {
    /// Serves `sched` (on `setup.listen`, else an ephemeral loopback port) and starts the local
    /// workers `setup` asks for. `label` titles the progress bar and the job id.
    pub async fn start(
        sched: Scheduler,
        setup: &FleetSetup,
        label: &str,
    ) -> Result<Self, RunError> {
        Self::start_with(sched, setup, label, |_| {}).await
    }

    /// [`RunningFleet::start`], calling `before_serving` with the fleet before any worker can
    /// connect: a driver that keeps several journals (a sweep: one per checkpoint and step)
    /// sets its result sink there.
    pub async fn start_with(
        mut sched: Scheduler,
        setup: &FleetSetup,
        label: &str,
        before_serving: impl FnOnce(&Fleet),
    ) -> Result<Self, RunError> {
        let mut options = setup.options.clone();
        if options.job_id.is_empty() {
            options.job_id = format!("{label}-{}", std::process::id());
        }
        if let Some(journal) = &setup.journal {
            journal.preload(&mut sched)?;
        }
        // Everything came from the journal (a step an earlier run of the job finished): no
        // worker is needed, none is started.
        let replayed = sched.task_count() > 0 && sched.progress().is_complete();
        let fleet = Fleet::new(options, sched);
        if let Some(journal) = &setup.journal {
            fleet.set_result_sink(journal.sink());
            let clock = fleet.clone();
            journal.set_clock(move || clock.model_ready_at().or_else(|| clock.first_lease_at()));
        }
        before_serving(&fleet);
        // Served by no workers of its own: none at all (replayed), or the host's.
        let hosted = |host| RunningFleet {
            fleet: fleet.clone(),
            server: None,
            workers: None,
            external: true,
            label: label.to_string(),
            started: Instant::now(),
            journal: setup.journal.clone(),
            host,
            replayed,
        };
        if replayed {
            return Ok(hosted(None));
        }
        if let Some(host) = &setup.host {
            let attachment = host.attach(&fleet, label).await?;
            return Ok(hosted(Some((host.clone(), attachment))));
        }
        if let Some(Observer(observer)) = &setup.observer {
            fleet.set_observer(observer.clone());
            observer.serving(&fleet, label);
        }
        let token = match setup.listen {
            Some(_) => local::read_token(setup.token_file.as_deref())?,
            None => local::random_token()?,
        };
        let (server, url) = serve(&fleet, setup, &token).await?;
        let tp = setup.tensor_parallel_size.unwrap_or(1);
        let devices = SpawnOptions::devices_for_groups(setup.workers, setup.cpu_only, tp)?;
        if devices.is_empty() && setup.listen.is_none() {
            server.stop();
            return Err(RunError::NoWorkers);
        }
        fleet.expect_workers(devices.len());
        let workers = if devices.is_empty() {
            None
        } else {
            match spawn_workers(setup, devices, &url, token) {
                Ok(w) => Some(w),
                Err(e) => {
                    server.stop();
                    return Err(e);
                }
            }
        };
        Ok(RunningFleet {
            fleet,
            server: Some(server),
            workers,
            external: setup.listen.is_some(),
            label: label.to_string(),
            started: Instant::now(),
            journal: setup.journal.clone(),
            host: None,
            replayed,
        })
    }

    /// The shared fleet state (the scheduler is behind [`Fleet::with_sched`]).
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Waits until `reached` holds for the scheduler (checked now and after every progress
    /// change), with the progress bar up; fails if every local worker died (unless external ones
    /// may still come) or on Ctrl-C.
    pub async fn wait_until(
        &mut self,
        reached: impl Fn(&Scheduler) -> bool,
    ) -> Result<(), RunError> {
        let fleet = &self.fleet;
        let mut progress = fleet.progress();
        // Until this returns, SIGINT/SIGTERM stop the fleet gracefully (crate::stop).
        let _graceful = crate::stop::Graceful::new();
        let bar = ItemsBar::start(&self.label, progress.borrow().total as u64);
        let goal = async {
            loop {
                let p = *progress.borrow_and_update();
                bar.set_total(p.total as u64);
                bar.set(p.done as u64);
                if fleet.with_sched(|s| reached(s)) {
                    return;
                }
                if progress.changed().await.is_err() {
                    // The sender lives in `fleet`: cannot happen while we hold it.
                    return std::future::pending().await;
                }
            }
        };
        let external = self.external;
        let all_dead = async {
            match self.workers.as_mut() {
                Some(w) if !external => w.all_exited().await,
                _ => std::future::pending().await,
            }
        };
        let ended = match &self.host {
            Some((host, _)) => host.ended(),
            None => Box::pin(std::future::pending()),
        };
        tokio::select! {
            // The goal first: once every worker has exited after `Finished`, both are ready.
            biased;
            () = goal => Ok(()),
            error = ended => Err(error),
            // Before the workers' deaths: Ctrl-C in a terminal signals local workers too.
            signal = crate::stop::requested() => Err(RunError::Interrupted {
                signal: signal.into(),
                resume: String::new(),
            }),
            report = all_dead => Err(RunError::AllWorkersDied(report)),
        }
    }

    /// The generation phase so far, as HF's predict_runtime (model already loaded): this run's
    /// ([`RunningFleet::run_elapsed`]) plus, on resume, the earlier runs' from the journal
    /// ([`Journal::prior_elapsed`]), so that a resumed job's runtime covers all of it.
    pub fn elapsed(&self) -> Duration {
        let prior = self.journal.as_ref().map(|j| j.prior_elapsed());
        self.run_elapsed() + prior.unwrap_or_default()
    }

    /// This run's generation phase so far: from the first moment a worker had its model loaded
    /// (`ModelReady`) until now. Falls back to the first lease for workers that never report
    /// it, then to the start.
    pub fn run_elapsed(&self) -> Duration {
        if self.replayed {
            return Duration::ZERO;
        }
        self.fleet
            .model_ready_at()
            .or_else(|| self.fleet.first_lease_at())
            .unwrap_or(self.started)
            .elapsed()
    }

    /// Tells the workers to exit (`ok`: the job finished, else it failed), waits for them, and
    /// stops the server. The scheduler stays readable through [`RunningFleet::fleet`].
    pub async fn stop(&mut self, ok: bool) {
        // Their exits from now on are not deaths: none is started again.
        if let Some(w) = &self.workers {
            w.stop_restarting();
        }
        self.fleet
            .shutdown_workers(if ok { "job finished" } else { "job failed" });
        if let Some((host, attachment)) = self.host.take() {
            host.detach(attachment);
        }
        if let Some(w) = self.workers.take() {
            w.shutdown(Duration::from_secs(10)).await;
        }
        self.fleet.wait_disconnected(Duration::from_secs(2)).await;
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    /// After [`RunningFleet::stop`]: flushes the journal (a failure there costs only a resume,
    /// so it is logged, not fatal), logs how many results this run computed, and on a signal
    /// puts how to resume into the error.
    pub fn journal_stopped(&self, result: Result<(), RunError>) -> Result<(), RunError> {
        let progress = self.fleet.with_sched(|s| s.progress());
        let journal = self.journal.as_deref();
        if let Some(journal) = journal {
            match journal.finish_writing() {
                Ok(_) => info!("{}: {}", self.label, journal.describe_counts()),
                Err(e) => warn!("{e}"),
            }
        }
        match result {
            Err(RunError::Interrupted { signal, .. }) => Err(RunError::Interrupted {
                signal,
                resume: journal.map_or_else(
                    || "nothing was saved: a new run starts over".to_string(),
                    |j| j.resume_hint(progress.done - progress.failed, progress.total),
                ),
            }),
            other => other,
        }
    }
}

/// Binds and serves `setup.listen` (over TLS if `setup.options.tls` names files), else an
/// ephemeral loopback port; see [`bind_listeners`]. Returns the server and the URL local
/// workers dial.
async fn serve(
    fleet: &Fleet,
    setup: &FleetSetup,
    token: &str,
) -> Result<(ServerHandle, String), RunError> {
    let (listeners, url) = bind_listeners(setup).await?;
    let bind = setup
        .listen
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    let server = fleet
        .serve_on(listeners, token)
        .map_err(|source| RunError::Bind { addr: bind, source })?;
    Ok((server, url))
}

/// Binds `setup.listen` (over TLS if `setup.options.tls` names files), else an ephemeral
/// loopback port. With TLS, local workers get a plain loopback socket of their own (as in local
/// mode: loopback only, token required). Prints `listening on <url>` for `--listen`. Returns
/// the listeners and the URL local workers dial.
pub(crate) async fn bind_listeners(
    setup: &FleetSetup,
) -> Result<(Vec<Listener>, String), RunError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let tls = match (&setup.options.tls, setup.listen) {
        (Some(files), Some(_)) => Some(ServerTls::load(files)?),
        (Some(_), None) => {
            warn!("TLS files are used only with --listen; local mode serves plain loopback");
            None
        }
        (None, _) => None,
    };
    let bind = setup.listen.unwrap_or(loopback);
    let with_tls = tls.is_some();
    let first = bind_to(bind).await?;
    let public = first
        .local_addr()
        .map_err(|source| RunError::Bind { addr: bind, source })?;
    let mut listeners = vec![Listener { socket: first, tls }];
    let mut local = public;
    if with_tls {
        let socket = bind_to(loopback).await?;
        local = socket.local_addr().map_err(|source| RunError::Bind {
            addr: loopback,
            source,
        })?;
        listeners.push(Listener { socket, tls: None });
    }
    if setup.listen.is_some() {
        let scheme = if with_tls { "https" } else { "http" };
        // On stdout, for scripts that start external workers.
        println!("listening on {scheme}://{public}");
    }
    Ok((listeners, format!("http://{local}")))
}

async fn bind_to(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// Spawns one local worker per device, connecting to `url` with `token`.
pub(crate) fn spawn_workers(
    setup: &FleetSetup,
    devices: Vec<String>,
    url: &str,
    token: String,
) -> Result<LocalWorkers, RunError> {
    let bin = match &setup.worker_bin {
        Some(bin) => bin.clone(),
        None => local::worker_binary()?,
    };
    info!(
        "starting {} local worker(s) on {} ({url})",
        devices.len(),
        devices.join(", ")
    );
    let opts = SpawnOptions {
        bin,
        coordinator_url: url.to_string(),
        token,
        devices,
        // No cap: every lease carries the job's batch size.
        batch_size: None,
        extra_args: setup.worker_args.clone(),
        tensor_parallel: setup.tensor_parallel_size.unwrap_or(1),
        restarts: setup.options.restarts,
    };
    Ok(LocalWorkers::spawn(&opts)?)
}
