//! Starting and asking the Python OTLP receiver (`examples/otlp_receiver.py`, which parses every
//! request with the official `opentelemetry-proto` classes) from the demo and the tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// The repository root (this file is `examples/common/otlp_receiver.rs`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("examples").join("otlp_receiver.py").is_file())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The Python with `opentelemetry-proto`: `$APPSIGNAL_OTLP_PYTHON`, else `.venv/bin/python` in the
/// repository (what `.ci/run` and the README's set-up make), else `python3`. `None` when none of
/// them can import the package.
pub fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("APPSIGNAL_OTLP_PYTHON").map(PathBuf::from),
        Some(repo_root().join(".venv").join("bin").join("python")),
        Some(PathBuf::from("python3")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args([
                "-c",
                "import opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

pub struct OtlpReceiver {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl OtlpReceiver {
    /// Starts the receiver on a port of its choosing.
    pub fn start(python: &Path) -> Result<OtlpReceiver> {
        Self::start_on(python, 0)
    }

    /// Starts the receiver on `port` (0: any free port).
    pub fn start_on(python: &Path, port: u16) -> Result<OtlpReceiver> {
        let script = repo_root().join("examples").join("otlp_receiver.py");
        let mut child = Command::new(python)
            .arg(&script)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {} {}", python.display(), script.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("the OTLP receiver said nothing")?;
        let first: Value = serde_json::from_str(&line)
            .with_context(|| format!("unexpected first line from the OTLP receiver: {line:?}"))?;
        let url = first["listening"]
            .as_str()
            .ok_or_else(|| anyhow!("no address in {line:?}"))?
            .to_owned();
        Ok(OtlpReceiver { child, url })
    }

    /// One HTTP/1.0 request to the receiver; the answer's body.
    fn request(&self, method: &str, path: &str) -> Result<String> {
        let host = self.url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let Some((head, body)) = response.split_once("\r\n\r\n") else {
            bail!("malformed answer from the OTLP receiver: {response:?}");
        };
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!("the OTLP receiver answered {head:?}");
        }
        Ok(body.to_owned())
    }

    /// What arrived (see the script's doc); `Null` if the receiver cannot be asked.
    pub fn summary(&self) -> Value {
        self.request("GET", "/summary")
            .ok()
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Answers the next `count` export requests with `status` (and `Retry-After` when given).
    pub fn fail_next(&self, count: u32, status: u16, retry_after: Option<u64>) -> Result<()> {
        let mut path = format!("/control?count={count}&status={status}");
        if let Some(s) = retry_after {
            path.push_str(&format!("&retry_after={s}"));
        }
        self.request("POST", &path).map(|_| ())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
