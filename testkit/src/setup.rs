//! The set-up most integration tests share: a temporary directory, the reference Push API receiver
//! in it, the workers' environment (a working directory `wd/` there, this run's library), and the
//! checks on what arrived.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::fleet::{self, WorkerProcess};
use crate::receiver::Receiver;

/// One test's receiver, temporary directory and worker environment.
pub struct Setup {
    pub receiver: Receiver,
    pub tmp: tempfile::TempDir,
    pub env: Vec<(String, String)>,
    /// The push endpoint the workers use (the receiver, or a proxy in front of it).
    pub endpoint: String,
}

impl Setup {
    /// Workers pushing with `key` to a fresh receiver every `interval_ms`.
    pub fn new(key: &str, interval_ms: u64) -> Setup {
        Setup::with_endpoint(key, interval_ms, None)
    }

    /// As [`Setup::new`], with the workers pushing to `endpoint` (say, a proxy that forwards to the
    /// receiver) instead of the receiver itself.
    pub fn with_endpoint(key: &str, interval_ms: u64, endpoint: Option<&str>) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let receiver = Receiver::start(key, Some(tmp.path().join("received"))).unwrap();
        let endpoint = endpoint.map_or_else(|| receiver.url.clone(), str::to_owned);
        let mut env = fleet::config_env(&endpoint, key, &tmp.path().join("wd"), interval_ms);
        // Load exactly the library this test run built.
        env.push((
            "APPSIGNAL_LIBRARY".into(),
            crate::library_path().display().to_string(),
        ));
        Setup {
            receiver,
            tmp,
            env,
            endpoint,
        }
    }

    /// The same set-up with `key` set to `value` in the workers' environment.
    pub fn with(mut self, key: &str, value: &str) -> Setup {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn workdir(&self) -> PathBuf {
        self.tmp.path().join("wd")
    }

    pub fn socket(&self) -> PathBuf {
        self.workdir().join("agent.socket")
    }

    pub fn spawn(&self, index: u32) -> WorkerProcess {
        WorkerProcess::spawn(&crate::worker_exe(), &[index.to_string()], &self.env).unwrap()
    }

    /// The agent's log file (`_APPSIGNAL_LOG_FILE_PATH`, else `appsignal.log` in the working directory).
    pub fn log(&self) -> String {
        let path = self
            .env
            .iter()
            .find(|(k, _)| k == "_APPSIGNAL_LOG_FILE_PATH")
            .map_or_else(|| self.workdir().join("appsignal.log"), |(_, v)| v.into());
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Waits up to `timeout` for `needle` in the log; fails with the log.
    pub fn await_log(&self, needle: &str, timeout: Duration) {
        assert!(
            crate::poll(timeout, || self.log().contains(needle)),
            "no {needle:?} in the log:\n{}",
            self.log()
        );
    }

    /// Waits up to 30 s for the receiver's totals to equal `expected`; fails with the differences,
    /// the receiver's summary and the end of the log.
    pub fn assert_totals(&self, expected: &Value) {
        assert_totals(
            expected,
            || self.receiver.summary(),
            || format!("--- log ---\n{}", tail(&self.log(), 60)),
        );
    }
}

/// Waits up to 30 s for `summary`'s totals to equal `expected`; fails with the differences, the
/// last summary and what `context` says (the end of the log, say).
pub fn assert_totals(expected: &Value, summary: impl Fn() -> Value, context: impl Fn() -> String) {
    let rows = fleet::await_totals(expected, &summary, Duration::from_secs(30));
    assert!(!rows.is_empty(), "nothing was expected");
    let wrong: Vec<String> = rows
        .iter()
        .filter(|r| !r.equal)
        .map(|r| format!("{}: sent {}, received {}", r.series, r.sent, r.received))
        .collect();
    assert!(
        wrong.is_empty(),
        "totals differ (summary: {}):\n{}\n{}",
        summary(),
        wrong.join("\n"),
        context()
    );
}

/// Stops every worker, clients first and the leader last (as a graceful deploy does); each must
/// exit successfully.
pub fn stop_all(workers: &mut [WorkerProcess]) {
    workers.sort_by_key(|w| w.role == "leader");
    for w in workers.iter_mut() {
        let status = w.stop(Duration::from_secs(20)).unwrap();
        assert!(status.success(), "worker {} exited with {status}", w.pid);
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
