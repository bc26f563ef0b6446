//! Hooks for tests only: compiled in with the `test-knobs` feature (which `testkit/` enables and the
//! shipped build does not), empty otherwise.
//!
//! [`hold`] lets a test catch a thread inside one of the library's critical sections: with
//! `_APPSIGNAL_TEST_HOLD_DIR=dir` in the process environment and a file `dir/<point>.hold` armed by
//! the test, the first thread to reach `<point>` renames it to `<point>.held`, stays there (holding
//! whatever lock it holds) for a second, then removes `<point>.held`. One-shot: the rename disarms it.
//!
//! [`kill_at`] lets a test SIGKILL the leader at one step of the cumulative state's commit: with
//! `_APPSIGNAL_TEST_KILL_AT=<step>` in the process environment, the process kills itself when it
//! reaches `<step>` (the steps: `after-add`, `temp-written`, `temp-synced`, `renamed`,
//! `before-segment-delete`, `after-segment-delete`). The variable is per process: a test gives it
//! to the one process it wants to die.
//!
//! [`cumulative_max_series`] is the cumulative view's series cap per state: the real `cap` it is
//! given, or `_APPSIGNAL_TEST_CUMULATIVE_MAX_SERIES` when set (lower, so that a test reaches it).

#[cfg(feature = "test-knobs")]
mod enabled {
    use std::path::Path;
    use std::time::Duration;

    /// How long a held point stays held: long enough that the test acts while it is.
    const HOLD: Duration = Duration::from_secs(1);

    pub(crate) fn hold(point: &str) {
        let Some(dir) = std::env::var_os("_APPSIGNAL_TEST_HOLD_DIR") else {
            return;
        };
        let armed = Path::new(&dir).join(format!("{point}.hold"));
        let held = Path::new(&dir).join(format!("{point}.held"));
        if std::fs::rename(&armed, &held).is_err() {
            return;
        }
        std::thread::sleep(HOLD);
        let _ = std::fs::remove_file(&held);
    }

    pub(crate) fn kill_at(step: &str) {
        if std::env::var_os("_APPSIGNAL_TEST_KILL_AT").is_some_and(|v| v == step) {
            // SAFETY: signalling our own process; SIGKILL ends it here, as a kill from outside would.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }

    pub(crate) fn cumulative_max_series(cap: usize) -> usize {
        static SET: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
        let set = SET.get_or_init(|| {
            std::env::var("_APPSIGNAL_TEST_CUMULATIVE_MAX_SERIES")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        set.unwrap_or(cap)
    }
}

#[cfg(feature = "test-knobs")]
pub(crate) use enabled::{cumulative_max_series, hold, kill_at};

/// Does nothing in the shipped build.
#[cfg(not(feature = "test-knobs"))]
#[inline(always)]
pub(crate) fn hold(_point: &str) {}

/// Does nothing in the shipped build.
#[cfg(not(feature = "test-knobs"))]
#[inline(always)]
pub(crate) fn kill_at(_step: &str) {}

/// The real `cap` in the shipped build.
#[cfg(not(feature = "test-knobs"))]
#[inline(always)]
pub(crate) fn cumulative_max_series(cap: usize) -> usize {
    cap
}
