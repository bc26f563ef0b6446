//! The Python with PyPI's `prometheus_client` (the reference Prometheus client) for the benches:
//! the virtualenv `target/prometheus-venv`, the same one the format test of `src/prometheus.rs`
//! makes, with the same pinned release; made here when missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The pinned release (the one `src/prometheus.rs`'s parser test installs).
pub const PROMETHEUS_CLIENT: &str = "prometheus_client==0.26.0";

/// Cargo's target directory of this build: the parent of `target/<profile>` (so
/// `CARGO_TARGET_DIR` is followed).
fn target_root() -> PathBuf {
    let profile = crate::target_dir();
    profile.parent().map_or(profile.clone(), Path::to_path_buf)
}

/// Whether `python` imports `prometheus_client` of the pinned release.
fn has_release(python: &Path) -> bool {
    let version = PROMETHEUS_CLIENT.rsplit("==").next().unwrap_or_default();
    Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m, prometheus_client; print(m.version('prometheus_client'))",
        ])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == version)
}

/// The virtualenv's Python, made now when missing or holding another release (into a temporary
/// directory, then renamed, so that a concurrent run never sees half of one). `Err`: what failed.
pub fn python_or_make() -> Result<PathBuf, String> {
    let target = target_root();
    let venv = target.join("prometheus-venv");
    let python = venv.join("bin").join("python");
    if has_release(&python) {
        return Ok(python);
    }
    let tmp = target.join(format!("prometheus-venv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    eprintln!(
        "making {} with {PROMETHEUS_CLIENT} (once; later runs reuse it)",
        venv.display()
    );
    run(Command::new("python3").args(["-m", "venv"]).arg(&tmp))?;
    run(Command::new(tmp.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        PROMETHEUS_CLIENT,
    ]))?;
    if venv.exists() && !has_release(&python) {
        let _ = std::fs::remove_dir_all(&venv);
    }
    match std::fs::rename(&tmp, &venv) {
        Ok(()) => {}
        // Made by another run meanwhile.
        Err(_) if has_release(&python) => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => return Err(format!("cannot rename {}: {e}", tmp.display())),
    }
    // A virtualenv's scripts name its directory: the Python still runs after the rename (its
    // `bin/python` is a link to the system's), which is all the benches use.
    if has_release(&python) {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot import {PROMETHEUS_CLIENT}",
            python.display()
        ))
    }
}
