//! The Ruby and Elixir example integrations, run for real: each script builds its extension (a C
//! extension, a NIF) against `appsignal.h` and the `libappsignal.so` of this build, starts the
//! reference receiver, runs the app (Puma cluster and Unicorn preload; several BEAM VMs) and checks
//! that the receiver's totals equal what was sent. With `CI` set, a missing ruby or elixir fails.
//! The `*_otlp` tests run the same scripts with the OTLP exporter against the Python OTLP receiver
//! (`run.sh otlp`); with `CI` set, a missing Python with `opentelemetry-proto` fails too.

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
    let lib_dir = testkit::lib_dir();
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
    // The scripts say SKIPPED on stderr (library.sh `unavailable`); either stream counts.
    let skipped = skip_notice(&stdout, &stderr);
    if std::env::var_os("CI").is_some() {
        assert!(
            skipped.is_none(),
            "{script} skipped under CI: {}",
            skipped.unwrap_or_default()
        );
    }
}

/// The line of either stream that says the script skipped its run.
fn skip_notice<'a>(stdout: &'a str, stderr: &'a str) -> Option<&'a str> {
    stdout
        .lines()
        .chain(stderr.lines())
        .find(|line| line.contains("SKIPPED"))
}

#[test]
fn a_skip_on_stderr_is_noticed() {
    // What library.sh's `unavailable` prints, on the stream it prints it on.
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"unset CI; ROOT=.; INSTALL_HINT=hint; . "$1"; unavailable ruby"#)
        .arg("bash")
        .arg(root().join("examples/common/library.sh"))
        .output()
        .expect("bash runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.is_empty(), "the notice went to stdout: {stdout}");
    assert_eq!(
        skip_notice(&stdout, &stderr),
        Some("run.sh: SKIPPED: missing: ruby (hint)")
    );
    assert_eq!(skip_notice("ok\n", "built\n"), None);
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
    let Some(python) = testkit::otlp_python_or_skip(test) else {
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
