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
//!   of one core, and the context switches per second of each (how often its threads wake).
//!
//! `cargo bench -p appsignal-testkit --bench processes -- throughput 8`
//! `cargo bench -p appsignal-testkit --bench processes -- idle 4 30`
//!
//! Not criterion: the quantities are wall time and CPU time across processes.

#[path = "../examples/common/receiver.rs"]
mod receiver;

mod common;

use std::ffi::c_void;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{cstr, returned_to_string};

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

/// CPU time of all threads of `pid` in nanoseconds (the first field of each thread's
/// `/proc/<pid>/task/<tid>/schedstat`: ns resolution, where utime + stime count 10 ms ticks).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Context switches of all threads of `pid` (voluntary and not).
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .map(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
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
    let before: Vec<(u64, u64)> = pids.iter().map(|&p| (cpu_ns(p), switches(p))).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let secs = t0.elapsed().as_secs_f64();
    let mut total = 0.0;
    let mut wakes = Vec::new();
    for (pid, (ns, sw)) in pids.iter().zip(before) {
        total += cpu_ns(*pid).saturating_sub(ns) as f64 / 1e9;
        wakes.push(format!("{:.1}", (switches(*pid) - sw) as f64 / secs));
    }
    println!(
        "idle: {processes} processes over {secs:.0} s: {:.3} % of one core in total; context switches/s per process: {}",
        total / secs * 100.0,
        wakes.join(", ")
    );
    for p in procs {
        p.stop();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child();
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
        _ => println!(
            "processes: run with `-- throughput P [CALLS]` or `-- idle [P] [SECONDS]` (see the source)"
        ),
    }
}
