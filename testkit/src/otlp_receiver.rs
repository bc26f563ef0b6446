//! Starting and asking the Python OTLP receiver (`examples/otlp_receiver.py`, which parses every
//! request with the official `opentelemetry-proto` classes) from the demo and the tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// The repository root (the first ancestor of this package with `examples/otlp_receiver.py`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("examples").join("otlp_receiver.py").is_file())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The PyPI release of `opentelemetry-proto` in the virtualenv the tests make ([`python_or_make`]):
/// the one pip resolved when it was pinned. Its `protobuf` dependency is left to pip, within the
/// range this release names.
pub const OPENTELEMETRY_PROTO: &str = "opentelemetry-proto==1.45.2";

/// What a Python must import to run the receiver.
const IMPORT_CHECK: &str = "import opentelemetry.proto.collector.metrics.v1.metrics_service_pb2";

/// Written into the virtualenv last, naming [`OPENTELEMETRY_PROTO`]: a virtualenv without it was
/// not finished (or holds another release) and is made again.
const MADE_MARKER: &str = "appsignal-made-with";

/// Cargo's target directory of this build: the nearest directory above the running program that
/// holds cargo's `CACHEDIR.TAG` (so `CARGO_TARGET_DIR` is followed), else `<repo>/target`.
fn target_root() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|d| d.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The virtualenv the tests make: `target/otlp-venv`.
pub fn venv_dir() -> PathBuf {
    target_root().join("otlp-venv")
}

/// Whether `python` runs and imports the classes the receiver decodes with.
fn imports(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", IMPORT_CHECK])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Python of the virtualenv at `venv` when it was finished with [`OPENTELEMETRY_PROTO`] and
/// imports it.
fn made_venv(venv: &Path) -> Option<PathBuf> {
    let python = venv.join("bin").join("python");
    let marker = std::fs::read_to_string(venv.join(MADE_MARKER)).ok()?;
    (marker.trim() == OPENTELEMETRY_PROTO && imports(&python)).then_some(python)
}

/// The Python with `opentelemetry-proto`: `$APPSIGNAL_OTLP_PYTHON`, else `.venv/bin/python` in the
/// repository (a set-up made by hand), else the virtualenv the tests made in `target/otlp-venv`,
/// else `python3`. `None` when none of them can import the package ([`python_or_make`] then makes
/// the virtualenv).
pub fn python() -> Option<PathBuf> {
    let from_env = std::env::var_os("APPSIGNAL_OTLP_PYTHON").map(PathBuf::from);
    let dot_venv = repo_root().join(".venv").join("bin").join("python");
    if let Some(python) = [from_env, Some(dot_venv)]
        .into_iter()
        .flatten()
        .find(|p| imports(p))
    {
        return Some(python);
    }
    made_venv(&venv_dir()).or_else(|| {
        let python3 = PathBuf::from("python3");
        imports(&python3).then_some(python3)
    })
}

/// [`python`], else the virtualenv `target/otlp-venv`, made now with [`OPENTELEMETRY_PROTO`] from
/// PyPI and reused by every later run. `Err`: what is missing, naming the command that installs
/// it (a Python with `venv` needs apt; everything else this makes itself). Asked once per process.
pub fn python_or_make() -> Result<PathBuf, String> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| python().map_or_else(|| make_venv(&venv_dir()), Ok))
        .clone()
}

/// Takes `file`'s exclusive `flock`, waiting for whoever holds it; released when `file` closes.
fn lock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: `flock` on a descriptor that `file` owns and keeps open for the whole call; it
        // reads and writes no memory of ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The last lines of a command's output, for an error message.
fn tail(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Makes the virtualenv at `venv` and installs [`OPENTELEMETRY_PROTO`] into it. Tests start at
/// once, in several threads and test binaries: whoever takes the `flock` of `<venv>.lock` first
/// makes it, the others wait and then find it made. A virtualenv left unfinished (a run killed
/// midway: no marker) is removed and made again.
fn make_venv(venv: &Path) -> Result<PathBuf, String> {
    let lock_path = venv.with_extension("lock");
    let made = |e: std::io::Error, what: &Path| format!("cannot use {}: {e}", what.display());
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).map_err(|e| made(e, parent))?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| made(e, &lock_path))?;
    lock_exclusive(&lock).map_err(|e| made(e, &lock_path))?;
    if let Some(python) = made_venv(venv) {
        return Ok(python); // made by another test while this one waited
    }
    if venv.exists() {
        std::fs::remove_dir_all(venv).map_err(|e| made(e, venv))?;
    }
    eprintln!(
        "making {} with {OPENTELEMETRY_PROTO} for the OTLP receiver (once; later runs reuse it)",
        venv.display()
    );
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .output()
        .map_err(|e| {
            format!(
                "no python3 to make {} ({e}): apt-get install python3 python3-venv",
                venv.display()
            )
        })?;
    if !created.status.success() {
        let _ = std::fs::remove_dir_all(venv);
        let why = format!("{} {}", tail(&created.stderr), tail(&created.stdout));
        let why = why.trim();
        return Err(
            if why.contains("ensurepip") || why.contains("No module named venv") {
                format!("python3 cannot make a virtualenv: apt-get install python3-venv ({why})")
            } else {
                format!("python3 -m venv {} failed: {why}", venv.display())
            },
        );
    }
    let python = venv.join("bin").join("python");
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(OPENTELEMETRY_PROTO)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !installed.status.success() {
        return Err(format!(
            "{} -m pip install {OPENTELEMETRY_PROTO} failed (is PyPI reachable? or set \
             APPSIGNAL_OTLP_PYTHON to a Python that has it): {}",
            python.display(),
            tail(&installed.stderr)
        ));
    }
    if !imports(&python) {
        return Err(format!(
            "{} cannot import the classes after pip installed {OPENTELEMETRY_PROTO}",
            python.display()
        ));
    }
    // Last: the virtualenv is finished.
    std::fs::write(venv.join(MADE_MARKER), OPENTELEMETRY_PROTO).map_err(|e| made(e, venv))?;
    Ok(python)
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
