//! The journal's writer thread. Results reach it through a channel (the gRPC threads never wait
//! on the disk); it writes whatever has queued up as one `write` of whole lines, so a crash tears
//! at most the last line, and calls `fdatasync` at most once per [`SYNC_EVERY`] and at the end.
//!
//! Guarantees: a result is in the file (the OS's page cache) as soon as the thread has drained
//! the channel, typically well under a millisecond after it was accepted, so it survives the
//! coordinator being killed (`kill -9`); it is on the disk within [`SYNC_EVERY`] (plus the write),
//! so a power cut loses at most about that much. What is lost is only recomputed on resume.
//!
//! Timing: the sink stamps each result with the moment it was accepted. After a batch's results,
//! the thread writes one timing line per task in the batch: the task's time before this run
//! ([`Timing::prior`]) plus the time from this run's start of generation ([`Timing`]'s clock, the
//! fleet's first `ModelReady`) to the task's latest result. So the journal always holds the
//! generation time up to its last result, and a killed run loses none of it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use evalfleet_proto::v1 as pb;
use tracing::warn;

use super::lines;

/// How often written results are forced to the disk.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);
/// A batch is written once this large even if more results are waiting.
const MAX_BATCH_BYTES: usize = 1 << 20;

pub enum Msg {
    /// (task, result, when it was accepted).
    Result(String, pb::ItemResult, Instant),
    /// Write what is queued, sync, and end the thread.
    Finish,
}

/// When this run's generation started (`None` while unknown), as the fleet reports it.
pub type Clock = Box<dyn Fn() -> Option<Instant> + Send + Sync>;

/// What the timing lines are computed from (see the module docs).
#[derive(Default)]
pub struct Timing {
    /// This run's start of generation; set once the fleet exists, cleared when writing ends.
    pub clock: Mutex<Option<Clock>>,
    /// Each task's generation time over earlier runs (the journal's timing lines on opening).
    pub prior: BTreeMap<String, Duration>,
}

impl Timing {
    /// Task `task`'s generation time over every run, up to a result accepted at `at`; `None`
    /// without a clock.
    fn elapsed(&self, task: &str, at: Instant) -> Option<Duration> {
        let clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let start = clock.as_ref().and_then(|c| c())?;
        let prior = self.prior.get(task).copied().unwrap_or_default();
        Some(prior + at.saturating_duration_since(start))
    }
}

/// A running writer thread.
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    thread: JoinHandle<std::io::Result<u64>>,
}

impl Writer {
    /// Starts the thread appending to `file` (opened for appending, at the end of whole lines).
    pub fn spawn(file: File, path: PathBuf, timing: Arc<Timing>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("evalfleet-journal".into())
            .spawn(move || {
                let result = write_loop(file, &rx, &timing);
                if let Err(e) = &result {
                    warn!(
                        "journal {}: writing failed ({e}); results go on being collected, but a \
                         restart would recompute the ones not written",
                        path.display()
                    );
                }
                result
            })?;
        Ok(Writer { tx, thread })
    }

    /// A sender for the result sink.
    pub fn sender(&self) -> mpsc::Sender<Msg> {
        self.tx.clone()
    }

    /// Writes everything queued so far, syncs, stops the thread; returns how many results it
    /// wrote in all.
    pub fn finish(self) -> std::io::Result<u64> {
        // If the thread already ended on an error, the send fails and the join reports it.
        let _ = self.tx.send(Msg::Finish);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the journal thread panicked")))
    }
}

fn write_loop(mut file: File, rx: &mpsc::Receiver<Msg>, timing: &Timing) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut last_sync = Instant::now();
    // Written but not yet synced.
    let mut dirty = false;
    let mut buf = Vec::new();
    loop {
        // While something is unsynced, wake up in time to sync it even if nothing else comes.
        let first = if dirty {
            let left = SYNC_EVERY.saturating_sub(last_sync.elapsed());
            match rx.recv_timeout(left) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Msg::Finish),
            }
        } else {
            // Senders live in the result sink for as long as the fleet; ending on disconnect
            // too keeps a forgotten `finish` from leaking the thread.
            Some(rx.recv().unwrap_or(Msg::Finish))
        };
        let mut finish = false;
        let mut next = first;
        // Each task's latest result in this batch.
        let mut latest: BTreeMap<String, Instant> = BTreeMap::new();
        while let Some(msg) = next.take() {
            match msg {
                Msg::Result(task, r, at) => {
                    lines::push_result(&mut buf, &task, &r);
                    written += 1;
                    let last = latest.entry(task).or_insert(at);
                    *last = at.max(*last);
                }
                Msg::Finish => finish = true,
            }
            if !finish && buf.len() < MAX_BATCH_BYTES {
                next = match rx.try_recv() {
                    Ok(msg) => Some(msg),
                    Err(mpsc::TryRecvError::Disconnected) => Some(Msg::Finish),
                    Err(mpsc::TryRecvError::Empty) => None,
                };
            }
        }
        for (task, at) in latest {
            if let Some(elapsed) = timing.elapsed(&task, at) {
                lines::push_elapsed(&mut buf, &task, elapsed);
            }
        }
        if !buf.is_empty() {
            file.write_all(&buf)?;
            buf.clear();
            dirty = true;
        }
        if dirty && (finish || last_sync.elapsed() >= SYNC_EVERY) {
            file.sync_data()?;
            last_sync = Instant::now();
            dirty = false;
        }
        if finish {
            return Ok(written);
        }
    }
}
