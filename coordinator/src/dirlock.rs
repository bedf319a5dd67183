//! Exclusive locks on the directories a run writes (output directories, step 3's `save_dir`, a
//! sweep's folder) and on `evalfleet serve`'s `--state-dir`, so that two processes never resume
//! and delete the same journal or overwrite each other's files.
//!
//! The lock is `flock` on the directory itself: it needs no lock file, names the directory
//! whatever path reached it (`D`, `D/x/..`, a symlink: one inode), and the kernel drops it when
//! the process ends, even on `kill -9`, so no stale lock is ever left behind. The directory is
//! locked exclusively and every directory above it shared, so nested directories clash too (a
//! run on `D/ckpt-1` while a sweep holds `D`, or the other way round), while runs side by side
//! (`D/a`, `D/b`) do not. A directory another process holds is refused with that process's id
//! (read from `/proc/locks`).
//!
//! Within one process the locks are reentrant: a run's steps may take the same directory again
//! (a chain, a sweep's checkpoint under its folder). `evalfleet serve` keeps its own jobs apart
//! in its queue ([`overlaps`]), before any of them takes a lock.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{}: in use by {}{} (another evalfleet run, sweep or serve writes there); wait for it to \
         finish or stop it",
        dir.display(),
        holder.map_or_else(|| "another process".to_string(), |pid| format!("pid {pid}")),
        if held == dir { String::new() } else { format!(", which holds {}", held.display()) }
    )]
    InUse {
        dir: PathBuf,
        /// The directory the other process holds: `dir`, or one holding it or inside it.
        held: PathBuf,
        holder: Option<u32>,
    },
    #[error("{}: cannot lock the directory: {source}", dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// How a directory is held: exclusively (a run writes there), or shared (a run writes somewhere
/// inside it: no other process may take it exclusively meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Shared,
    Exclusive,
}

/// One locked directory of this process.
#[derive(Debug)]
struct Entry {
    /// Closing it releases the lock.
    file: File,
    shared: usize,
    exclusive: usize,
}

/// Held until dropped (see the module docs): the directory exclusively, every directory above
/// it shared.
#[derive(Debug)]
pub struct DirLock {
    taken: Vec<(PathBuf, Mode)>,
}

/// The directories this process holds, by canonical path.
fn held() -> MutexGuard<'static, BTreeMap<PathBuf, Entry>> {
    static HELD: Mutex<BTreeMap<PathBuf, Entry>> = Mutex::new(BTreeMap::new());
    // Every update leaves the map consistent before it can panic.
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

impl DirLock {
    /// Locks `dir` (creating it if needed) exclusively and every directory above it shared, so
    /// that no other process holds it, anything inside it or anything holding it. `Ok(None)` if
    /// it cannot be created: the caller's own check of the directory then reports why.
    pub fn acquire(dir: &Path) -> Result<Option<DirLock>, LockError> {
        if std::fs::create_dir_all(dir).is_err() {
            return Ok(None);
        }
        let canonical = std::fs::canonicalize(dir).map_err(|source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut lock = DirLock { taken: Vec::new() };
        let mut held = held();
        let wanted = canonical
            .ancestors()
            .skip(1)
            .map(|a| (a, Mode::Shared))
            .chain([(canonical.as_path(), Mode::Exclusive)]);
        for (path, mode) in wanted {
            match take(&mut held, path, mode) {
                Ok(true) => lock.taken.push((path.to_path_buf(), mode)),
                // A directory above that this user cannot open: nobody else locks it either.
                Ok(false) => {}
                Err(Taken::Busy(file)) => {
                    drop(held);
                    return Err(LockError::InUse {
                        dir: dir.to_path_buf(),
                        held: path.to_path_buf(),
                        holder: holder_pid(&file),
                    });
                }
                Err(Taken::Io(source)) => {
                    drop(held);
                    return Err(LockError::Io {
                        dir: path.to_path_buf(),
                        source,
                    });
                }
            }
        }
        Ok(Some(lock))
    }

    /// Locks every directory of `dirs` (see [`DirLock::acquire`]); all or none.
    pub fn acquire_all<'a>(
        dirs: impl IntoIterator<Item = &'a Path>,
    ) -> Result<Vec<DirLock>, LockError> {
        let mut locks = Vec::new();
        for dir in dirs {
            locks.extend(DirLock::acquire(dir)?);
        }
        Ok(locks)
    }
}

/// Why [`take`] failed.
enum Taken {
    /// Another process holds it; the handle tells which.
    Busy(File),
    Io(std::io::Error),
}

/// Takes `path` in `mode` for this process (again, if it already holds it). `Ok(false)` if the
/// directory cannot be opened (only for directories above the one asked for).
fn take(held: &mut BTreeMap<PathBuf, Entry>, path: &Path, mode: Mode) -> Result<bool, Taken> {
    if let Some(entry) = held.get_mut(path) {
        match mode {
            Mode::Shared => entry.shared += 1,
            Mode::Exclusive if entry.exclusive > 0 => entry.exclusive += 1,
            Mode::Exclusive => {
                // Only shared so far (a run inside it): converted, if no other process shares it.
                if let Err(e) = entry.file.try_lock() {
                    // The conversion may have dropped the shared lock: take it back.
                    let _ = entry.file.try_lock_shared();
                    return Err(busy(e, path));
                }
                entry.exclusive += 1;
            }
        }
        return Ok(true);
    }
    let Ok(file) = File::open(path) else {
        return Ok(false);
    };
    let tried = match mode {
        Mode::Shared => file.try_lock_shared(),
        Mode::Exclusive => file.try_lock(),
    };
    if let Err(e) = tried {
        return Err(match e {
            std::fs::TryLockError::WouldBlock => Taken::Busy(file),
            std::fs::TryLockError::Error(e) => Taken::Io(e),
        });
    }
    let (shared, exclusive) = match mode {
        Mode::Shared => (1, 0),
        Mode::Exclusive => (0, 1),
    };
    held.insert(
        path.to_path_buf(),
        Entry {
            file,
            shared,
            exclusive,
        },
    );
    Ok(true)
}

fn busy(e: std::fs::TryLockError, path: &Path) -> Taken {
    match e {
        std::fs::TryLockError::WouldBlock => match File::open(path) {
            Ok(file) => Taken::Busy(file),
            Err(e) => Taken::Io(e),
        },
        std::fs::TryLockError::Error(e) => Taken::Io(e),
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let mut held = held();
        for (path, mode) in self.taken.drain(..).rev() {
            let Some(entry) = held.get_mut(&path) else {
                continue;
            };
            match mode {
                Mode::Shared => entry.shared -= 1,
                Mode::Exclusive => entry.exclusive -= 1,
            }
            if entry.shared + entry.exclusive == 0 {
                held.remove(&path);
            } else if mode == Mode::Exclusive && entry.exclusive == 0 {
                // Still shared by this process (a run inside it goes on).
                let _ = entry.file.try_lock_shared();
            }
        }
    }
}

/// The process holding a `flock` on `file`'s inode, from `/proc/locks` (Linux); `None` if it
/// cannot be told.
fn holder_pid(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = file.metadata().ok()?;
    let (dev, ino) = (meta.dev(), meta.ino());
    // The kernel's encoding of a device number (major, minor) as /proc/locks prints it.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let id = *fields.get(5)?;
        let mut parts = id.split(':');
        let (ma, mi, i) = (parts.next()?, parts.next()?, parts.next()?);
        let same = u64::from_str_radix(ma, 16).ok()? == major
            && u64::from_str_radix(mi, 16).ok()? == minor
            && i.parse::<u64>().ok()? == ino;
        if same {
            fields.get(4)?.parse().ok()
        } else {
            None
        }
    })
}

/// `path` made absolute and canonical as far as it exists (symlinks and `..` resolved), the rest
/// appended with `.` and `..` applied: the same directory gives the same path however it was
/// named, before it exists too.
pub fn canonical_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::CurDir => {}
            // `out` is already resolved: `..` goes up from where a symlink led, as the kernel does.
            Component::ParentDir => {
                out.pop();
            }
            part => {
                out.push(part);
                if let Ok(real) = std::fs::canonicalize(&out) {
                    out = real;
                }
            }
        }
    }
    out
}

/// Whether two directories (canonical, see [`canonical_path`]) are the same or one holds the
/// other: jobs writing to them must not run at once.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_by_any_name_is_one_path_and_nesting_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("out");
        std::fs::create_dir_all(d.join("x")).unwrap();
        std::os::unix::fs::symlink(&d, dir.path().join("link")).unwrap();
        let c = canonical_path(&d);
        assert_eq!(canonical_path(&d.join("x/..")), c);
        assert_eq!(canonical_path(&dir.path().join("link")), c);
        // Not created yet: still resolved through the existing part.
        assert_eq!(
            canonical_path(&dir.path().join("link/new/../new2")),
            c.join("new2")
        );
        assert!(overlaps(&c, &c.join("ckpt-1")));
        assert!(overlaps(&c.join("ckpt-1"), &c));
        assert!(!overlaps(&c.join("a"), &c.join("ab")));
    }

    #[test]
    fn a_lock_is_reentrant_within_the_process_and_released_by_its_last_holder() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("out");
        std::fs::create_dir_all(d.join("x")).unwrap();
        let a = DirLock::acquire(&d).unwrap().unwrap();
        let b = DirLock::acquire(&d.join("x/..")).unwrap_or_else(|e| panic!("{e}"));
        assert!(b.is_some(), "the same process takes it again");
        // Another handle on the same directory (as another process would have) is refused
        // while either holds it, and gets it once both are dropped.
        let other = File::open(&d).unwrap();
        assert!(other.try_lock_shared().is_err());
        assert_eq!(holder_pid(&other), Some(std::process::id()));
        drop(a);
        assert!(other.try_lock_shared().is_err());
        drop(b);
        assert!(other.try_lock().is_ok());
    }

    #[test]
    fn a_directory_above_is_held_shared_and_one_inside_is_free_for_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sweep");
        let inner = d.join("ckpt-1");
        let lock = DirLock::acquire(&inner).unwrap().unwrap();
        // Another process could share `d` (a run beside this one) but not take it.
        let other = File::open(&d).unwrap();
        assert!(other.try_lock().is_err());
        assert!(other.try_lock_shared().is_ok());
        other.unlock().unwrap();
        // This process may take `d` too (a sweep running its checkpoint)...
        let outer = DirLock::acquire(&d).unwrap().unwrap();
        assert!(other.try_lock_shared().is_err());
        drop(outer);
        // ...and gives it back shared while the run inside goes on.
        assert!(other.try_lock().is_err());
        assert!(other.try_lock_shared().is_ok());
        other.unlock().unwrap();
        drop(lock);
        assert!(other.try_lock().is_ok());
    }
}
