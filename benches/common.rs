//! Shared by the benches: C strings, returned strings, starting the agent so that it records.

#![allow(dead_code)]

use std::os::raw::c_char;
use std::time::{Duration, Instant};

use appsignal::appsignal_string_t;

/// A view of a Rust string as the C interface's string (not NUL-terminated; `s` must outlive it).
pub fn cstr(s: &str) -> appsignal_string_t {
    appsignal_string_t {
        len: s.len(),
        buf: s.as_ptr().cast::<c_char>(),
    }
}

pub fn returned_to_string(s: appsignal_string_t) -> String {
    if s.buf.is_null() || s.len == 0 {
        return String::new();
    }
    // SAFETY: a string returned by the library: `len` bytes at `buf`, valid until the next call of
    // the same function on this thread; copied right away.
    let bytes = unsafe { std::slice::from_raw_parts(s.buf.cast::<u8>(), s.len) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// Configures and starts the agent, and waits (up to 5 s) until it records: role leader or client.
pub fn start_agent(workdir: &std::path::Path) {
    let workdir = workdir.join("appsignal");
    let workdir = workdir.to_str().expect("temp dir path is UTF-8");
    for (k, v) in [
        ("_APPSIGNAL_ACTIVE", "true"),
        ("_APPSIGNAL_PUSH_API_KEY", "bench"),
        // Nothing listens there: pushes fail and get cached, off the measured thread.
        ("_APPSIGNAL_PUSH_API_ENDPOINT", "http://127.0.0.1:9"),
        ("_APPSIGNAL_WORKING_DIRECTORY_PATH", workdir),
        ("_APPSIGNAL_ENABLE_HOST_METRICS", "false"),
    ] {
        appsignal::appsignal_env_put(cstr(k), cstr(v));
    }
    appsignal::appsignal_start();

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = returned_to_string(appsignal::appsignal_diagnose());
        let role = serde_json::from_str::<serde_json::Value>(&report)
            .ok()
            .and_then(|v| v["leader_election"]["role"].as_str().map(str::to_owned));
        if matches!(role.as_deref(), Some("leader" | "client")) {
            eprintln!("libappsignal recording, role {}", role.unwrap_or_default());
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "libappsignal did not become leader or client within 5 s, so it would not \
                 record; diagnose: {report}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
