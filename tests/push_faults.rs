//! Push faults, with real processes: worker processes load libappsignal.so through its C
//! interface and share a working directory; the Push API is the reference receiver on 127.0.0.1,
//! or a port where nothing listens. Each test shows that totals received equal totals sent (for
//! what the design promises to deliver), that no app call waited (the workers time every metric
//! call into the library), and that `appsignal_stop()` returned within its bound (the workers time
//! it too).
//!
//! - a push key refused with 401 next to a configuration whose key is accepted;
//! - a five-minute outage (connection refused) while three processes record (this test takes about
//!   5.5 minutes; the others in this file run beside it);
//! - a full disk (`RLIMIT_FSIZE` in the leader process).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::fleet::{self, WorkerProcess};
use testkit::receiver::Receiver;
use testkit::setup::tail;

const GOOD_KEY: &str = "push-faults-accepted-key";
const BAD_KEY: &str = "push-faults-refused-key-5b1e";
/// The stop timeout the workers run with, and how much longer a stop may take: the sender
/// thread is waited for until 1.5 s after the deadline at most (`client::Sender::stop`).
const STOP_TIMEOUT_MS: u64 = 3000;
const STOP_BOUND_MS: u64 = STOP_TIMEOUT_MS + 1500;
/// The longest a single metric call may take: the push timeout is 10 s, the connect timeout
/// 5 s, so an app thread that waited on the network would show seconds. The slack is for a loaded
/// 2-core machine (a preempted thread); the calls measure in microseconds.
const MAX_CALL_US: u64 = 500_000;

/// Worker environment: `key` and `app` on `endpoint`, working directory `workdir`.
fn env(
    endpoint: &str,
    key: &str,
    app: &str,
    workdir: &Path,
    interval_ms: u64,
) -> Vec<(String, String)> {
    let mut env = fleet::config_env(endpoint, key, workdir, interval_ms);
    env.retain(|(k, _)| k != "_APPSIGNAL_APP_NAME" && k != "_APPSIGNAL_LOG_LEVEL");
    env.extend(
        [
            ("_APPSIGNAL_APP_NAME", app.to_owned()),
            ("_APPSIGNAL_LOG_LEVEL", "info".to_owned()),
            ("_APPSIGNAL_STOP_TIMEOUT_MS", STOP_TIMEOUT_MS.to_string()),
            (
                "APPSIGNAL_LIBRARY",
                testkit::library_path().display().to_string(),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    env
}

fn with(mut env: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
    env
}

fn spawn(env: &[(String, String)], index: u32) -> WorkerProcess {
    WorkerProcess::spawn(&testkit::worker_exe(), &[index.to_string()], env).unwrap()
}

fn log(workdir: &Path) -> String {
    std::fs::read_to_string(workdir.join("appsignal.log")).unwrap_or_default()
}

/// Records `n` in every worker at once; returns each one's cumulative `sent` event.
fn record_all(workers: &mut [WorkerProcess], n: u64) -> Vec<Value> {
    for w in workers.iter_mut() {
        w.send(&format!("record {n}")).unwrap();
    }
    workers
        .iter_mut()
        .map(|w| w.expect("sent", Duration::from_secs(60)).unwrap())
        .collect()
}

/// The sum of the workers' cumulative `sent` (or `acked`) events.
fn total(events: &[Value]) -> Value {
    let mut expected = Value::Null;
    for e in events {
        fleet::add_sent(&mut expected, e);
    }
    expected
}

fn max_call_us(events: &[Value]) -> u64 {
    events
        .iter()
        .map(|e| e["max_call_us"].as_u64().unwrap())
        .max()
        .unwrap_or(0)
}

/// Stops the workers, clients first and the leader last (a graceful deploy); returns each one's
/// `appsignal_stop()` duration in ms, and checks it is within the bound.
fn stop_all(workers: &mut [WorkerProcess]) -> Vec<u64> {
    workers.sort_by_key(|w| w.role == "leader");
    let mut took = Vec::new();
    for w in workers.iter_mut() {
        w.send("stop").unwrap();
        let stopped = w.expect("stopped", Duration::from_secs(30)).unwrap();
        let status = w.wait(Duration::from_secs(30)).unwrap();
        assert!(status.success(), "worker {} exited with {status}", w.pid);
        let ms = stopped["stop_ms"].as_u64().unwrap();
        assert!(
            ms <= STOP_BOUND_MS,
            "appsignal_stop() of pid {} took {ms} ms (bound {STOP_BOUND_MS} ms)",
            w.pid
        );
        took.push(ms);
    }
    took
}

fn assert_totals(
    receiver: &Receiver,
    expected: &Value,
    timeout: Duration,
    log: &dyn Fn() -> String,
) {
    let rows = fleet::await_totals(expected, || receiver.summary(), timeout);
    let wrong: Vec<String> = rows
        .iter()
        .filter(|r| !r.equal)
        .map(|r| format!("{}: sent {}, received {}", r.series, r.sent, r.received))
        .collect();
    assert!(!rows.is_empty(), "nothing was expected");
    assert!(
        wrong.is_empty(),
        "totals differ (receiver: {} payloads, {} duplicates):\n{}\n--- log ---\n{}",
        receiver.summary()["payloads"],
        receiver.summary()["duplicates"],
        wrong.join("\n"),
        tail(&log(), 60)
    );
}

/// Payload files in `payloads/` (not temporary ones).
fn cached_payloads(workdir: &Path) -> Vec<String> {
    std::fs::read_dir(workdir.join("payloads"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json.gz"))
                .collect()
        })
        .unwrap_or_default()
}

fn journal_segments(workdir: &Path) -> Vec<String> {
    std::fs::read_dir(workdir.join("journal"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".seg3"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_refused_push_key_is_tried_once_and_logged_once_while_the_other_configuration_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("wd");
    // The receiver accepts GOOD_KEY and answers 401 to anything else (counted as `unauthorized`).
    let receiver = Receiver::start(GOOD_KEY, None).unwrap();
    let env_a = env(&receiver.url, BAD_KEY, "app-a", &wd, 300);
    let env_b = env(&receiver.url, GOOD_KEY, "app-b", &wd, 300);
    // A process of the refused configuration leads: its own configuration is the one refused.
    let mut a: Vec<WorkerProcess> = (0..2).map(|i| spawn(&env_a, i)).collect();
    assert_eq!(a[0].role, "leader");
    let mut b: Vec<WorkerProcess> = (10..12).map(|i| spawn(&env_b, i)).collect();
    let apps = |app: &str| receiver.summary()["apps"][app].as_u64().unwrap_or(0);
    // Four rounds, each in a window of its own (the next starts once app-b's payload of the
    // previous one arrived): app-a has a payload in each of them.
    let (mut sent_a, mut sent_b) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let before = apps("app-b");
        sent_a = record_all(&mut a, 300);
        sent_b = record_all(&mut b, 300);
        assert!(
            testkit::poll(Duration::from_secs(30), || apps("app-b") > before),
            "app-b's payload did not arrive\n{}",
            tail(&log(&wd), 40)
        );
    }
    for w in a.iter_mut().chain(b.iter_mut()) {
        w.sync().unwrap();
    }
    // The leader's diagnose names the refused configuration and counts its dropped payloads.
    let mut refused = Value::Null;
    let shown = testkit::poll(Duration::from_secs(30), || {
        let report = a[0].diagnose().unwrap();
        refused = report["leader_election"]["exports"]["refused_credentials"].clone();
        refused[0]["dropped_payloads"].as_u64() >= Some(4)
    });
    assert!(shown, "diagnose: {refused}\n{}", tail(&log(&wd), 40));
    assert_eq!(refused.as_array().unwrap().len(), 1, "{refused}");
    assert_eq!(refused[0]["app_name"], "app-a");
    assert_eq!(refused[0]["environment"], "demo");
    assert_eq!(refused[0]["exporter"], "push");
    assert!(
        refused[0]["next_try_in_ms"].as_u64().unwrap() > 3_000_000,
        "the next try is an hour away: {refused}"
    );
    let dropped = refused[0]["dropped_payloads"].as_u64().unwrap();
    for w in b.iter_mut() {
        assert_eq!(
            w.diagnose().unwrap()["leader_election"]["exports"],
            Value::Null
        );
    }

    let mut all: Vec<WorkerProcess> = a.into_iter().chain(b).collect();
    let stops = stop_all(&mut all);
    assert_totals(&receiver, &total(&sent_b), Duration::from_secs(30), &|| {
        log(&wd)
    });
    let summary = receiver.summary();
    assert_eq!(
        summary["unauthorized"], 1,
        "app-a's payloads were tried once: {summary}"
    );
    assert_eq!(summary["apps"].as_object().unwrap().len(), 1, "{summary}");
    assert_eq!(summary["duplicates"], 0);
    let rejected = summary["rejected_exports"].as_u64().unwrap();
    assert!(
        rejected >= 1 && rejected <= dropped + 1,
        "app-b's payloads report app-a's dropped ones: {rejected} of {dropped}"
    );
    let text = log(&wd);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("refused the credentials of app \"app-a\""))
        .collect();
    assert_eq!(lines.len(), 1, "logged once:\n{}", tail(&text, 60));
    assert!(lines[0].contains("environment \"demo\""), "{}", lines[0]);
    assert!(!text.contains(BAD_KEY) && !text.contains(GOOD_KEY));
    assert!(
        cached_payloads(&wd).is_empty(),
        "app-a's payloads are dropped, not kept: {:?}",
        cached_payloads(&wd)
    );
    let slowest = max_call_us(&sent_a).max(max_call_us(&sent_b));
    assert!(slowest < MAX_CALL_US, "a metric call took {slowest} µs");
    eprintln!(
        "refused key: {dropped} app-a payloads dropped after 1 request; slowest metric call {slowest} µs; stops took {stops:?} ms\nthe line: {}",
        lines[0]
    );
}

/// What `later` holds beyond `earlier` (two cumulative `sent` totals of the same processes).
fn minus(later: &Value, earlier: &Value) -> Value {
    let mut out = later.clone();
    for (k, v) in later["counters"].as_object().into_iter().flatten() {
        let before = earlier["counters"][k].as_f64().unwrap_or(0.0);
        out["counters"][k] = serde_json::json!(v.as_f64().unwrap() - before);
    }
    for (k, v) in later["distributions"].as_object().into_iter().flatten() {
        let before = &earlier["distributions"][k];
        out["distributions"][k] = serde_json::json!({
            "count": v["count"].as_u64().unwrap() - before["count"].as_u64().unwrap_or(0),
            "sum": v["sum"].as_f64().unwrap() - before["sum"].as_f64().unwrap_or(0.0),
        });
    }
    out
}

#[test]
fn a_refused_key_fixed_on_the_server_is_probed_again_and_sending_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("wd");
    // The server does not know the key yet.
    let receiver = Receiver::start("the-key-the-server-had", None).unwrap();
    let env = with(
        env(&receiver.url, BAD_KEY, "probed-app", &wd, 300),
        "_APPSIGNAL_REFUSED_KEY_RETRY_INTERVAL_MS",
        "1000",
    );
    let mut workers: Vec<WorkerProcess> = (0..2).map(|i| spawn(&env, i)).collect();
    let leader = workers.iter().position(|w| w.role == "leader").unwrap();
    record_all(&mut workers, 200);
    let refused: Vec<Value> = workers.iter_mut().map(|w| w.sync().unwrap()).collect();
    // Refused, dropped, and everything of that round is through: no segment, no cached payload.
    assert!(
        testkit::poll(Duration::from_secs(30), || {
            receiver.summary()["unauthorized"].as_u64() >= Some(1)
                && journal_segments(&wd).is_empty()
                && cached_payloads(&wd).is_empty()
        }),
        "{}",
        tail(&log(&wd), 40)
    );
    // The key is fixed on the server; once the next probe is due, the next payload is the probe.
    receiver.set_key(BAD_KEY);
    assert!(testkit::poll(Duration::from_secs(30), || {
        let report = workers[leader].diagnose().unwrap();
        report["leader_election"]["exports"]["refused_credentials"][0]["next_try_in_ms"] == 0
    }));
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent = record_all(&mut workers, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        testkit::poll(Duration::from_secs(30), || log(&wd).contains(
            "accepts the credentials of app \"probed-app\" environment \"demo\" again"
        )),
        "{}",
        tail(&log(&wd), 40)
    );
    let report = workers[leader].diagnose().unwrap();
    assert_eq!(
        report["leader_election"]["exports"]["refused_credentials"],
        serde_json::json!([]),
        "{report}"
    );
    let stops = stop_all(&mut workers);
    assert_totals(
        &receiver,
        &minus(&total(&sent), &total(&refused)),
        Duration::from_secs(30),
        &|| log(&wd),
    );
    let summary = receiver.summary();
    assert_eq!(summary["duplicates"], 0);
    // One refused request, perhaps one probe before the fix; none after.
    let unauthorized = summary["unauthorized"].as_u64().unwrap();
    assert!((1..=2).contains(&unauthorized), "{summary}");
    let slowest = max_call_us(&sent);
    assert!(slowest < MAX_CALL_US, "a metric call took {slowest} µs");
    eprintln!("probe: {unauthorized} refused requests, then resumed; stops took {stops:?} ms");
}

/// A TCP port on 127.0.0.1 that refuses connections: bound, so that nobody else takes it, but not
/// listening. Dropping it frees the port.
struct ClosedPort {
    _fd: OwnedFd,
    port: u16,
}

/// Not inherited by the processes the test starts (macOS has no such flag for `socket`; there the
/// test's children may inherit it, which changes nothing for a port that is never listened on).
#[cfg(target_os = "linux")]
const SOCK_CLOEXEC: libc::c_int = libc::SOCK_CLOEXEC;
#[cfg(not(target_os = "linux"))]
const SOCK_CLOEXEC: libc::c_int = 0;

impl ClosedPort {
    fn new() -> ClosedPort {
        // SAFETY: plain socket calls on a descriptor this function owns; the address structs are
        // zero-initialised C structs of the sizes given.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let bound = libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len);
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut got_len = len;
            let named = libc::getsockname(fd.as_raw_fd(), (&raw mut got).cast(), &mut got_len);
            assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
            ClosedPort {
                _fd: fd,
                port: u16::from_be(got.sin_port),
            }
        }
    }
}

/// How long the outage lasts: 5 minutes, or `PUSH_FAULTS_OUTAGE_SECS` (to try the test quickly).
fn outage() -> Duration {
    let secs = std::env::var("PUSH_FAULTS_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

#[test]
fn a_five_minute_push_api_outage_loses_nothing_and_delivers_every_cached_payload_once() {
    const INTERVAL_MS: u64 = 1000;
    const CACHE_FILES: u64 = 1000;
    let outage = outage();
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("wd");
    let closed = ClosedPort::new();
    let endpoint = format!("http://127.0.0.1:{}", closed.port);
    let env = with(
        env(&endpoint, GOOD_KEY, "outage-app", &wd, INTERVAL_MS),
        "_APPSIGNAL_PAYLOAD_CACHE_MAX_FILES",
        &CACHE_FILES.to_string(),
    );
    let mut workers: Vec<WorkerProcess> = (0..3).map(|i| spawn(&env, i)).collect();
    assert_eq!(workers.iter().filter(|w| w.role == "leader").count(), 1);

    // Three processes record in rounds for the whole outage: one payload per window, all refused.
    let started = Instant::now();
    let mut rounds = 0u64;
    let mut sent = Vec::new();
    let mut last_round_ms = now_ms();
    while started.elapsed() < outage {
        last_round_ms = now_ms();
        sent = record_all(&mut workers, 30);
        rounds += 1;
        // Pacing only: about four rounds per window.
        std::thread::sleep(Duration::from_millis(250));
    }
    let acked: Vec<Value> = workers.iter_mut().map(|w| w.sync().unwrap()).collect();
    let outage_took = started.elapsed();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", closed.port)).is_err(),
        "the endpoint refused connections all along"
    );
    // Windows close a grace period after their end: wait until the last recorded one is cached.
    // The last round's batches were taken at or after it began (not necessarily in the window
    // of "now": a window with nothing recorded is never cached).
    let last_window = last_round_ms / INTERVAL_MS * INTERVAL_MS;
    assert!(
        testkit::poll(Duration::from_secs(30), || {
            cached_payloads(&wd)
                .iter()
                .filter_map(|n| n.split('-').next()?.parse::<u64>().ok())
                .any(|start| start >= last_window)
        }),
        "the last window was never cached\n{}",
        tail(&log(&wd), 40)
    );
    let cached = cached_payloads(&wd);
    let min_payloads = outage.as_secs() * 1000 / INTERVAL_MS * 8 / 10;
    assert!(
        cached.len() as u64 >= min_payloads && (cached.len() as u64) < CACHE_FILES,
        "{} payloads cached after {outage_took:?} (expected at least {min_payloads}, below the bound {CACHE_FILES})",
        cached.len()
    );
    let text = log(&wd);
    assert!(!text.contains("payload cache full"), "{}", tail(&text, 40));
    assert!(
        text.contains("kept in payloads/ for the next transmission"),
        "{}",
        tail(&text, 40)
    );

    // The Push API comes back on that port: everything cached goes out, once.
    let received = tmp.path().join("received");
    drop(closed);
    let receiver = Receiver::bind(
        &format!("127.0.0.1:{}", port_of(&endpoint)),
        GOOD_KEY,
        Some(received.clone()),
    )
    .unwrap();
    let recovered = Instant::now();
    assert_totals(&receiver, &total(&acked), Duration::from_secs(120), &|| {
        log(&wd)
    });
    let delivered_after = recovered.elapsed();
    for name in &cached {
        let id = name.split('-').nth(2).unwrap().trim_end_matches(".json.gz");
        assert!(
            received.join(format!("{id}.json")).is_file(),
            "cached payload {name} never arrived"
        );
    }
    assert!(
        testkit::poll(Duration::from_secs(30), || cached_payloads(&wd).is_empty()),
        "{:?} still cached",
        cached_payloads(&wd)
    );
    let stops = stop_all(&mut workers);
    assert_totals(&receiver, &total(&acked), Duration::from_secs(30), &|| {
        log(&wd)
    });
    let summary = receiver.summary();
    assert_eq!(summary["duplicates"], 0, "{summary}");
    assert_eq!(summary["payload_cache_evictions"], 0, "{summary}");
    assert!(summary["payloads"].as_u64().unwrap() >= cached.len() as u64);
    // No app call waited: every round of every process completed, and no call took long.
    let slowest = max_call_us(&sent).max(max_call_us(&acked));
    assert!(slowest < MAX_CALL_US, "a metric call took {slowest} µs");
    eprintln!(
        "outage of {outage_took:?}: {rounds} rounds per process, {} payloads cached and delivered {delivered_after:?} after recovery ({} received in all, 0 duplicates); slowest metric call {slowest} µs; stops took {stops:?} ms",
        cached.len(),
        summary["payloads"]
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

/// Log lines of a worker that logs to stdout (`_APPSIGNAL_LOG=stdout`) containing `needle`.
fn lines_with(worker: &WorkerProcess, needle: &str) -> Vec<String> {
    worker
        .output()
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

#[test]
fn a_full_disk_in_the_leader_keeps_the_journal_and_the_batches_until_a_leader_without_it_takes_over(
) {
    const INTERVAL_MS: u64 = 1000;
    /// Smaller than a journal segment's header and than any payload: nothing the leader writes
    /// in the working directory fits.
    const FSIZE: u64 = 128;
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("wd");
    let receiver = Receiver::start(GOOD_KEY, Some(tmp.path().join("received"))).unwrap();
    // The Push API fails until the end: payloads can only be cached (or, when that fails, kept).
    receiver.fail_next(u32::MAX, 503);
    let env = env(&receiver.url, GOOD_KEY, "full-disk-app", &wd, INTERVAL_MS);
    // The leader logs to its stdout (a pipe, which RLIMIT_FSIZE does not limit).
    let mut leader = spawn(&with(env.clone(), "_APPSIGNAL_LOG", "stdout"), 0);
    assert_eq!(leader.role, "leader");
    let mut clients: Vec<WorkerProcess> = (1..3).map(|i| spawn(&env, i)).collect();

    // Before: recorded early in a window, journaled and acknowledged; the window is still open
    // when the disk fills.
    assert!(testkit::poll(Duration::from_secs(5), || now_ms()
        % INTERVAL_MS
        < 100));
    let mut before = record_all(&mut clients, 100);
    before.push(leader.record(100).unwrap());
    for w in clients.iter_mut().chain(std::iter::once(&mut leader)) {
        w.sync().unwrap();
    }
    // The leader's disk is full from now on.
    leader.send(&format!("fsize {FSIZE}")).unwrap();
    assert_eq!(
        leader.expect("fsize", Duration::from_secs(10)).unwrap()["ok"],
        true
    );
    let full_since = Instant::now();
    let open_segments = journal_segments(&wd);
    assert!(
        !open_segments.is_empty(),
        "the window was still open when the disk filled"
    );
    // Everyone records across three windows; the window journaled before closes meanwhile.
    let mut during = Vec::new();
    for _ in 0..12 {
        let mut round = record_all(&mut clients, 50);
        round.push(leader.record(50).unwrap());
        during = round;
        std::thread::sleep(Duration::from_millis(250));
    }
    // The window acknowledged before the disk filled closed, and its payload could be neither
    // cached nor sent: its journal segment stays.
    let not_cached = lines_with(&leader, "cannot cache push payload");
    assert_eq!(not_cached.len(), 1, "{:#?}", leader.output());
    for name in &open_segments {
        let id = name.split('-').nth(2).unwrap().trim_end_matches(".seg3");
        assert!(
            not_cached[0].contains(id),
            "{not_cached:?} {open_segments:?}"
        );
        assert!(
            wd.join("journal").join(name).is_file(),
            "journal segment {name} was deleted although its payload was not written anywhere"
        );
        assert!(!cached_payloads(&wd).iter().any(|p| p.contains(id)));
    }
    // Nothing recorded since was acknowledged: every process keeps it.
    for w in clients.iter_mut().chain(std::iter::once(&mut leader)) {
        let sender = &w.diagnose().unwrap()["leader_election"]["sender"];
        assert!(
            sender["pending_batches"].as_u64().unwrap() > 0,
            "pid {}: {sender}",
            w.pid
        );
    }
    // The leader said so once (rate-limited: one line per 10 s), on its stdout; and no empty
    // segment file was left per failed try.
    let journal_lines = lines_with(&leader, "cannot journal a batch");
    assert!(
        !journal_lines.is_empty()
            && journal_lines.len() as u64 <= full_since.elapsed().as_secs() / 10 + 1,
        "{journal_lines:#?}"
    );
    assert_eq!(journal_segments(&wd), open_segments);

    // The full-disk leader stops: it steps down, another process (whose disk is fine) leads,
    // replays the journal and takes every process's batches, the stopping one's included.
    leader.send("stop").unwrap();
    let stopped = leader.expect("stopped", Duration::from_secs(30)).unwrap();
    assert!(leader.wait(Duration::from_secs(30)).unwrap().success());
    let leader_stop_ms = stopped["stop_ms"].as_u64().unwrap();
    assert!(leader_stop_ms <= STOP_BOUND_MS, "{leader_stop_ms} ms");
    let output = leader.output().join("\n");
    assert!(
        !output.contains("nor written to a spool file") && output.contains("stepping down"),
        "the leader's own batches were handed over:\n{output}"
    );
    for c in clients.iter_mut() {
        c.sync().unwrap();
        c.role = c.diagnose().unwrap()["leader_election"]["role"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    assert_eq!(clients.iter().filter(|c| c.role == "leader").count(), 1);
    // The Push API recovers: everything arrives, once.
    receiver.fail_next(0, 503);
    let stops = stop_all(&mut clients);
    assert_totals(&receiver, &total(&during), Duration::from_secs(30), &|| {
        format!("{}\n--- full-disk leader ---\n{output}", log(&wd))
    });
    let summary = receiver.summary();
    assert_eq!(summary["duplicates"], 0, "{summary}");
    let slowest = max_call_us(&during).max(max_call_us(&before));
    assert!(slowest < MAX_CALL_US, "a metric call took {slowest} µs");
    eprintln!(
        "full disk: leader stop {leader_stop_ms} ms, client stops {stops:?} ms; slowest metric call {slowest} µs; {} payloads\n{output}",
        summary["payloads"]
    );
}

#[test]
fn a_disk_that_fills_and_frees_again_under_the_same_leader_loses_nothing() {
    const INTERVAL_MS: u64 = 500;
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("wd");
    let receiver = Receiver::start(GOOD_KEY, Some(tmp.path().join("received"))).unwrap();
    let env = env(&receiver.url, GOOD_KEY, "freed-disk-app", &wd, INTERVAL_MS);
    let mut leader = spawn(&with(env.clone(), "_APPSIGNAL_LOG", "stdout"), 0);
    assert_eq!(leader.role, "leader");
    let mut clients: Vec<WorkerProcess> = (1..3).map(|i| spawn(&env, i)).collect();
    record_all(&mut clients, 100);
    leader.record(100).unwrap();
    for w in clients.iter_mut().chain(std::iter::once(&mut leader)) {
        w.sync().unwrap();
    }
    // Full for a few windows while everyone records, while the Push API also fails: closed
    // windows can be neither cached nor sent, batches are not acknowledged.
    receiver.fail_next(u32::MAX, 503);
    leader.send("fsize 128").unwrap();
    assert_eq!(
        leader.expect("fsize", Duration::from_secs(10)).unwrap()["ok"],
        true
    );
    for _ in 0..8 {
        record_all(&mut clients, 50);
        leader.record(50).unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        testkit::poll(Duration::from_secs(10), || !lines_with(
            &leader,
            "cannot cache push payload"
        )
        .is_empty()),
        "{:#?}",
        leader.output()
    );
    // Space is freed and the Push API answers again: the same leader journals what every process
    // kept, and sends the windows it held.
    leader.send(&format!("fsize {}", u64::MAX)).unwrap();
    assert_eq!(
        leader.expect("fsize", Duration::from_secs(10)).unwrap()["ok"],
        true
    );
    receiver.fail_next(0, 503);
    let mut last = record_all(&mut clients, 50);
    last.push(leader.record(50).unwrap());
    for w in clients.iter_mut().chain(std::iter::once(&mut leader)) {
        w.sync().unwrap();
    }
    assert_totals(&receiver, &total(&last), Duration::from_secs(30), &|| {
        format!(
            "{}\n--- leader ---\n{}",
            log(&wd),
            leader.output().join("\n")
        )
    });
    assert_eq!(
        leader.diagnose().unwrap()["leader_election"]["role"],
        "leader",
        "no leadership change was needed"
    );
    let mut all: Vec<WorkerProcess> = clients.into_iter().chain(std::iter::once(leader)).collect();
    stop_all(&mut all);
    let summary = receiver.summary();
    assert_eq!(summary["duplicates"], 0, "{summary}");
    assert!(journal_segments(&wd).is_empty() && cached_payloads(&wd).is_empty());
    let slowest = max_call_us(&last);
    assert!(slowest < MAX_CALL_US, "a metric call took {slowest} µs");
}
