//! Liveness of a multi-process group: every rank holds an exclusive lock on its own "alive"
//! file beside the group's init file for as long as its process lives, and watches the others'
//! with a blocking shared lock. The kernel drops a dead process's locks, so a watcher wakes
//! exactly when the rank it watches has exited (normally or not): no polling, no timeout. A
//! follower then exits (it would otherwise wait forever for its next command, an orphan), and so
//! does a leader whose follower died (its next collective would never complete).
//!
//! Order matters: a rank locks its file before it joins the collective, and watches the others
//! only after the join (so their files are locked by then).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

/// Rank `rank`'s alive file for the group whose init file is `init_file`.
pub fn alive_path(init_file: &Path, rank: usize) -> PathBuf {
    let mut name = init_file.as_os_str().to_owned();
    name.push(format!(".rank{rank}.alive"));
    PathBuf::from(name)
}

/// This rank's announcement: its alive file, locked until this value (normally the process)
/// ends, and the flag that tells the watchers a stop is expected.
pub struct Liveness {
    _held: File,
    stopping: Arc<AtomicBool>,
}

impl Liveness {
    /// Creates and locks `rank`'s alive file.
    pub fn announce(init_file: &Path, rank: usize) -> Result<Liveness> {
        let path = alive_path(init_file, rank);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.try_lock().map_err(|e| {
            Error::bad_file(
                &path,
                format!(
                    "rank {rank}'s alive file is locked by another process ({e}): is rank {rank} \
                     of this group already running? (each group start needs a fresh init file)"
                ),
            )
        })?;
        Ok(Liveness {
            _held: file,
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Says that ranks exiting from now on is expected (this rank is shutting the group down).
    pub fn expect_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Watches each of `ranks` on a thread of its own: `on_gone(rank)` runs when that rank's
    /// process has ended, unless [`Liveness::expect_stop`] was called first.
    pub fn watch(
        &self,
        init_file: &Path,
        ranks: impl IntoIterator<Item = usize>,
        on_gone: impl Fn(usize) + Send + Sync + 'static,
    ) -> Result<()> {
        let on_gone = Arc::new(on_gone);
        for rank in ranks {
            let path = alive_path(init_file, rank);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let (stopping, on_gone) = (self.stopping.clone(), on_gone.clone());
            std::thread::Builder::new()
                .name(format!("tp-watch-{rank}"))
                .spawn(move || {
                    // Blocks while the rank's process holds its exclusive lock.
                    let _ = file.lock_shared();
                    if !stopping.load(Ordering::SeqCst) {
                        on_gone(rank);
                    }
                })
                .map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn a_watcher_wakes_when_the_rank_lets_go_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("group.id");
        let rank1 = Liveness::announce(&init, 1).unwrap();
        let rank0 = Liveness::announce(&init, 0).unwrap();
        // A second rank 1 in the same group is refused while the first lives.
        let e = Liveness::announce(&init, 1).err().unwrap().to_string();
        assert!(e.contains("already running"), "{e}");
        let (tx, rx) = mpsc::channel();
        rank0
            .watch(&init, [1], move |r| tx.send(r).unwrap())
            .unwrap();
        assert!(rx.try_recv().is_err(), "rank 1 still holds its lock");
        drop(rank1);
        assert_eq!(rx.recv().unwrap(), 1);
    }

    #[test]
    fn an_expected_stop_is_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("group.id");
        let rank1 = Liveness::announce(&init, 1).unwrap();
        let rank0 = Liveness::announce(&init, 0).unwrap();
        let (tx, rx) = mpsc::channel();
        rank0
            .watch(&init, [1], move |r| tx.send(r).unwrap())
            .unwrap();
        rank0.expect_stop();
        drop(rank1);
        // The watcher thread ends without sending: the channel closes empty.
        assert!(rx.recv().is_err());
    }
}
