//! One scrape of the leader's Prometheus endpoint next to PyPI's `prometheus_client` in
//! multiprocess mode, in the same run, for 1,000 and 10,000 counter series recorded by 8, 64 and
//! 256 processes that have all exited by the time of the scrape; and what 10,000 series cost the
//! leader in memory and on disk.
//!
//! Every process records every series once (counter `requests`, tag `route=/route/<i>`), as every
//! worker of a pre-forking web server serves every route. Processes are started 16 at a time.
//!
//! - libappsignal: a leader process (this executable re-run with `--leader`, which links the
//!   library and calls it through its C interface, with `_APPSIGNAL_PROMETHEUS_PORT` set) starts
//!   first in a fresh working directory; then each recording process (`--record`, the same
//!   interface) starts, becomes a client, records, waits until the leader acknowledged
//!   everything, stops and exits. Once a scrape shows every series with its exact total, criterion
//!   times `GET /metrics` (text format 0.0.4) over one kept-alive HTTP/1.1 connection on loopback,
//!   reading the whole body: the time a scraper waits. Then the leader stops and a new one
//!   starts in the same working directory (it reads the totals from the state file, so nothing
//!   the recording processes did is in its heap), and the same scrape is timed again
//!   (`libappsignal_new_leader`): what a scrape costs for the totals alone.
//! - `prometheus_client` (the release [`testkit::prometheus_python::PROMETHEUS_CLIENT`], in the
//!   virtualenv `target/prometheus-venv`): each worker is a Python process with
//!   `PROMETHEUS_MULTIPROC_DIR` set that increments a labelled `Counter` for every series and
//!   exits (leaving its `counter_<pid>.db`). One long-lived Python process then scrapes as the
//!   library's documentation says to in a multiprocess app's metrics handler: a new
//!   `CollectorRegistry`, `MultiProcessCollector(registry)`, `generate_latest(registry)`. It times
//!   `iters` such scrapes with `time.perf_counter_ns()` and reports the total to criterion
//!   (`iter_custom`), so no process start and no HTTP is in its figure (which favours it).
//!
//! Beside the wall clock, each side's CPU time per scrape: the leader process's (all its threads,
//! `/proc/<pid>/stat`, over every scrape criterion made of it, idle windows closing included) and
//! the Python scraper's (`time.process_time_ns()`). On a machine shared with other work, the CPU
//! time varies less than the wall clock.
//!
//! Both sides' scrapes are checked before they are timed: every series present, the sum of the
//! totals equal to series × processes. After each libappsignal configuration it prints the
//! leader's memory (live heap bytes through a counting allocator in this executable, `VmRSS`, and
//! `VmRSS` once glibc's `malloc_trim` gave the free pages back) before anything was recorded and
//! once the windows holding the series were closed and the state saved, the size of the state
//! file (`cumulative-*.state`) and the scrape's body in both formats; for `prometheus_client`, the
//! files its workers left. At the end, a table of the medians of the wall clock, the mean CPU
//! times, and their ratios.
//!
//! `nice -n 10 cargo bench -p appsignal-testkit --bench prometheus_scrape`
//! (`SCRAPE_SERIES=1000 SCRAPE_PROCESSES=8,64` limit the configurations; criterion's own filter
//! only skips the timing, not the set-up.) Outside `cargo bench` (`cargo test --benches`) it does
//! nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use testkit::bench::{cstr, returned_to_string};
use testkit::receiver;

/// Counts the bytes live on the heap (every Rust allocation of this executable, the library's
/// included), so that the leader can say what its state costs.
struct CountingAllocator;

static LIVE_HEAP: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_HEAP.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_HEAP.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const NAME: &str = "requests";
/// How many recording processes run at once.
const BATCH: usize = 16;
const KEY: &str = "bench-key";

/// The Python worker: increments the counter of series `first, first + step, …` below `count`.
const PY_WORKER: &str = r#"
import sys
from prometheus_client import Counter
requests = Counter("requests", "Requests.", ["route"])
count, first, step = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(first, count, step):
    requests.labels(route="/route/%d" % i).inc()
"#;

/// The Python scraper: `check` answers `check <series> <sum> <bytes>`; a number N answers the
/// nanoseconds N scrapes took, wall clock and this process's CPU time.
const PY_SCRAPER: &str = r#"
import sys, time
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

def scrape():
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)

for line in sys.stdin:
    line = line.strip()
    if line == "check":
        body = scrape()
        series, total = 0, 0.0
        for l in body.decode().splitlines():
            if l.startswith("requests_total{"):
                series += 1
                total += float(l.rsplit(" ", 1)[1])
        print("check", series, repr(total), len(body), flush=True)
    else:
        iters = int(line)
        c0 = time.process_time_ns()
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            scrape()
        t1 = time.perf_counter_ns()
        print(t1 - t0, time.process_time_ns() - c0, flush=True)
"#;

fn diagnose() -> serde_json::Value {
    serde_json::from_str(&returned_to_string(appsignal::appsignal_diagnose())).unwrap_or_default()
}

/// Starts the agent from the environment and waits until its role is one of `roles`.
fn start_as(roles: &[&str]) -> Result<(), String> {
    appsignal::appsignal_start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let role = diagnose()["leader_election"]["role"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if roles.contains(&role.as_str()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("role {role:?}, not {roles:?}, after 30 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Gives the allocator's free pages back to the system (glibc), so that `VmRSS` shows what is
/// in use rather than what was freed and kept.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heap to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The leader process: leads, says `ready`, answers `mem` with `mem <live heap bytes> <VmRSS KiB>
/// <VmRSS KiB after malloc_trim>` until `stop`.
fn leader() {
    if let Err(e) = start_as(&["leader"]) {
        eprintln!("leader: {e}");
        std::process::exit(1);
    }
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        match line.as_deref().unwrap_or("stop") {
            "mem" => {
                let heap = LIVE_HEAP.load(Ordering::Relaxed);
                let rss = rss_kib(std::process::id());
                trim();
                println!("mem {heap} {rss} {}", rss_kib(std::process::id()));
            }
            _ => break,
        }
    }
    appsignal::appsignal_stop();
}

/// A recording process: increments every series once, waits until the leader acknowledged it,
/// stops.
fn record(series: usize) {
    if let Err(e) = start_as(&["client", "leader"]) {
        eprintln!("record: {e}");
        std::process::exit(1);
    }
    let key = cstr(NAME);
    for i in 0..series {
        let route = format!("/route/{i}");
        let tags = appsignal::appsignal_data_map_new();
        appsignal::appsignal_data_map_set_string(tags, cstr("route"), cstr(&route));
        appsignal::appsignal_increment_counter(key, 1.0, tags);
        appsignal::appsignal_free_data(tags as *mut c_void);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while diagnose()["leader_election"]["sender"]["idle"] != true {
        if Instant::now() >= deadline {
            eprintln!("record: not acknowledged after 120 s");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    appsignal::appsignal_stop();
}

/// Runs `count` processes made by `command`, [`BATCH`] at a time; each must succeed.
fn run_batched(count: usize, command: impl Fn() -> Command) {
    let mut left = count;
    while left > 0 {
        let n = left.min(BATCH);
        let children: Vec<Child> = (0..n)
            .map(|_| {
                command()
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("spawn a recording process")
            })
            .collect();
        for mut child in children {
            let status = child.wait().expect("wait for a recording process");
            assert!(status.success(), "a recording process failed: {status}");
        }
        left -= n;
    }
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    listener.local_addr().expect("its address").port()
}

/// A kept-alive HTTP/1.1 connection to the endpoint (made again when the server closed it).
struct Scraper {
    port: u16,
    stream: Option<BufReader<TcpStream>>,
}

impl Scraper {
    fn new(port: u16) -> Scraper {
        Scraper { port, stream: None }
    }

    /// `GET /metrics`, optionally asking for OpenMetrics; the body, or `None` (nothing listens,
    /// not 200, cut off).
    fn get(&mut self, openmetrics: bool) -> Option<Vec<u8>> {
        for _ in 0..2 {
            if let Some(body) = self.try_get(openmetrics) {
                return Some(body);
            }
            self.stream = None;
        }
        None
    }

    fn try_get(&mut self, openmetrics: bool) -> Option<Vec<u8>> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
            stream.set_nodelay(true).ok()?;
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .ok()?;
            self.stream = Some(BufReader::with_capacity(1 << 16, stream));
        }
        let stream = self.stream.as_mut()?;
        let accept = if openmetrics {
            "Accept: application/openmetrics-text;version=1.0.0\r\n"
        } else {
            ""
        };
        let request = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n");
        stream.get_mut().write_all(request.as_bytes()).ok()?;
        let mut line = String::new();
        let mut status = 0;
        let mut length = None;
        loop {
            line.clear();
            if stream.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status == 0 {
                status = l.split(' ').nth(1)?.parse().ok()?;
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; length?];
        stream.read_exact(&mut body).ok()?;
        (status == 200).then_some(body)
    }
}

/// The series of counter `requests` in a text-format body and the sum of their values.
fn counted(body: &[u8]) -> (usize, f64) {
    let text = String::from_utf8_lossy(body);
    let mut series = 0;
    let mut total = 0.0;
    for line in text.lines().filter(|l| l.starts_with("requests_total{")) {
        series += 1;
        total += line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
    }
    (series, total)
}

/// The leader process of one configuration.
struct Leader {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Leader {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the leader");
        line.trim().to_owned()
    }

    /// (live heap bytes, VmRSS KiB, VmRSS KiB once the allocator gave free pages back).
    fn mem(&mut self) -> (i64, i64, i64) {
        writeln!(self.stdin, "mem").expect("ask the leader");
        let line = self.line();
        let fields: Vec<i64> = line
            .split(' ')
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        match fields[..] {
            [heap, rss, trimmed] => (heap, rss, trimmed),
            _ => panic!("the leader answered {line:?}"),
        }
    }

    fn stop(mut self) {
        self.stop_in_place();
    }

    fn stop_in_place(&mut self) {
        let _ = writeln!(self.stdin, "stop");
        let _ = self.child.wait();
    }
}

/// A leader process with `env`, once its endpoint on `port` answers.
fn spawn_leader(exe: &Path, env: &[(&str, String)], port: u16) -> (Leader, Scraper) {
    let mut child = Command::new(exe)
        .arg("--leader")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the leader");
    let mut leader = Leader {
        stdin: child.stdin.take().expect("stdin"),
        stdout: BufReader::new(child.stdout.take().expect("stdout")),
        child,
    };
    assert_eq!(leader.line(), "ready", "the leader did not lead");
    let mut scraper = Scraper::new(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while scraper.get(false).is_none() {
        assert!(Instant::now() < deadline, "the endpoint did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
    (leader, scraper)
}

/// libappsignal for one configuration: a leader, `processes` processes that recorded `series`
/// series each and exited, and a connection to the endpoint.
struct Ours {
    leader: Leader,
    scraper: Scraper,
    env: Vec<(&'static str, String)>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Ours {
    /// Stops the leader and starts a new one in the same working directory: it reads the state
    /// file, so its series are allocated anew, one after another, whatever the processes did
    /// before. Waits until its scrape shows what the old one showed.
    fn new_leader(&mut self) {
        let before = self.scraper.get(false).map(|b| counted(&b));
        let exe = std::env::current_exe().expect("current exe");
        // The old one first: the new one leads once the lock is free.
        self.leader.stop_in_place();
        let (leader, scraper) = spawn_leader(&exe, &self.env, self.port);
        self.leader = leader;
        self.scraper = scraper;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.scraper.get(false).map(|b| counted(&b));
            if now == before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new leader shows {now:?}, not {before:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn ours(receiver: &receiver::Receiver, series: usize, processes: usize) -> Ours {
    let dir = tempfile::tempdir().expect("temp dir");
    let workdir = dir.path().join("wd");
    let port = free_port();
    let env: Vec<(&'static str, String)> = vec![
        ("_APPSIGNAL_ACTIVE", "true".into()),
        ("_APPSIGNAL_PUSH_API_KEY", KEY.into()),
        ("_APPSIGNAL_PUSH_API_ENDPOINT", receiver.url.clone()),
        ("_APPSIGNAL_APP_NAME", "bench".into()),
        ("_APPSIGNAL_APP_ENV", "bench".into()),
        (
            "_APPSIGNAL_WORKING_DIRECTORY_PATH",
            workdir.display().to_string(),
        ),
        ("_APPSIGNAL_TRANSMISSION_INTERVAL_MS", "1000".into()),
        ("_APPSIGNAL_ENABLE_HOST_METRICS", "false".into()),
        ("_APPSIGNAL_PROMETHEUS_PORT", port.to_string()),
    ];
    let exe = std::env::current_exe().expect("current exe");
    let (mut leader, mut scraper) = spawn_leader(&exe, &env, port);
    let before = leader.mem();

    let started = Instant::now();
    run_batched(processes, || {
        let mut command = Command::new(&exe);
        command
            .arg("--record")
            .arg(series.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)));
        command
    });
    let expected = (series * processes) as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = scraper.get(false).map(|b| counted(&b));
        if got == Some((series, expected)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scrape shows {got:?}, not ({series}, {expected})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let recorded = started.elapsed();
    // Three windows, so that the one holding the series was closed, its payloads pushed and the
    // state saved, and the windows after it were empty.
    std::thread::sleep(Duration::from_secs(3));
    let after = leader.mem();
    let state: u64 = std::fs::read_dir(&workdir)
        .expect("working directory")
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("cumulative-") && name.ends_with(".state")
        })
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let text = scraper.get(false).expect("scrape").len();
    let openmetrics = scraper.get(true).expect("scrape");
    assert!(openmetrics.ends_with(b"# EOF\n"), "not OpenMetrics");
    let openmetrics = openmetrics.len();
    println!(
        "libappsignal {series} series x {processes} processes: recorded and counted in {:.1} s; \
         leader heap {} -> {} bytes (+{}), VmRSS {} -> {} KiB (+{}), after malloc_trim {} -> {} \
         KiB (+{}); state file {state} bytes; scrape body {text} bytes (OpenMetrics {openmetrics})",
        recorded.as_secs_f64(),
        before.0,
        after.0,
        after.0 - before.0,
        before.1,
        after.1,
        after.1 - before.1,
        before.2,
        after.2,
        after.2 - before.2,
    );
    Ours {
        leader,
        scraper,
        env,
        port,
        _dir: dir,
    }
}

/// `prometheus_client` for one configuration: the files `processes` exited workers left, and the
/// scraping Python process.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("ask the scraper");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("read the scraper");
        answer.trim().to_owned()
    }

    /// The time `iters` scrapes took, measured inside Python: (wall clock, CPU time).
    fn time(&mut self, iters: u64) -> (Duration, Duration) {
        let answer = self.ask(&iters.to_string());
        let ns: Vec<u64> = answer.split(' ').filter_map(|n| n.parse().ok()).collect();
        let [wall, cpu] = ns[..] else {
            panic!("the scraper answered {answer:?}");
        };
        (Duration::from_nanos(wall), Duration::from_nanos(cpu))
    }

    fn stop(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

fn peer(python: &Path, scripts: &Path, series: usize, processes: usize) -> Peer {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    run_batched(processes, || {
        let mut command = Command::new(python);
        command
            .arg(scripts.join("worker.py"))
            .args([series.to_string(), "0".into(), "1".into()])
            .env("PROMETHEUS_MULTIPROC_DIR", dir.path());
        command
    });
    let recorded = started.elapsed();
    let (files, bytes) = std::fs::read_dir(dir.path())
        .expect("multiprocess directory")
        .filter_map(Result::ok)
        .fold((0, 0), |(n, b), e| {
            (n + 1, b + e.metadata().map(|m| m.len()).unwrap_or(0))
        });
    let mut child = Command::new(python)
        .arg(scripts.join("scraper.py"))
        .env("PROMETHEUS_MULTIPROC_DIR", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the Python scraper");
    let mut peer = Peer {
        stdin: child.stdin.take().expect("stdin"),
        stdout: BufReader::new(child.stdout.take().expect("stdout")),
        child,
        _dir: dir,
    };
    let check = peer.ask("check");
    let fields: Vec<&str> = check.split(' ').collect();
    let expected = (series * processes) as f64;
    assert!(
        fields.len() == 4 && fields[1].parse() == Ok(series) && fields[2].parse() == Ok(expected),
        "prometheus_client's scrape shows {check:?}, not {series} series summing to {expected}"
    );
    println!(
        "prometheus_client {series} series x {processes} processes: recorded in {:.1} s; \
         {files} files, {bytes} bytes in PROMETHEUS_MULTIPROC_DIR; scrape body {} bytes",
        recorded.as_secs_f64(),
        fields[3]
    );
    peer
}

/// The CPU time of every thread of process `pid` so far, in seconds (`utime + stime` of
/// `/proc/<pid>/stat`, in clock ticks).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf reads a constant of the system; no memory of ours is involved.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_second as f64
}

/// The median of `samples` (time per scrape of each timed call), in milliseconds.
fn median_ms(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN) * 1e3
}

/// A comma-separated list of numbers from the environment, else `default`.
fn list(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--leader") => return leader(),
        Some("--record") => return record(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0)),
        _ => {}
    }
    if args.iter().any(|a| a == "--list") {
        println!("prometheus_scrape: benchmark");
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "prometheus_scrape: runs under `cargo bench` only (it starts hundreds of processes)"
        );
        return;
    }
    let python = testkit::prometheus_python::python_or_make()
        .unwrap_or_else(|e| panic!("no Python with prometheus_client: {e}"));
    let scripts = tempfile::tempdir().expect("temp dir");
    std::fs::write(scripts.path().join("worker.py"), PY_WORKER).expect("write worker.py");
    std::fs::write(scripts.path().join("scraper.py"), PY_SCRAPER).expect("write scraper.py");
    let receiver = receiver::Receiver::start(KEY, None).expect("receiver");

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    let mut rows = Vec::new();
    for series in list("SCRAPE_SERIES", &[1_000, 10_000]) {
        for processes in list("SCRAPE_PROCESSES", &[8, 64, 256]) {
            let mut group = c.benchmark_group(format!(
                "prometheus_scrape/{series}_series/{processes}_processes"
            ));

            let mut ours = ours(&receiver, series, processes);
            let mut our_samples = Vec::new();
            let mut our_scrapes = 0;
            let leader_pid = ours.leader.child.id();
            let cpu0 = cpu_seconds(leader_pid);
            group.bench_function("libappsignal", |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        std::hint::black_box(ours.scraper.get(false).expect("scrape"));
                    }
                    let took = t0.elapsed();
                    our_samples.push(took.as_secs_f64() / iters as f64);
                    our_scrapes += iters;
                    took
                })
            });
            let our_cpu = (cpu_seconds(leader_pid) - cpu0) / our_scrapes.max(1) as f64 * 1e3;
            // The same totals served by a new leader, which read them from the state file: what
            // the processes left in the old leader's heap is not in its.
            ours.new_leader();
            let mut new_leader_samples = Vec::new();
            group.bench_function("libappsignal_new_leader", |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        std::hint::black_box(ours.scraper.get(false).expect("scrape"));
                    }
                    let took = t0.elapsed();
                    new_leader_samples.push(took.as_secs_f64() / iters as f64);
                    took
                })
            });
            ours.leader.stop();

            let mut peer = peer(&python, scripts.path(), series, processes);
            let mut their_samples = Vec::new();
            let (mut their_cpu, mut their_scrapes) = (0.0, 0);
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_millis(1))
                .measurement_time(Duration::from_secs(1));
            group.bench_function("prometheus_client", |b| {
                b.iter_custom(|iters| {
                    let (took, cpu) = peer.time(iters);
                    their_samples.push(took.as_secs_f64() / iters as f64);
                    their_cpu += cpu.as_secs_f64();
                    their_scrapes += iters;
                    took
                })
            });
            peer.stop();
            group.finish();
            rows.push((
                series,
                processes,
                median_ms(&mut our_samples),
                median_ms(&mut their_samples),
                our_cpu,
                their_cpu / their_scrapes.max(1) as f64 * 1e3,
                median_ms(&mut new_leader_samples),
            ));
        }
    }
    c.final_summary();
    println!(
        "\n| series | processes | libappsignal | prometheus_client | ratio | libappsignal CPU | \
         prometheus_client CPU | ratio | libappsignal, new leader |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (series, processes, ours, theirs, our_cpu, their_cpu, new_leader) in rows {
        println!(
            "| {series} | {processes} | {ours:.2} ms | {theirs:.1} ms | {:.0}x | {our_cpu:.2} ms | \
             {their_cpu:.1} ms | {:.0}x | {new_leader:.2} ms |",
            theirs / ours,
            their_cpu / our_cpu
        );
    }
}
