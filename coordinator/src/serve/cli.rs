//! The `evalfleet serve`, `submit`, `status` and `cancel` subcommands: arguments and glue.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{ServeOptions, control, view};

/// `evalfleet serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve workers and job control on ADDR (e.g. 0.0.0.0:50051).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// File whose first line is the bearer token workers must present (default:
    /// $EVALFLEET_WORKER_TOKEN). It opens only the worker port's Fleet service, never job control.
    #[arg(long, value_name = "FILE")]
    pub worker_token_file: Option<PathBuf>,
    /// File whose first line is the bearer token `evalfleet submit` / `status` / `cancel` must
    /// present (default: $EVALFLEET_CONTROL_TOKEN). It must differ from the worker token; both
    /// need at least 16 characters.
    #[arg(long, value_name = "FILE")]
    pub control_token_file: Option<PathBuf>,
    /// Refused: serve takes two tokens (--worker-token-file, --control-token-file).
    #[arg(long, value_name = "FILE", hide = true)]
    pub token_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (items done per job and step, items per
    /// second per worker, leases outstanding, workers, model loads).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Jobs that run at once (they share the workers); more wait in the queue. Jobs writing to
    /// the same output directory never run at once.
    #[arg(long, default_value_t = 4)]
    pub max_jobs: usize,
    /// Keep the job queue here (one JSON record per job): started again with the same folder,
    /// the coordinator lists its jobs again and re-runs those that were queued or running, which
    /// resume from their journals. Without it, the queue lives in memory only.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Local worker processes to start next to the coordinator (default 0: external workers
    /// only, `evalfleet-worker --coordinator URL`). One that dies is started again (see
    /// --max-worker-restarts).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Start the local workers on the CPU even when GPUs are visible.
    #[arg(long)]
    pub cpu: bool,
    /// A cap on items per lease and sequences run together for each local worker (default: no
    /// cap: each job's own batch size decides, its YAML `batch_size`, else 8).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<u32>,
    /// Serve over TLS with this PEM certificate chain (and --tls-key); workers and clients then
    /// dial https://... with --tls-ca. Not with --workers.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A folder submitted jobs may write into (output_dir, save_dir, a sweep's folder), and
    /// read from; repeat for several. Paths are checked after resolving `..` and symlinks; a
    /// job naming anything else is refused at submit. Required, unless --allow-any-path.
    #[arg(long, value_name = "DIR")]
    pub allow_output_root: Vec<PathBuf>,
    /// A folder submitted jobs may read from (models, adapters, data sets, task folders,
    /// checkpoints); repeat for several. The output roots are readable too.
    #[arg(long, value_name = "DIR")]
    pub allow_input_root: Vec<PathBuf>,
    /// Let submitted jobs read and write any path this coordinator can (only for a coordinator
    /// that you alone submit to).
    #[arg(long)]
    pub allow_any_path: bool,
    /// Ended jobs kept (listed by status, saved in --state-dir): the N that ended last; older
    /// ones are forgotten and their records removed. Queued and running jobs are always kept.
    #[arg(long, value_name = "N", default_value_t = super::jobs::DEFAULT_KEEP_JOBS)]
    pub keep_jobs: usize,
    /// Ended jobs are also forgotten DAYS after they ended.
    #[arg(long, value_name = "DAYS", default_value_t = super::jobs::DEFAULT_KEEP_DAYS)]
    pub keep_job_days: u64,
    #[command(flatten)]
    pub limits: crate::rpc::limit_args::LimitArgs,
}

/// Where a long-lived coordinator is and its token.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The coordinator's URL (as `evalfleet serve` prints it).
    #[arg(
        long,
        env = "EVALFLEET_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// File whose first line is the coordinator's control token, the one `evalfleet serve` was
    /// given with --control-token-file (default: $EVALFLEET_CONTROL_TOKEN). The worker token is
    /// refused here.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate(s) of the CA that signed the coordinator's certificate (needed for an
    /// https:// coordinator).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

/// `evalfleet submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job YAML (what `evalfleet run` takes, or an `evalfleet sweep` YAML, recognised by its
    /// `checkpoints` key). Its text is sent to the coordinator, and the
    /// paths in it (models, data sets, output_dir) are resolved THERE, against the coordinator's
    /// working directory: use paths the coordinator can see (absolute, or shared volumes).
    pub yaml: PathBuf,
    /// Discard the result journal of an earlier, unfinished run of the job and start over.
    #[arg(long)]
    pub restart: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `evalfleet status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One job (default: every job, and the workers).
    pub job: Option<String>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Show at most N jobs (default: all, fetched page by page).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Show only the jobs submitted after job number SEQ (its `submitted_seq`; the number in
    /// `job-SEQ`).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `evalfleet cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job to cancel (as `evalfleet submit` printed it).
    pub job: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `evalfleet serve` until SIGINT/SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.token_file.is_none(),
        "evalfleet serve takes two tokens: --worker-token-file (workers) and \
         --control-token-file (submit, status, cancel), not --token-file"
    );
    super::serve(ServeOptions {
        listen: args.listen,
        worker_token_file: args.worker_token_file,
        control_token_file: args.control_token_file,
        metrics_listen: args.metrics_listen,
        max_jobs: args.max_jobs,
        state_dir: args.state_dir,
        workers: args.workers,
        cpu_only: args.cpu,
        batch_size: args.batch_size,
        worker_bin: None,
        fleet: crate::rpc::FleetOptions {
            limits: args.limits.limits(),
            sched: args.limits.sched(),
            restarts: args.limits.restarts(),
            ..Default::default()
        },
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| crate::rpc::tls::TlsFiles { cert, key }),
        output_roots: args.allow_output_root,
        input_roots: args.allow_input_root,
        any_path: args.allow_any_path,
        retention: super::jobs::Retention {
            max_ended: args.keep_jobs,
            max_age: std::time::Duration::from_secs(args.keep_job_days.saturating_mul(86400)),
        },
    })
    .await?;
    Ok(())
}

/// Where the coordinator is, its token, and the CA to check its certificate with.
fn target(client: &ClientArgs) -> anyhow::Result<control::Target> {
    Ok(control::Target {
        url: client.coordinator.clone(),
        token: crate::local::read_token_from(
            client.token_file.as_deref(),
            "--token-file",
            crate::local::CONTROL_TOKEN_ENV,
        )?,
        tls_ca: client.tls_ca.clone(),
    })
}

/// `evalfleet submit`: prints the job id.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let id = control::submit(&target(&args.client)?, &args.yaml, args.restart).await?;
    println!("{id}");
    Ok(())
}

/// `evalfleet status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let to = target(&args.client)?;
    let reply = control::status(&to, args.job.as_deref(), args.after, args.limit).await?;
    if args.json {
        println!("{}", view::json(&reply));
    } else {
        print!("{}", view::table(&reply, args.job.is_some()));
        if reply.next_after_seq != 0 {
            println!(
                "(more jobs: evalfleet status --after {})",
                reply.next_after_seq
            );
        }
        if reply.workers_omitted > 0 {
            println!(
                "({} more workers not shown: the reply would be too large)",
                reply.workers_omitted
            );
        }
    }
    Ok(())
}

/// `evalfleet cancel`: prints the job's state afterwards.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let state = control::cancel(&target(&args.client)?, &args.job).await?;
    println!("{} {state}", args.job);
    Ok(())
}

/// `evalfleet run --metrics-listen ADDR`: serves the metrics of the job's fleet on ADDR until
/// the returned server is dropped; the registry goes to the fleet
/// ([`super::job_fleet::JobFleet::start`]).
pub async fn run_metrics(
    listen: Option<SocketAddr>,
) -> anyhow::Result<Option<(super::http::MetricsServer, Arc<super::metrics::Metrics>)>> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    let metrics = super::metrics::Metrics::new();
    let server = super::http::MetricsServer::start(listener, metrics.clone())?;
    // On stdout next to `listening on`, for scripts that scrape.
    println!("metrics on http://{}/metrics", server.addr);
    Ok(Some((server, metrics)))
}
