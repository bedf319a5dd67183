//! The result journal: every accepted item result is appended to
//! `<output_dir>/.evalfleet-journal/<step>.jsonl` as it arrives, so that a coordinator that is
//! killed, stopped or loses power resumes where it was: the same command on the same output
//! directory recomputes only the items the journal lacks.
//!
//! - Format ([`lines`]): a header line with the job's [`Fingerprint`] (step, tasks, models with a
//!   signature of their files, prompt and generation settings, a digest of every work item), then
//!   one JSON line per result with task and item id in clear and the result as base64 protobuf.
//! - Writing ([`writer`]): a thread appends batches of whole lines; `fdatasync` at most once a
//!   second and at the end (the guarantees are in that module's docs).
//! - Opening ([`Journal::open`]): no journal, or `restart` → a new one. A journal of the same job
//!   → its results are kept (a torn last line is ignored and cut away before appending). A journal
//!   of another job → refused, naming the parts that differ and pointing at `--restart`.
//! - Completion ([`Journal::complete`]): after the step's final files are written (atomically),
//!   the step is recorded as finished: a marker `<step>.done` beside the journal holds the
//!   fingerprint of what produced it. The journal stays until the whole job (every step of `run`,
//!   every step of a sweep's checkpoint) has written its files; then [`remove_finished`] deletes
//!   the finished journals, with their folder if empty. So a job interrupted in a later step
//!   computes nothing again for the steps it finished: their journals hold every result, the
//!   re-run takes them all (its log says the step was finished and `0 results computed`), starts
//!   no worker for them, and writes the same files again. A finished job leaves nothing behind,
//!   and a later run with other settings does not meet a stale journal.
//!
//! Failed items (every attempt failed) are not journaled: a resumed run tries them again.
//!
//! Fed tasks ([`crate::sched`]'s feeds, e.g. step 2 chained on step 1, step 4's reward items fed
//! from its generations) share one journal with their producer: on resume the producer's results
//! are marked done first, which re-creates the fed items they made, then the fed items' own
//! results are marked (so a resume knows which fed items exist without storing them).
//!
//! Timing: the journal also keeps each task's generation time up to its latest result (see
//! [`writer`]), and [`Journal::prior_elapsed`] gives a resumed run the time of the earlier runs,
//! so that `predict_runtime` and the per-second figures cover the whole job.
//!
//! ## Using it from a step driver (steps 1, 2 and 3 do exactly this)
//!
//! ```ignore
//! let task = my_task(cfg, ...);                       // the TaskSpecs the fleet will run
//! let journal = setup.attach_journal(&cfg.output_dir, "step3", std::slice::from_ref(&task))?;
//! let run = run_fleet(vec![task], &setup, "step3").await?;   // preloads, journals, flushes
//! ... compute and write the final files atomically ...
//! journal.complete()?;
//! ```
//!
//! `FleetSetup::attach_journal` (in `run`: the journal does not know the fleet) opens the journal
//! and puts it into the fleet's setup; `run_fleet` then marks its results done in the scheduler
//! before any lease ([`Journal::preload`]), hands every accepted result to it ([`Journal::sink`])
//! and flushes it when the fleet stops ([`Journal::finish_writing`]), also on SIGINT/SIGTERM.
//! Each separate fleet run of a step needs its own journal name.

pub mod fingerprint;
pub mod lines;
pub mod writer;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use fingerprint::Fingerprint;
use lines::{Entry, Header};
use writer::{Msg, Timing, Writer};

use crate::output;
use crate::rpc::ResultSink;
use crate::sched::{PreloadError, Scheduler, TaskSpec};

/// The folder under an output directory that holds the journals.
pub const JOURNAL_DIR: &str = ".evalfleet-journal";
/// The extension of a finished step's marker, beside its journal (`<step>.done`).
const DONE_EXT: &str = "done";

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "journal {path} is damaged: {message}. Move it away, or pass --restart to discard it and start over"
    )]
    Damaged { path: PathBuf, message: String },
    #[error(
        "journal {path} belongs to another job: {what}. It holds {results} results of that job. \
         Run that job's command to finish it, or pass --restart to discard the journal and start \
         this job over"
    )]
    OtherJob {
        path: PathBuf,
        what: String,
        results: usize,
    },
    #[error("journal {path}, result of {task} item {item:?}: {message}")]
    BadEntry {
        path: PathBuf,
        task: String,
        item: String,
        message: String,
    },
}

/// An open journal (see the module docs). Shared by the step driver and the fleet run.
pub struct Journal {
    path: PathBuf,
    step: String,
    /// Results from an earlier run, until [`Journal::preload`] hands them to the scheduler.
    loaded: Mutex<Vec<Entry>>,
    loaded_count: usize,
    writer: Mutex<Option<Writer>>,
    /// Results appended by this run (known once writing has finished).
    appended: Mutex<Option<u64>>,
    /// The earlier runs' generation times and this run's clock (see [`writer`]).
    timing: Arc<Timing>,
    /// The hash of the job's fingerprint (the header's).
    fingerprint: String,
    /// An earlier run of the job finished this step with the same fingerprint (its marker).
    finished: bool,
    /// Per task: results read from disk, and results this run handed to the writer.
    counts: Arc<Mutex<std::collections::BTreeMap<String, TaskCounts>>>,
}

/// How many results of one task came from the journal and how many this run computed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TaskCounts {
    pub loaded: u64,
    pub computed: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("loaded", &self.loaded_count)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Where step `step`'s journal lives under `output_dir`.
    pub fn path_for(output_dir: &Path, step: &str) -> PathBuf {
        output_dir.join(JOURNAL_DIR).join(format!("{step}.jsonl"))
    }

    /// Opens (or, with `restart` or none there, creates) the journal of step `step` running
    /// `tasks`, and starts its writer. See the module docs for what is refused.
    pub fn open(
        output_dir: &Path,
        step: &str,
        tasks: &[TaskSpec],
        restart: bool,
    ) -> Result<Journal, JournalError> {
        Self::open_with(output_dir, step, tasks, &[], restart)
    }

    /// [`Journal::open`] with `extra` named parts in the job's fingerprint: what the tasks do
    /// not show, such as the data a feed derives its items from.
    pub fn open_with(
        output_dir: &Path,
        step: &str,
        tasks: &[TaskSpec],
        extra: &[(String, String)],
        restart: bool,
    ) -> Result<Journal, JournalError> {
        let path = Self::path_for(output_dir, step);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let mut fp = Fingerprint::of(step, tasks);
        fp.parts.extend(extra.iter().cloned());
        let existing = match read_if_exists(&path).map_err(io)? {
            Some(_) if restart => {
                info!("{step}: --restart: discarding journal {}", path.display());
                None
            }
            other => other,
        };
        let done = done_marker(&path);
        let finished = existing.is_some() && read_marker(&done).map_err(io)? == Some(fp.hash());
        if existing.is_none() {
            // A marker without its journal (or of a discarded one) records nothing.
            remove_if_exists(&done).map_err(|source| JournalError::Io {
                path: done.clone(),
                source,
            })?;
        }
        let (entries, prior) = match existing {
            Some(bytes) => Self::resume(&path, &fp, &bytes)?,
            None => {
                let header = Header::new(step, &fp).to_line();
                output::write_atomic(&path, header.as_bytes()).map_err(|e| JournalError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                Default::default()
            }
        };
        let timing = Arc::new(Timing {
            clock: Mutex::new(None),
            prior,
        });
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        let writer = Writer::spawn(file, path.clone(), timing.clone()).map_err(io)?;
        let mut counts = std::collections::BTreeMap::<String, TaskCounts>::new();
        for e in &entries {
            counts.entry(e.task.clone()).or_default().loaded += 1;
        }
        Ok(Journal {
            path,
            step: step.to_string(),
            loaded_count: entries.len(),
            loaded: Mutex::new(entries),
            writer: Mutex::new(Some(writer)),
            appended: Mutex::new(None),
            timing,
            fingerprint: fp.hash(),
            finished,
            counts: Arc::new(Mutex::new(counts)),
        })
    }

    /// Checks an existing journal against `fp`, cuts a torn tail, returns its results and each
    /// task's generation time so far.
    fn resume(path: &Path, fp: &Fingerprint, bytes: &[u8]) -> Result<Resumed, JournalError> {
        let contents = lines::parse(bytes).map_err(|message| JournalError::Damaged {
            path: path.to_path_buf(),
            message,
        })?;
        if contents.header.fingerprint != fp.hash() {
            return Err(JournalError::OtherJob {
                path: path.to_path_buf(),
                what: describe_differences(&contents.header.fingerprint(), fp),
                results: contents.entries.len(),
            });
        }
        if contents.valid_len < bytes.len() as u64 {
            warn!(
                "journal {}: ignoring a torn last line ({} bytes, a write cut short)",
                path.display(),
                bytes.len() as u64 - contents.valid_len
            );
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(contents.valid_len).and_then(|()| f.sync_all()));
            file.map_err(|source| JournalError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok((contents.entries, contents.elapsed))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Results found on disk when it was opened.
    pub fn loaded_count(&self) -> usize {
        self.loaded_count
    }

    /// Whether an earlier run of this job finished this step (same fingerprint): every result
    /// is in the journal, nothing is computed again.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Per task (by name): results taken from the journal and results computed by this run.
    pub fn counts(&self) -> std::collections::BTreeMap<String, TaskCounts> {
        lock(&self.counts).clone()
    }

    /// "N results computed in this run, M taken from the journal", with each task's share
    /// when the journal holds several tasks.
    pub fn describe_counts(&self) -> String {
        let counts = self.counts();
        let computed: u64 = counts.values().map(|c| c.computed).sum();
        let loaded: u64 = counts.values().map(|c| c.loaded).sum();
        let mut text =
            format!("{computed} results computed in this run, {loaded} taken from the journal");
        if counts.len() > 1 {
            let each: Vec<String> = counts
                .iter()
                .map(|(task, c)| format!("{task}: {} computed, {} taken", c.computed, c.loaded))
                .collect();
            text.push_str(&format!(" ({})", each.join("; ")));
        }
        text
    }

    /// Marks every result read from disk as done in `sched` (whose tasks must be those the
    /// journal was opened for), in task order: a producer's results first, so that the items
    /// they feed exist when their own results are marked. Returns how many; a second call marks
    /// nothing.
    pub fn preload(&self, sched: &mut Scheduler) -> Result<usize, JournalError> {
        let mut entries = std::mem::take(&mut *lock(&self.loaded));
        // Stable: each task's results keep their order. Unknown tasks sort last (and fail).
        entries.sort_by_key(|e| sched.task_index(&e.task).unwrap_or(usize::MAX));
        let mut marked = 0;
        for e in entries {
            let bad = |message: String| JournalError::BadEntry {
                path: self.path.clone(),
                task: e.task.clone(),
                item: e.item.clone(),
                message,
            };
            let task = sched
                .task_index(&e.task)
                .ok_or_else(|| bad("no such task in this job".into()))?;
            match sched.mark_done(task, &e.item, e.outcome.clone()) {
                Ok(true) => marked += 1,
                Ok(false) => {}
                // Kept by an older build that did not check results on arrival: computed again
                // instead of failing every resume.
                Err(PreloadError::Invalid { why, .. }) => warn!(
                    "{}: task {}, item {:?}: ignoring an invalid journaled result ({why}); it is \
                     computed again",
                    self.path.display(),
                    e.task,
                    e.item
                ),
                Err(err) => return Err(bad(err.to_string())),
            }
        }
        if self.finished {
            info!(
                "{}: finished by an earlier run of this job: its {marked} results come from {}, \
                 nothing is computed again; its files are written again from them",
                self.step,
                self.path.display()
            );
        } else if marked > 0 {
            let total = sched.progress().total;
            info!(
                "{}: resuming from {}: {marked} of {total} items were done by an earlier run; \
                 computing the other {}",
                self.step,
                self.path.display(),
                total - sched.progress().done
            );
        }
        Ok(marked)
    }

    /// The fleet's result sink: hands each accepted result to the writer thread.
    pub fn sink(&self) -> ResultSink {
        let tx = lock(&self.writer).as_ref().map(Writer::sender);
        let counts = self.counts.clone();
        Box::new(move |task, result| {
            lock(&counts).entry(task.clone()).or_default().computed += 1;
            if let Some(tx) = &tx {
                // Fails only once writing has finished or failed (already reported).
                let _ = tx.send(Msg::Result(task, result, Instant::now()));
            }
        })
    }

    /// Sets this run's clock: when generation started (the fleet's first `ModelReady`), for the
    /// timing lines. Until it is set, and after writing ends, none are written.
    pub fn set_clock(&self, clock: impl Fn() -> Option<Instant> + Send + Sync + 'static) {
        *lock(&self.timing.clock) = Some(Box::new(clock));
    }

    /// Generation time of the earlier runs of this job: the largest of any task's (the whole
    /// fleet's, up to its last result); zero for a new journal.
    pub fn prior_elapsed(&self) -> Duration {
        self.timing
            .prior
            .values()
            .copied()
            .max()
            .unwrap_or_default()
    }

    /// Generation time of task `task` in the earlier runs, up to its last result.
    pub fn prior_elapsed_of(&self, task: &str) -> Duration {
        self.timing.prior.get(task).copied().unwrap_or_default()
    }

    /// Writes and syncs everything received, then stops writing (later results are not kept).
    /// Returns how many results this run appended. Idempotent.
    pub fn finish_writing(&self) -> Result<u64, JournalError> {
        let Some(writer) = lock(&self.writer).take() else {
            return Ok(lock(&self.appended).unwrap_or(0));
        };
        let n = writer.finish();
        // The clock may hold the fleet: let it go with the writer.
        lock(&self.timing.clock).take();
        let n = n.map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })?;
        *lock(&self.appended) = Some(n);
        Ok(n)
    }

    /// How a stopped run resumes, for the stop message.
    pub fn resume_hint(&self, done: usize, total: usize) -> String {
        format!(
            "{done} of {total} item results are saved in {}; run the same command again to resume \
             (only the {} missing items will be computed)",
            self.path.display(),
            total - done
        )
    }

    /// The step's final files are written: stops writing and records the step as finished
    /// (its marker holds the fingerprint). The journal stays until the job ends
    /// ([`remove_finished`]), so that a re-run of an interrupted job computes nothing of it.
    pub fn complete(&self) -> Result<(), JournalError> {
        self.finish_writing()?;
        let done = done_marker(&self.path);
        output::write_atomic(&done, format!("{}\n", self.fingerprint).as_bytes()).map_err(|e| {
            JournalError::Io {
                path: done.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })
    }
}

/// The job whose steps wrote into `output_dirs` has written all its files: deletes every
/// journal there that is recorded as finished (with its marker), and the journal folder once
/// empty. A journal without a marker (a step that did not finish) is kept.
pub fn remove_finished<'a>(
    output_dirs: impl IntoIterator<Item = &'a Path>,
) -> Result<(), JournalError> {
    for dir in output_dirs {
        let folder = dir.join(JOURNAL_DIR);
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let marker = entry.path();
            if marker.extension().is_none_or(|e| e != DONE_EXT) {
                continue;
            }
            let journal = marker.with_extension("jsonl");
            for path in [&journal, &marker] {
                remove_if_exists(path).map_err(|source| JournalError::Io {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        // Fails, as it should, while an unfinished journal is still there.
        let _ = fs::remove_dir(&folder);
    }
    Ok(())
}

/// The finished marker of the journal at `journal`.
fn done_marker(journal: &Path) -> PathBuf {
    journal.with_extension(DONE_EXT)
}

/// The fingerprint hash a finished marker holds, if there is one.
fn read_marker(marker: &Path) -> std::io::Result<Option<String>> {
    Ok(read_if_exists(marker)?.map(|b| String::from_utf8_lossy(&b).trim().to_string()))
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Drop for Journal {
    /// A driver that returns early (an error) without finishing still flushes what it received
    /// and ends the writer thread.
    fn drop(&mut self) {
        if let Err(e) = self.finish_writing() {
            warn!("{e}");
        }
    }
}

/// A journal's results and each task's generation time, as read on opening.
type Resumed = (Vec<Entry>, std::collections::BTreeMap<String, Duration>);

/// "its generation differs (journal: …; now: …)", every differing part named.
fn describe_differences(on_disk: &Fingerprint, now: &Fingerprint) -> String {
    let diffs = on_disk.differences(now);
    if diffs.is_empty() {
        // Same parts, different hash: a journal written by another evalfleet version.
        return "its fingerprint differs (written by another evalfleet version?)".into();
    }
    let names: Vec<&str> = diffs.iter().map(|d| d.0.as_str()).collect();
    let details: Vec<String> = diffs
        .iter()
        .map(|(name, old, new)| format!("{name}: journal {:?}, now {:?}", clip(old), clip(new)))
        .collect();
    format!(
        "its {} differ{} ({})",
        names.join(", "),
        if names.len() == 1 { "s" } else { "" },
        details.join("; ")
    )
}

fn clip(s: &str) -> String {
    const MAX: usize = 300;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn read_if_exists(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
