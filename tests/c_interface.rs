//! The C interface as C sees it: `appsignal.h` is what cbindgen makes of `ffi/src` (the committed
//! header is not stale), and a C program compiled with `-Wall -Wextra -Werror` against it runs
//! correctly linked to `libappsignal.so` and to `libappsignal.a`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn header_is_up_to_date() {
    let config = cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(env!("CARGO_MANIFEST_DIR"))
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = root().join("appsignal.h");
    if std::env::var_os("APPSIGNAL_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write appsignal.h");
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "appsignal.h is stale: regenerate it with `APPSIGNAL_BLESS=1 cargo test --test c_interface` and commit it"
    );
}

fn compile(out: &Path, link: &[String]) {
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o"])
        .arg(out)
        .arg("-I")
        .arg(root())
        .arg(root().join("tests/c/smoke.c"))
        .args(link)
        .status()
        .expect("a C compiler (cc) runs");
    assert!(status.success(), "compiling tests/c/smoke.c failed");
}

fn run_smoke(exe: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(exe)
        .env_clear()
        .env("SMOKE_TMP", tmp.path())
        .output()
        .expect("the smoke program runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "smoke failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("smoke: all checks passed"), "{stdout}");
}

#[test]
fn a_c_program_runs_against_the_shared_library() {
    let lib_dir = common::library_path().parent().unwrap().to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("smoke-shared");
    compile(
        &exe,
        &[
            format!("-L{}", lib_dir.display()),
            "-lappsignal".into(),
            format!("-Wl,-rpath,{}", lib_dir.display()),
        ],
    );
    run_smoke(&exe);
}

#[test]
fn a_c_program_runs_against_the_static_library() {
    // Next to the shared library that this build refreshed (see common::library_path).
    let archive = common::library_path().with_file_name("libappsignal.a");
    assert!(archive.is_file(), "{} was not built", archive.display());
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("smoke-static");
    compile(
        &exe,
        &[
            archive.display().to_string(),
            "-lpthread".into(),
            "-ldl".into(),
            "-lm".into(),
        ],
    );
    run_smoke(&exe);
}
