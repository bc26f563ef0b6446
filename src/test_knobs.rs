//! Hooks for tests only: compiled in with the `test-knobs` feature (which `testkit/` enables and the
//! shipped build does not), empty otherwise.
//!
//! [`hold`] lets a test catch a thread inside one of the library's critical sections: with
//! `_APPSIGNAL_TEST_HOLD_DIR=dir` in the process environment and a file `dir/<point>.hold` armed by
//! the test, the first thread to reach `<point>` renames it to `<point>.held`, stays there (holding
//! whatever lock it holds) for a second, then removes `<point>.held`. One-shot: the rename disarms it.

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
}

#[cfg(feature = "test-knobs")]
pub(crate) use enabled::hold;

/// Does nothing in the shipped build.
#[cfg(not(feature = "test-knobs"))]
#[inline(always)]
pub(crate) fn hold(_point: &str) {}
