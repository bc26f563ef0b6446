//! What the integration tests, the test bins, the examples and the benches share (`use testkit::…`):
//! the test worker and the fleet that drives it, the reference Push API receiver, the OTLP
//! receiver, the rogue peer, the set-up most tests share, what the benches share (and the Python
//! with `prometheus_client` they compare with), paths of the built artifacts, and polling with
//! deadlines.

pub mod bench;
pub mod exposition;
pub mod fleet;
pub mod otlp_receiver;
pub mod prometheus_python;
pub mod receiver;
pub mod rogue;
pub mod setup;
pub mod worker;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `target/<profile>` of this test binary (which lives in `target/<profile>/deps`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf()
}

/// The `libappsignal.so` built with this test (the worker's search: `deps/` first).
pub fn library_path() -> PathBuf {
    worker::library_path()
}

/// The directory of [`library_path`], ready for `-L… -lappsignal` programs: the library's soname is
/// `libappsignal.so.0` (ffi/build.rs), which such a program looks for at run time, so this makes
/// sure the directory has that name too (a relative symlink to `libappsignal.so`, as an installed
/// library has; cargo does not make it).
pub fn lib_dir() -> PathBuf {
    let dir = library_path()
        .parent()
        .expect("the library is in a directory")
        .to_path_buf();
    let soname = dir.join(format!(
        "libappsignal.so.{}",
        env!("CARGO_PKG_VERSION_MAJOR")
    ));
    if let Err(e) = std::os::unix::fs::symlink("libappsignal.so", &soname) {
        // Another test may have made it at the same moment.
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::AlreadyExists,
            "cannot link {}: {e}",
            soname.display()
        );
    }
    dir
}

/// The worker binary (`appsignal-test-worker`, a bin of this package), next to the calling test's
/// or bench's `deps/`: cargo builds a package's bins before its integration tests and benches.
pub fn worker_exe() -> PathBuf {
    target_dir().join("appsignal-test-worker")
}

/// Runs `command` to its end and asserts that it succeeded; its output otherwise in the message.
pub fn run(command: &mut std::process::Command) -> std::process::Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not run: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Polls `condition` every 5 ms until it holds or `timeout` passes; returns whether it held.
pub fn poll(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The Python that can run the OTLP receiver (`$APPSIGNAL_OTLP_PYTHON`, `.venv`, else the
/// virtualenv `target/otlp-venv`, made on first use: [`otlp_receiver::python_or_make`]), or `None`
/// to skip when it cannot be made (no `python3` or no `venv` module: apt packages; PyPI not
/// reachable): under `CI` that fails the test, elsewhere the test says SKIPPED on stderr, naming
/// what installs the missing part.
pub fn otlp_python_or_skip(test: &str) -> Option<PathBuf> {
    match otlp_receiver::python_or_make() {
        Ok(python) => Some(python),
        Err(missing) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: no Python with opentelemetry-proto: {missing}"
            );
            eprintln!("SKIPPED {test}: no Python with opentelemetry-proto: {missing}");
            None
        }
    }
}

/// The index in `workers` of the process whose pid `agent.lock` in `workdir` names.
pub fn leader_index(workdir: &std::path::Path, workers: &[fleet::WorkerProcess]) -> Option<usize> {
    let text = std::fs::read_to_string(workdir.join("agent.lock")).ok()?;
    let pid: u32 = text.split(';').next()?.parse().ok()?;
    workers.iter().position(|w| w.pid == pid)
}

/// What a chaos run did: the totals the killed and the surviving processes had acknowledged.
pub struct Chaos {
    pub survivors: Vec<fleet::WorkerProcess>,
    pub expected: serde_json::Value,
    pub leader_kills: u32,
    pub client_kills: u32,
}

/// Six processes record in rounds while the leader is SIGKILLed, at most once a second (right
/// after its own round was acknowledged, while the others are mid-round), until it was killed
/// `leader_kills` times; with `kill_clients`, after every odd-numbered leader kill an idle client
/// is killed too. Killed processes are replaced. The run is bounded by `deadline`: not reaching
/// the kills by then fails the test. Expected totals: what every process had acknowledged when it
/// was killed or, for survivors, at the end (the survivors are synced, not stopped).
pub fn chaos(
    workdir: &std::path::Path,
    mut spawn: impl FnMut() -> fleet::WorkerProcess,
    kill_clients: bool,
    leader_kills: u32,
    deadline: Duration,
) -> Chaos {
    use serde_json::Value;
    let mut workers: Vec<fleet::WorkerProcess> = (0..6).map(|_| spawn()).collect();
    let mut last_acked: Vec<Value> = vec![Value::Null; workers.len()];
    let mut expected = Value::Null;
    let started = Instant::now();
    // Pacing only (a leader gets time to serve, push and be connected to); what the run does is
    // counted in kills, not in time.
    let mut next_kill = started + Duration::from_secs(1);
    let (mut leaders_killed, mut client_kills) = (0, 0);
    let mut rounds = 0u32;
    while leaders_killed < leader_kills {
        assert!(
            started.elapsed() < deadline,
            "chaos: only {leaders_killed} of {leader_kills} leader kills in {deadline:?} ({rounds} rounds)"
        );
        rounds += 1;
        for w in workers.iter_mut() {
            w.send("record 40").unwrap();
            w.send("sync").unwrap();
        }
        let leader = leader_index(workdir, &workers);
        let mut done = vec![false; workers.len()];
        let mut killed_leader = false;
        if let Some(l) = leader {
            last_acked[l] = workers[l].expect("acked", Duration::from_secs(90)).unwrap();
            done[l] = true;
            if Instant::now() >= next_kill {
                // Idle itself, but the others are handing it their rounds right now.
                workers[l].child.kill().unwrap();
                workers[l].wait(Duration::from_secs(10)).unwrap();
                fleet::add_sent(&mut expected, &last_acked[l]);
                leaders_killed += 1;
                killed_leader = true;
                next_kill = Instant::now() + Duration::from_secs(1);
            }
        }
        for (i, w) in workers.iter_mut().enumerate() {
            if !done[i] {
                let acked = w.expect("acked", Duration::from_secs(90)).unwrap();
                assert_eq!(
                    acked["idle"], true,
                    "worker {} never got its round acknowledged",
                    w.pid
                );
                last_acked[i] = acked;
            }
        }
        if kill_clients && killed_leader && leaders_killed % 2 == 1 {
            let client = (0..workers.len())
                .find(|&i| Some(i) != leader && workers[i].child.try_wait().unwrap().is_none())
                .expect("a live client to kill");
            workers[client].child.kill().unwrap();
            workers[client].wait(Duration::from_secs(10)).unwrap();
            fleet::add_sent(&mut expected, &last_acked[client]);
            client_kills += 1;
            workers[client] = spawn();
            last_acked[client] = Value::Null;
        }
        // Replace a killed leader.
        for i in 0..workers.len() {
            if workers[i].child.try_wait().unwrap().is_some() {
                workers[i] = spawn();
                last_acked[i] = Value::Null;
            }
        }
    }
    for (w, acked) in workers.iter_mut().zip(last_acked.iter_mut()) {
        *acked = w.sync().unwrap();
    }
    for acked in &last_acked {
        fleet::add_sent(&mut expected, acked);
    }
    Chaos {
        survivors: workers,
        expected,
        leader_kills: leaders_killed,
        client_kills,
    }
}
