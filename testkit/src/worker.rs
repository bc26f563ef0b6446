//! A worker process that loads `libappsignal.so` with `dlopen` (as a Ruby or Elixir extension
//! would) and calls it only through the C interface. It takes commands, one per line, on stdin:
//!
//! - `record N`: N counter increments, distribution values and gauge sets with tags; prints
//!   `{"event":"sent",...}` with the totals this process has handed to the library so far;
//! - `count NAME FROM TO`: increments the counter NAME by 1 for each tag `i=FROM` … `i=TO-1` (that
//!   many series of one metric); adds them to the totals and prints them like `record`;
//! - `txn N`: completes N transactions across three actions, every fifth with an error, each with
//!   two events; adds the per-action counts to the totals and prints them like `record`;
//! - `showcase ID`: one erroneous `http_request` transaction `ID` with params, a nested SQL event,
//!   a backtrace, and one log line (see [`Lib::showcase`]); prints the totals like `record`;
//! - `sync`: waits until everything recorded so far is acknowledged by a leader (diagnose's
//!   `sender.idle`), then prints `{"event":"acked",...}` with the totals, like `sent`;
//! - `diagnose`: prints `appsignal_diagnose()`;
//! - `fork C R DIR`: forks C children (like a preloading server's workers); each records R rounds,
//!   waits until its data is acknowledged, writes its acknowledged totals to `DIR/child-<pid>.json`,
//!   calls `appsignal_stop()` and exits; prints `{"event":"forked","pids":[…]}`;
//! - `fork-during POINT`: another thread enters `POINT` (`start`, `stop` or `env_put`: for `start`
//!   the agent is stopped first) held there by the test hook (`_APPSIGNAL_TEST_HOLD_DIR`, test
//!   builds only); once it is inside, this thread forks. The child calls `appsignal_start()` and
//!   waits until it is leader or client, then stops and exits; prints `{"event":"forked-during",
//!   "held_before":…, "held_after":…, "child_exit":…}` (`held_after`: the other thread was still
//!   inside when `fork()` returned in the parent, `child_exit`: 0 ok, 1 not elected, null hung);
//! - `fsize BYTES`: from now on no file this process writes may grow beyond BYTES
//!   (`setrlimit(RLIMIT_FSIZE)`), and `SIGXFSZ` is ignored, so that a write past the limit fails
//!   with `EFBIG` as a write to a full disk fails with `ENOSPC`, instead of killing the process;
//!   prints `{"event":"fsize","ok":…}`;
//! - `exit`: exits at once without `appsignal_stop()` (a master that goes away after forking);
//! - `stop` (or end of input): calls `appsignal_stop()`, prints `{"event":"stopped","stop_ms":…}`
//!   (how long `appsignal_stop()` took) and exits.
//!
//! At start it calls `appsignal_start()`, waits until the process is leader or client, and prints
//! `{"event":"ready","pid":…,"role":…}`. Configuration comes from the environment. `sent` and
//! `acked` events carry `max_call_us`: the longest single metric call into the library so far (an
//! app thread that waited on the network or the leader would show it here).

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::io::{BufRead, Write};
use std::os::raw::c_char;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct AppsignalString {
    len: usize,
    buf: *const c_char,
}

impl AppsignalString {
    fn from(s: &str) -> Self {
        AppsignalString {
            len: s.len(),
            buf: s.as_ptr().cast(),
        }
    }

    /// # Safety
    /// `self` must come from the library and still be valid.
    unsafe fn to_string(self) -> String {
        if self.buf.is_null() || self.len == 0 {
            return String::new();
        }
        String::from_utf8_lossy(std::slice::from_raw_parts(self.buf.cast::<u8>(), self.len))
            .into_owned()
    }
}

type VoidFn = unsafe extern "C" fn();
type StringFn = unsafe extern "C" fn() -> AppsignalString;
type NewFn = unsafe extern "C" fn() -> *mut c_void;
type SetStringFn = unsafe extern "C" fn(*mut c_void, AppsignalString, AppsignalString);
type MetricFn = unsafe extern "C" fn(AppsignalString, f64, *const c_void);
type FreeFn = unsafe extern "C" fn(*mut c_void);
type StartTxnFn = unsafe extern "C" fn(AppsignalString, AppsignalString, i64) -> *mut c_void;
type TxnStringFn = unsafe extern "C" fn(*mut c_void, AppsignalString);
type TxnErrorFn =
    unsafe extern "C" fn(*mut c_void, AppsignalString, AppsignalString, *const c_void);
type StartEventFn = unsafe extern "C" fn(*mut c_void, i64);
type FinishEventFn =
    unsafe extern "C" fn(*mut c_void, AppsignalString, AppsignalString, AppsignalString, i32, i64);
type FinishTxnFn = unsafe extern "C" fn(*mut c_void, i64) -> i32;
type TxnFn = unsafe extern "C" fn(*mut c_void);
type AppendStringFn = unsafe extern "C" fn(*mut c_void, AppsignalString);
type SampleDataFn = unsafe extern "C" fn(*mut c_void, AppsignalString, *const c_void);
type LogFn = unsafe extern "C" fn(AppsignalString, i32, i32, AppsignalString, *const c_void);
type EnvPutFn = unsafe extern "C" fn(AppsignalString, AppsignalString);

/// The library's functions, looked up by name.
pub struct Lib {
    _lib: libloading::Library,
    start: VoidFn,
    stop: VoidFn,
    diagnose: StringFn,
    env_put: EnvPutFn,
    map_new: NewFn,
    map_set_string: SetStringFn,
    increment_counter: MetricFn,
    set_gauge: MetricFn,
    add_distribution_value: MetricFn,
    free_data: FreeFn,
    array_new: NewFn,
    array_append_string: AppendStringFn,
    start_transaction: StartTxnFn,
    set_transaction_action: TxnStringFn,
    set_transaction_error: TxnErrorFn,
    start_event: StartEventFn,
    finish_event: FinishEventFn,
    finish_transaction: FinishTxnFn,
    complete_transaction: TxnFn,
    free_transaction: FreeFn,
    set_transaction_sample_data: SampleDataFn,
    log: LogFn,
}

/// Where `libappsignal.so` is: `$APPSIGNAL_LIBRARY`, else in the target directory this executable
/// was built in. `deps/` first: `cargo test` refreshes the library there without copying it up.
pub fn library_path() -> PathBuf {
    if let Some(p) = std::env::var_os("APPSIGNAL_LIBRARY") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    for dir in exe.ancestors().skip(1).take(3) {
        for candidate in [
            dir.join("deps").join("libappsignal.so"),
            dir.join("libappsignal.so"),
        ] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "libappsignal.so not found near {}; build it (cargo build) or set APPSIGNAL_LIBRARY",
        exe.display()
    );
}

impl Lib {
    pub fn load() -> Lib {
        let path = library_path();
        // SAFETY: loading our own library runs no foreign initialisers beyond Rust's std.
        let lib = unsafe { libloading::Library::new(&path) }
            .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()));
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol has the signature declared in appsignal.h.
                *unsafe { lib.get($name) }.unwrap_or_else(|e| panic!("missing symbol: {e}"))
            };
        }
        Lib {
            start: sym!(b"appsignal_start"),
            stop: sym!(b"appsignal_stop"),
            diagnose: sym!(b"appsignal_diagnose"),
            env_put: sym!(b"appsignal_env_put"),
            map_new: sym!(b"appsignal_data_map_new"),
            map_set_string: sym!(b"appsignal_data_map_set_string"),
            increment_counter: sym!(b"appsignal_increment_counter"),
            set_gauge: sym!(b"appsignal_set_gauge"),
            add_distribution_value: sym!(b"appsignal_add_distribution_value"),
            free_data: sym!(b"appsignal_free_data"),
            array_new: sym!(b"appsignal_data_array_new"),
            array_append_string: sym!(b"appsignal_data_array_append_string"),
            start_transaction: sym!(b"appsignal_start_transaction"),
            set_transaction_action: sym!(b"appsignal_set_transaction_action"),
            set_transaction_error: sym!(b"appsignal_set_transaction_error"),
            start_event: sym!(b"appsignal_start_event"),
            finish_event: sym!(b"appsignal_finish_event"),
            finish_transaction: sym!(b"appsignal_finish_transaction"),
            complete_transaction: sym!(b"appsignal_complete_transaction"),
            free_transaction: sym!(b"appsignal_free_transaction"),
            set_transaction_sample_data: sym!(b"appsignal_set_transaction_sample_data"),
            log: sym!(b"appsignal_log"),
            _lib: lib,
        }
    }

    pub fn start(&self) {
        // SAFETY: no arguments; the library tolerates any state.
        unsafe { (self.start)() }
    }

    pub fn stop(&self) {
        // SAFETY: as above.
        unsafe { (self.stop)() }
    }

    pub fn env_put(&self, key: &str, value: &str) {
        // SAFETY: both views are valid for the call; the library copies them.
        unsafe { (self.env_put)(AppsignalString::from(key), AppsignalString::from(value)) }
    }

    pub fn diagnose(&self) -> Value {
        // SAFETY: the returned string is valid until the next diagnose call on this thread.
        let text = unsafe { (self.diagnose)().to_string() };
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Runs `f` with a tags map built through the C interface, then frees it.
    fn with_tags(&self, tags: &[(&str, &str)], f: impl FnOnce(*const c_void)) {
        // SAFETY: map_new returns an owned handle; set_string copies; free_data frees it once.
        unsafe {
            let map = (self.map_new)();
            for (k, v) in tags {
                (self.map_set_string)(map, AppsignalString::from(k), AppsignalString::from(v));
            }
            f(map);
            (self.free_data)(map);
        }
    }

    pub fn increment_counter(&self, name: &str, value: f64, tags: &[(&str, &str)]) {
        // SAFETY: name is valid for the call; tags is a live handle.
        self.with_tags(tags, |t| unsafe {
            (self.increment_counter)(AppsignalString::from(name), value, t)
        });
    }

    pub fn set_gauge(&self, name: &str, value: f64, tags: &[(&str, &str)]) {
        // SAFETY: as above.
        self.with_tags(tags, |t| unsafe {
            (self.set_gauge)(AppsignalString::from(name), value, t)
        });
    }

    pub fn add_distribution_value(&self, name: &str, value: f64, tags: &[(&str, &str)]) {
        // SAFETY: as above.
        self.with_tags(tags, |t| unsafe {
            (self.add_distribution_value)(AppsignalString::from(name), value, t)
        });
    }
}

impl Lib {
    /// One transaction with a SQL event inside a controller event; `error` sets an error.
    pub fn transaction(&self, action: &str, error: bool) {
        let s = AppsignalString::from;
        // SAFETY: every handle is made here by the library and freed once at the end; strings are
        // valid for each call.
        unsafe {
            let txn = (self.start_transaction)(s("req"), s("web"), 0);
            (self.set_transaction_action)(txn, s(action));
            (self.start_event)(txn, 0);
            (self.start_event)(txn, 0);
            (self.finish_event)(
                txn,
                s("sql.active_record"),
                s("q"),
                s("SELECT * FROM t WHERE id = 1"),
                1,
                0,
            );
            (self.finish_event)(txn, s("process_action.rails"), s(action), s(""), 0, 0);
            if error {
                let backtrace = (self.array_new)();
                (self.array_append_string)(backtrace, s("worker.rs:1"));
                (self.set_transaction_error)(txn, s("RuntimeError"), s("boom"), backtrace);
                (self.free_data)(backtrace);
            }
            (self.finish_transaction)(txn, 0);
            (self.complete_transaction)(txn);
            (self.free_transaction)(txn);
        }
    }
}

impl Lib {
    /// One `http_request` transaction that shows every part of the APM mapping: request params
    /// with a `password` (filtered when `_APPSIGNAL_FILTER_PARAMETERS` names it), a SQL event
    /// with a literal (sanitised) nested in a controller event, an error with a two-line
    /// backtrace; then one log line with an attribute.
    pub fn showcase(&self, id: &str) {
        let s = AppsignalString::from;
        // SAFETY: as in `transaction`: handles made here and freed once, strings valid per call.
        unsafe {
            let txn = (self.start_transaction)(s(id), s("http_request"), 0);
            (self.set_transaction_action)(txn, s("Checkout#pay"));
            let params = (self.map_new)();
            (self.map_set_string)(params, s("user"), s("alice"));
            (self.map_set_string)(params, s("password"), s("hunter2"));
            (self.set_transaction_sample_data)(txn, s("params"), params);
            (self.free_data)(params);
            (self.start_event)(txn, 0);
            (self.start_event)(txn, 0);
            (self.finish_event)(
                txn,
                s("sql.active_record"),
                s("Card Load"),
                s("SELECT * FROM cards WHERE number = '4111111111111111'"),
                1,
                0,
            );
            (self.finish_event)(txn, s("process_action.rails"), s(""), s(""), 0, 0);
            let backtrace = (self.array_new)();
            (self.array_append_string)(backtrace, s("app/pay.rb:10"));
            (self.array_append_string)(backtrace, s("lib/rack.rb:3"));
            (self.set_transaction_error)(txn, s("PaymentError"), s("card declined"), backtrace);
            (self.free_data)(backtrace);
            (self.finish_transaction)(txn, 0);
            (self.complete_transaction)(txn);
            (self.free_transaction)(txn);
            let attributes = (self.map_new)();
            (self.map_set_string)(attributes, s("order"), s(id));
            (self.log)(s("checkout"), 5, 0, s("payment declined"), attributes);
            (self.free_data)(attributes);
        }
    }
}

/// Completes `n` transactions across three actions (every fifth erroneous) and counts them.
pub fn transactions(lib: &Lib, n: u64, sent: &mut Sent) {
    for i in 0..n {
        let action = ["Users#show", "Users#index", "Orders#create"][(i % 3) as usize];
        let error = i % 5 == 0;
        lib.transaction(action, error);
        let tags = [("action", action), ("namespace", "web")];
        *sent
            .counters
            .entry(series("transaction_count", &tags))
            .or_default() += 1.0;
        if error {
            *sent
                .counters
                .entry(series("transaction_error_count", &tags))
                .or_default() += 1.0;
        }
    }
}

/// `name{k=v,…}` with sorted tags, as the receiver names series.
fn series(name: &str, tags: &[(&str, &str)]) -> String {
    let mut pairs: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    format!("{name}{{{}}}", pairs.join(","))
}

/// What this process handed to the library.
#[derive(Default)]
pub struct Sent {
    counters: BTreeMap<String, f64>,
    gauges: BTreeMap<String, f64>,
    distributions: BTreeMap<String, (u64, f64)>,
    /// The longest single metric call (`record`), in nanoseconds.
    max_call_ns: u64,
}

impl Sent {
    fn to_json(&self) -> Value {
        json!({
            "event": "sent",
            "counters": self.counters,
            "gauges": self.gauges,
            "distributions": self.distributions.iter().map(|(k, (c, s))| (k.clone(), json!({"count": c, "sum": s}))).collect::<BTreeMap<_, _>>(),
            "max_call_us": self.max_call_ns / 1000,
        })
    }

    /// Runs one call into the library and keeps the longest one's duration.
    fn timed(&mut self, call: impl FnOnce()) {
        let started = Instant::now();
        call();
        let ns = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.max_call_ns = self.max_call_ns.max(ns);
    }
}

/// Records `n` of each metric kind, tagged with the worker index and a route.
pub fn record(lib: &Lib, index: u32, n: u64, sent: &mut Sent) {
    let worker = index.to_string();
    for i in 0..n {
        let route = ["/home", "/checkout", "/search"][(i % 3) as usize];
        let tags = [("worker", worker.as_str()), ("route", route)];
        sent.timed(|| lib.increment_counter("requests", 1.0, &tags));
        *sent.counters.entry(series("requests", &tags)).or_default() += 1.0;
        let value = (i % 97) as f64 + 0.5;
        sent.timed(|| lib.add_distribution_value("response_time", value, &tags[1..]));
        let d = sent
            .distributions
            .entry(series("response_time", &tags[1..]))
            .or_default();
        d.0 += 1;
        d.1 += value;
        sent.timed(|| lib.set_gauge("worker_index", f64::from(index), &tags[..1]));
        sent.gauges
            .insert(series("worker_index", &tags[..1]), f64::from(index));
    }
}

fn emit(value: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// Waits until diagnose says everything recorded is acknowledged; returns whether it did.
fn wait_idle(lib: &Lib, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if lib.diagnose()["leader_election"]["sender"]["idle"] == true {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// A forked child: records, waits for acknowledgement, reports to a file, stops, exits.
fn child_main(lib: &Lib, index: u32, rounds: u64, dir: &str) -> ! {
    let mut sent = Sent::default();
    for _ in 0..rounds {
        record(lib, index, 25, &mut sent);
        std::thread::sleep(Duration::from_millis(20));
    }
    let idle = wait_idle(lib, Duration::from_secs(60));
    let mut acked = sent.to_json();
    acked["event"] = json!("acked");
    acked["idle"] = json!(idle);
    acked["pid"] = json!(std::process::id());
    let path = std::path::Path::new(dir).join(format!("child-{}.json", std::process::id()));
    let tmp = path.with_extension("tmp");
    let _ = std::fs::write(&tmp, acked.to_string());
    let _ = std::fs::rename(&tmp, &path);
    lib.stop();
    // SAFETY: ending the forked child without running the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

/// Waits until diagnose says this process is leader or client; returns the last role seen.
fn wait_elected(lib: &Lib, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let role = lib.diagnose()["leader_election"]["role"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if role == "leader" || role == "client" || role == "disabled" || Instant::now() >= deadline
        {
            return role;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `fork-during POINT`: see the module doc.
fn fork_during(lib: &'static Lib, point: &str) -> Value {
    let Some(dir) = std::env::var_os("_APPSIGNAL_TEST_HOLD_DIR").map(PathBuf::from) else {
        return json!({"event": "forked-during", "error": "_APPSIGNAL_TEST_HOLD_DIR is not set"});
    };
    let held = dir.join(format!("{point}.held"));
    if point == "start" {
        lib.stop();
    }
    std::fs::create_dir_all(&dir).expect("hold directory");
    std::fs::write(dir.join(format!("{point}.hold")), b"").expect("arm the hold");
    let inside = point.to_owned();
    let other = std::thread::spawn(move || match inside.as_str() {
        "start" => lib.start(),
        "stop" => lib.stop(),
        _ => lib.env_put("_APPSIGNAL_FORK_TEST", "1"),
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let held_before = held.exists();
    // SAFETY: the point of the test: fork while another thread is inside the library. The child
    // calls only the library and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        lib.start();
        let role = wait_elected(lib, Duration::from_secs(10));
        lib.stop();
        let code = i32::from(role != "leader" && role != "client");
        // SAFETY: ending the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) }
    }
    let held_after = held.exists();
    let _ = other.join();
    let mut child_exit = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    if pid > 0 {
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own child without blocking.
            match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
                0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                0 => {
                    // SAFETY: our own child, hung: end it.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    // SAFETY: reaping it.
                    unsafe { libc::waitpid(pid, &mut status, 0) };
                    break;
                }
                _ => {
                    if libc::WIFEXITED(status) {
                        child_exit = json!(libc::WEXITSTATUS(status));
                    }
                    break;
                }
            }
        }
    }
    if point == "stop" {
        lib.start();
    }
    json!({"event": "forked-during", "point": point, "held_before": held_before,
           "held_after": held_after, "child_exit": child_exit, "child_pid": pid})
}

/// The worker's main loop.
pub fn run(index: u32) {
    // 'static, for the thread of `fork-during`; the process ends with this function.
    let lib: &'static Lib = Box::leak(Box::new(Lib::load()));
    lib.start();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut role = String::new();
    while Instant::now() < deadline {
        role = lib.diagnose()["leader_election"]["role"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if role == "leader" || role == "client" || role == "disabled" {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    emit(json!({"event": "ready", "pid": std::process::id(), "role": role}));
    let mut sent = Sent::default();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match words.next() {
            Some("record") => {
                let n = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
                record(lib, index, n, &mut sent);
                emit(sent.to_json());
            }
            Some("count") => {
                let name = words.next().unwrap_or("series").to_owned();
                let from: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let to: u64 = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(from + 1);
                for i in from..to {
                    let i = i.to_string();
                    let tags = [("i", i.as_str())];
                    sent.timed(|| lib.increment_counter(&name, 1.0, &tags));
                    *sent.counters.entry(series(&name, &tags)).or_default() += 1.0;
                }
                emit(sent.to_json());
            }
            Some("txn") => {
                let n = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
                transactions(lib, n, &mut sent);
                emit(sent.to_json());
            }
            Some("showcase") => {
                let id = words.next().unwrap_or("showcase-1");
                lib.showcase(id);
                emit(sent.to_json());
            }
            Some("sync") => {
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline
                    && lib.diagnose()["leader_election"]["sender"]["idle"] != true
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let mut acked = sent.to_json();
                acked["event"] = json!("acked");
                acked["idle"] = lib.diagnose()["leader_election"]["sender"]["idle"].clone();
                emit(acked);
            }
            Some("diagnose") => emit(json!({"event": "diagnose", "report": lib.diagnose()})),
            Some("fork-during") => emit(fork_during(lib, words.next().unwrap_or("start"))),
            Some("fork") => {
                let children: u32 = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
                let rounds: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(10);
                let dir = words.next().unwrap_or(".").to_owned();
                let mut pids = Vec::new();
                for c in 0..children {
                    // SAFETY: fork in a process whose other threads belong to the library, which
                    // is what is under test; the child only calls the library and exits.
                    match unsafe { libc::fork() } {
                        0 => child_main(lib, index * 100 + c + 1, rounds, &dir),
                        pid if pid > 0 => pids.push(pid),
                        _ => break,
                    }
                }
                emit(json!({"event": "forked", "pids": pids}));
            }
            Some("fsize") => {
                let bytes = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                emit(json!({"event": "fsize", "ok": limit_file_size(bytes)}));
            }
            // SAFETY: leaving at once, as a master that exits after forking.
            Some("exit") => unsafe { libc::_exit(0) },
            Some("stop") => break,
            _ => {}
        }
    }
    let stopping = Instant::now();
    lib.stop();
    let stop_ms = stopping.elapsed().as_millis() as u64;
    emit(json!({"event": "stopped", "pid": std::process::id(), "stop_ms": stop_ms}));
}

/// `fsize BYTES`: see the module doc. Returns whether both calls succeeded.
fn limit_file_size(bytes: u64) -> bool {
    // SAFETY: ignoring a signal has no preconditions; the previous handler is not needed.
    let ignored = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } != libc::SIG_ERR;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) } == 0;
    // The soft limit only: lowering it needs no privilege.
    limit.rlim_cur = (bytes as libc::rlim_t).min(limit.rlim_max);
    // SAFETY: a valid rlimit for this process.
    let limited = read && unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) } == 0;
    ignored && limited
}
