//! Stopping on SIGINT/SIGTERM. [`install`] (called once by the binary) listens for both
//! signals for the whole process:
//!
//! - While a fleet runs (it holds a [`Graceful`] guard), the first signal is handed to it through
//!   [`requested`]: it stops leasing, tells its workers to shut down, flushes the journal and
//!   returns [`crate::run::RunError::Interrupted`] with a message on how to resume.
//! - A second signal, or a first one while no fleet runs (loading data, scoring: nothing in
//!   flight that the journal does not already hold), exits at once with status 130.
//!   The journal stays intact: its writer only ever appends whole lines, and a torn last line is
//!   ignored on resume.
//! - While a step writes its result files (it holds a [`Writing`] guard), every signal waits
//!   until the last of them is written (at most [`WRITING_GRACE`]), then the process exits with
//!   status 130: a stop never leaves some files new and the others old.
//!
//! Without [`install`] (the library used from tests or other programs) nothing is caught and
//! [`requested`] never resolves.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// Exit status after a signal (128 + SIGINT, the shell's convention for "interrupted").
pub const EXIT_INTERRUPTED: u8 = 130;

/// `Some(signal name)` once the first signal arrived.
static STOP: OnceLock<watch::Sender<Option<&'static str>>> = OnceLock::new();
/// Fleets currently able to stop gracefully.
static GRACEFUL: AtomicUsize = AtomicUsize::new(0);
/// Sets of result files being written ([`Writing`]).
static WRITING: AtomicUsize = AtomicUsize::new(0);
/// A signal came while files were being written: exit when the last [`Writing`] ends.
static EXIT_AFTER_WRITING: AtomicBool = AtomicBool::new(false);
/// The longest a signal waits for result files being written.
pub const WRITING_GRACE: Duration = Duration::from_secs(10);

/// Starts listening for SIGINT and SIGTERM (call inside the runtime, once).
pub fn install() -> std::io::Result<()> {
    let tx = STOP.get_or_init(|| watch::Sender::new(None));
    let mut signals = Signals::new()?;
    tokio::spawn(async move {
        loop {
            let name = signals.next().await;
            let first = tx.borrow().is_none();
            if WRITING.load(Ordering::SeqCst) > 0 {
                if !EXIT_AFTER_WRITING.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "evalfleet: {name}: exiting once the result files being written are \
                             complete"
                    );
                    tokio::spawn(async {
                        tokio::time::sleep(WRITING_GRACE).await;
                        eprintln!("evalfleet: the result files took too long; exiting");
                        std::process::exit(EXIT_INTERRUPTED.into());
                    });
                }
                // The last writer's guard exits (it may have ended while this was decided).
                if WRITING.load(Ordering::SeqCst) == 0 {
                    std::process::exit(EXIT_INTERRUPTED.into());
                }
            } else if first && GRACEFUL.load(Ordering::SeqCst) > 0 {
                eprintln!(
                    "evalfleet: {name}: stopping (workers are told to stop, the journal is \
                     flushed); send it again to exit at once"
                );
                tx.send_replace(Some(name));
            } else {
                eprintln!(
                    "evalfleet: {name}: exiting at once; the journal keeps every result written \
                     so far (run the same command again to resume)"
                );
                std::process::exit(EXIT_INTERRUPTED.into());
            }
        }
    });
    Ok(())
}

/// Held while a fleet runs: the first signal is then a graceful stop (see the module docs).
pub struct Graceful(());

impl Graceful {
    pub fn new() -> Self {
        GRACEFUL.fetch_add(1, Ordering::SeqCst);
        Graceful(())
    }
}

impl Default for Graceful {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Graceful {
    fn drop(&mut self) {
        GRACEFUL.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Held while a step writes its result files: a signal then waits until they are all written
/// (see the module docs).
pub struct Writing(());

impl Writing {
    pub fn new() -> Self {
        WRITING.fetch_add(1, Ordering::SeqCst);
        Writing(())
    }
}

impl Default for Writing {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if WRITING.fetch_sub(1, Ordering::SeqCst) == 1 && EXIT_AFTER_WRITING.load(Ordering::SeqCst)
        {
            eprintln!("evalfleet: the result files are complete; exiting");
            std::process::exit(EXIT_INTERRUPTED.into());
        }
    }
}

/// Resolves with the signal's name once a graceful stop was requested; never without
/// [`install`].
pub async fn requested() -> &'static str {
    let Some(tx) = STOP.get() else {
        return std::future::pending().await;
    };
    let mut rx = tx.subscribe();
    // The name is copied out in its own statement: the watch guard (not `Send`) must not live
    // across the await below, so that drivers awaiting this can run on spawned tasks
    // (`evalfleet serve` runs each job on one).
    let name = rx
        .wait_for(Option::is_some)
        .await
        .ok()
        .map(|name| (*name).unwrap_or("a signal"));
    match name {
        Some(name) => name,
        // The sender is a static: never dropped.
        None => std::future::pending().await,
    }
}

/// SIGINT and SIGTERM as one stream.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Signals {})
    }

    #[cfg(unix)]
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
