//! Shared by the integration tests: the reference receiver, the worker fleet, paths of the built
//! artifacts, and polling with deadlines.

#![allow(dead_code)]

#[path = "../../examples/common/fleet.rs"]
pub mod fleet;
#[path = "../../examples/common/receiver.rs"]
pub mod receiver;
#[path = "../../examples/common/worker.rs"]
pub mod worker;

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

/// The `libappsignal.so` built with this test (the worker's search: `deps/` first).
pub fn library_path() -> PathBuf {
    worker::library_path()
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
