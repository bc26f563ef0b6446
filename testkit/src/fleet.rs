//! Driving worker processes (see `worker.rs`) from the demo and the tests: spawn with a
//! configuration, send commands, wait for events with deadlines, add up what they sent.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// The `_APPSIGNAL_*` variables for a worker reporting to `endpoint` with working directory `workdir`.
pub fn config_env(
    endpoint: &str,
    key: &str,
    workdir: &Path,
    interval_ms: u64,
) -> Vec<(String, String)> {
    [
        ("_APPSIGNAL_ACTIVE", "true".to_owned()),
        ("_APPSIGNAL_PUSH_API_KEY", key.to_owned()),
        ("_APPSIGNAL_APP_NAME", "demo-app".to_owned()),
        ("_APPSIGNAL_APP_ENV", "demo".to_owned()),
        ("_APPSIGNAL_PUSH_API_ENDPOINT", endpoint.to_owned()),
        (
            "_APPSIGNAL_WORKING_DIRECTORY_PATH",
            workdir.display().to_string(),
        ),
        (
            "_APPSIGNAL_TRANSMISSION_INTERVAL_MS",
            interval_ms.to_string(),
        ),
        ("_APPSIGNAL_LOG_LEVEL", "debug".to_owned()),
        ("_APPSIGNAL_ENABLE_HOST_METRICS", "false".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub struct WorkerProcess {
    pub child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    /// Lines of its stdout that are not events (its log, with `_APPSIGNAL_LOG=stdout`).
    output: Arc<Mutex<Vec<String>>>,
    pub pid: u32,
    pub role: String,
}

impl WorkerProcess {
    /// Spawns `exe args…` with `env`, and waits for its `ready` event.
    pub fn spawn(exe: &Path, args: &[String], env: &[(String, String)]) -> Result<WorkerProcess> {
        Self::spawn_with_stderr(exe, args, env, Stdio::inherit())
    }

    /// [`Self::spawn`] with the worker's stderr sent to `stderr` (e.g. a file a test reads).
    pub fn spawn_with_stderr(
        exe: &Path,
        args: &[String],
        env: &[(String, String)],
        stderr: Stdio,
    ) -> Result<WorkerProcess> {
        let mut child = Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot spawn {}", exe.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, events) = mpsc::channel();
        let output = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    _ => lines.lock().unwrap_or_else(|e| e.into_inner()).push(line),
                }
            }
        });
        let stdin = child.stdin.take();
        let mut worker = WorkerProcess {
            pid: child.id(),
            child,
            stdin,
            events,
            output,
            role: String::new(),
        };
        let ready = worker.expect("ready", Duration::from_secs(20))?;
        worker.role = ready["role"].as_str().unwrap_or_default().to_owned();
        Ok(worker)
    }

    /// The lines of its stdout so far that were not events.
    pub fn output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn send(&mut self, command: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("stdin closed"))?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the next event named `event` (others are skipped).
    pub fn expect(&mut self, event: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if v["event"] == event => return Ok(v),
                Ok(_) => continue,
                Err(_) => bail!(
                    "worker pid {} sent no {event:?} event within {timeout:?}",
                    self.pid
                ),
            }
        }
    }

    /// `record n`, returning this worker's cumulative `sent` totals.
    pub fn record(&mut self, n: u64) -> Result<Value> {
        self.send(&format!("record {n}"))?;
        self.expect("sent", Duration::from_secs(30))
    }

    /// Waits until everything this worker recorded is acknowledged; returns its totals then.
    pub fn sync(&mut self) -> Result<Value> {
        self.send("sync")?;
        let acked = self.expect("acked", Duration::from_secs(90))?;
        if acked["idle"] != true {
            bail!("worker pid {} did not get its data acknowledged", self.pid);
        }
        Ok(acked)
    }

    pub fn diagnose(&mut self) -> Result<Value> {
        self.send("diagnose")?;
        Ok(self.expect("diagnose", Duration::from_secs(10))?["report"].clone())
    }

    /// `stop`, then waits for the process to exit.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.send("stop")?;
        self.expect("stopped", timeout)?;
        self.stdin = None;
        self.wait(timeout)
    }

    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("worker pid {} did not exit within {timeout:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds up `sent` events of several workers into one expectation.
pub fn add_sent(total: &mut Value, sent: &Value) {
    if total.is_null() {
        *total = json!({"counters": {}, "gauges": {}, "distributions": {}});
    }
    for (k, v) in sent["counters"].as_object().into_iter().flatten() {
        let t = total["counters"][k].as_f64().unwrap_or(0.0) + v.as_f64().unwrap_or(0.0);
        total["counters"][k] = json!(t);
    }
    for (k, v) in sent["gauges"].as_object().into_iter().flatten() {
        total["gauges"][k] = v.clone();
    }
    for (k, v) in sent["distributions"].as_object().into_iter().flatten() {
        let count = total["distributions"][k]["count"].as_u64().unwrap_or(0)
            + v["count"].as_u64().unwrap_or(0);
        let sum = total["distributions"][k]["sum"].as_f64().unwrap_or(0.0)
            + v["sum"].as_f64().unwrap_or(0.0);
        total["distributions"][k] = json!({"count": count, "sum": sum});
    }
}

/// One line of the comparison: series, what was sent, what was received.
pub struct Row {
    pub series: String,
    pub sent: String,
    pub received: String,
    pub equal: bool,
}

/// Compares the expectation with the receiver's summary: counters and distribution counts exactly,
/// distribution sums to 1e-9 relative (float addition order differs), gauges exactly.
pub fn compare(expected: &Value, summary: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    let empty = serde_json::Map::new();
    let counters: BTreeMap<_, _> = expected["counters"]
        .as_object()
        .unwrap_or(&empty)
        .iter()
        .collect();
    for (k, v) in counters {
        let got = summary["counters"][k].as_f64();
        rows.push(Row {
            series: format!("counter {k}"),
            sent: format!("{}", v.as_f64().unwrap_or(0.0)),
            received: got.map_or("-".into(), |g| g.to_string()),
            equal: got == v.as_f64(),
        });
    }
    for (k, v) in expected["distributions"].as_object().unwrap_or(&empty) {
        let got = &summary["distributions"][k];
        let (count, sum) = (v["count"].as_u64(), v["sum"].as_f64().unwrap_or(0.0));
        let got_sum = got["sum"].as_f64().unwrap_or(f64::NAN);
        rows.push(Row {
            series: format!("distribution {k}"),
            sent: format!("count {} sum {sum}", count.unwrap_or(0)),
            received: format!("count {} sum {got_sum}", got["count"].as_u64().unwrap_or(0)),
            equal: got["count"].as_u64() == count && (got_sum - sum).abs() <= sum.abs() * 1e-9,
        });
    }
    for (k, v) in expected["gauges"].as_object().unwrap_or(&empty) {
        let got = summary["gauges"][k].as_f64();
        rows.push(Row {
            series: format!("gauge {k}"),
            sent: format!("{}", v.as_f64().unwrap_or(0.0)),
            received: got.map_or("-".into(), |g| g.to_string()),
            equal: got == v.as_f64(),
        });
    }
    rows
}

/// Polls `summary` until `compare` is all equal or the deadline passes; returns the last rows.
pub fn await_totals(expected: &Value, summary: impl Fn() -> Value, timeout: Duration) -> Vec<Row> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = compare(expected, &summary());
        if rows.iter().all(|r| r.equal) || Instant::now() >= deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
