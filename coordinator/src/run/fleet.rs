//! Runs a set of tasks on a fleet: binds the server, gets workers (spawned locally, external, or
//! both), waits until every item has an outcome, then shuts the workers down and returns the
//! outcomes in item order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::journal::Journal;
use crate::local::{self, LocalWorkers, SpawnOptions};
use crate::progress::ItemsBar;
use crate::rpc::{Fleet, FleetOptions};
use crate::sched::{ItemOutcome, Scheduler, TaskSpec};

use super::RunError;

/// Where the workers come from.
#[derive(Debug, Clone, Default)]
pub struct FleetSetup {
    /// Local worker processes to spawn; `None` = one per visible GPU, else one CPU worker.
    pub workers: Option<usize>,
    /// Serve on this address (external workers may join) instead of an ephemeral loopback port.
    pub listen: Option<SocketAddr>,
    /// Token for an external fleet (else `$EVALFLEET_TOKEN`); local-only runs make a random one.
    pub token_file: Option<PathBuf>,
    /// `--batch-size` for spawned workers.
    pub batch_size: Option<u32>,
    /// Spawn CPU workers even when GPUs are visible.
    pub cpu_only: bool,
    /// The worker binary (default: `$EVALFLEET_WORKER_BIN`, else next to this executable).
    pub worker_bin: Option<PathBuf>,
    /// Extra arguments for every spawned worker.
    pub worker_args: Vec<String>,
    pub options: FleetOptions,
    /// The step's result journal (set by [`Journal::attach`]): its results are preloaded, every
    /// accepted result is appended to it, and it is flushed when the fleet stops.
    pub journal: Option<Arc<Journal>>,
    /// `--restart`: discard a journal found in the output directory instead of resuming from it.
    pub restart: bool,
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
    if let Some(journal) = &setup.journal {
        journal.preload(&mut sched)?;
    }
    let total = sched.progress().total;
    let mut options = setup.options.clone();
    if options.job_id.is_empty() {
        options.job_id = format!("{label}-{}", std::process::id());
    }
    let fleet = Fleet::new(options, sched);
    if let Some(journal) = &setup.journal {
        fleet.set_result_sink(journal.sink());
    }
    let token = match setup.listen {
        Some(_) => local::read_token(setup.token_file.as_deref())?,
        None => local::random_token()?,
    };
    let bind = setup
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| RunError::Bind { addr: bind, source })?;
    let server = fleet
        .serve(listener, &token)
        .map_err(|source| RunError::Bind { addr: bind, source })?;
    let url = format!("http://{}", server.addr);
    if setup.listen.is_some() {
        // On stdout, for scripts that start external workers.
        println!("listening on {url}");
    }
    let devices = SpawnOptions::devices_for(setup.workers, setup.cpu_only);
    if devices.is_empty() && setup.listen.is_none() {
        return Err(RunError::NoWorkers);
    }
    fleet.expect_workers(devices.len());
    let mut workers = if devices.is_empty() {
        None
    } else {
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
            coordinator_url: url.clone(),
            token,
            devices,
            batch_size: setup.batch_size,
            extra_args: setup.worker_args.clone(),
        };
        Some(LocalWorkers::spawn(&opts)?)
    };
    let started = Instant::now();
    let result = wait(
        &fleet,
        workers.as_mut(),
        setup.listen.is_some(),
        label,
        total,
    )
    .await;
    // The generation phase, as HF's predict_runtime (model already loaded): from the first
    // moment a worker has its model loaded (`ModelReady`) to the last result. Falls back to the
    // first lease for workers that never report it.
    let elapsed = fleet
        .model_ready_at()
        .or_else(|| fleet.first_lease_at())
        .unwrap_or(started)
        .elapsed();
    fleet.shutdown_workers(if result.is_ok() {
        "job finished"
    } else {
        "job failed"
    });
    if let Some(w) = workers {
        w.shutdown(Duration::from_secs(10)).await;
    }
    fleet.wait_disconnected(Duration::from_secs(2)).await;
    server.stop();
    journal_stopped(setup.journal.as_deref(), &fleet, label, result)?;
    let outcomes = fleet.with_sched(|s| {
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

/// Waits for completion, all local workers dying (unless external ones may still come), or Ctrl-C.
async fn wait(
    fleet: &Fleet,
    workers: Option<&mut LocalWorkers>,
    external: bool,
    label: &str,
    total: usize,
) -> Result<(), RunError> {
    // Until this returns, SIGINT/SIGTERM stop the fleet gracefully (crate::stop).
    let _graceful = crate::stop::Graceful::new();
    let bar = ItemsBar::start(label, total as u64);
    let mut progress = fleet.progress();
    let watch_bar = async {
        loop {
            bar.set(progress.borrow_and_update().done as u64);
            if progress.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let all_dead = async {
        match workers {
            Some(w) if !external => w.all_exited().await,
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        // Completion first: once every worker has exited after `Finished`, both are ready.
        biased;
        p = fleet.wait_complete() => {
            bar.set(p.done as u64);
            info!("{label}: all {} items done ({} failed)", p.total, p.failed);
            Ok(())
        }
        // Before the workers' deaths: Ctrl-C in a terminal signals local workers too.
        signal = crate::stop::requested() => Err(RunError::Interrupted {
            signal: signal.into(),
            resume: String::new(),
        }),
        report = all_dead => Err(RunError::AllWorkersDied(report)),
        never = watch_bar => never,
    }
}

/// After the stop: flushes the journal (a failure there costs only a resume, so it is logged,
/// not fatal), logs how many results this run computed, and on a signal puts how to resume
/// into the error.
fn journal_stopped(
    journal: Option<&Journal>,
    fleet: &Fleet,
    label: &str,
    result: Result<(), RunError>,
) -> Result<(), RunError> {
    let progress = fleet.with_sched(|s| s.progress());
    if let Some(journal) = journal {
        match journal.finish_writing() {
            Ok(n) => info!(
                "{label}: {n} results computed in this run, {} taken from the journal",
                journal.loaded_count()
            ),
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
