//! When the leader looks at `agent.lock` and the working directory again (a tmp cleaner may have
//! deleted them, or something replaced them): it then steps down so that a new election runs.
//!
//! On Linux it sleeps on inotify: the locked file's link count or name changing (deleted, renamed,
//! another file renamed over it) and the directory deleted or moved wake it at once, and nothing
//! else does. A change that inotify does not report on those two (an ancestor directory renamed, a
//! link in the path re-pointed) is still caught by a slow check every [`FALLBACK_PERIOD`]. Without
//! inotify (another system such as macOS, or the per-user instance limit reached) it checks every
//! [`POLL_PERIOD`] (250 ms). The first check is at once (the file may have changed since the
//! election).

use std::path::Path;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

/// The check period without inotify.
pub const POLL_PERIOD: Duration = Duration::from_millis(250);
/// The check period with inotify, for what it does not report.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub const FALLBACK_PERIOD: Duration = Duration::from_secs(5);

pub(super) struct Watchdog {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    events: Option<inotify::Inotify>,
    timer: Interval,
}

impl Watchdog {
    /// Watches `lock` (the locked file) and `dir` (the working directory).
    pub(super) fn new(lock: &Path, dir: &Path) -> Watchdog {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let events = match inotify::Inotify::new(lock, dir) {
                Ok(events) => Some(events),
                Err(e) => {
                    tracing::info!(
                        "cannot watch {} with inotify ({e:#}); checking it every {POLL_PERIOD:?}",
                        lock.display()
                    );
                    None
                }
            };
            let period = if events.is_some() {
                FALLBACK_PERIOD
            } else {
                POLL_PERIOD
            };
            Watchdog {
                events,
                timer: interval(period),
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = (lock, dir);
            Watchdog {
                timer: interval(POLL_PERIOD),
            }
        }
    }

    /// Waits until it is time to check: a change was reported, the period elapsed, or `now`
    /// completed. Cancel-safe (an event that arrives meanwhile is seen by the next call).
    pub(super) async fn wait(&mut self, now: impl std::future::Future<Output = ()>) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(events) = &self.events {
            tokio::select! {
                changed = events.changed() => {
                    if let Err(e) = changed {
                        tracing::warn!("inotify failed ({e}); checking every {POLL_PERIOD:?}");
                        self.events = None;
                        self.timer = interval(POLL_PERIOD);
                    }
                }
                _ = self.timer.tick() => {}
                () = now => {}
            }
            return;
        }
        tokio::select! {
            _ = self.timer.tick() => {}
            () = now => {}
        }
    }
}

fn interval(period: Duration) -> Interval {
    let mut timer = tokio::time::interval(period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod inotify {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use anyhow::{Context, Result};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// An inotify instance watching the lock file and the directory, read from the runtime.
    pub(super) struct Inotify {
        /// Declared first so that it is dropped (unregistered) before the descriptor closes.
        _fork_guard: crate::fork::Registered,
        fd: AsyncFd<OwnedFd>,
    }

    impl Inotify {
        pub(super) fn new(lock: &Path, dir: &Path) -> Result<Inotify> {
            // SAFETY: no pointers; the flags are valid.
            let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if raw < 0 {
                return Err(io::Error::last_os_error()).context("inotify_init1");
            }
            // SAFETY: `raw` was just returned by inotify_init1 and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // The link count (IN_ATTRIB) drops when the file is deleted or another one is renamed
            // over it; deleting the open file itself is only reported once it is closed.
            add_watch(
                &fd,
                lock,
                libc::IN_ATTRIB | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_DONT_FOLLOW,
            )?;
            add_watch(
                &fd,
                dir,
                libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_ONLYDIR | libc::IN_DONT_FOLLOW,
            )?;
            let raw = fd.as_raw_fd();
            // SAFETY: `fd` is open and owned by the AsyncFd from here on, so it stays open and
            // the same descriptor for the AsyncFd's whole life.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(io::Error::from)
                .context("registering the inotify descriptor with the runtime")?;
            Ok(Inotify {
                _fork_guard: crate::fork::Registered::new(raw),
                fd,
            })
        }

        /// Waits until something was reported, and reads everything that was.
        pub(super) async fn changed(&self) -> io::Result<()> {
            loop {
                let mut ready = self.fd.readable().await?;
                let mut read_any = false;
                // Until the queue is empty (which clears the readiness).
                while let Ok(read) = ready.try_io(|fd| read_events(fd.get_ref())) {
                    read?;
                    read_any = true;
                }
                if read_any {
                    return Ok(());
                }
            }
        }
    }

    fn add_watch(fd: &OwnedFd, path: &Path, mask: u32) -> Result<()> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .with_context(|| format!("{} contains a NUL byte", path.display()))?;
        // SAFETY: `fd` is an open inotify descriptor and `c_path` a NUL-terminated string that
        // outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c_path.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("inotify_add_watch {}", path.display()));
        }
        Ok(())
    }

    /// Reads one buffer of events (what they say does not matter: the leader checks the paths).
    fn read_events(fd: &OwnedFd) -> io::Result<usize> {
        // Room for many events (each is 16 bytes plus a name; ours carry no name).
        let mut buf = [0u8; 1024];
        // SAFETY: `fd` is open and `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Notify;

    /// Runs `f` on a current-thread runtime with time, like the leader's.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// The first wait returns at once; then, with inotify, a deleted lock file ends the next wait
    /// long before the fallback period, and nothing else does.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_deleted_lock_file_wakes_the_watchdog_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = tmp.path().join("agent.lock");
        let _held = std::fs::File::create(&lock).unwrap();
        let now = Notify::new();
        block_on(async {
            let mut dog = Watchdog::new(&lock, tmp.path());
            assert!(dog.events.is_some(), "inotify is available here");
            dog.wait(now.notified()).await;
            // Nothing happens: the wait does not end (a quiet idle leader does not wake).
            let quiet =
                tokio::time::timeout(Duration::from_millis(300), dog.wait(now.notified())).await;
            assert!(quiet.is_err(), "the watchdog woke with nothing to report");
            // A tmp cleaner removes the file (still open here, as the leader's lock is).
            std::fs::remove_file(&lock).unwrap();
            tokio::time::timeout(FALLBACK_PERIOD / 2, dog.wait(now.notified()))
                .await
                .expect("the deletion was not reported");
        });
    }

    /// A renamed directory is reported too, and `now` ends a wait without any event.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_moved_directory_and_a_request_wake_the_watchdog() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wd");
        std::fs::create_dir(&dir).unwrap();
        let lock = dir.join("agent.lock");
        std::fs::File::create(&lock).unwrap();
        let now = Notify::new();
        block_on(async {
            let mut dog = Watchdog::new(&lock, &dir);
            dog.wait(now.notified()).await;
            now.notify_one();
            tokio::time::timeout(FALLBACK_PERIOD / 2, dog.wait(now.notified()))
                .await
                .expect("a request to check now was not seen");
            std::fs::rename(&dir, tmp.path().join("moved")).unwrap();
            tokio::time::timeout(FALLBACK_PERIOD / 2, dog.wait(now.notified()))
                .await
                .expect("the moved directory was not reported");
        });
    }

    /// Paths inotify cannot watch (here: none exist) fall back to polling every [`POLL_PERIOD`].
    #[test]
    fn without_inotify_it_polls() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        let now = Notify::new();
        block_on(async {
            let mut dog = Watchdog::new(&missing.join("agent.lock"), &missing);
            #[cfg(any(target_os = "linux", target_os = "android"))]
            assert!(dog.events.is_none());
            dog.wait(now.notified()).await;
            tokio::time::timeout(POLL_PERIOD * 20, dog.wait(now.notified()))
                .await
                .expect("no poll within 20 periods");
        });
    }
}
