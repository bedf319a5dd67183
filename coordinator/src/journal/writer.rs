//! The journal's writer thread. Results reach it through a channel (the gRPC threads never wait
//! on the disk); it writes whatever has queued up as one `write` of whole lines, so a crash tears
//! at most the last line, and calls `fdatasync` at most once per [`SYNC_EVERY`] and at the end.
//!
//! Guarantees: a result is in the file (the OS's page cache) as soon as the thread has drained
//! the channel, typically well under a millisecond after it was accepted, so it survives the
//! coordinator being killed (`kill -9`); it is on the disk within [`SYNC_EVERY`] (plus the write),
//! so a power cut loses at most about that much. What is lost is only recomputed on resume.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
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
    Result(String, pb::ItemResult),
    /// Write what is queued, sync, and end the thread.
    Finish,
}

/// A running writer thread.
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    thread: JoinHandle<std::io::Result<u64>>,
}

impl Writer {
    /// Starts the thread appending to `file` (opened for appending, at the end of whole lines).
    pub fn spawn(file: File, path: PathBuf) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("evalfleet-journal".into())
            .spawn(move || {
                let result = write_loop(file, &rx);
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

fn write_loop(mut file: File, rx: &mpsc::Receiver<Msg>) -> std::io::Result<u64> {
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
        while let Some(msg) = next.take() {
            match msg {
                Msg::Result(task, r) => {
                    lines::push_result(&mut buf, &task, &r);
                    written += 1;
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
