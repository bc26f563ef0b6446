//! Election: whoever holds `flock(LOCK_EX)` on `agent.lock` leads. The lock is held by the open file
//! description, so it ends when the leader closes the file or dies; nothing needs to be cleaned up.
//!
//! After winning, the winner checks that the file it locked is still the one at the path (another
//! process may have unlinked and recreated it between our open and our lock: then we hold a lock on
//! an orphaned inode that nobody else will ever look at, and must try again). The winner writes
//! `pid;version;started_at` into the file for diagnose.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::workdir::WorkDir;

/// The held leadership. Dropping it closes the file, which releases the lock.
pub struct LeaderLock {
    /// Declared first so that it is dropped (unregistered) before `file` closes.
    _fork_guard: crate::fork::Registered,
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl LeaderLock {
    /// Whether the locked file is still the one at the lock path (not deleted, not replaced).
    /// While we hold it open its inode number cannot be reused, so (dev, ino) identifies it; the
    /// link count catches a deletion even before the path is looked up.
    pub fn still_at_path(&self) -> bool {
        self.file.metadata().is_ok_and(|m| m.nlink() > 0)
            && std::fs::symlink_metadata(&self.path)
                .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLock")
            .field("path", &self.path)
            .field("file", &self.file)
            .finish()
    }
}

/// What the lock file says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub version: String,
    pub started_at: u64,
}

/// Tries once, without blocking, to become the leader. `Ok(None)`: someone else leads.
pub fn try_lead(workdir: &WorkDir) -> Result<Option<LeaderLock>> {
    let path = workdir.lock_path();
    for _ in 0..3 {
        let file = workdir.open_file(
            &path,
            OpenOptions::new().read(true).write(true).create(true),
        )?;
        let mut lock = fd_lock::RwLock::new(file);
        match lock.try_write() {
            // The lock lives as long as the descriptor: forget the guard so that it is not
            // unlocked here, and keep the file.
            Ok(guard) => std::mem::forget(guard),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let mut file = lock.into_inner();
        let meta = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let held = file
            .try_clone()
            .with_context(|| format!("cannot dup {}", path.display()))?;
        let lock = LeaderLock {
            // A forked child closes its copy, so that the lock ends with this process.
            _fork_guard: crate::fork::Registered::new(std::os::fd::AsRawFd::as_raw_fd(&held)),
            file: held,
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        if !lock.still_at_path() {
            // Unlinked between our open and our lock: the lock is worthless, try a fresh file.
            continue;
        }
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        file.set_len(0)
            .and_then(|()| {
                write!(
                    file,
                    "{};{};{}",
                    std::process::id(),
                    crate::VERSION,
                    started_at
                )
            })
            .with_context(|| format!("cannot write {}", path.display()))?;
        return Ok(Some(lock));
    }
    anyhow::bail!("{} keeps being replaced while locking it", path.display())
}

/// Reads the holder recorded in the lock file; `None` when absent or unreadable.
pub fn read_holder(path: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.trim().splitn(3, ';');
    Some(Holder {
        pid: parts.next()?.parse().ok()?,
        version: parts.next()?.to_owned(),
        started_at: parts.next()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_winner_and_the_lock_ends_with_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let first = try_lead(&wd).unwrap().expect("first attempt leads");
        assert!(
            try_lead(&wd).unwrap().is_none(),
            "a second lock on another fd must fail"
        );
        let holder = read_holder(&wd.lock_path()).unwrap();
        assert_eq!(holder.pid, std::process::id());
        assert_eq!(holder.version, crate::VERSION);
        drop(first);
        assert!(try_lead(&wd).unwrap().is_some());
    }

    #[test]
    fn a_deleted_lock_file_is_noticed() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let lock = try_lead(&wd).unwrap().unwrap();
        assert!(lock.still_at_path());
        std::fs::remove_file(wd.lock_path()).unwrap();
        assert!(!lock.still_at_path());
        // A new file at the path is a new election: it can be won while the old lock is held.
        assert!(try_lead(&wd).unwrap().is_some());
    }
}
