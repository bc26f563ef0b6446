//! What the benches share: they call the C functions in their own process through `appsignal`
//! (ffi/src built as an rlib). C strings, returned strings, starting the agent so that it records,
//! the `metrics` crate's peer, one transaction with 10 SQL events, the thread's CPU time.

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

/// The `metrics` crate's peer: a recorder over `metrics_util`'s atomic registry, which is what its
/// exporters (Prometheus and others) build on. Every `counter!` / `histogram!` call with labels
/// looks its key up in the registry and updates an atomic (counter) or an atomic bucket (histogram).
pub struct RegistryRecorder(
    pub metrics_util::registry::Registry<metrics::Key, metrics_util::registry::AtomicStorage>,
);

impl Default for RegistryRecorder {
    fn default() -> Self {
        RegistryRecorder(metrics_util::registry::Registry::atomic())
    }
}

impl metrics::Recorder for RegistryRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        self.0
            .get_or_create_counter(key, |c| metrics::Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.0
            .get_or_create_gauge(key, |g| metrics::Gauge::from_arc(g.clone()))
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        self.0
            .get_or_create_histogram(key, |h| metrics::Histogram::from_arc(h.clone()))
    }
}

/// The SQL body of every event of [`transaction_with_10_sql_events`].
pub const SQL: &str = "SELECT * FROM users WHERE id = 42 AND email = 'a@example.com'";

/// One web transaction through the C interface: start, 10 `sql.active_record` events with a SQL
/// body, the action, with `error` an error (which makes it sampled), finish, complete, free.
pub fn transaction_with_10_sql_events(error: bool) {
    let txn = appsignal::appsignal_start_transaction(cstr("req"), cstr("web"), 0);
    for _ in 0..10 {
        appsignal::appsignal_start_event(txn, 0);
        appsignal::appsignal_finish_event(
            txn,
            cstr("sql.active_record"),
            cstr("User Load"),
            cstr(SQL),
            1,
            0,
        );
    }
    appsignal::appsignal_set_transaction_action(txn, cstr("UsersController#show"));
    if error {
        appsignal::appsignal_set_transaction_error(
            txn,
            cstr("RuntimeError"),
            cstr("boom"),
            std::ptr::null(),
        );
    }
    std::hint::black_box(appsignal::appsignal_finish_transaction(txn, 0));
    appsignal::appsignal_complete_transaction(txn);
    appsignal::appsignal_free_transaction(txn.cast());
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
