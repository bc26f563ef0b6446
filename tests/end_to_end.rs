//! End to end, with real processes: worker processes load libappsignal.so through its C interface,
//! share a working directory, elect a leader over a real flock and Unix socket, and push to the
//! reference receiver over real HTTP on 127.0.0.1. Totals received must equal totals sent, exactly.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use testkit::fleet::{self, WorkerProcess};
use testkit::receiver::Receiver;
use testkit::setup::{stop_all, Setup};

const KEY: &str = "end-to-end-secret-key";

/// Whether another open file description can take the lock (it cannot while a leader holds it).
fn lock_is_free(path: &Path) -> bool {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: flock on a valid descriptor we own; it is released when `file` closes.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[test]
fn four_processes_one_leader_totals_equal() {
    let setup = Setup::new(KEY, 500);
    let mut workers: Vec<WorkerProcess> = (0..4).map(|i| setup.spawn(i)).collect();
    let leaders: Vec<u32> = workers
        .iter()
        .filter(|w| w.role == "leader")
        .map(|w| w.pid)
        .collect();
    assert_eq!(
        leaders.len(),
        1,
        "roles: {:?}",
        workers.iter().map(|w| &w.role).collect::<Vec<_>>()
    );
    assert_eq!(workers.iter().filter(|w| w.role == "client").count(), 3);
    let leader = leaders[0];

    // Exactly one process holds agent.lock and listens on agent.socket.
    let wd = setup.workdir();
    assert!(!lock_is_free(&wd.join("agent.lock")), "the lock is held");
    assert!(
        UnixStream::connect(wd.join("agent.socket")).is_ok(),
        "the leader listens"
    );
    for w in workers.iter_mut() {
        let report = w.diagnose().unwrap();
        assert_eq!(
            report["leader_election"]["lock"]["holder_pid"], leader,
            "{report}"
        );
        assert_eq!(report["leader_election"]["socket"]["exists"], true);
        assert_eq!(
            report["leader_election"]["working_directory"]["mode"],
            "777"
        );
        assert_eq!(
            report["leader_election"]["config"]["push_api_key"],
            "present"
        );
    }

    // Two rounds in different windows: the second starts once the first round's window was
    // pushed (so it is closed), and the payloads received are checked to span both.
    let mut expected = Value::Null;
    let mut last = Vec::new();
    for round in 0..2 {
        for w in workers.iter_mut() {
            w.send("record 3000").unwrap();
        }
        last = workers
            .iter_mut()
            .map(|w| w.expect("sent", Duration::from_secs(30)).unwrap())
            .collect();
        if round == 0 {
            for w in workers.iter_mut() {
                w.sync().unwrap();
            }
            assert!(
                testkit::poll(Duration::from_secs(20), || {
                    setup.receiver.summary()["payloads"].as_u64() >= Some(1)
                }),
                "the first round's window was never pushed"
            );
        }
    }
    for sent in &last {
        fleet::add_sent(&mut expected, sent);
    }
    stop_all(&mut workers);
    setup.assert_totals(&expected);
    let summary = setup.receiver.summary();
    assert_eq!(summary["unauthorized"], 0);
    assert_eq!(summary["duplicates"], 0);
    assert_eq!(summary["dropped_updates"], 0);
    assert!(
        lock_is_free(&wd.join("agent.lock")),
        "the lock is released after the last stop"
    );
    assert!(
        received_windows(&setup).len() >= 2,
        "the two rounds did not land in two windows: {:?}",
        received_windows(&setup)
    );
    let log = setup.log();
    assert!(log.contains("leader INFO leading: listening on"), "{log}");
    assert!(!log.contains(KEY), "the push key never appears in the log");
}

/// Every payload the receiver stored, as JSON.
fn received_payloads(setup: &Setup) -> Vec<Value> {
    std::fs::read_dir(setup.tmp.path().join("received"))
        .map(|dir| {
            dir.map(|e| {
                let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
                serde_json::from_str(&text).unwrap()
            })
            .collect()
        })
        .unwrap_or_default()
}

/// The distinct window starts of the payloads received.
fn received_windows(setup: &Setup) -> std::collections::BTreeSet<u64> {
    received_payloads(setup)
        .iter()
        .filter_map(|p| p["window"]["start_ms"].as_u64())
        .collect()
}

#[test]
fn host_role_integration_version_and_process_name_reach_payload_diagnose_and_log() {
    let setup = Setup::new(KEY, 300)
        .with("_APPSIGNAL_HOST_ROLE", "queue-worker")
        .with("_APPSIGNAL_LANGUAGE_INTEGRATION_VERSION", "ruby-4.1.0")
        .with("_APPSIGNAL_PROCESS_NAME", "sidekiq 7 [busy]");
    let mut worker = setup.spawn(0);
    let config = &worker.diagnose().unwrap()["leader_election"]["config"];
    assert_eq!(config["host_role"], "queue-worker", "{config}");
    assert_eq!(config["language_integration_version"], "ruby-4.1.0");
    assert_eq!(config["process_name"], "sidekiq 7 [busy]");
    let sent = worker.record(100).unwrap();
    let mut expected = Value::Null;
    fleet::add_sent(&mut expected, &sent);
    let pid = worker.pid;
    stop_all(std::slice::from_mut(&mut worker));
    setup.assert_totals(&expected);
    let payloads = received_payloads(&setup);
    assert!(!payloads.is_empty());
    for p in &payloads {
        assert_eq!(p["host_role"], "queue-worker", "{p}");
        assert_eq!(p["language_integration_version"], "ruby-4.1.0", "{p}");
    }
    let log = setup.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    let tag = format!("(pid {pid} sidekiq 7 [busy]) ");
    assert!(
        lines.iter().all(|l| l.contains(&tag)),
        "a line without {tag:?}:\n{log}"
    );
}

#[test]
fn everyone_stopping_at_once_loses_nothing() {
    // The leader stops while clients are still flushing: they take over and push the rest.
    let setup = Setup::new(KEY, 300);
    let mut workers: Vec<WorkerProcess> = (0..4).map(|i| setup.spawn(i)).collect();
    let mut expected = Value::Null;
    for w in workers.iter_mut() {
        w.send("record 2000").unwrap();
    }
    for w in workers.iter_mut() {
        fleet::add_sent(
            &mut expected,
            &w.expect("sent", Duration::from_secs(30)).unwrap(),
        );
    }
    for w in workers.iter_mut() {
        w.send("stop").unwrap();
    }
    for w in workers.iter_mut() {
        w.expect("stopped", Duration::from_secs(20)).unwrap();
        assert!(w.wait(Duration::from_secs(20)).unwrap().success());
    }
    setup.assert_totals(&expected);
}

/// Sends `bytes` on a fresh connection and returns whether the leader closed it within the deadline.
fn leader_closes_after(socket: &Path, bytes: &[u8]) -> bool {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // e.g. a Welcome before the bad frame
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn bad_frames_close_only_their_connection() {
    let setup = Setup::new(KEY, 400);
    let mut workers: Vec<WorkerProcess> = (0..2).map(|i| setup.spawn(i)).collect();
    let socket = setup.workdir().join("agent.socket");

    // Garbage where a frame header should be, announcing a body of 0xdeadbeef bytes.
    assert!(leader_closes_after(
        &socket,
        &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]
    ));
    // A header announcing 8 MiB: over the 4 MiB limit, rejected before any body is read.
    assert!(leader_closes_after(&socket, &(8u32 << 20).to_be_bytes()));
    // A well-sized frame whose body is not CBOR.
    let mut frame = 16u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0xff; 16]);
    assert!(leader_closes_after(&socket, &frame));

    // The leader still serves the real clients, and counts everything exactly.
    let mut expected = Value::Null;
    for w in workers.iter_mut() {
        fleet::add_sent(&mut expected, &w.record(1500).unwrap());
    }
    stop_all(&mut workers);
    setup.assert_totals(&expected);
    assert!(
        fleet::await_totals(&expected, || setup.receiver.summary(), Duration::ZERO)
            .iter()
            .all(|r| r.equal)
    );
    let summary = setup.receiver.summary();
    assert_eq!(summary["rejected_frames"], 3, "{summary}");
    let log = setup.log();
    assert!(log.contains("closed the connection of pid"), "{log}");
    assert!(
        !log.contains("pid Some(") && !log.contains("uid Some("),
        "peers are named by number: {log}"
    );
}

#[test]
fn a_push_api_answering_429_with_retry_after_is_not_tried_before_the_delay() {
    let setup = Setup::new(KEY, 200);
    setup.receiver.fail_next_with_retry_after(1, 429, 2);
    let mut worker = setup.spawn(0);
    let expected = {
        let mut e = Value::Null;
        fleet::add_sent(&mut e, &worker.record(500).unwrap());
        e
    };
    assert!(testkit::poll(Duration::from_secs(20), || setup
        .receiver
        .summary()["failed_on_purpose"]
        == 1));
    setup.assert_totals(&expected);
    // The leader logs the delivery after the receiver's answer: wait for the line.
    setup.await_log("sent push payload", Duration::from_secs(10));
    let log = setup.log();
    assert!(log.contains("next try in 2 s or later"), "{log}");
    // The endpoint was skipped until the delay passed: the one push after the 429 that delivered
    // came at least 2 s later, although transmissions run every 200 ms.
    let line_time = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.get(11..23))
            .map(|hms| {
                let parts: Vec<f64> = hms.split(':').filter_map(|p| p.parse().ok()).collect();
                parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
            })
    };
    let refused = line_time("next try in 2 s").unwrap();
    let delivered = line_time("sent push payload").unwrap();
    assert!(
        delivered - refused >= 1.9,
        "delivered {delivered} s, refused {refused} s:\n{log}"
    );
    worker.stop(Duration::from_secs(20)).unwrap();
    assert_eq!(setup.receiver.summary()["duplicates"], 0);
}

#[test]
fn a_push_api_answering_500_gets_the_payload_later() {
    let setup = Setup::new(KEY, 300);
    setup.receiver.fail_next(2, 500);
    let mut worker = setup.spawn(0);
    let expected = {
        let mut e = Value::Null;
        fleet::add_sent(&mut e, &worker.record(1000).unwrap());
        e
    };
    // The first two pushes fail; the payload waits in payloads/ and goes out on a later interval.
    assert!(testkit::poll(Duration::from_secs(20), || setup
        .receiver
        .summary()["failed_on_purpose"]
        == 2));
    setup.assert_totals(&expected);
    assert!(
        setup
            .log()
            .contains("kept in payloads/ for the next transmission"),
        "{}",
        setup.log()
    );
    // The receiver may have the payload a moment before the leader logs the answer.
    setup.await_log("sent push payload", Duration::from_secs(10));
    worker.stop(Duration::from_secs(20)).unwrap();
    let left: Vec<_> = std::fs::read_dir(setup.workdir().join("payloads"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "nothing stays in the cache: {left:?}");
    let segments: Vec<_> = std::fs::read_dir(setup.workdir().join("journal"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg3"))
        .collect();
    assert!(
        segments.is_empty(),
        "nothing stays in the journal: {segments:?}"
    );
    assert_eq!(setup.receiver.summary()["duplicates"], 0);
}

#[test]
fn the_payload_cache_stays_within_its_bound_and_is_pushed_at_the_next_start() {
    let setup = Setup::new(KEY, 200)
        .with("_APPSIGNAL_PAYLOAD_CACHE_MAX_FILES", "3")
        .with("_APPSIGNAL_STOP_TIMEOUT_MS", "1000");
    setup.receiver.fail_next(u32::MAX, 503);
    let mut worker = setup.spawn(0);
    let payloads = setup.workdir().join("payloads");
    let cached = || {
        std::fs::read_dir(&payloads)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json.gz"))
                    .count()
            })
            .unwrap_or(0)
    };
    // Data in eight windows: eight payloads, all failing, into a cache of three.
    for _ in 0..8 {
        worker.record(10).unwrap();
        let before = setup.receiver.summary()["failed_on_purpose"]
            .as_u64()
            .unwrap();
        assert!(testkit::poll(Duration::from_secs(10), || setup
            .receiver
            .summary()["failed_on_purpose"]
            .as_u64()
            .unwrap()
            > before));
        assert!(cached() <= 3, "cache holds {} files", cached());
    }
    worker.stop(Duration::from_secs(20)).unwrap();
    assert!(
        cached() <= 3 && cached() > 0,
        "cache holds {} files",
        cached()
    );
    assert!(
        setup.log().contains("payload cache full"),
        "{}",
        setup.log()
    );

    // What the cache holds now, read from its files: the next start must deliver exactly this.
    let mut waiting_total = 0.0;
    for entry in std::fs::read_dir(&payloads).unwrap().filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().ends_with(".json.gz") {
            let gz = std::fs::read(entry.path()).unwrap();
            let mut json = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut json)
                .unwrap();
            let payload: Value = serde_json::from_str(&json).unwrap();
            waiting_total += payload["counters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["value"].as_f64().unwrap())
                .sum::<f64>();
        }
    }
    assert!(waiting_total > 0.0);
    // The API is back; the next process to start leads and delivers what was cached.
    let waiting = cached();
    setup.receiver.fail_next(0, 500);
    let mut next = setup.spawn(1);
    assert!(testkit::poll(Duration::from_secs(20), || setup
        .receiver
        .summary()["payloads"]
        .as_u64()
        .unwrap()
        >= waiting as u64));
    assert!(testkit::poll(Duration::from_secs(5), || cached() == 0));
    next.stop(Duration::from_secs(20)).unwrap();
    let summary = setup.receiver.summary();
    let total: f64 = summary["counters"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert_eq!(total, waiting_total, "{summary}");
    assert!(
        summary["payload_cache_evictions"].as_u64().unwrap() > 0,
        "evictions are reported: {summary}"
    );
}

#[test]
fn an_unusable_working_directory_disables_the_agent_and_the_app_runs_on() {
    let tmp = tempfile::tempdir().unwrap();
    let plain_file = tmp.path().join("file");
    std::fs::write(&plain_file, b"").unwrap();
    let setup = Setup::new(KEY, 500).with(
        "_APPSIGNAL_WORKING_DIRECTORY_PATH",
        plain_file.join("appsignal").to_str().unwrap(),
    );
    let mut worker = setup.spawn(0);
    assert_eq!(worker.role, "disabled");
    let report = worker.diagnose().unwrap();
    let reason = report["leader_election"]["disabled_reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("working directory unusable"), "{reason}");
    assert!(
        reason.contains("file/appsignal"),
        "the reason names the path: {reason}"
    );
    assert_eq!(
        report["leader_election"]["working_directory"]["usable"],
        false
    );
    worker.record(10).unwrap();
    assert!(worker.stop(Duration::from_secs(10)).unwrap().success());
    assert_eq!(setup.receiver.summary()["payloads"], 0);
}

#[test]
fn a_symlink_planted_at_the_working_directory_is_refused() {
    // The per-user fallback goes under this test's own $TMPDIR (tests/filesystem.rs has the rest).
    let tmpdir = tempfile::tempdir().unwrap();
    let setup = Setup::new(KEY, 500).with("TMPDIR", tmpdir.path().to_str().unwrap());
    let elsewhere = setup.tmp.path().join("attacker-controlled");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, setup.workdir()).unwrap();
    let mut worker = setup.spawn(0);
    assert_eq!(worker.role, "leader");
    let report = worker.diagnose().unwrap();
    let reason = report["leader_election"]["working_directory"]["fallback"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("symbolic link"), "{reason}");
    assert!(
        std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "nothing written through the link"
    );
    worker.stop(Duration::from_secs(10)).unwrap();
}

#[test]
fn owner_only_mode_makes_the_files_private() {
    let setup = Setup::new(KEY, 500).with("_APPSIGNAL_FILES_WORLD_ACCESSIBLE", "false");
    let mut workers: Vec<WorkerProcess> = (0..2).map(|i| setup.spawn(i)).collect();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let wd = setup.workdir();
    assert_eq!(mode(&wd), 0o700);
    assert_eq!(mode(&wd.join("agent.lock")), 0o600);
    assert_eq!(mode(&wd.join("agent.socket")), 0o600);
    assert_eq!(mode(&wd.join("appsignal.log")), 0o600);
    assert_eq!(mode(&wd.join("payloads")), 0o700);
    let mut expected = Value::Null;
    for w in workers.iter_mut() {
        fleet::add_sent(&mut expected, &w.record(500).unwrap());
    }
    stop_all(&mut workers);
    setup.assert_totals(&expected);
}

#[test]
fn only_the_leader_collects_host_metrics_and_they_match_proc() {
    let setup = Setup::new(KEY, 300)
        .with("_APPSIGNAL_ENABLE_HOST_METRICS", "true")
        .with("_APPSIGNAL_HOST_METRICS_INTERVAL_MS", "150")
        .with("_APPSIGNAL_HOSTNAME", "e2e-host");
    let mut workers: Vec<WorkerProcess> = (0..3).map(|i| setup.spawn(i)).collect();
    let leader_pid = workers.iter().find(|w| w.role == "leader").unwrap().pid;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let mem_total_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    // CPU percentages need two readings, so they appear from the second collection on.
    let arrived = testkit::poll(Duration::from_secs(20), || {
        let s = setup.receiver.summary();
        let gauges = s["gauges"].as_object().cloned().unwrap_or_default();
        gauges
            .get("memory{hostname=e2e-host,state=total}")
            .and_then(Value::as_f64)
            == Some(mem_total_kib * 1024.0)
            && gauges.keys().any(|k| k.starts_with("cpu{"))
            && gauges.keys().any(|k| k.starts_with("load_average{"))
    });
    assert!(arrived, "{}", setup.receiver.summary()["gauges"]);
    stop_all(&mut workers);
    // Every payload with host metrics was pushed by the one leader: no second collector.
    let mut with_host_metrics = 0;
    for entry in std::fs::read_dir(setup.tmp.path().join("received")).unwrap() {
        let payload: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        let gauges = payload["gauges"].as_array().unwrap();
        if gauges.iter().any(|g| g["name"] == "memory") {
            with_host_metrics += 1;
            assert_eq!(payload["agent"]["leader_pid"], leader_pid);
            let totals = gauges
                .iter()
                .filter(|g| g["name"] == "memory" && g["tags"]["state"] == "total")
                .count();
            assert_eq!(totals, 1, "one memory total per window: {payload}");
        }
    }
    assert!(with_host_metrics > 0);
}

/// The pid recorded in `agent.lock`, if it is one of `workers`.
fn leader_index(setup: &Setup, workers: &[WorkerProcess]) -> Option<usize> {
    testkit::leader_index(&setup.workdir(), workers)
}

/// The chaos run of `testkit::chaos` against the reference receiver (20 s, at least 15 leader kills).
fn chaos(kill_clients: bool) {
    let setup = Setup::new(KEY, 400);
    let mut next_index = 0u32;
    let run = testkit::chaos(
        &setup.workdir(),
        || {
            next_index += 1;
            setup.spawn(next_index)
        },
        kill_clients,
        15,
        Duration::from_secs(300),
    );
    let mut workers = run.survivors;
    stop_all(&mut workers);
    assert_eq!(run.leader_kills, 15);
    // One after every odd-numbered leader kill.
    assert_eq!(run.client_kills, if kill_clients { 8 } else { 0 });
    setup.assert_totals(&run.expected);
    let log = setup.log();
    assert!(
        log.contains("replayed"),
        "new leaders replayed journals: {log}"
    );
}

#[test]
fn chaos_leaders_sigkilled_every_second_lose_nothing_and_count_nothing_twice() {
    chaos(false);
}

#[test]
fn chaos_leaders_and_clients_sigkilled_and_restarted() {
    chaos(true);
}

#[test]
fn preloaded_master_forks_and_exits_and_a_child_takes_over() {
    let setup = Setup::new(KEY, 300);
    let mut master = setup.spawn(0);
    assert_eq!(master.role, "leader");
    master.record(100).unwrap();
    let mut expected = Value::Null;
    fleet::add_sent(&mut expected, &master.sync().unwrap());
    let results = setup.tmp.path().join("children");
    std::fs::create_dir_all(&results).unwrap();
    master
        .send(&format!("fork 3 40 {}", results.display()))
        .unwrap();
    let forked = master.expect("forked", Duration::from_secs(10)).unwrap();
    let pids: Vec<u32> = forked["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 3);
    // The master leaves without stopping while its children record: they must not keep its lock
    // (they closed their copies at the fork), and one of them takes over.
    master.send("exit").unwrap();
    master.wait(Duration::from_secs(10)).unwrap();
    let lock = setup.workdir().join("agent.lock");
    assert!(
        testkit::poll(Duration::from_secs(10), || {
            std::fs::read_to_string(&lock)
                .ok()
                .and_then(|t| t.split(';').next().and_then(|p| p.parse::<u32>().ok()))
                .is_some_and(|p| pids.contains(&p))
        }),
        "no child took the lock; log:\n{}",
        setup.log()
    );
    let files = || {
        std::fs::read_dir(&results)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    };
    assert!(
        testkit::poll(Duration::from_secs(60), || files() == 3),
        "children reported: {}",
        files()
    );
    for entry in std::fs::read_dir(&results).unwrap().filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|x| x == "json") {
            let acked: Value =
                serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
            assert_eq!(
                acked["idle"], true,
                "a child's data was not acknowledged: {acked}"
            );
            fleet::add_sent(&mut expected, &acked);
        }
    }
    setup.assert_totals(&expected);
    assert!(
        setup.log().contains("forked: starting afresh in the child"),
        "{}",
        setup.log()
    );
}

#[test]
fn a_fork_while_another_thread_is_inside_start_stop_or_env_put_leaves_the_child_working() {
    for point in ["start", "stop", "env_put"] {
        let setup = Setup::new(KEY, 300);
        let hold_dir = setup.tmp.path().join("hold");
        let setup = setup.with("_APPSIGNAL_TEST_HOLD_DIR", hold_dir.to_str().unwrap());
        let mut worker = setup.spawn(0);
        assert_eq!(worker.role, "leader");
        worker.send(&format!("fork-during {point}")).unwrap();
        let r = worker
            .expect("forked-during", Duration::from_secs(90))
            .unwrap();
        assert_eq!(r["held_before"], true, "{point}: never caught inside: {r}");
        // fork() waited until the other thread had left (its lock was taken for the fork)...
        assert_eq!(r["held_after"], false, "{point}: forked while held: {r}");
        // ... so the child could start and join the election.
        assert_eq!(
            r["child_exit"],
            0,
            "{point}: the child did not start: {r}\n{}",
            setup.log()
        );
        stop_all(std::slice::from_mut(&mut worker));
        let child = r["child_pid"].as_u64().unwrap();
        assert!(
            setup.log().contains(&format!("(pid {child}) ")),
            "{point}: the child logged nothing"
        );
    }
}

#[test]
fn short_lived_processes_lose_nothing() {
    // A long-running process leads; short ones (a cron job, a rake task) start, record, stop, exit.
    let setup = Setup::new(KEY, 300);
    let mut long = setup.spawn(0);
    let mut expected = Value::Null;
    for i in 1..=5 {
        let mut short = setup.spawn(i);
        fleet::add_sent(&mut expected, &short.record(200).unwrap());
        assert!(short.stop(Duration::from_secs(10)).unwrap().success());
    }
    fleet::add_sent(&mut expected, &long.record(10).unwrap());
    long.stop(Duration::from_secs(10)).unwrap();
    // And a short process alone: it leads, and pushes at stop.
    let mut alone = setup.spawn(9);
    assert_eq!(alone.role, "leader");
    fleet::add_sent(&mut expected, &alone.record(50).unwrap());
    alone.stop(Duration::from_secs(10)).unwrap();
    setup.assert_totals(&expected);
}

#[test]
fn a_newer_library_takes_over_and_an_older_protocol_is_refused() {
    let setup = Setup::new(KEY, 300);
    let mut old = setup.spawn(0);
    assert_eq!(old.role, "leader");
    old.record(300).unwrap();
    let newer_env: Vec<(String, String)> = setup
        .env
        .iter()
        .cloned()
        .chain([(
            "_APPSIGNAL_TEST_LIBRARY_VERSION".to_owned(),
            "99.0.0".to_owned(),
        )])
        .collect();
    let mut newer =
        WorkerProcess::spawn(&testkit::worker_exe(), &["1".into()], &newer_env).unwrap();
    // The old leader steps down; the newer library leads; the old process becomes its client.
    assert!(
        testkit::poll(Duration::from_secs(10), || leader_index(
            &setup,
            std::slice::from_ref(&newer)
        )
        .is_some()),
        "the newer library did not take the lock:\n{}",
        setup.log()
    );
    assert!(testkit::poll(Duration::from_secs(10), || old
        .diagnose()
        .unwrap()["leader_election"]["role"]
        == "client"));
    assert_eq!(
        newer.diagnose().unwrap()["leader_election"]["role"],
        "leader"
    );
    assert_eq!(
        old.diagnose().unwrap()["leader_election"]["lock"]["holder_pid"],
        newer.pid
    );
    // `record` answers cumulative totals: the last answer of each process is what it sent.
    let mut expected = Value::Null;
    fleet::add_sent(&mut expected, &old.record(200).unwrap());
    fleet::add_sent(&mut expected, &newer.record(200).unwrap());
    old.stop(Duration::from_secs(10)).unwrap();
    newer.stop(Duration::from_secs(10)).unwrap();
    setup.assert_totals(&expected);
    assert!(setup.log().contains("handing over"), "{}", setup.log());
}

#[test]
fn a_client_of_an_older_protocol_gets_a_clear_refusal() {
    use appsignal_agent::protocol::{self, ClientMessage, Hello, LeaderMessage};
    let setup = Setup::new(KEY, 300);
    let mut leader = setup.spawn(0);
    let mut stream = UnixStream::connect(setup.workdir().join("agent.socket")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let hello = ClientMessage::Hello(Hello {
        protocol_version: 0,
        protocol: None,
        library_version: "0.0.1".into(),
        client_id: 1,
        pid: std::process::id(),
        config: appsignal_agent::config::Config::load_from(&|_| None)
            .config
            .export_config(),
    });
    stream
        .write_all(&protocol::encode(&hello).unwrap())
        .unwrap();
    let mut buf = Vec::new();
    let answer = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
        if let Some((answer, _)) = protocol::decode::<LeaderMessage>(&buf).unwrap() {
            break answer;
        }
    };
    let LeaderMessage::Refused { reason } = answer else {
        panic!("expected a refusal, got {answer:?}");
    };
    assert!(reason.contains("protocol 0 is not supported"), "{reason}");
    leader.stop(Duration::from_secs(10)).unwrap();
    assert!(setup.log().contains("refused pid"), "{}", setup.log());
}

#[test]
fn two_configurations_share_a_directory_and_each_receiver_gets_only_its_own() {
    let setup = Setup::new(KEY, 300);
    let other = Receiver::start("other-key", None).unwrap();
    let other_env: Vec<(String, String)> = setup
        .env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "_APPSIGNAL_PUSH_API_KEY" => (k.clone(), "other-key".to_owned()),
            "_APPSIGNAL_PUSH_API_ENDPOINT" => (k.clone(), other.url.clone()),
            "_APPSIGNAL_APP_NAME" => (k.clone(), "other-app".to_owned()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let mut ours: Vec<WorkerProcess> = (0..2).map(|i| setup.spawn(i)).collect();
    let mut theirs: Vec<WorkerProcess> = (10..12)
        .map(|i| {
            WorkerProcess::spawn(&testkit::worker_exe(), &[i.to_string()], &other_env).unwrap()
        })
        .collect();
    let (mut expected_ours, mut expected_theirs) = (Value::Null, Value::Null);
    for w in ours.iter_mut() {
        fleet::add_sent(&mut expected_ours, &w.record(400).unwrap());
    }
    for w in theirs.iter_mut() {
        fleet::add_sent(&mut expected_theirs, &w.record(400).unwrap());
    }
    let mut all: Vec<WorkerProcess> = ours.into_iter().chain(theirs).collect();
    stop_all(&mut all);
    setup.assert_totals(&expected_ours);
    let rows = fleet::await_totals(
        &expected_theirs,
        || other.summary(),
        Duration::from_secs(20),
    );
    assert!(
        rows.iter().all(|r| r.equal),
        "the other app's totals differ"
    );
    // Nothing crossed over: each receiver saw only its own app and workers.
    assert_eq!(
        setup.receiver.summary()["apps"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["demo-app"]
    );
    assert_eq!(
        other.summary()["apps"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["other-app"]
    );
    let ours_seen = setup.receiver.summary()["counters"].to_string();
    assert!(
        !ours_seen.contains("worker=10") && !ours_seen.contains("worker=11"),
        "{ours_seen}"
    );
    assert_eq!(setup.receiver.summary()["unauthorized"], 0);
    assert_eq!(other.summary()["unauthorized"], 0);
}

#[test]
fn a_deleted_lock_file_or_working_directory_gets_a_new_election_and_loses_nothing() {
    for delete_directory in [false, true] {
        let outside = tempfile::tempdir().unwrap();
        let log_path = outside.path().join("appsignal.log");
        // The log lives outside the directory that gets deleted, so that it tells what happened.
        let setup =
            Setup::new(KEY, 300).with("_APPSIGNAL_LOG_FILE_PATH", log_path.to_str().unwrap());
        let mut workers: Vec<WorkerProcess> = (0..3).map(|i| setup.spawn(i)).collect();
        let mut expected = Value::Null;
        for w in workers.iter_mut() {
            w.record(300).unwrap();
        }
        let wd = setup.workdir();
        assert!(leader_index(&setup, &workers).is_some());
        if delete_directory {
            std::fs::remove_dir_all(&wd).unwrap();
        } else {
            std::fs::remove_file(wd.join("agent.lock")).unwrap();
        }
        // Within about a second a fresh lock file exists, held by one of the processes, which
        // listens (inotify tells the leader at once; its 5 s check is the fallback, hence 15 s on a
        // loaded machine).
        assert!(
            testkit::poll(Duration::from_secs(15), || {
                // (Not the inode number: once the old file is closed, a new one may reuse it; nor
                // the lock's content: the same process may win again within the same second.)
                let log = setup.log();
                log.find("stopped leading")
                    .is_some_and(|at| log[at..].contains("leading: listening on"))
                    && std::fs::read_to_string(wd.join("agent.lock")).is_ok()
                    && leader_index(&setup, &workers).is_some()
                    && UnixStream::connect(wd.join("agent.socket")).is_ok()
            }),
            "no new election (directory deleted: {delete_directory}):\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        for w in workers.iter_mut() {
            fleet::add_sent(&mut expected, &w.record(300).unwrap());
        }
        let holder = leader_index(&setup, &workers).unwrap();
        let roles: Vec<Value> = workers
            .iter_mut()
            .map(|w| w.diagnose().unwrap()["leader_election"]["role"].clone())
            .collect();
        assert_eq!(
            roles.iter().filter(|r| **r == "leader").count(),
            1,
            "never two leaders (directory deleted: {delete_directory}): {roles:?} pids {:?} holder {holder}\n{}",
            workers.iter().map(|w| w.pid).collect::<Vec<_>>(),
            setup.log()
        );
        assert_eq!(roles[holder], "leader");
        stop_all(&mut workers);
        setup.assert_totals(&expected);
    }
}

#[test]
fn four_processes_complete_transactions_and_per_action_counts_are_exact() {
    let setup = Setup::new(KEY, 300);
    let mut workers: Vec<WorkerProcess> = (0..4).map(|i| setup.spawn(i)).collect();
    for w in workers.iter_mut() {
        w.send("txn 600").unwrap();
    }
    let mut expected = Value::Null;
    for w in workers.iter_mut() {
        fleet::add_sent(
            &mut expected,
            &w.expect("sent", Duration::from_secs(60)).unwrap(),
        );
    }
    assert_eq!(
        expected["counters"]["transaction_count{action=Users#show,namespace=web}"],
        800.0
    );
    assert_eq!(
        expected["counters"]["transaction_error_count{action=Users#show,namespace=web}"],
        160.0
    );
    stop_all(&mut workers);
    setup.assert_totals(&expected);
    let summary = setup.receiver.summary();
    // Errors are always sampled; the per-window cap keeps the samples bounded and counts the rest.
    let errors = 4 * 120;
    assert_eq!(
        summary["samples"].as_u64().unwrap() + summary["dropped_samples"].as_u64().unwrap(),
        errors,
        "{summary}"
    );
}

#[test]
fn host_metrics_continue_after_the_leader_is_killed() {
    let setup = Setup::new(KEY, 300)
        .with("_APPSIGNAL_ENABLE_HOST_METRICS", "true")
        .with("_APPSIGNAL_HOST_METRICS_INTERVAL_MS", "150")
        .with("_APPSIGNAL_HOSTNAME", "failover-host");
    let mut workers: Vec<WorkerProcess> = (0..3).map(|i| setup.spawn(i)).collect();
    let received = setup.tmp.path().join("received");
    // Which pids pushed payloads carrying host metrics.
    let pushers = || -> Vec<u64> {
        let mut pids: Vec<u64> = std::fs::read_dir(&received)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
                    .filter(|p| {
                        p["gauges"]
                            .as_array()
                            .is_some_and(|g| g.iter().any(|g| g["name"] == "memory"))
                    })
                    .filter_map(|p| p["agent"]["leader_pid"].as_u64())
                    .collect()
            })
            .unwrap_or_default();
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    let first = leader_index(&setup, &workers).unwrap();
    let first_pid = u64::from(workers[first].pid);
    assert!(testkit::poll(Duration::from_secs(10), || pushers().contains(&first_pid)));
    workers[first].child.kill().unwrap();
    workers[first].wait(Duration::from_secs(5)).unwrap();
    assert!(testkit::poll(Duration::from_secs(10), || leader_index(
        &setup, &workers
    )
    .is_some_and(|i| i != first)));
    let second_pid = u64::from(workers[leader_index(&setup, &workers).unwrap()].pid);
    // The new leader collects and pushes host metrics; the clients never do.
    assert!(
        testkit::poll(Duration::from_secs(10), || pushers().contains(&second_pid)),
        "no host metrics from the new leader:\n{}",
        setup.log()
    );
    let clients: Vec<u64> = workers
        .iter()
        .map(|w| u64::from(w.pid))
        .filter(|p| *p != first_pid && *p != second_pid)
        .collect();
    assert!(
        pushers().iter().all(|p| !clients.contains(p)),
        "a client collected host metrics"
    );
    workers.remove(first);
    stop_all(&mut workers);
}

/// A process that speaks protocol 2 only (as the previous release did; the test knob) and one of
/// this library share a directory in either order of start: the one of protocol 2 is served in
/// protocol 2 (its samples and log lines travel as JSON text), a leader of protocol 2 hands over
/// to the newer one, and every metric, sample and log line is counted once.
#[test]
fn processes_of_protocol_2_and_3_count_everything_in_either_order() {
    for old_first in [true, false] {
        let setup = Setup::new(KEY, 300);
        let old_env: Vec<(String, String)> = setup
            .env
            .iter()
            .cloned()
            .chain([("_APPSIGNAL_TEST_PROTOCOLS".to_owned(), "2".to_owned())])
            .collect();
        let spawn_old = |i: u32| {
            WorkerProcess::spawn(&testkit::worker_exe(), &[i.to_string()], &old_env).unwrap()
        };
        let mut workers = if old_first {
            let old = spawn_old(0);
            vec![old, setup.spawn(1)]
        } else {
            let new = setup.spawn(0);
            vec![new, spawn_old(1)]
        };
        let new = if old_first { 1 } else { 0 };
        assert!(
            testkit::poll(Duration::from_secs(10), || leader_index(&setup, &workers)
                == Some(new)),
            "the process of protocol 3 does not lead (old first: {old_first}):\n{}",
            setup.log()
        );
        let mut expected = Value::Null;
        for (i, w) in workers.iter_mut().enumerate() {
            w.send("txn 100").unwrap();
            w.expect("sent", Duration::from_secs(60)).unwrap();
            w.send(&format!("showcase order-{i}")).unwrap();
            fleet::add_sent(
                &mut expected,
                &w.expect("sent", Duration::from_secs(60)).unwrap(),
            );
        }
        stop_all(&mut workers);
        setup.assert_totals(&expected);
        let summary = setup.receiver.summary();
        // Every fifth transaction has an error and is sampled, and so is each showcase.
        assert_eq!(
            summary["samples"].as_u64().unwrap() + summary["dropped_samples"].as_u64().unwrap(),
            2 * 20 + 2,
            "old first: {old_first}: {summary}"
        );
        assert_eq!(summary["logs"].as_u64().unwrap(), 2, "{summary}");
        let log = setup.log();
        assert!(
            log.contains("handing over") == old_first
                && log.contains("connected, speaking protocol 2"),
            "old first: {old_first}:\n{log}"
        );
    }
}
