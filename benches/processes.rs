//! Whole processes, measured from outside: each child is this executable re-run with `--child`,
//! which links libappsignal and calls it through its C interface only (as an extension would).
//!
//! - `processes throughput P [CALLS]`: P processes share one working directory; at a go signal each
//!   records CALLS counter increments (2 tags, map built once) as fast as it can, then waits until
//!   a leader acknowledged everything. Prints updates/s (P × CALLS over the wall time from the go
//!   signal to the last acknowledgement), then stops the processes and checks that the reference
//!   receiver counted exactly P × CALLS (the run fails otherwise).
//! - `processes idle [P] [SECONDS]`: P processes started with the default configuration record
//!   nothing; prints their CPU time (from /proc/<pid>/task/*/schedstat) over SECONDS as a share
//!   of one core, and the context switches per second of each (how often its threads wake), then
//!   per thread (by name): wake-ups/s (voluntary context switches) and CPU.
//! - `processes start [N]`: 2 × N processes, one after the other, each in a fresh working
//!   directory (so each becomes the leader) with the default configuration; each times its own
//!   `appsignal_start()` call (a monotonic clock read just before and just after it, the thread's
//!   CPU time, whether it slept or was preempted) and the time until diagnose reports the role
//!   `leader`. Half of them call `start()` first thing after `exec`, the other half (alternating)
//!   after a 20 ms sleep, as an app does that loads its code first: right after `exec` the
//!   process has used up its scheduler slice on loading and is often preempted during the call
//!   on a busy machine. Prints the median, p90 and maximum of each.
//!
//! `cargo bench -p appsignal-testkit --bench processes -- throughput 8`
//! `cargo bench -p appsignal-testkit --bench processes -- idle 4 30`
//! `cargo bench -p appsignal-testkit --bench processes -- start 200`
//!
//! Not criterion: the quantities are wall time and CPU time across processes.

use testkit::receiver;

use std::ffi::c_void;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testkit::bench::{cstr, returned_to_string};

const NAME: &str = "requests";
const SERIES: &str = "requests{region=eu,route=/checkout}";

fn diagnose() -> serde_json::Value {
    serde_json::from_str(&returned_to_string(appsignal::appsignal_diagnose())).unwrap_or_default()
}

/// The child: starts the agent from the environment, says `ready`, then obeys `go N` and `stop`.
fn child() {
    appsignal::appsignal_start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(
        diagnose()["leader_election"]["role"].as_str(),
        Some("leader" | "client")
    ) {
        assert!(Instant::now() < deadline, "the agent did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("ready");
    let tags = appsignal::appsignal_data_map_new();
    appsignal::appsignal_data_map_set_string(tags, cstr("region"), cstr("eu"));
    appsignal::appsignal_data_map_set_string(tags, cstr("route"), cstr("/checkout"));
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap_or_default();
        if let Some(n) = line.strip_prefix("go ") {
            let n: u64 = n.trim().parse().unwrap_or(0);
            let key = cstr(NAME);
            for _ in 0..n {
                appsignal::appsignal_increment_counter(key, 1.0, tags);
            }
            while diagnose()["leader_election"]["sender"]["idle"] != true {
                std::thread::sleep(Duration::from_micros(500));
            }
            println!("done");
        } else if line == "stop" {
            break;
        }
    }
    appsignal::appsignal_free_data(tags as *mut c_void);
    appsignal::appsignal_stop();
    println!("stopped");
}

struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(env: &[(String, String)]) -> Proc {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .arg("--child")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take().expect("stdin");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to child");
    }

    fn expect(&self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == what => return,
                Ok(_) => {}
                Err(_) => panic!("child {} did not say {what:?} in time", self.child.id()),
            }
        }
    }

    fn stop(mut self) {
        self.send("stop");
        self.expect("stopped", Duration::from_secs(30));
        let _ = self.child.wait();
    }
}

fn env(receiver: &receiver::Receiver, workdir: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("_APPSIGNAL_ACTIVE".into(), "true".into()),
        ("_APPSIGNAL_PUSH_API_KEY".into(), "bench-key".into()),
        ("_APPSIGNAL_PUSH_API_ENDPOINT".into(), receiver.url.clone()),
        (
            "_APPSIGNAL_WORKING_DIRECTORY_PATH".into(),
            workdir.display().to_string(),
        ),
    ]
}

fn throughput(processes: usize, calls: u64) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let receiver = receiver::Receiver::start("bench-key", None).expect("receiver");
    let mut env = env(&receiver, &tmp.path().join("wd"));
    env.push(("_APPSIGNAL_TRANSMISSION_INTERVAL_MS".into(), "1000".into()));
    env.push(("_APPSIGNAL_ENABLE_HOST_METRICS".into(), "false".into()));
    let mut procs: Vec<Proc> = (0..processes).map(|_| Proc::spawn(&env)).collect();
    for p in &procs {
        p.expect("ready", Duration::from_secs(30));
    }
    let started = Instant::now();
    for p in procs.iter_mut() {
        p.send(&format!("go {calls}"));
    }
    for p in &procs {
        p.expect("done", Duration::from_secs(600));
    }
    let elapsed = started.elapsed();
    for p in procs {
        p.stop();
    }
    let expected = (processes as u64 * calls) as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let counted = loop {
        let counted = receiver.summary()["counters"][SERIES]
            .as_f64()
            .unwrap_or(0.0);
        if counted >= expected || Instant::now() >= deadline {
            break counted;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        counted, expected,
        "the receiver counted {counted}, the processes recorded {expected}"
    );
    println!(
        "throughput: {processes} processes x {calls} increments in {:.2} s = {:.2} M updates/s, counted exactly ({counted})",
        elapsed.as_secs_f64(),
        expected / elapsed.as_secs_f64() / 1e6
    );
}

/// One thread of a child: (CPU ns from schedstat, voluntary, involuntary context switches).
#[derive(Clone, Copy, Default)]
struct ThreadStat {
    cpu_ns: u64,
    voluntary: u64,
    involuntary: u64,
}

/// Every live thread of `pid`: (tid, name) -> its counters. CPU time is the first field of
/// `/proc/<pid>/task/<tid>/schedstat` (ns resolution, where utime + stime count 10 ms ticks).
fn threads(pid: u32) -> std::collections::BTreeMap<(u32, String), ThreadStat> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.filter_map(Result::ok) {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let read = |file: &str| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
        let field = |status: &str, name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let status = read("status");
        let stat = ThreadStat {
            cpu_ns: read("schedstat")
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            voluntary: field(&status, "voluntary_ctxt_switches"),
            involuntary: field(&status, "nonvoluntary_ctxt_switches"),
        };
        out.insert((tid, read("comm").trim().to_owned()), stat);
    }
    out
}

fn idle(processes: usize, seconds: u64) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let receiver = receiver::Receiver::start("bench-key", None).expect("receiver");
    let env = env(&receiver, &tmp.path().join("wd"));
    let procs: Vec<Proc> = (0..processes).map(|_| Proc::spawn(&env)).collect();
    for p in &procs {
        p.expect("ready", Duration::from_secs(30));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    let before: Vec<_> = pids.iter().map(|&p| threads(p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let after: Vec<_> = pids.iter().map(|&p| threads(p)).collect();
    let secs = t0.elapsed().as_secs_f64();
    let mut total_ns = 0u64;
    let mut per_process = Vec::new();
    let mut lines = Vec::new();
    for ((pid, before), after) in pids.iter().zip(&before).zip(&after) {
        let mut switches = 0u64;
        for (key, end) in after {
            // A thread born during the run counts from zero.
            let start = before.get(key).copied().unwrap_or_default();
            let cpu = end.cpu_ns.saturating_sub(start.cpu_ns);
            let voluntary = end.voluntary.saturating_sub(start.voluntary);
            let involuntary = end.involuntary.saturating_sub(start.involuntary);
            total_ns += cpu;
            switches += voluntary + involuntary;
            if voluntary + involuntary > 0 || cpu > 0 {
                lines.push(format!(
                    "  pid {pid} {:<24} wake-ups/s {:>6.2} (+{:.2} preempted)  CPU {:>7.1} us/s",
                    key.1,
                    voluntary as f64 / secs,
                    involuntary as f64 / secs,
                    cpu as f64 / 1e3 / secs
                ));
            }
        }
        let gone = before.keys().filter(|k| !after.contains_key(k)).count();
        if gone > 0 {
            lines.push(format!(
                "  pid {pid}: {gone} threads ended during the run (not counted)"
            ));
        }
        per_process.push(format!("{:.1}", switches as f64 / secs));
    }
    println!(
        "idle: {processes} processes over {secs:.0} s: {:.3} % of one core in total; context switches/s per process: {}",
        total_ns as f64 / 1e9 / secs * 100.0,
        per_process.join(", ")
    );
    println!("per thread (threads that did not run are left out):");
    for line in lines {
        println!("{line}");
    }
    for p in procs {
        p.stop();
    }
}

/// This thread's usage; macOS has no per-thread `getrusage`, so there the switches are the process's.
#[cfg(target_os = "linux")]
const RUSAGE_THREAD: libc::c_int = libc::RUSAGE_THREAD;
#[cfg(not(target_os = "linux"))]
const RUSAGE_THREAD: libc::c_int = libc::RUSAGE_SELF;

/// This thread's CPU time in ns and its (voluntary, involuntary) context switches so far.
fn thread_usage() -> (u64, i64, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    // SAFETY: an all-zero rusage is valid; getrusage writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage to write into.
    unsafe { libc::getrusage(RUSAGE_THREAD, &mut usage) };
    (
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        usage.ru_nvcsw,
        usage.ru_nivcsw,
    )
}

/// The child of `start`: times `appsignal_start()` (wall clock and this thread's CPU time, and
/// whether the thread slept or was preempted meanwhile) and the wait until it leads.
fn start_child(settle_ms: u64) {
    std::thread::sleep(Duration::from_millis(settle_ms));
    let (cpu0, vol0, invol0) = thread_usage();
    let t0 = Instant::now();
    appsignal::appsignal_start();
    let returned = t0.elapsed();
    let (cpu1, vol1, invol1) = thread_usage();
    let deadline = Instant::now() + Duration::from_secs(10);
    while diagnose()["leader_election"]["role"].as_str() != Some("leader") {
        assert!(Instant::now() < deadline, "the agent did not become leader");
        std::thread::sleep(Duration::from_micros(200));
    }
    let leading = t0.elapsed();
    println!(
        "start {} {} {} {} {}",
        returned.as_nanos(),
        leading.as_nanos(),
        cpu1 - cpu0,
        vol1 - vol0,
        invol1 - invol0
    );
    appsignal::appsignal_stop();
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// What `start` measured for one variant.
#[derive(Default)]
struct StartRuns {
    returned: Vec<f64>,
    leading: Vec<f64>,
    cpu: Vec<f64>,
    slept: usize,
    preempted: usize,
}

fn start(samples: usize) {
    let receiver = receiver::Receiver::start("bench-key", None).expect("receiver");
    let exe = std::env::current_exe().expect("current exe");
    let mut runs = [StartRuns::default(), StartRuns::default()];
    for i in 0..2 * samples {
        let (settle_ms, run) = if i % 2 == 0 {
            (0, &mut runs[0])
        } else {
            (20, &mut runs[1])
        };
        // A fresh directory each time: nobody leads there, nothing to replay.
        let tmp = tempfile::tempdir().expect("temp dir");
        let out = Command::new(&exe)
            .arg("--start-child")
            .arg(settle_ms.to_string())
            .envs(env(&receiver, &tmp.path().join("wd")))
            .stdin(Stdio::null())
            .output()
            .expect("run child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<f64> = stdout
            .lines()
            .find_map(|l| l.strip_prefix("start "))
            .map(|l| l.split(' ').filter_map(|f| f.parse().ok()).collect())
            .unwrap_or_default();
        let [r, l, c, vol, invol] = fields[..] else {
            panic!(
                "the child did not report its start ({}): {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run.returned.push(r / 1e6);
        run.leading.push(l / 1e6);
        run.cpu.push(c / 1e6);
        run.slept += usize::from(vol > 0.0);
        run.preempted += usize::from(invol > 0.0);
    }
    let row = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!(
            "median {:.3} ms, p90 {:.3} ms, max {:.3} ms, min {:.3} ms",
            quantile(v, 0.5),
            quantile(v, 0.9),
            v[v.len() - 1],
            v[0]
        )
    };
    for (run, when) in runs
        .iter_mut()
        .zip(["right after exec", "after a 20 ms sleep"])
    {
        println!(
            "start: {samples} processes calling start() {when}, each in a fresh working directory"
        );
        println!("  appsignal_start() returned: {}", row(&mut run.returned));
        println!("  CPU time of that call:      {}", row(&mut run.cpu));
        println!(
            "  the calling thread slept during the call in {}, was preempted in {} of {samples}",
            run.slept, run.preempted
        );
        println!("  role leader (diagnose):     {}", row(&mut run.leading));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--child") => return child(),
        Some("--start-child") => {
            return start_child(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0))
        }
        _ => {}
    }
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let number =
        |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().copied() {
        Some("throughput") => throughput(number(1, 2) as usize, number(2, 10_000_000)),
        Some("idle") => idle(number(1, 4) as usize, number(2, 30)),
        Some("start") => start(number(1, 100).max(1) as usize),
        _ => println!(
            "processes: run with `-- throughput P [CALLS]`, `-- idle [P] [SECONDS]` or `-- start [N]` (see the source)"
        ),
    }
}
