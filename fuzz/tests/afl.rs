//! The bounded coverage-guided run of CI: `fuzz/run.sh --ci` fuzzes every target with AFL++ for
//! `FUZZ_SECONDS` (10 here) and fails on a crash or a hang. It needs cargo-afl (`.ci/run` installs
//! it) and builds the instrumented targets into `target/afl/` (minutes on a fresh checkout), so it
//! runs when `CI` is set (where a missing cargo-afl fails it) or when `APPSIGNAL_FUZZ=1` asks for it.
//! Its AFL output goes to `target/fuzz-ci/`, apart from long runs in `target/fuzz/`.

use std::path::Path;
use std::process::Command;

fn wanted() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var("APPSIGNAL_FUZZ").is_ok_and(|v| v == "1")
}

#[test]
fn every_target_survives_a_bounded_afl_run() {
    if !wanted() {
        eprintln!("skipped: set CI=true or APPSIGNAL_FUZZ=1 to run AFL++ on every target");
        return;
    }
    let has_afl = Command::new("cargo")
        .args(["afl", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_afl,
        "cargo-afl is missing: `cargo install --locked cargo-afl` (.ci/run does it)"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/ is inside the workspace");
    let seconds = std::env::var("FUZZ_SECONDS").unwrap_or_else(|_| "10".into());
    let output = Command::new("bash")
        .arg(root.join("fuzz/run.sh"))
        .arg("--ci")
        .current_dir(root)
        .env("FUZZ_SECONDS", &seconds)
        .env("FUZZ_OUT_DIR", root.join("target/fuzz-ci"))
        .output()
        .expect("run fuzz/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    let summary = format!("fuzz: {} passed, 0 failed", appsignal_fuzz::TARGETS.len());
    assert!(
        output.status.success() && stdout.contains(&summary),
        "fuzz/run.sh --ci failed (expected {summary:?}):\n{stdout}\n{stderr}"
    );
}
