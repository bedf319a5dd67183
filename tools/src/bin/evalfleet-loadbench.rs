//! `evalfleet-loadbench`: how many item results per second the coordinator's result path takes.
//!
//! Starts the real gRPC server (bearer token, limits off) on loopback with a journal in a
//! temporary directory, and N fake workers in the same process that speak the real protocol: each
//! asks for leases and answers every item at once with a precomputed result (a fixed-size
//! `predict`), then `LeaseDone`. So the coordinator does everything it does for real workers —
//! decode, authenticate, schedule, record, hand each accepted result to the journal's writer
//! thread, which encodes and appends it — and finally the merge (every outcome collected in item
//! order, as the step drivers do). Prints results per second, the time split, the journal's size
//! and the peak resident memory (`VmHWM`, the whole process: clients included).
//!
//! Not a test: run it on a quiet machine (`scripts/bench-load.sh`). The journal takes about
//! `items × (1.4 × predict_bytes + 70)` bytes of disk (65 MiB for the defaults) until the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use evalfleet::journal::Journal;
use evalfleet::rpc::limits::Limits;
use evalfleet::rpc::{Fleet, FleetOptions};
use evalfleet::sched::{ItemOutcome, SchedConfig, Scheduler, TaskSpec};
use evalfleet_proto::PROTOCOL_VERSION;
use evalfleet_proto::v1 as pb;
use evalfleet_proto::v1::fleet_client::FleetClient;
use pb::coordinator_message::Msg as Down;
use pb::worker_message::Msg as Up;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

const TOKEN: &str = "loadbench-token";

/// Loopback load benchmark of the coordinator's result path.
#[derive(Debug, Parser)]
#[command(name = "evalfleet-loadbench")]
struct Args {
    /// Concurrent fake workers (one connection and stream each).
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Items in the job.
    #[arg(long, default_value_t = 200_000)]
    items: usize,
    /// Items each worker asks for per lease.
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Bytes of `predict` text in every result.
    #[arg(long, default_value_t = 200)]
    predict_bytes: usize,
    /// Directory for the journal (default: a new temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Runtime threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(bench(args))
}

/// The job's items: small generate prompts with ids 0..n.
fn task(n: usize) -> TaskSpec {
    let items = (0..n)
        .map(|i| pb::WorkItem {
            item_id: i.to_string(),
            payload: Some(pb::work_item::Payload::Generate(pb::GenerateItem {
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: format!("question {i}"),
                }],
                system: String::new(),
            })),
        })
        .collect();
    TaskSpec {
        name: "loadbench".into(),
        template: pb::Lease::default(),
        items,
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let spec = task(args.items);
    let journal = Arc::new(
        Journal::open(&dir, "loadbench", std::slice::from_ref(&spec), true)
            .context("opening the journal")?,
    );
    let mut sched = Scheduler::new(SchedConfig::default());
    sched.add_task(spec)?;
    let opts = FleetOptions {
        job_id: "loadbench".into(),
        limits: Limits::none(),
        ..Default::default()
    };
    let fleet = Fleet::new(opts, sched);
    fleet.set_result_sink(journal.sink());
    fleet.expect_workers(args.workers);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = fleet.serve(listener, TOKEN)?;
    let url = format!("http://{}", server.addr);
    let predict = "x".repeat(args.predict_bytes);
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let clients: Vec<_> = (0..args.workers)
        .map(|w| tokio::spawn(fake_worker(url.clone(), w, args.batch, predict.clone())))
        .collect();
    let progress = fleet.wait_complete().await;
    let received = started.elapsed();
    let merge_start = Instant::now();
    let outcomes = merge(&fleet).len();
    let merged = merge_start.elapsed();
    let flush_start = Instant::now();
    let journaled = journal.finish_writing().context("flushing the journal")?;
    let flushed = flush_start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    fleet.shutdown_workers("benchmark over");
    let mut sent = 0;
    for c in clients {
        sent += c.await??;
    }
    server.stop();
    if outcomes != args.items || progress.done != args.items || journaled != args.items as u64 {
        bail!(
            "lost results: {outcomes} merged, {} done, {journaled} journaled, of {}",
            progress.done,
            args.items
        );
    }
    let journal_bytes = std::fs::metadata(journal.path()).map_or(0, |m| m.len());
    let total = started.elapsed();
    println!(
        "{} results from {} workers (lease {} items, predict {} B), {} sent",
        args.items, args.workers, args.batch, args.predict_bytes, sent
    );
    println!(
        "receive+journal: {:.3} s = {:.0} results/s; merge {:.1} ms; journal flush {:.1} ms; total {:.0} results/s",
        received.as_secs_f64(),
        args.items as f64 / received.as_secs_f64(),
        merged.as_secs_f64() * 1e3,
        flushed.as_secs_f64() * 1e3,
        args.items as f64 / total.as_secs_f64()
    );
    println!(
        "cpu {:.2} s ({:.1} us/result, clients included); journal {:.1} MiB; peak RSS {:.1} MiB",
        cpu,
        cpu * 1e6 / args.items as f64,
        journal_bytes as f64 / (1 << 20) as f64,
        peak_rss_kib() as f64 / 1024.0
    );
    Ok(())
}

/// Every outcome collected in item order, as a step driver does (unfinished items skipped).
fn merge(fleet: &Fleet) -> Vec<ItemOutcome> {
    fleet.with_sched(|s| s.outcomes(0).iter().flatten().cloned().collect())
}

/// One fake worker: leases until Shutdown, answering every item with the same result text.
/// Returns how many results it sent.
async fn fake_worker(url: String, n: usize, batch: u32, predict: String) -> anyhow::Result<usize> {
    let channel = Endpoint::from_shared(url)?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse()?;
    let mut client = FleetClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", auth.clone());
        Ok(req)
    });
    let (tx, rx) = mpsc::channel(1024);
    let up = |m: Up| pb::WorkerMessage { msg: Some(m) };
    tx.send(up(Up::Hello(pb::Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_id: format!("bench-{n}"),
        device: "cpu".into(),
        ..Default::default()
    })))
    .await?;
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    let mut sent = 0;
    loop {
        let Some(message) = inbound.message().await? else {
            return Ok(sent);
        };
        match message.msg {
            Some(Down::Welcome(_)) | Some(Down::NoWork(_)) => {
                if matches!(message.msg, Some(Down::NoWork(_))) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tx.send(up(Up::LeaseRequest(pb::LeaseRequest { max_items: batch })))
                    .await?;
            }
            Some(Down::Lease(lease)) => {
                for item in lease.items {
                    let result = pb::ItemResult {
                        lease_id: lease.lease_id,
                        item_id: item.item_id,
                        outcome: Some(pb::item_result::Outcome::Generate(pb::GenerateResult {
                            predict: predict.clone(),
                            ..Default::default()
                        })),
                    };
                    tx.send(up(Up::Result(result))).await?;
                    sent += 1;
                }
                tx.send(up(Up::LeaseDone(pb::LeaseDone {
                    lease_id: lease.lease_id,
                    stopping: false,
                })))
                .await?;
                tx.send(up(Up::LeaseRequest(pb::LeaseRequest { max_items: batch })))
                    .await?;
            }
            Some(Down::Shutdown(_)) => return Ok(sent),
            None => {}
        }
    }
}

/// User plus system CPU time of this process so far (from /proc; 0 where unavailable).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size in KiB (`VmHWM` of /proc/self/status; 0 where unavailable).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
