//! The Ruby and Elixir example integrations, run for real: each script builds its extension (a C
//! extension, a NIF) against `appsignal.h` and the `libappsignal.so` of this build, starts the
//! reference receiver, runs the app (Puma cluster and Unicorn preload; several BEAM VMs) and checks
//! that the receiver's totals equal what was sent. With `CI` set, a missing ruby or elixir fails.
//! The `*_otlp` tests run the same scripts with the OTLP exporter against the Python OTLP receiver
//! (`run.sh otlp`); with `CI` set, a missing Python with `opentelemetry-proto` fails too.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_script(script: &str) {
    run_script_with(script, &[], &[]);
}

/// The lock a run of `script` holds (a panic in another run poisons nothing this needs).
fn script_lock(script: &str) -> &'static Mutex<()> {
    static RUBY: Mutex<()> = Mutex::new(());
    static ELIXIR: Mutex<()> = Mutex::new(());
    if script.contains("ruby") {
        &RUBY
    } else {
        &ELIXIR
    }
}

/// `script` with `args` and extra environment `env`. Runs of one script take turns: they share its
/// build directory (the Ruby extension in `examples/ruby/build/ext`, rebuilt by every run; the Mix
/// project's `_build` and `priv/`), and several BEAMs or Puma clusters at once on 2 cores only make
/// each run slower.
fn run_script_with(script: &str, args: &[&str], env: &[(&str, &Path)]) {
    let _turn = script_lock(script)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let lib_dir = common::library_path().parent().unwrap().to_path_buf();
    let output = Command::new("bash")
        .arg(root().join(script))
        .args(args)
        .envs(env.iter().copied())
        .env("APPSIGNAL_LIB_DIR", &lib_dir)
        // cargo test puts target/<profile> (where an older `cargo build` may have left another
        // libappsignal.so) before deps/ in LD_LIBRARY_PATH, which wins over the runpath.
        .env("LD_LIBRARY_PATH", &lib_dir)
        // Data left in the journal after every process stopped is a failure, not a warning.
        .env("STRICT_JOURNAL", "1")
        .env(
            "RECEIVER_BIN",
            env!("CARGO_BIN_EXE_appsignal-test-receiver"),
        )
        // Data left in the journal after every process stopped is a failure, not a warning.
        .env("STRICT_JOURNAL", "1")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    if std::env::var_os("CI").is_some() {
        assert!(
            !stdout.contains("SKIPPED"),
            "{script} skipped under CI:\n{stdout}"
        );
    }
}

#[test]
fn ruby_example_puma_cluster_and_unicorn_preload() {
    run_script("examples/ruby/run.sh");
}

#[test]
fn elixir_example_several_beam_vms() {
    run_script("examples/elixir/run.sh");
}

/// `run.sh otlp`: the same integration exporting with `_APPSIGNAL_EXPORTER=otlp` (no push key) to
/// `examples/otlp_receiver.py`, exact totals from what it parsed with the official classes.
fn run_otlp(script: &str, test: &str) {
    let Some(python) = common::otlp_python_or_skip(test) else {
        return;
    };
    run_script_with(
        script,
        &["otlp"],
        &[("APPSIGNAL_OTLP_PYTHON", python.as_path())],
    );
}

#[test]
fn ruby_example_puma_otlp() {
    run_otlp("examples/ruby/run.sh", "ruby_example_puma_otlp");
}

#[test]
fn elixir_example_otlp() {
    run_otlp("examples/elixir/run.sh", "elixir_example_otlp");
}
