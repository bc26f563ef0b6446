//! Shared by the integration tests: the reference receiver, the worker fleet, paths of the built
//! artifacts, and polling with deadlines.

#![allow(dead_code)]

#[path = "../../examples/common/fleet.rs"]
pub mod fleet;
#[path = "../../examples/common/receiver.rs"]
pub mod receiver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `target/<profile>` of this test binary (which lives in `target/<profile>/deps`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf()
}

/// The `libappsignal.so` built with this test.
pub fn library_path() -> PathBuf {
    let dir = target_dir();
    for candidate in [
        dir.join("deps").join("libappsignal.so"),
        dir.join("libappsignal.so"),
    ] {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "libappsignal.so not found in {}; run the tests with cargo test --workspace",
        dir.display()
    );
}

/// The worker binary, built by cargo for these tests.
pub fn worker_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_appsignal-test-worker"))
}

/// Polls `condition` every 5 ms until it holds or `timeout` passes; returns whether it held.
pub fn poll(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
