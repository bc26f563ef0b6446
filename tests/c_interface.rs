//! The C interface as C sees it: `appsignal.h` is what cbindgen makes of `ffi/src` (the committed
//! header is not stale), and a C program compiled with `-Wall -Wextra -Werror` against it runs
//! correctly linked to `libappsignal.so` and to `libappsignal.a`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn header_is_up_to_date() {
    let config = cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(root().join("ffi"))
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
    let lib_dir = testkit::lib_dir();
    let output = Command::new(exe)
        .env_clear()
        // Only this build's library (cargo test's LD_LIBRARY_PATH would win over the runpath).
        .env("LD_LIBRARY_PATH", &lib_dir)
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
    let lib_dir = testkit::lib_dir();
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
    // Next to the shared library that this build refreshed (see testkit::library_path).
    let archive = testkit::library_path().with_file_name("libappsignal.a");
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

/// All payloads the receiver stored.
fn stored_payloads(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_c_program_records_transactions_spans_and_logs_end_to_end() {
    let lib_dir = testkit::lib_dir();
    let tmp = tempfile::tempdir().unwrap();
    let received = tmp.path().join("received");
    let receiver = testkit::receiver::Receiver::start("apm-key", Some(received.clone())).unwrap();
    let exe = tmp.path().join("apm");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-D_POSIX_C_SOURCE=200809L",
            "-o",
        ])
        .arg(&exe)
        .arg("-I")
        .arg(root())
        .arg(root().join("tests/c/apm.c"))
        .arg(format!("-L{}", lib_dir.display()))
        .arg("-lappsignal")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .status()
        .expect("cc runs");
    assert!(status.success(), "compiling tests/c/apm.c failed");
    let output = Command::new(&exe)
        .env_clear()
        .env("LD_LIBRARY_PATH", &lib_dir)
        .envs(testkit::fleet::config_env(
            &receiver.url,
            "apm-key",
            &tmp.path().join("wd"),
            60_000,
        ))
        .env("_APPSIGNAL_FILTER_PARAMETERS", "password")
        .output()
        .expect("apm runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("apm: all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Per-action metrics, exactly.
    let counters = receiver.summary()["counters"].clone();
    assert_eq!(
        counters["transaction_count{action=UsersController#show,namespace=web}"], 1.0,
        "{counters}"
    );
    assert_eq!(
        counters["transaction_error_count{action=UsersController#show,namespace=web}"], 1.0,
        "{counters}"
    );
    assert_eq!(
        counters["transaction_count{action=HomeController#index,namespace=web}"], 3.0,
        "{counters}"
    );
    assert!(counters
        .get("transaction_error_count{action=HomeController#index,namespace=web}")
        .is_none());
    assert_eq!(
        counters["transaction_count{action=GET /spans,namespace=web}"], 1.0,
        "{counters}"
    );
    let distributions = receiver.summary()["distributions"].clone();
    assert_eq!(
        distributions
            ["event_duration{action=HomeController#index,group=active_record,namespace=web}"]
            ["count"],
        3,
        "{distributions}"
    );

    // The sample: tree intact, SQL sanitised, parameters filtered, error with its backtrace.
    let payloads = stored_payloads(&received);
    let samples: Vec<&serde_json::Value> = payloads
        .iter()
        .flat_map(|p| p["samples"].as_array().into_iter().flatten())
        .collect();
    let sample = samples
        .iter()
        .find(|s| s["action"] == "UsersController#show")
        .unwrap_or_else(|| panic!("no sample for UsersController#show in {samples:?}"));
    let text = sample.to_string();
    let events = sample["events"].as_array().unwrap();
    let process = events
        .iter()
        .find(|e| e["name"] == "process_action.rails")
        .expect("outer event");
    let sql = &process["children"][0];
    assert_eq!(sql["name"], "sql.active_record", "{text}");
    assert_eq!(
        sql["body"], "SELECT * FROM users WHERE id = ? AND name = ? AND role IN (?)",
        "{text}"
    );
    assert!(
        events.iter().any(|e| e["name"] == "render.action_view"),
        "{text}"
    );
    assert_eq!(
        sample["sample_data"]["params"]["password"], "[FILTERED]",
        "{text}"
    );
    assert_eq!(
        sample["sample_data"]["params"]["user"]["password"], "[FILTERED]",
        "{text}"
    );
    assert_eq!(
        sample["sample_data"]["params"]["user"]["email"], "bob@example.com",
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("also-secret"),
        "{text}"
    );
    assert_eq!(sample["error"]["class"], "RuntimeError");
    assert_eq!(sample["error"]["message"], "boom");
    assert_eq!(sample["error"]["backtrace"].as_array().unwrap().len(), 2);
    assert!(
        !text.contains("Ignored#after_complete"),
        "a call after complete changed nothing"
    );
    // Only the erroneous transaction was sampled.
    assert_eq!(
        samples
            .iter()
            .filter(|s| s["action"] == "HomeController#index")
            .count(),
        0
    );

    // The log line.
    let logs: Vec<&serde_json::Value> = payloads
        .iter()
        .flat_map(|p| p["logs"].as_array().into_iter().flatten())
        .collect();
    let line = logs
        .iter()
        .find(|l| l["message"] == "hello from C")
        .unwrap_or_else(|| panic!("no log line in {logs:?}"));
    assert_eq!(line["severity"], "info");
    assert_eq!(line["attributes"]["user"], "u1");
}

/// Compiles `tests/c/<name>.c` (`-Wall -Wextra -Werror -pedantic`) against `appsignal.h` and the
/// shared library of this build, into `dir`.
fn compile_program(name: &str, dir: &Path) -> PathBuf {
    let lib_dir = testkit::lib_dir();
    let exe = dir.join(name);
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-D_POSIX_C_SOURCE=200809L",
            "-o",
        ])
        .arg(&exe)
        .arg("-I")
        .arg(root())
        .arg(root().join(format!("tests/c/{name}.c")))
        .arg(format!("-L{}", lib_dir.display()))
        .arg("-lappsignal")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .status()
        .expect("cc runs");
    assert!(status.success(), "compiling tests/c/{name}.c failed");
    exe
}

/// Runs a compiled test program with only `envs` (and this build's library) in its environment;
/// asserts that it exited 0 and printed `<name>: all checks passed`. Returns (stdout, stderr).
fn run_program(name: &str, exe: &Path, envs: &[(&str, &Path)]) -> (String, String) {
    let lib_dir = testkit::lib_dir();
    let output = Command::new(exe)
        .env_clear()
        .env("LD_LIBRARY_PATH", &lib_dir)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .expect("the test program runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success() && stdout.contains(&format!("{name}: all checks passed")),
        "{name} failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn transaction_to_json_has_the_shape_the_ruby_gem_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile_program("transaction_json", tmp.path());
    run_program("transaction_json", &exe, &[]);
}

#[test]
fn transaction_to_json_lists_every_event_flat_in_start_order_with_its_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile_program("transaction_events", tmp.path());
    run_program("transaction_events", &exe, &[]);
}

#[test]
fn span_to_json_has_the_shape_the_elixir_package_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile_program("span_json", tmp.path());
    run_program("span_json", &exe, &[]);
}

#[test]
fn diagnose_has_the_shape_the_gems_diagnose_command_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile_program("diagnose", tmp.path());
    let (_, stderr) = run_program("diagnose", &exe, &[("DIAGNOSE_TMP", tmp.path())]);
    assert!(
        !stderr.contains("WARNING"),
        "a valid start is quiet: {stderr}"
    );
}

#[test]
fn a_start_with_nothing_configured_or_an_active_config_it_cannot_use_prints_the_warning_line() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile_program("startup_warning", tmp.path());
    let log = tmp.path().join("appsignal.log");
    let (stdout, stderr) = run_program(
        "startup_warning",
        &exe,
        &[("_APPSIGNAL_LOG_FILE_PATH", log.as_path())],
    );
    let ids = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ids "))
        .expect("the program prints its real uid/gid");
    let expected =
        format!("WARNING: Error when reading appsignal config, appsignal (as {ids}) not starting");
    // One line per start with nothing configured or with an active configuration it cannot use
    // (no key; then a bad endpoint); none for the explicitly inactive start; nothing else on
    // stderr but the program's own step markers (the details go to the log).
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        vec![
            "step: nothing configured",
            expected.as_str(),
            "step: _APPSIGNAL_ACTIVE=false",
            "step: active without a key",
            expected.as_str(),
            "step: ftp endpoint",
            expected.as_str(),
        ],
        "{stderr}"
    );
    let logged = std::fs::read_to_string(&log).expect("the configured log file was written");
    assert!(logged.contains("nothing is configured"), "{logged}");
    assert!(
        logged.contains("_APPSIGNAL_PUSH_API_KEY is not set"),
        "{logged}"
    );
    assert!(logged.contains("_APPSIGNAL_PUSH_API_ENDPOINT"), "{logged}");
    assert!(!logged.contains("warning-secret-key"), "{logged}");
}
