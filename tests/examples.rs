//! The Ruby and Elixir example integrations, run for real: each script builds its extension (a C
//! extension, a NIF) against `appsignal.h` and the `libappsignal.so` of this build, starts the
//! reference receiver, runs the app (Puma cluster and Unicorn preload; several BEAM VMs) and checks
//! that the receiver's totals equal what was sent. With `CI` set, a missing ruby or elixir fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_script(script: &str) {
    let lib_dir = common::library_path().parent().unwrap().to_path_buf();
    let output = Command::new("bash")
        .arg(root().join(script))
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
