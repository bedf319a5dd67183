//! `evalfleet-schedsim`: drives the real lease scheduler ([`evalfleet::sched::Scheduler`]) in
//! logical time with a simulated fleet, and prints the makespan against the ideal.
//!
//! The fleet: `--workers` workers whose speeds (cost units per second) are drawn from a fixed-seed
//! distribution spanning 4x (0.5 to 2.0, log-uniform); `--late` of them join at random times in
//! the first third of the job, and `--die` of them go silent halfway through (their lease is only
//! reclaimed when it expires, the worst case: a `kill -9` closes the connection and is noticed at
//! once). Items have log-normal costs. Each worker behaves like `evalfleet-worker`: one lease at a
//! time, asked with its batch size, items run one after the other with each result sent as it
//! finishes, heartbeats on a timer, `NoWork` answered by asking again after the coordinator's
//! retry delay.
//!
//! The ideal makespan is the time T at which the fleet's capacity, integrated over each worker's
//! presence (join to death), equals the total work: no scheduler can finish earlier. The ratio
//! makespan / ideal is what the scheduler costs (the aim is within 5%).
//!
//! Not a test: `scripts/schedsim.sh` runs it; `tests/schedsim.rs` checks that it runs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use clap::Parser;
use evalfleet::sched::{Assignment, Recorded, SchedConfig, Scheduler, TaskSpec};
use evalfleet_proto::v1 as pb;

/// Simulates a fleet on the real scheduler in logical time; prints makespan vs the ideal.
#[derive(Debug, Parser)]
#[command(name = "evalfleet-schedsim")]
struct Args {
    /// Workers in the fleet (speeds 0.5-2.0 cost units/s, log-uniform).
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Items of the job (log-normal costs, median 1).
    #[arg(long, default_value_t = 100_000)]
    items: usize,
    /// Items a worker asks for per lease (its batch size); several values: one run each.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    batch: Vec<u32>,
    /// Workers that join late (at random times in the first third of the ideal makespan).
    #[arg(long, default_value_t = 8)]
    late: usize,
    /// Workers that go silent halfway through the job.
    #[arg(long, default_value_t = 1)]
    die: usize,
    /// Seed of the speeds, costs and join times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Experiment: workers ask for at most ceil(unleased / (F * workers)) items, so leases
    /// shrink near the end of the job (0: always the batch, as evalfleet-worker does).
    #[arg(long, default_value_t = 0)]
    tail_factor: u32,
    /// Lease time to live without a heartbeat, seconds (the coordinator's default).
    #[arg(long, default_value_t = 20.0)]
    ttl: f64,
}

/// A worker's heartbeat period and the coordinator's `NoWork` retry delay (their defaults).
const HEARTBEAT_S: f64 = 5.0;
const NO_WORK_RETRY_S: f64 = 0.25;

/// splitmix64: a tiny deterministic generator, enough for a fixed-seed simulation.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// One simulated worker: speed and presence.
#[derive(Debug, Clone)]
struct Worker {
    speed: f64,
    join: f64,
    /// Goes silent at this time (never sends anything again).
    death: f64,
}

/// The fleet and the job, drawn from the seed.
struct Scenario {
    workers: Vec<Worker>,
    costs: Vec<f64>,
}

impl Scenario {
    fn draw(args: &Args) -> Scenario {
        let mut rng = Rng(args.seed);
        let costs: Vec<f64> = (0..args.items)
            .map(|_| (0.6 * rng.normal()).exp())
            .collect();
        let mut workers: Vec<Worker> = (0..args.workers)
            .map(|_| Worker {
                speed: 0.5 * 4f64.powf(rng.unit()),
                join: 0.0,
                death: f64::INFINITY,
            })
            .collect();
        // Join and death times are fractions of the ideal makespan of the full fleet.
        let full = costs.iter().sum::<f64>() / workers.iter().map(|w| w.speed).sum::<f64>();
        let n = workers.len();
        for w in workers.iter_mut().skip(n.saturating_sub(args.late)) {
            w.join = rng.unit() * full / 3.0;
        }
        for w in workers.iter_mut().take(args.die) {
            w.death = full / 2.0;
        }
        Scenario { workers, costs }
    }

    /// Total work over the capacity integrated across each worker's presence: the earliest
    /// possible finish (bisection on a monotone function).
    fn ideal(&self) -> f64 {
        let work: f64 = self.costs.iter().sum();
        let capacity = |t: f64| -> f64 {
            self.workers
                .iter()
                .map(|w| w.speed * (t.min(w.death) - w.join).max(0.0))
                .sum()
        };
        let (mut lo, mut hi) = (0.0, 1.0);
        while capacity(hi) < work {
            hi *= 2.0;
        }
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if capacity(mid) < work {
                lo = mid
            } else {
                hi = mid
            }
        }
        hi
    }
}

/// What a worker does next.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Ask for a lease.
    Request,
    /// Finish item `item` (index into the lease) of lease `lease`.
    Finish { lease: u64, index: usize },
    /// Send a heartbeat naming the running lease.
    Beat,
}

/// A timed event: (time in nanoseconds, sequence number for ties, worker, step).
type Event = Reverse<(u64, u64, usize, StepKey)>;
/// [`Step`] in an orderable form: (kind, lease, index).
type StepKey = (u8, u64, usize);

fn key(step: Step) -> StepKey {
    match step {
        Step::Request => (0, 0, 0),
        Step::Finish { lease, index } => (1, lease, index),
        Step::Beat => (2, 0, 0),
    }
}

fn unkey((kind, lease, index): StepKey) -> Step {
    match kind {
        0 => Step::Request,
        1 => Step::Finish { lease, index },
        _ => Step::Beat,
    }
}

/// The outcome of one simulated run.
struct Outcome {
    makespan: f64,
    leases: u64,
    lost_items: usize,
}

/// Runs the job on the real scheduler with every worker asking for `batch` items per lease.
fn simulate(sc: &Scenario, batch: u32, ttl: f64, tail: u32) -> Outcome {
    let mut sched = Scheduler::new(SchedConfig {
        lease_ttl: Duration::from_secs_f64(ttl),
        max_attempts: 3,
        max_lease_items: 256,
        // Item costs here are arbitrary units: only heartbeats decide whether a worker is gone.
        lease_progress_timeout: None,
        ..SchedConfig::default()
    });
    let items = (0..sc.costs.len())
        .map(|i| pb::WorkItem {
            item_id: i.to_string(),
            payload: None,
        })
        .collect();
    sched
        .add_task(TaskSpec {
            name: "sim".into(),
            template: pb::Lease::default(),
            items,
        })
        .expect("item ids are unique");
    let base = Instant::now();
    let at = |t: f64| base + Duration::from_secs_f64(t);
    let nanos = |t: f64| (t * 1e9) as u64;
    let mut queue: BinaryHeap<Event> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<Event>, t: f64, w: usize, step: Step| {
        seq += 1;
        queue.push(Reverse((nanos(t), seq, w, key(step))));
    };
    for (w, worker) in sc.workers.iter().enumerate() {
        push(&mut queue, worker.join, w, Step::Request);
        push(&mut queue, worker.join + HEARTBEAT_S, w, Step::Beat);
    }
    // The running lease of each worker: (lease id, its items' indices into `costs`).
    let mut running: Vec<Option<(u64, Vec<usize>)>> = vec![None; sc.workers.len()];
    let mut leases = 0u64;
    let mut lost_items = 0usize;
    let mut makespan = 0.0;
    while let Some(Reverse((t_ns, _, w, step))) = queue.pop() {
        let t = t_ns as f64 / 1e9;
        let now = at(t);
        for id in sched.expire(now).silent {
            lost_items += running_items_of(&running, id);
        }
        let worker = &sc.workers[w];
        if t >= worker.death {
            continue;
        }
        // Workers that have joined and not died: what the coordinator sees as connected (a
        // silent worker stays connected until its lease expires, which this slightly overstates).
        let connected = sc
            .workers
            .iter()
            .filter(|o| o.join <= t && t < o.death)
            .count();
        match unkey(step) {
            Step::Beat => {
                if let Some((id, _)) = &running[w] {
                    sched.heartbeat(w as u64, &[*id], now);
                }
                push(&mut queue, t + HEARTBEAT_S, w, Step::Beat);
            }
            Step::Request => match sched.request_lease(
                w as u64,
                ask(&sched, &running, batch, connected, tail),
                connected,
                now,
            ) {
                Assignment::Lease(lease) => {
                    leases += 1;
                    let idx: Vec<usize> = lease
                        .items
                        .iter()
                        .map(|it| it.item_id.parse().expect("numeric item id"))
                        .collect();
                    let first = sc.costs[idx[0]] / worker.speed;
                    push(
                        &mut queue,
                        t + first,
                        w,
                        Step::Finish {
                            lease: lease.lease_id,
                            index: 0,
                        },
                    );
                    running[w] = Some((lease.lease_id, idx));
                }
                Assignment::NoWork => push(&mut queue, t + NO_WORK_RETRY_S, w, Step::Request),
                Assignment::Finished => {
                    makespan = t;
                    break;
                }
                Assignment::Refused { reason } => unreachable!("a simulated worker: {reason}"),
            },
            Step::Finish { lease, index } => {
                let Some((id, idx)) = running[w].clone() else {
                    continue;
                };
                debug_assert_eq!(id, lease);
                let recorded = sched.record(
                    w as u64,
                    pb::ItemResult {
                        lease_id: lease,
                        item_id: idx[index].to_string(),
                        outcome: Some(pb::item_result::Outcome::Generate(Default::default())),
                    },
                    now,
                );
                debug_assert!(matches!(recorded, Recorded::Accepted | Recorded::Duplicate));
                if sched.progress().is_complete() {
                    makespan = t;
                    break;
                }
                if index + 1 < idx.len() {
                    let next = sc.costs[idx[index + 1]] / worker.speed;
                    push(
                        &mut queue,
                        t + next,
                        w,
                        Step::Finish {
                            lease,
                            index: index + 1,
                        },
                    );
                } else {
                    sched.lease_done(w as u64, lease);
                    running[w] = None;
                    push(&mut queue, t, w, Step::Request);
                }
            }
        }
    }
    Outcome {
        makespan,
        leases,
        lost_items,
    }
}

/// The lease size a worker asks for: its batch, or with `tail` > 0 (the experiment of
/// `--tail-factor`) at most `ceil(unleased / (tail * connected))`, so that leases shrink as the
/// queue drains and no slow worker takes a long lease at the very end. The scheduler already
/// caps a lease at `ceil(queued / connected)` (`tail` = 1).
fn ask(
    sched: &Scheduler,
    running: &[Option<(u64, Vec<usize>)>],
    batch: u32,
    connected: usize,
    tail: u32,
) -> u32 {
    if tail == 0 {
        return batch;
    }
    let progress = sched.progress();
    let in_flight: usize = running.iter().flatten().map(|(_, items)| items.len()).sum();
    let unleased = progress.total.saturating_sub(progress.done + in_flight);
    let share = unleased.div_ceil(tail as usize * connected.max(1)).max(1);
    batch.min(share as u32)
}

/// Items of lease `id` if some worker still runs it (a dead worker's, when it expires).
fn running_items_of(running: &[Option<(u64, Vec<usize>)>], id: u64) -> usize {
    running
        .iter()
        .flatten()
        .find(|(l, _)| *l == id)
        .map_or(0, |(_, items)| items.len())
}

fn main() {
    let args = Args::parse();
    let sc = Scenario::draw(&args);
    let work: f64 = sc.costs.iter().sum();
    let speed: f64 = sc.workers.iter().map(|w| w.speed).sum();
    let (slow, fast) = sc
        .workers
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), w| {
            (lo.min(w.speed), hi.max(w.speed))
        });
    let ideal = sc.ideal();
    let silent = sc.workers.iter().filter(|w| w.death.is_finite()).count();
    let silent_at = sc.workers.first().map_or(0.0, |w| w.death);
    println!(
        "{} workers (speeds {slow:.2}-{fast:.2}, total {speed:.1} units/s; {} join late, {silent} \
         go silent{}), {} items ({work:.0} units, costs {:.2}-{:.2}), lease ttl {}s",
        sc.workers.len(),
        args.late.min(sc.workers.len()),
        if silent > 0 {
            format!(" at t={silent_at:.0}s")
        } else {
            String::new()
        },
        sc.costs.len(),
        sc.costs.iter().cloned().fold(f64::INFINITY, f64::min),
        sc.costs.iter().cloned().fold(0.0, f64::max),
        args.ttl,
    );
    println!(
        "ideal makespan {ideal:.1}s (total work / total speed over each worker's presence; \
         all workers from t=0: {:.1}s)",
        work / speed
    );
    for &batch in &args.batch {
        let out = simulate(&sc, batch, args.ttl, args.tail_factor);
        println!(
            "batch {batch:>3}: makespan {:.1}s, ratio {:.4} ({:+.2}%), {} leases, {} items \
             reclaimed from expired leases",
            out.makespan,
            out.makespan / ideal,
            (out.makespan / ideal - 1.0) * 100.0,
            out.leases,
            out.lost_items,
        );
    }
}
