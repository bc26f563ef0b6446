//! Hostile peers and failing networks: every test runs 4 well-behaved worker processes
//! (libappsignal.so through its C interface) that record while a rogue peer attacks the leader over
//! the real `agent.socket`, or while the leader is frozen or its Push API hangs; afterwards the
//! receiver's totals must equal what the workers recorded, exactly. The rogue speaks the documented
//! protocol with the library's own codec (`testkit/src/rogue.rs`); where it needs a pid of its own
//! it runs as the `appsignal-test-rogue` binary.

use testkit::rogue;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appsignal_agent::protocol::{self, ClientMessage, LeaderMessage};
use rogue::Rogue;
use serde_json::Value;
use testkit::fleet::{self, WorkerProcess};
use testkit::setup::{tail, Setup};

const KEY: &str = "rogue-peers-secret-key";

/// The workers' own push configuration (a rogue that knows it, as a local user may).
fn push_config(setup: &Setup) -> appsignal_agent::export_config::ExportConfig {
    let env = setup.env.clone();
    appsignal_agent::config::Config::load_from(&move |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .config
    .export_config()
}

/// Four workers, one leader among them.
struct Fleet {
    workers: Vec<WorkerProcess>,
    expected: Value,
}

impl Fleet {
    fn start(setup: &Setup) -> Fleet {
        let workers: Vec<WorkerProcess> = (0..4).map(|i| setup.spawn(i)).collect();
        assert_eq!(
            workers.iter().filter(|w| w.role == "leader").count(),
            1,
            "one leader"
        );
        Fleet {
            workers,
            expected: Value::Null,
        }
    }

    fn leader_pid(&self) -> u32 {
        self.workers
            .iter()
            .find(|w| w.role == "leader")
            .map(|w| w.pid)
            .unwrap()
    }

    /// Every worker starts recording `n` (asynchronously: the workers record while the test goes on).
    fn record(&mut self, n: u64) {
        for w in self.workers.iter_mut() {
            w.send(&format!("record {n}")).unwrap();
        }
    }

    /// Waits for the `sent` answers of the last `record`.
    fn recorded(&mut self) {
        let mut expected = Value::Null;
        for w in self.workers.iter_mut() {
            fleet::add_sent(
                &mut expected,
                &w.expect("sent", Duration::from_secs(60)).unwrap(),
            );
        }
        self.expected = expected;
    }

    fn stop(&mut self) {
        self.workers.sort_by_key(|w| w.role == "leader");
        for w in self.workers.iter_mut() {
            let status = w.stop(Duration::from_secs(30)).unwrap();
            assert!(status.success(), "worker {} exited with {status}", w.pid);
        }
    }
}

/// The standard shape: workers record, the attack runs meanwhile, workers record again, stop, and
/// the totals must be exact.
fn under_attack(setup: &Setup, attack: impl FnOnce(&Setup, &Fleet)) -> Fleet {
    let mut fleet = Fleet::start(setup);
    fleet.record(2000);
    attack(setup, &fleet);
    fleet.recorded();
    fleet.record(2000);
    fleet.recorded();
    fleet.stop();
    setup.assert_totals(&fleet.expected);
    fleet
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Client ids found in the journal (segments and `counted`): what a local user can read there.
fn ids_in_journal(workdir: &Path) -> Vec<u64> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(workdir.join("journal"))
        .unwrap()
        .flatten()
    {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "counted" {
            if let Ok(Some((counted, _))) = protocol::decode::<Vec<(u64, u64)>>(&bytes) {
                ids.extend(counted.into_iter().map(|(c, _)| c));
            }
        } else if name.ends_with(".seg3") {
            let Ok(Some((_, mut used))) =
                protocol::decode::<appsignal_agent::journal::SegmentHeader>(&bytes)
            else {
                continue;
            };
            while let Ok(Some((b, n))) = protocol::decode::<protocol::Batch>(&bytes[used..]) {
                ids.push(b.client_id);
                used += n;
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[test]
fn attack1_batches_for_other_client_ids_or_out_of_order_seqs_are_refused() {
    let setup = Setup::new(KEY, 400);
    let config = push_config(&setup);
    let socket = setup.socket();
    let fleet = under_attack(&setup, |setup, fleet| {
        // Let every worker get batches journaled, then harvest the ids a local user can read.
        let mut victims = Vec::new();
        assert!(testkit::poll(Duration::from_secs(20), || {
            victims = ids_in_journal(&setup.workdir());
            victims.len() >= 4
        }));
        let _ = fleet;
        for (i, victim) in victims.iter().enumerate() {
            // A batch for the victim's id on a connection of the rogue's own id.
            let mut rogue = Rogue::connect(&socket).unwrap();
            assert!(matches!(
                rogue.hello(9_000 + i as u64, &config),
                Some(LeaderMessage::Welcome { .. })
            ));
            let forged = rogue::batch(*victim, 1 << 63, rogue::now_ms(), "rogue", 1.0);
            assert_eq!(
                rogue.batch(forged),
                None,
                "a batch for another id is refused"
            );
            // Handshaking with the id found in the journal, then jumping its seq.
            let mut rogue = Rogue::connect(&socket).unwrap();
            if let Some(LeaderMessage::Welcome { .. }) = rogue.hello(*victim, &config) {
                let _ = rogue.batch(rogue::batch(
                    *victim,
                    1 << 63,
                    rogue::now_ms(),
                    "rogue",
                    1.0,
                ));
            }
        }
        // The rogue's own id: one batch, then a seq that does not follow.
        let mut rogue = Rogue::connect(&socket).unwrap();
        assert!(rogue.hello(77, &config).is_some());
        assert_eq!(
            rogue.batch(rogue::batch(77, 5, rogue::now_ms(), "rogue_own", 1.0)),
            Some(LeaderMessage::Ack { seq: 5 })
        );
        assert_eq!(
            rogue.batch(rogue::batch(77, 5, rogue::now_ms(), "rogue_own", 1.0)),
            Some(LeaderMessage::Ack { seq: 5 }),
            "a resend is acknowledged again"
        );
        assert_eq!(
            rogue.batch(rogue::batch(77, 1 << 63, rogue::now_ms(), "rogue_own", 1.0)),
            None,
            "a seq that does not follow is refused"
        );
    });
    drop(fleet);
    let log = setup.log();
    assert!(log.contains("a batch for another client id"), "{log}");
    assert!(setup.receiver.summary()["refused_connections"].as_u64() >= Some(5));
}

#[test]
fn a_client_id_bound_to_a_live_process_is_refused_to_another() {
    let setup = Setup::new(KEY, 400);
    let mut leader = setup.spawn(0);
    let config = rogue::config(&setup.endpoint, KEY, "rogue-app");
    let mut holder = Command::new(env!("CARGO_BIN_EXE_appsignal-test-rogue"))
        .args(["hold", &setup.socket().display().to_string(), "4242"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "welcome");
    // Another process (this one) with the same id, while the holder lives: refused.
    let mut rogue = Rogue::connect(&setup.socket()).unwrap();
    assert_eq!(rogue.hello(4242, &config), None);
    // Once the holder is gone, the id is free again.
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let mut rogue = Rogue::connect(&setup.socket()).unwrap();
    assert!(matches!(
        rogue.hello(4242, &config),
        Some(LeaderMessage::Welcome { .. })
    ));
    leader.stop(Duration::from_secs(10)).unwrap();
    assert!(
        setup.log().contains("is in use by live pid"),
        "{}",
        setup.log()
    );
}

#[test]
fn attack3_batches_from_far_future_and_past_open_no_files_and_count_now() {
    let setup = Setup::new(KEY, 400);
    let config = rogue::config(&setup.endpoint, KEY, "rogue-app");
    let socket = setup.socket();
    let mut before = (0, 0);
    let fleet = under_attack(&setup, |setup, fleet| {
        let leader = fleet.leader_pid();
        before = (
            open_fds(leader),
            std::fs::read_dir(setup.workdir().join("journal"))
                .unwrap()
                .count(),
        );
        let mut rogue = Rogue::connect(&socket).unwrap();
        assert!(rogue.hello(31, &config).is_some());
        let day = 86_400_000u64;
        for seq in 1..=200u64 {
            let now = rogue::now_ms();
            let created = if seq % 2 == 0 {
                now + seq * day
            } else {
                now.saturating_sub(seq * day)
            };
            assert_eq!(
                rogue.batch(rogue::batch(31, seq, created, "rogue_windows", 1.0)),
                Some(LeaderMessage::Ack { seq })
            );
        }
        let fds = open_fds(leader);
        let files = std::fs::read_dir(setup.workdir().join("journal"))
            .unwrap()
            .count();
        assert!(
            fds <= before.0 + 20,
            "leader fds grew from {} to {fds}",
            before.0
        );
        assert!(
            files <= before.1 + 20,
            "journal files grew from {} to {files}",
            before.1
        );
    });
    drop(fleet);
    // Every rogue batch was counted, in a window that is not in the future.
    assert!(testkit::poll(Duration::from_secs(20), || setup
        .receiver
        .summary()["counters"]["rogue_windows{}"]
        == 200.0));
}

#[test]
fn attack4_half_sent_frames_stay_within_one_budget() {
    let setup = Setup::new(KEY, 400);
    let socket = setup.socket().display().to_string();
    let mut rogues: Vec<Child> = Vec::new();
    let mut closed = 0;
    under_attack(&setup, |_, fleet| {
        let leader = fleet.leader_pid();
        let before = rss_kib(leader);
        // 20 processes with 5 connections each: 100 frames of 4 MiB minus one byte.
        for _ in 0..20 {
            let mut child = Command::new(env!("CARGO_BIN_EXE_appsignal-test-rogue"))
                .args(["halfframes", &socket, "5"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "sent");
            child.stdout = None;
            rogues.push(child);
            // Keep the reader for the final count.
            std::mem::forget(out);
        }
        let after = rss_kib(leader);
        eprintln!("leader RSS {before} KiB before, {after} KiB with 100 half-sent 4 MiB frames");
        assert!(
            after < before + 200 * 1024,
            "leader RSS grew from {before} KiB to {after} KiB"
        );
    });
    for mut child in rogues {
        drop(child.stdin.take());
        let _ = child.wait();
        closed += 1;
    }
    assert_eq!(closed, 20);
    let log = setup.log();
    assert!(
        log.contains("budget for incomplete frames") || log.contains("did not complete within"),
        "{}",
        tail(&log, 40)
    );
}

#[test]
fn slowloris_frames_are_closed_at_their_deadline() {
    let setup = Setup::new(KEY, 400);
    let config = rogue::config(&setup.endpoint, KEY, "rogue-app");
    let socket = setup.socket();
    under_attack(&setup, |_, _| {
        let mut rogue = Rogue::connect(&socket).unwrap();
        assert!(rogue.hello(51, &config).is_some());
        rogue.write_raw(&100u32.to_be_bytes()).unwrap();
        let started = Instant::now();
        let mut closed = false;
        while started.elapsed() < Duration::from_secs(30) {
            if rogue.write_raw(&[0x80]).is_err() || rogue.closed_within(Duration::from_millis(500))
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "a frame sent one byte at a time was not cut off");
    });
    assert!(
        setup.log().contains("did not complete within"),
        "{}",
        setup.log()
    );
}

#[test]
fn garbage_bytes_a_4_gib_length_truncated_frames_and_a_wrong_protocol_close_only_their_connection()
{
    let setup = Setup::new(KEY, 400);
    let config = rogue::config(&setup.endpoint, KEY, "rogue-app");
    let socket = setup.socket();
    under_attack(&setup, |_, _| {
        let mut garbage = Rogue::connect(&socket).unwrap();
        garbage.write_raw(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(garbage.closed_within(Duration::from_secs(10)));
        let mut huge = Rogue::connect(&socket).unwrap();
        huge.write_raw(&u32::MAX.to_be_bytes()).unwrap();
        assert!(huge.closed_within(Duration::from_secs(10)));
        let mut truncated = Rogue::connect(&socket).unwrap();
        assert!(truncated.hello(61, &config).is_some());
        let frame = protocol::encode(&ClientMessage::Batch(rogue::batch(
            61,
            1,
            rogue::now_ms(),
            "rogue",
            1.0,
        )))
        .unwrap();
        truncated.write_raw(&frame[..frame.len() / 2]).unwrap();
        truncated
            .stream
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        assert!(truncated.closed_within(Duration::from_secs(10)));
        let mut old = Rogue::connect(&socket).unwrap();
        assert!(matches!(
            old.hello_as(62, &config, 0),
            Some(LeaderMessage::Refused { .. })
        ));
        let mut early = Rogue::connect(&socket).unwrap();
        assert_eq!(
            early.batch(rogue::batch(63, 1, rogue::now_ms(), "rogue", 1.0)),
            None
        );
    });
    let summary = setup.receiver.summary();
    assert!(summary["rejected_frames"].as_u64() >= Some(4), "{summary}");
    assert!(summary["counters"]["rogue{}"].is_null(), "{summary}");
}

#[test]
fn a_thousand_idle_connections_leave_room_for_a_process_starting_meanwhile() {
    let setup = Setup::new(KEY, 400);
    let config = rogue::config(&setup.endpoint, KEY, "rogue-app");
    let socket = setup.socket();
    let mut fleet = Fleet::start(&setup);
    let before = rss_kib(fleet.leader_pid());
    let mut idle = Vec::new();
    for i in 0..1000u64 {
        if let Ok(mut s) = UnixStream::connect(&socket) {
            // Half of them handshake, half say nothing.
            if i % 2 == 0 {
                let hello = ClientMessage::Hello(protocol::Hello {
                    protocol_version: protocol::PROTOCOL_VERSION,
                    protocol: None,
                    library_version: "0.0.1".into(),
                    client_id: 100_000 + i,
                    pid: std::process::id(),
                    config: config.clone(),
                });
                let _ = s.write_all(&protocol::encode(&hello).unwrap());
            }
            idle.push(s);
        }
    }
    fleet.record(2000);
    // A process that starts now still gets through.
    let mut late = setup.spawn(9);
    assert_eq!(late.role, "client");
    let mut expected = Value::Null;
    fleet::add_sent(&mut expected, &late.record(1000).unwrap());
    late.sync().unwrap();
    fleet.recorded();
    let after = rss_kib(fleet.leader_pid());
    eprintln!("leader RSS {before} KiB before, {after} KiB with 1000 idle connections");
    assert!(after < before + 100 * 1024, "RSS {before} -> {after} KiB");
    drop(idle);
    fleet::add_sent(&mut expected, &fleet.expected);
    late.stop(Duration::from_secs(20)).unwrap();
    fleet.stop();
    setup.assert_totals(&expected);
}

#[test]
fn a_peer_that_never_reads_its_acks_is_closed() {
    let setup = Setup::new(KEY, 400);
    let config = rogue::config(&setup.endpoint, KEY, "rogue-app");
    let socket = setup.socket();
    under_attack(&setup, |_, _| {
        let mut rogue = Rogue::connect(&socket).unwrap();
        assert!(rogue.hello(71, &config).is_some());
        // Batches as fast as possible, never reading an ack: the leader's writes block until it
        // gives up on this peer and closes; then our writes fail.
        let started = Instant::now();
        let mut failed = false;
        for seq in 1..=2_000_000u64 {
            let frame = protocol::encode(&ClientMessage::Batch(rogue::batch(
                71,
                seq,
                rogue::now_ms(),
                "rogue_acks",
                1.0,
            )))
            .unwrap();
            if rogue.write_raw(&frame).is_err() {
                failed = true;
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                break;
            }
        }
        assert!(failed, "the leader kept a peer that does not read");
    });
    assert!(setup.log().contains("does not read its acknowledgements"));
}

#[test]
fn a_flood_of_configurations_is_capped_and_the_fleet_counts_on() {
    let setup = Setup::new(KEY, 400);
    let socket = setup.socket();
    let endpoint = setup.endpoint.clone();
    under_attack(&setup, |_, fleet| {
        let leader = fleet.leader_pid();
        let before = rss_kib(leader);
        let mut refused = 0;
        for i in 0..200u64 {
            let mut rogue = Rogue::connect(&socket).unwrap();
            let config = rogue::config(&endpoint, "other-key", &format!("flood-{i}"));
            match rogue.hello(200_000 + i, &config) {
                Some(LeaderMessage::Welcome { .. }) => {
                    let _ =
                        rogue.batch(rogue::batch(200_000 + i, 1, rogue::now_ms(), "flood", 1.0));
                }
                _ => refused += 1,
            }
        }
        assert!(refused > 0, "no configuration was refused");
        let after = rss_kib(leader);
        assert!(after < before + 100 * 1024, "RSS {before} -> {after} KiB");
    });
    assert!(setup.log().contains("configurations are in use already"));
}

/// An HTTP endpoint in front of the receiver that, while `hang` is set, accepts connections and
/// never answers (a hung proxy or load balancer).
struct Proxy {
    url: String,
    hang: Arc<AtomicBool>,
    target: Arc<std::sync::Mutex<String>>,
}

impl Proxy {
    fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hang = Arc::new(AtomicBool::new(true));
        let target = Arc::new(std::sync::Mutex::new(String::new()));
        let (h, t) = (Arc::clone(&hang), Arc::clone(&target));
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                if h.load(Ordering::SeqCst) {
                    held.push(stream);
                    continue;
                }
                let addr = t.lock().unwrap().trim_start_matches("http://").to_owned();
                std::thread::spawn(move || {
                    let Ok(upstream) = TcpStream::connect(&addr) else {
                        return;
                    };
                    let (mut a, mut b) =
                        (stream.try_clone().unwrap(), upstream.try_clone().unwrap());
                    let (mut c, mut d) = (stream, upstream);
                    std::thread::spawn(move || std::io::copy(&mut a, &mut b));
                    let _ = std::io::copy(&mut d, &mut c);
                });
            }
        });
        Proxy { url, hang, target }
    }

    fn forward_to(&self, url: &str) {
        *self.target.lock().unwrap() = url.to_owned();
    }

    fn heal(&self) {
        self.hang.store(false, Ordering::SeqCst);
    }
}

#[test]
fn case5_a_push_api_that_never_answers_loses_nothing_when_everyone_stops() {
    let proxy = Proxy::start();
    let setup =
        Setup::with_endpoint(KEY, 400, Some(&proxy.url)).with("_APPSIGNAL_STOP_TIMEOUT_MS", "3000");
    proxy.forward_to(&setup.receiver.url);
    let mut workers: Vec<WorkerProcess> = (0..3).map(|i| setup.spawn(i)).collect();
    let mut expected = Value::Null;
    for w in workers.iter_mut() {
        w.send("record 8000").unwrap();
    }
    for w in workers.iter_mut() {
        fleet::add_sent(
            &mut expected,
            &w.expect("sent", Duration::from_secs(60)).unwrap(),
        );
    }
    // Everyone stops at once while every push hangs.
    for w in workers.iter_mut() {
        w.send("stop").unwrap();
    }
    for w in workers.iter_mut() {
        w.expect("stopped", Duration::from_secs(30)).unwrap();
        assert!(w.wait(Duration::from_secs(30)).unwrap().success());
    }
    assert_eq!(
        setup.receiver.summary()["payloads"],
        0,
        "nothing got through"
    );
    // The endpoint recovers; the next process to start pushes what was left.
    proxy.heal();
    let mut next = setup.spawn(7);
    assert_eq!(next.role, "leader");
    next.stop(Duration::from_secs(30)).unwrap();
    setup.assert_totals(&expected);
    let log = setup.log();
    assert!(
        !log.contains("nor written to a spool file"),
        "{}",
        tail(&log, 40)
    );
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: sending a signal to a child process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

#[test]
fn a_leader_frozen_for_good_loses_nothing_once_a_new_process_leads() {
    let setup = Setup::new(KEY, 400).with("_APPSIGNAL_STOP_TIMEOUT_MS", "3000");
    let mut leader = setup.spawn(0);
    assert_eq!(leader.role, "leader");
    let mut clients: Vec<WorkerProcess> = (1..4).map(|i| setup.spawn(i)).collect();
    let mut expected = Value::Null;
    fleet::add_sent(&mut expected, &leader.record(1000).unwrap());
    leader.sync().unwrap();
    signal(leader.pid, libc::SIGSTOP);
    // The clients record for a while and stop; nobody can take their data meanwhile.
    let mut last = Vec::new();
    for _ in 0..3 {
        for c in clients.iter_mut() {
            c.send("record 3000").unwrap();
        }
        last = clients
            .iter_mut()
            .map(|c| c.expect("sent", Duration::from_secs(60)).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
    }
    for sent in &last {
        fleet::add_sent(&mut expected, sent);
    }
    for c in clients.iter_mut() {
        c.send("stop").unwrap();
    }
    for c in clients.iter_mut() {
        c.expect("stopped", Duration::from_secs(30)).unwrap();
        assert!(c.wait(Duration::from_secs(30)).unwrap().success());
    }
    let spools = std::fs::read_dir(setup.workdir().join("journal"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool3"))
        .count();
    assert!(
        spools >= 1,
        "the stopping clients left their batches:\n{}",
        tail(&setup.log(), 60)
    );
    // The frozen leader is killed; a new process leads and counts what was left.
    signal(leader.pid, libc::SIGKILL);
    let _ = leader.wait(Duration::from_secs(10));
    let mut next = setup.spawn(8);
    assert_eq!(next.role, "leader");
    next.stop(Duration::from_secs(30)).unwrap();
    setup.assert_totals(&expected);
    assert!(
        setup.log().contains("left in"),
        "{}",
        tail(&setup.log(), 40)
    );
}

#[test]
fn a_leader_stopped_for_10_s_then_continued_loses_nothing() {
    let setup = Setup::new(KEY, 400);
    let mut fleet = Fleet::start(&setup);
    let leader = fleet.leader_pid();
    fleet.record(1000);
    fleet.recorded();
    signal(leader, libc::SIGSTOP);
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(10) {
        for w in fleet.workers.iter_mut().filter(|w| w.pid != leader) {
            w.send("record 500").unwrap();
        }
        for w in fleet.workers.iter_mut().filter(|w| w.pid != leader) {
            w.expect("sent", Duration::from_secs(10))
                .expect("an app call blocked while the leader was frozen");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    signal(leader, libc::SIGCONT);
    fleet.record(1000);
    fleet.recorded();
    fleet.stop();
    setup.assert_totals(&fleet.expected);
}

#[test]
fn a_panicking_leader_thread_stops_leading_and_another_process_takes_over() {
    let setup = Setup::new(KEY, 400);
    let config = push_config(&setup);
    let socket = setup.socket();
    let mut old_leader = 0;
    under_attack(&setup, |setup, fleet| {
        old_leader = fleet.leader_pid();
        let mut rogue = Rogue::connect(&socket).unwrap();
        assert!(rogue.hello(81, &config).is_some());
        let _ = rogue.batch(rogue::batch(
            81,
            1,
            rogue::now_ms(),
            "_appsignal_test_panic_leader",
            1.0,
        ));
        assert!(
            testkit::poll(Duration::from_secs(20), || {
                std::fs::read_to_string(setup.workdir().join("agent.lock"))
                    .is_ok_and(|t| !t.starts_with(&format!("{old_leader};")))
            }),
            "pid {old_leader} still leads: {:?}\n{}",
            std::fs::read_to_string(setup.workdir().join("agent.lock")),
            tail(&setup.log(), 40)
        );
    });
    let log = setup.log();
    assert!(log.contains("the leader thread panicked"), "{log}");
    assert!(log.contains("panic on thread appsignal-leader"), "{log}");
}

#[test]
fn a_batch_whose_counting_panics_is_quarantined_on_replay() {
    // A long interval: the poisoned batch is still in a journal segment when the leader dies.
    let setup = Setup::new(KEY, 60_000);
    let config = push_config(&setup);
    let socket = setup.socket();
    let mut fleet = Fleet::start(&setup);
    fleet.record(1000);
    let mut rogue = Rogue::connect(&socket).unwrap();
    assert!(rogue.hello(91, &config).is_some());
    assert_eq!(
        rogue.batch(rogue::batch(
            91,
            1,
            rogue::now_ms(),
            "_appsignal_test_panic_apply",
            1.0
        )),
        Some(LeaderMessage::Ack { seq: 1 }),
        "acknowledged, so that it is not resent forever"
    );
    drop(rogue);
    fleet.recorded();
    for w in fleet.workers.iter_mut() {
        w.sync().unwrap();
    }
    let leader = fleet.leader_pid();
    signal(leader, libc::SIGKILL);
    let index = fleet.workers.iter().position(|w| w.pid == leader).unwrap();
    let mut dead = fleet.workers.remove(index);
    let _ = dead.wait(Duration::from_secs(10));
    let dead_sent = fleet.expected.clone();
    // The next leader replays the journal: the poisoned batch is moved aside, the rest counts.
    assert!(testkit::poll(Duration::from_secs(20), || {
        std::fs::read_dir(setup.workdir().join("journal"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".bad"))
    }));
    for w in fleet.workers.iter_mut() {
        w.role = w.diagnose().unwrap()["leader_election"]["role"]
            .as_str()
            .unwrap_or("")
            .to_owned();
    }
    fleet.stop();
    setup.assert_totals(&dead_sent);
    assert!(setup.log().contains("moved aside into a quarantine file"));
    assert!(setup.receiver.summary()["poisoned_batches"].as_u64() >= Some(1));
}

fn read_all(mut s: impl Read) -> String {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A host that keeps SIGPIPE's default action (a plain C program; `tests/c/sigpipe_leader.c`) leads
/// while 50 peers each shut down their reading side and then send a batch, so that the leader's
/// acknowledgement is written into a socket that takes nothing more (EPIPE): the host survives, and
/// what it and the peers counted is pushed. It holds because std writes Unix sockets with
/// `MSG_NOSIGNAL` on Linux (and the leader sets `SO_NOSIGPIPE` on macOS); a write through
/// `write(2)` would raise SIGPIPE and end the host (signal 13).
#[test]
fn a_c_host_that_keeps_sigpipe_default_survives_peers_that_vanish() {
    let setup = Setup::new(KEY, 60_000);
    let config = push_config(&setup);
    let lib_dir = testkit::lib_dir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let exe = setup.tmp.path().join("sigpipe_leader");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg("-I")
        .arg(&root)
        .arg(root.join("tests/c/sigpipe_leader.c"))
        .arg(format!("-L{}", lib_dir.display()))
        .arg("-lappsignal")
        .status()
        .expect("cc runs");
    assert!(
        status.success(),
        "compiling tests/c/sigpipe_leader.c failed"
    );
    let mut host = Command::new(&exe)
        .env_clear()
        .env("LD_LIBRARY_PATH", &lib_dir)
        .envs(setup.env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(host.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "sigpipe_leader: leader");

    const PEERS: usize = 50;
    let mut peers = Vec::new();
    for id in 0..PEERS as u64 {
        let client_id = 9_000 + id;
        let mut peer = Rogue::connect(&setup.socket()).unwrap();
        assert!(peer.hello(client_id, &config).is_some(), "welcomed");
        peer.stream.shutdown(std::net::Shutdown::Read).unwrap();
        peer.send(&ClientMessage::Batch(rogue::batch(
            client_id,
            1,
            rogue::now_ms(),
            "vanished_peers",
            1.0,
        )))
        .unwrap();
        peers.push(peer);
    }
    // Every peer open until the leader has counted its batch and tried to acknowledge it.
    let handled = testkit::poll(Duration::from_secs(20), || {
        setup.log().matches("disconnected").count() >= PEERS
            || host.try_wait().ok().flatten().is_some()
    });
    drop(peers);
    let mut stdin = host.stdin.take().unwrap();
    let _ = writeln!(stdin, "one");
    drop(stdin);
    let status = host.wait().unwrap();
    let rest = read_all(out);
    let stderr = read_all(host.stderr.take().unwrap());
    assert!(
        status.success() && rest.contains("sigpipe_leader: all checks passed"),
        "the C host ended with {status} (signal 13 is SIGPIPE):\n{rest}\n{stderr}\n{}",
        tail(&setup.log(), 30)
    );
    assert!(
        handled,
        "the leader did not handle the {PEERS} peers:\n{}",
        tail(&setup.log(), 30)
    );
    assert!(
        setup
            .log()
            .contains("it does not read its acknowledgements"),
        "the acknowledgements failed (EPIPE):\n{}",
        tail(&setup.log(), 30)
    );
    // The peers' batches were counted before their acknowledgements failed; the host pushed them
    // on stop with its own count.
    assert!(
        testkit::poll(Duration::from_secs(10), || {
            let s = setup.receiver.summary();
            s["counters"]["vanished_peers{}"] == PEERS as f64
                && s["counters"]["sigpipe_host{}"] == 1.0
        }),
        "{}",
        setup.receiver.summary()
    );
}
