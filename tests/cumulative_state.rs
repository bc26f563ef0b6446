//! The cumulative state file (`cumulative-*.state`, docs/prometheus.md) with real processes: worker
//! processes record through the C interface, a plain HTTP client scrapes the leader's Prometheus
//! endpoint, and the state file is put through what can happen to it:
//!
//! - the leader SIGKILLed at every step of its commit (the test knob `_APPSIGNAL_TEST_KILL_AT`:
//!   the window added in memory, the temporary file written, synced, renamed, before and after
//!   the journal segment is deleted): the next leader's totals are exactly what was acknowledged,
//!   and no scraped counter ever goes back;
//! - a torn or foreign file between two leaders: logged, not trusted, rebuilt from the journal;
//! - a full disk (`RLIMIT_FSIZE`): saves fail, counting goes on, segments stay, exact once freed;
//! - the working directory deleted under the leader;
//! - expiry (a short `_APPSIGNAL_CUMULATIVE_EXPIRY_MS`) and the series cap (the test knob
//!   `_APPSIGNAL_TEST_CUMULATIVE_MAX_SERIES`), with what they drop counted in `agent.*`.
//!
//! Each case has its own working directory and port; the kill steps and the file faults run in
//! parallel threads.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::exposition::{exposed, samples};
use testkit::fleet::{self, WorkerProcess};
use testkit::setup::{stop_all, tail, Setup};

const KEY: &str = "cumulative-state-test-key";
const INTERVAL_MS: u64 = 300;

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The body of `GET /metrics` (text 0.0.4, or OpenMetrics with `openmetrics`); `None` when nothing
/// answers 200 (no leader serves yet, or the answer was cut off).
fn scrape(port: u16, openmetrics: bool) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let accept = if openmetrics {
        "Accept: application/openmetrics-text\r\n"
    } else {
        ""
    };
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{accept}\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if length.is_some_and(|n| n != body.len()) {
        return None;
    }
    Some(body.to_owned())
}

/// The samples whose name is `name` (`requests_total`, `response_time_count`, …).
#[allow(dead_code)]
fn family(body: &str, name: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{name}{{");
    samples(body)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .collect()
}

/// What the workers acknowledged, as the scrape must show it: every counter `name` as
/// `name_total`, and every distribution's count as `name_count`.
#[derive(Default, Clone)]
struct Expected(Value);

impl Expected {
    fn add(&mut self, acked: &Value) {
        fleet::add_sent(&mut self.0, acked);
    }

    fn of(acked: &[&Value]) -> Expected {
        let mut e = Expected::default();
        for a in acked {
            e.add(a);
        }
        e
    }

    /// The counters named `name` (all when `None`), as exposed.
    fn counters(&self, name: Option<&str>) -> BTreeMap<String, f64> {
        self.0["counters"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| name.map_or(true, |n| k.starts_with(&format!("{n}{{"))))
            .map(|(k, v)| {
                let name = k.split('{').next().unwrap();
                (exposed(k, &format!("{name}_total")), v.as_f64().unwrap())
            })
            .collect()
    }

    fn distribution_counts(&self) -> BTreeMap<String, f64> {
        self.0["distributions"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let name = k.split('{').next().unwrap();
                (
                    exposed(k, &format!("{name}_count")),
                    v["count"].as_f64().unwrap(),
                )
            })
            .collect()
    }
}

/// Scrapes and keeps what it saw: no `_total` or `_count` sample ever goes back, and (unless
/// `series_may_go`) no series disappears.
struct Scraper {
    port: u16,
    last: BTreeMap<String, f64>,
    series_may_go: bool,
    answered: u32,
}

impl Scraper {
    fn new(port: u16) -> Scraper {
        Scraper {
            port,
            last: BTreeMap::new(),
            series_may_go: false,
            answered: 0,
        }
    }

    /// One scrape, checked against the previous ones; `None` when nothing answered.
    fn scrape(&mut self) -> Option<BTreeMap<String, f64>> {
        let body = scrape(self.port, false)?;
        self.answered += 1;
        let now: BTreeMap<String, f64> = samples(&body)
            .into_iter()
            .filter(|(k, _)| k.contains("_total{") || k.contains("_count{"))
            .collect();
        for (series, before) in &self.last {
            match now.get(series) {
                Some(value) => assert!(
                    value >= before,
                    "{series} went back from {before} to {value}:\n{body}"
                ),
                None => assert!(
                    self.series_may_go,
                    "{series} (at {before}) disappeared:\n{body}"
                ),
            }
        }
        self.last = now.clone();
        Some(now)
    }

    /// Scrapes until the counters (and distribution counts) equal `expected`, for up to 30 s;
    /// fails with what it saw and `context`.
    fn await_equal(&mut self, expected: &Expected, context: impl Fn() -> String) {
        let mut want = expected.counters(None);
        want.extend(expected.distribution_counts());
        let mut seen = BTreeMap::new();
        let equal = testkit::poll(Duration::from_secs(30), || {
            if let Some(now) = self.scrape() {
                seen = now;
            }
            seen == want
        });
        assert!(
            equal,
            "scraped {seen:#?}\nexpected {want:#?}\n{}",
            context()
        );
    }
}

/// A worker that also has `extra` in its environment.
fn spawn_with(setup: &Setup, index: u32, extra: &[(&str, &str)]) -> WorkerProcess {
    let mut env = setup.env.clone();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    WorkerProcess::spawn(&testkit::worker_exe(), &[index.to_string()], &env).unwrap()
}

/// Waits (scraping meanwhile) until `worker` ends by a SIGKILL nobody but itself sent.
fn await_own_sigkill(worker: &mut WorkerProcess, scraper: &mut Scraper, step: &str, log: &str) {
    let mut status = None;
    let died = testkit::poll(Duration::from_secs(30), || {
        scraper.scrape();
        status = worker.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(died, "{step}: the leader never reached the step\n{log}");
    assert_eq!(
        status.unwrap().signal(),
        Some(libc::SIGKILL),
        "{step}: {status:?}"
    );
}

fn setup(port: u16) -> Setup {
    Setup::new(KEY, INTERVAL_MS)
        .with("_APPSIGNAL_PROMETHEUS_PORT", &port.to_string())
        .with("_APPSIGNAL_LOG_LEVEL", "info")
}

fn state_files(wd: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(wd)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    name.starts_with("cumulative-") && name.ends_with(".state")
                })
                .collect()
        })
        .unwrap_or_default()
}

fn journal_segments(wd: &Path) -> Vec<String> {
    std::fs::read_dir(wd.join("journal"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".seg3"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `case` for each of `cases` in its own thread; fails with every case that failed.
fn in_parallel<T: Send + std::fmt::Debug + Copy + 'static>(cases: &[T], case: fn(T)) {
    let threads: Vec<_> = cases
        .iter()
        .map(|c| {
            let c = *c;
            std::thread::Builder::new()
                .name(format!("{c:?}"))
                .spawn(move || case(c))
                .unwrap()
        })
        .collect();
    let failed: Vec<String> = cases
        .iter()
        .zip(threads)
        .filter_map(|(c, t)| t.join().err().map(|_| format!("{c:?}")))
        .collect();
    assert!(
        failed.is_empty(),
        "failed: {failed:?} (see their panics above)"
    );
}

/// The steps of the commit at which the knob kills the leader, in their order.
const STEPS: [&str; 6] = [
    "after-add",
    "temp-written",
    "temp-synced",
    "renamed",
    "before-segment-delete",
    "after-segment-delete",
];

#[test]
fn a_leader_killed_at_every_step_of_the_commit_loses_nothing_and_counts_nothing_twice() {
    in_parallel(&STEPS, killed_at);
}

/// One step: the leader dies at `step` of its first commit; the clients' acknowledged counts are
/// all in the next leader's scrape, once. (The leader records nothing: what a process that dies
/// had recorded but not yet seen acknowledged is its own loss. Its own acknowledged counts across
/// kills are checked in `tests/prometheus.rs`.)
fn killed_at(step: &'static str) {
    let port = free_port();
    let setup = setup(port);
    let mut scraper = Scraper::new(port);
    let mut leader = spawn_with(&setup, 0, &[("_APPSIGNAL_TEST_KILL_AT", step)]);
    assert_eq!(leader.role, "leader", "{step}");
    let mut clients: Vec<WorkerProcess> = (1..4).map(|i| setup.spawn(i)).collect();
    let mut acked: BTreeMap<u32, Value> = BTreeMap::new();
    // Round 1: the clients record; the leader's first commit (the window that holds it) kills it.
    for w in clients.iter_mut() {
        w.send("record 30").unwrap();
    }
    for w in clients.iter_mut() {
        acked.insert(w.pid, w.sync().unwrap());
        scraper.scrape();
    }
    await_own_sigkill(&mut leader, &mut scraper, step, &setup.log());
    // Round 2 through the next leader (a client that took over), and a process that joins.
    clients.push(setup.spawn(4));
    for w in clients.iter_mut() {
        w.send("record 20").unwrap();
    }
    for w in clients.iter_mut() {
        acked.insert(w.pid, w.sync().unwrap());
        scraper.scrape();
    }
    let expected = Expected::of(&acked.values().collect::<Vec<_>>());
    assert_eq!(
        expected.counters(Some("requests")).values().sum::<f64>(),
        3.0 * 30.0 + 4.0 * 20.0,
        "{step}"
    );
    let context = || format!("step {step}\n--- log ---\n{}", tail(&setup.log(), 60));
    scraper.await_equal(&expected, context);
    // What the file and the journal hold after a graceful stop: a fresh leader reads the same.
    stop_all(&mut clients);
    assert!(journal_segments(&setup.workdir()).is_empty(), "{step}");
    let mut fresh = setup.spawn(5);
    assert_eq!(fresh.role, "leader");
    scraper.await_equal(&expected, context);
    stop_all(std::slice::from_mut(&mut fresh));
    // The Push API got everything once too.
    setup.assert_totals(&expected.0);
    assert_eq!(setup.receiver.summary()["duplicates"], 0, "{step}");
    let leftovers: Vec<_> = std::fs::read_dir(setup.workdir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{step}: {leftovers:?}");
    assert!(scraper.answered > 0);
}

/// How a test damages the state file between two leaders.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Cut in the middle of its body (a foreign writer; our rename never leaves this).
    Truncated,
    /// Random bytes.
    Random,
    /// A file of another program: another magic, the rest intact.
    OtherMagic,
    /// Written by a future version of the library: format version 2.
    FutureVersion,
    /// One byte of the body changed: the checksum no longer matches.
    FlippedByte,
}

impl Damage {
    fn apply(self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        match self {
            Damage::Truncated => out.truncate(bytes.len() / 2),
            Damage::Random => {
                out = (0..300u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
                    .collect()
            }
            Damage::OtherMagic => out[..8].copy_from_slice(b"OTHERFMT"),
            Damage::FutureVersion => out[8..12].copy_from_slice(&2u32.to_le_bytes()),
            Damage::FlippedByte => {
                let last = out.len() - 10;
                out[last] ^= 0x01;
            }
        }
        out
    }

    /// What the log line says about the file.
    fn reason(self) -> &'static str {
        match self {
            Damage::Truncated => "torn:",
            Damage::Random | Damage::OtherMagic => "not a cumulative state file",
            Damage::FutureVersion => "format version 2; this library reads version 1",
            Damage::FlippedByte => "checksum mismatch",
        }
    }
}

#[test]
fn a_torn_or_foreign_state_file_is_logged_and_rebuilt_from_what_the_journal_still_holds() {
    in_parallel(
        &[
            Damage::Truncated,
            Damage::Random,
            Damage::OtherMagic,
            Damage::FutureVersion,
            Damage::FlippedByte,
        ],
        damaged,
    );
}

/// Round 1 is committed and its segments deleted (a graceful stop); round 2 is journaled and its
/// leader dies before saving it (the kill knob at `after-add`). The file is damaged; the next
/// leader logs it and rebuilds from the journal: round 2 exactly, round 1 gone (its only record
/// was the file, which is not trusted: those counters reset once).
fn damaged(damage: Damage) {
    let port = free_port();
    let setup = setup(port);
    let wd = setup.workdir();
    let mut first = setup.spawn(0);
    let round1 = first.record(20).unwrap();
    first.sync().unwrap();
    stop_all(std::slice::from_mut(&mut first));
    let files = state_files(&wd);
    assert_eq!(files.len(), 1, "{damage:?}");
    assert!(journal_segments(&wd).is_empty(), "{damage:?}");

    let mut scraper = Scraper::new(port);
    let mut second = spawn_with(&setup, 1, &[("_APPSIGNAL_TEST_KILL_AT", "after-add")]);
    assert_eq!(second.role, "leader");
    let round2 = second.record(20).unwrap();
    second.sync().unwrap();
    await_own_sigkill(&mut second, &mut scraper, "after-add", &setup.log());
    assert!(!journal_segments(&wd).is_empty(), "{damage:?}");
    // Round 1 only in the file, round 2 only in the journal.
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], damage.apply(&bytes)).unwrap();

    let mut third = setup.spawn(2);
    assert_eq!(third.role, "leader");
    let log_line = format!(
        "cumulative state {} unusable; rebuilt from the journal",
        files[0].display()
    );
    setup.await_log(&log_line, Duration::from_secs(10));
    let log = setup.log();
    let line = log.lines().find(|l| l.contains(&log_line)).unwrap();
    assert!(line.contains(damage.reason()), "{damage:?}: {line}");
    let mut scraper = Scraper::new(port);
    scraper.await_equal(&Expected::of(&[&round2]), || {
        format!("{damage:?}\n--- log ---\n{}", tail(&setup.log(), 40))
    });
    // Counting goes on from there, and the file is replaced by a good one.
    let round3 = third.record(10).unwrap();
    third.sync().unwrap();
    scraper.await_equal(&Expected::of(&[&round2, &round3]), || {
        format!("{damage:?}\n--- log ---\n{}", tail(&setup.log(), 40))
    });
    stop_all(std::slice::from_mut(&mut third));
    let mut fourth = setup.spawn(3);
    scraper.await_equal(&Expected::of(&[&round2, &round3]), || {
        format!("{damage:?}\n--- log ---\n{}", tail(&setup.log(), 40))
    });
    stop_all(std::slice::from_mut(&mut fourth));
    assert_eq!(
        setup.log().matches(&log_line).count(),
        1,
        "{damage:?}: only the damaged file was refused"
    );
    // The Push API is not concerned: it got every round once.
    setup.assert_totals(&Expected::of(&[&round1, &round2, &round3]).0);
}

/// `count NAME FROM TO` in `worker`: what it has sent so far.
fn count(worker: &mut WorkerProcess, name: &str, from: u64, to: u64) -> Value {
    worker.send(&format!("count {name} {from} {to}")).unwrap();
    worker.expect("sent", Duration::from_secs(30)).unwrap()
}

/// The start (ms) of every counter series `name` in the state file of `wd`, by its tag `i`.
fn starts(wd: &Path, name: &str) -> BTreeMap<String, u64> {
    let Some(path) = state_files(wd).pop() else {
        return BTreeMap::new();
    };
    let Ok(bytes) = std::fs::read(path) else {
        return BTreeMap::new();
    };
    let Ok(state) = appsignal_agent::cumulative::file::decode(&bytes) else {
        return BTreeMap::new();
    };
    state
        .series
        .iter()
        .filter(|((_, key), _)| key.name == name)
        .map(|((_, key), s)| (key.tags[0].1.clone(), s.start_ms))
        .collect()
}

#[test]
fn a_full_disk_fails_the_saves_keeps_the_segments_and_loses_nothing_once_freed() {
    /// Larger than a journal segment, a payload or the `counted` record of the small windows
    /// below; smaller than the state file of the 3,000 series recorded first.
    const FSIZE: u64 = 64 * 1024;
    let port = free_port();
    let setup = setup(port);
    let wd = setup.workdir();
    // The leader logs to its stdout (a pipe, which RLIMIT_FSIZE does not limit).
    let mut leader = spawn_with(&setup, 0, &[("_APPSIGNAL_LOG", "stdout")]);
    assert_eq!(leader.role, "leader");
    let mut client = setup.spawn(1);
    let mut scraper = Scraper::new(port);
    let mut acked: BTreeMap<u32, Value> = BTreeMap::new();
    count(&mut client, "wide", 0, 3000);
    acked.insert(client.pid, client.sync().unwrap());
    assert!(
        testkit::poll(Duration::from_secs(30), || {
            scraper.scrape();
            state_files(&wd)
                .first()
                .and_then(|p| std::fs::metadata(p).ok())
                .is_some_and(|m| m.len() > 2 * FSIZE)
        }),
        "the state file never held the wide series"
    );
    // The leader's disk is full from now on (for the files it grows).
    leader.send(&format!("fsize {FSIZE}")).unwrap();
    assert_eq!(
        leader.expect("fsize", Duration::from_secs(10)).unwrap()["ok"],
        true
    );
    // Everyone records, window after window, until saves have failed and closed windows'
    // segments are kept.
    let kept = testkit::poll(Duration::from_secs(30), || {
        for w in [&mut leader, &mut client] {
            w.send("record 5").unwrap();
            acked.insert(w.pid, w.sync().unwrap());
        }
        scraper.scrape();
        !leader
            .output()
            .iter()
            .all(|l| !l.contains("cannot save the cumulative state"))
            && journal_segments(&wd).len() >= 3
    });
    assert!(
        kept,
        "segments {:?}\n{}",
        journal_segments(&wd),
        leader.output().join("\n")
    );
    let line = leader
        .output()
        .into_iter()
        .find(|l| l.contains("cannot save the cumulative state"))
        .unwrap();
    assert!(
        line.contains("journal segments stay until it can"),
        "{line}"
    );
    // Counting went on: the scrape shows everything acknowledged (from memory).
    let expected = Expected::of(&acked.values().collect::<Vec<_>>());
    scraper.await_equal(&expected, || leader.output().join("\n"));

    // Space returns: the next save succeeds, the kept segments go.
    leader.send(&format!("fsize {}", u64::MAX)).unwrap();
    assert_eq!(
        leader.expect("fsize", Duration::from_secs(10)).unwrap()["ok"],
        true
    );
    for w in [&mut leader, &mut client] {
        w.send("record 5").unwrap();
        acked.insert(w.pid, w.sync().unwrap());
    }
    let expected = Expected::of(&acked.values().collect::<Vec<_>>());
    scraper.await_equal(&expected, || leader.output().join("\n"));
    assert!(
        testkit::poll(Duration::from_secs(30), || journal_segments(&wd).len() <= 1),
        "segments kept after space returned: {:?}",
        journal_segments(&wd)
    );
    // The file is whole again: a fresh leader reads exactly the totals.
    let mut all = vec![leader, client];
    stop_all(&mut all);
    let mut fresh = setup.spawn(2);
    assert_eq!(fresh.role, "leader");
    scraper.await_equal(&expected, || tail(&setup.log(), 40));
    stop_all(std::slice::from_mut(&mut fresh));
    setup.assert_totals(&expected.0);
}

#[test]
fn a_deleted_working_directory_does_not_crash_and_the_totals_start_again_from_what_is_left() {
    let outside = tempfile::tempdir().unwrap();
    let log_path = outside.path().join("appsignal.log");
    let port = free_port();
    // The log lives outside the directory that gets deleted, so that it tells what happened.
    let setup = setup(port).with("_APPSIGNAL_LOG_FILE_PATH", log_path.to_str().unwrap());
    let wd = setup.workdir();
    let mut workers: Vec<WorkerProcess> = (0..3).map(|i| setup.spawn(i)).collect();
    let mut before = BTreeMap::new();
    for w in workers.iter_mut() {
        w.record(20).unwrap();
        before.insert(w.pid, w.sync().unwrap());
    }
    let mut scraper = Scraper::new(port);
    scraper.await_equal(&Expected::of(&before.values().collect::<Vec<_>>()), || {
        setup.log()
    });
    assert!(
        testkit::poll(Duration::from_secs(30), || !state_files(&wd).is_empty()),
        "no state file"
    );
    // Pushed, not only cached: the payload cache goes with the directory (what that loses is
    // not what this test is about).
    setup.assert_totals(&Expected::of(&before.values().collect::<Vec<_>>()).0);
    // (The agent may create a file in it while it goes: try again.)
    assert!(
        testkit::poll(Duration::from_secs(10), || std::fs::remove_dir_all(&wd)
            .is_ok()),
        "cannot delete {}",
        wd.display()
    );
    // The leader notices, stops leading, and a new election runs in a fresh directory.
    assert!(
        testkit::poll(Duration::from_secs(15), || {
            let log = setup.log();
            log.find("was deleted or replaced: stopping as leader")
                .is_some_and(|at| log[at..].contains("leading: listening on"))
                && testkit::leader_index(&wd, &workers).is_some()
        }),
        "no new election:\n{}",
        setup.log()
    );
    let mut after = BTreeMap::new();
    for w in workers.iter_mut() {
        w.record(10).unwrap();
        after.insert(w.pid, w.sync().unwrap());
    }
    // The state file went with the directory. What the scrape shows afterwards is at least what
    // the processes recorded since, plus whatever the old leader still held in memory and saved
    // into the fresh directory when it stopped: never more than was recorded in all.
    // (A worker's acknowledged totals are its own since it started.)
    let all = Expected::of(&after.values().collect::<Vec<_>>());
    let hi = all.counters(None);
    let earlier = Expected::of(&before.values().collect::<Vec<_>>()).counters(None);
    let lo: BTreeMap<String, f64> = hi
        .iter()
        .map(|(k, v)| (k.clone(), v - earlier.get(k).copied().unwrap_or(0.0)))
        .collect();
    let mut scraper = Scraper::new(port);
    scraper.series_may_go = true;
    let mut seen = BTreeMap::new();
    let within = testkit::poll(Duration::from_secs(30), || {
        seen = scraper.scrape().unwrap_or_default();
        hi.iter()
            .all(|(k, max)| seen.get(k).is_some_and(|v| *v <= *max && *v >= lo[k]))
    });
    assert!(
        within,
        "scraped {seen:#?}\nsince {lo:#?}\nall {hi:#?}\n{}",
        setup.log()
    );
    let requests = |m: &BTreeMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with("requests_total"))
            .map(|(_, v)| v)
            .sum()
    };
    eprintln!(
        "after the directory was deleted: scraped {} of {} recorded ({} since)",
        requests(&seen),
        requests(&hi),
        requests(&lo)
    );
    // Every process is still there and answers; the Push API lost nothing.
    for w in workers.iter_mut() {
        assert!(w.diagnose().is_ok());
    }
    stop_all(&mut workers);
    setup.assert_totals(&all.0);
}

#[test]
fn an_expired_series_leaves_the_scrape_and_comes_back_from_zero_with_a_new_start() {
    let port = free_port();
    let setup = setup(port).with("_APPSIGNAL_CUMULATIVE_EXPIRY_MS", "2000");
    let wd = setup.workdir();
    let mut w = setup.spawn(0);
    let mut scraper = Scraper::new(port);
    scraper.series_may_go = true;
    count(&mut w, "gone", 0, 3);
    count(&mut w, "kept", 0, 1);
    w.sync().unwrap();
    let mut first_starts = BTreeMap::new();
    assert!(
        testkit::poll(Duration::from_secs(30), || {
            first_starts = starts(&wd, "gone");
            first_starts.len() == 3
        }),
        "the state file never held the series"
    );
    // `kept` is updated in window after window; `gone` is not, and expires.
    let mut kept = 1.0;
    let mut seen = BTreeMap::new();
    let expired = testkit::poll(Duration::from_secs(30), || {
        count(&mut w, "kept", 0, 1);
        w.sync().unwrap();
        kept += 1.0;
        seen = scraper.scrape().unwrap_or_default();
        !seen.keys().any(|k| k.starts_with("gone_total"))
            && setup.receiver.summary()["cumulative_expired_series"] == 3
    });
    assert!(
        expired,
        "scraped {seen:#?}\nreceiver {}\n{}",
        setup.receiver.summary(),
        tail(&setup.log(), 30)
    );
    assert!(starts(&wd, "gone").is_empty());
    // `gone` comes back: from zero, with a new start; `kept` never expired.
    let sent = count(&mut w, "gone", 0, 3);
    w.sync().unwrap();
    assert_eq!(
        sent["counters"]["gone{i=0}"], 2.0,
        "the worker sent it twice"
    );
    let mut want = Expected::default();
    want.add(&serde_json::json!({"counters": {
        "gone{i=0}": 1.0, "gone{i=1}": 1.0, "gone{i=2}": 1.0, "kept{i=0}": kept}}));
    scraper.await_equal(&want, || tail(&setup.log(), 30));
    let mut again = BTreeMap::new();
    assert!(
        testkit::poll(Duration::from_secs(30), || {
            again = starts(&wd, "gone");
            again.len() == 3
        }),
        "the state file never held the series again"
    );
    for (i, start) in &again {
        assert!(
            *start > first_starts[i],
            "gone{{i={i}}}: start {start}, before {}",
            first_starts[i]
        );
    }
    stop_all(std::slice::from_mut(&mut w));
    assert_eq!(setup.receiver.summary()["cumulative_expired_series"], 3);
}

#[test]
fn series_beyond_the_cap_are_kept_out_of_the_totals_and_counted() {
    const CAP: usize = 10;
    let port = free_port();
    let setup = setup(port).with("_APPSIGNAL_TEST_CUMULATIVE_MAX_SERIES", &CAP.to_string());
    let mut w = setup.spawn(0);
    let mut scraper = Scraper::new(port);
    let capped = |seen: &BTreeMap<String, f64>| -> BTreeMap<String, f64> {
        seen.iter()
            .filter(|(k, _)| k.starts_with("capped_total"))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    count(&mut w, "capped", 0, 8);
    w.sync().unwrap();
    let first = Expected::of(&[&count(&mut w, "capped", 0, 0)]);
    scraper.await_equal(&first, || tail(&setup.log(), 30));
    // Committed (in the file), so that the next ones come in a later window. (Within one window,
    // which of its new series fit is not defined.)
    let wd = setup.workdir();
    assert!(
        testkit::poll(Duration::from_secs(30), || starts(&wd, "capped").len() == 8),
        "the state file never held the first series"
    );
    // Twelve more: two fit. No scrape ever shows more than the cap, not even while the window
    // that brought them is open.
    count(&mut w, "capped", 8, 20);
    w.sync().unwrap();
    let mut seen = BTreeMap::new();
    // The counts of a window's drops go out with the next payload: `i=0` (in the totals) is
    // counted again meanwhile, so that there are payloads.
    let mut more = 0.0;
    let refused = testkit::poll(Duration::from_secs(30), || {
        count(&mut w, "capped", 0, 1);
        more += 1.0;
        seen = capped(&scraper.scrape().unwrap_or_default());
        assert!(seen.len() <= CAP, "{seen:#?}");
        seen.len() == CAP && setup.receiver.summary()["cumulative_refused_series"] == 10
    });
    assert!(
        refused,
        "scraped {seen:#?}\nreceiver {}",
        setup.receiver.summary()
    );
    for (k, v) in &first.counters(Some("capped")) {
        let v = if k.contains("i=\"0\"") { v + more } else { *v };
        assert!(
            seen.get(k).is_some_and(|s| *s <= v && *s >= 1.0),
            "{k}: the series counted first stay: {seen:#?}"
        );
    }
    // All twenty again: the ten in the totals go on, the ten others are refused again.
    let sent = count(&mut w, "capped", 0, 20);
    w.sync().unwrap();
    let mut sent = sent;
    assert!(
        testkit::poll(Duration::from_secs(30), || {
            sent = count(&mut w, "capped", 0, 1);
            more += 1.0;
            seen = capped(&scraper.scrape().unwrap_or_default());
            assert!(seen.len() <= CAP, "{seen:#?}");
            seen.iter().all(|(k, v)| {
                *v == if k.contains("i=\"0\"") {
                    2.0 + more
                } else {
                    2.0
                }
            }) && setup.receiver.summary()["cumulative_refused_series"] == 20
        }),
        "scraped {seen:#?}\nreceiver {}",
        setup.receiver.summary()
    );
    stop_all(std::slice::from_mut(&mut w));
    // The delta payloads are not capped: every series arrived.
    setup.assert_totals(&Expected::of(&[&sent]).0);
}
