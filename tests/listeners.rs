//! The leader's listeners end to end: worker processes load libappsignal.so with the StatsD and
//! OTLP/HTTP listeners on; this test sends StatsD datagrams from a real UDP socket (and OTLP
//! requests built with the official Python `opentelemetry-proto` classes), and the leader exports
//! OTLP to the Python receiver (`examples/otlp_receiver.py`), and for traces also to the Push API
//! receiver. Totals received equal totals sent.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::fleet::{self, WorkerProcess};
use testkit::otlp_receiver::OtlpReceiver;
use testkit::receiver::Receiver;

struct Setup {
    otlp: OtlpReceiver,
    /// The Push API receiver, when the leader exports there too (`Setup::with_push`).
    push: Option<Receiver>,
    python: PathBuf,
    tmp: tempfile::TempDir,
    env: Vec<(String, String)>,
    statsd_port: u16,
    otlp_port: u16,
}

/// A port that was free a moment ago (UDP and TCP both).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Setup {
    /// The leader exports OTLP only.
    fn new(test: &str) -> Option<Setup> {
        Setup::build(test, false)
    }

    /// The leader exports OTLP and to the Push API receiver, which stores the payloads.
    fn with_push(test: &str) -> Option<Setup> {
        Setup::build(test, true)
    }

    fn build(test: &str, with_push: bool) -> Option<Setup> {
        let python = testkit::otlp_python_or_skip(test)?;
        let otlp = OtlpReceiver::start(&python).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let push =
            with_push.then(|| Receiver::start("k", Some(tmp.path().join("received"))).unwrap());
        let endpoint = push
            .as_ref()
            .map_or("http://127.0.0.1:9", |r| r.url.as_str());
        let mut env = fleet::config_env(endpoint, "k", &tmp.path().join("wd"), 300);
        if push.is_none() {
            env.retain(|(k, _)| k != "_APPSIGNAL_PUSH_API_KEY");
        }
        let exporter = if push.is_some() { "push,otlp" } else { "otlp" };
        let statsd_port = free_port();
        let otlp_port = free_port();
        env.extend(
            [
                ("_APPSIGNAL_EXPORTER", exporter.to_owned()),
                ("_APPSIGNAL_OTLP_ENDPOINT", otlp.url.clone()),
                ("_APPSIGNAL_ENABLE_STATSD", "true".to_owned()),
                ("_APPSIGNAL_STATSD_PORT", statsd_port.to_string()),
                ("_APPSIGNAL_OTLP_HTTP_PORT", otlp_port.to_string()),
                (
                    "APPSIGNAL_LIBRARY",
                    testkit::library_path().display().to_string(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        Some(Setup {
            otlp,
            push,
            python,
            tmp,
            env,
            statsd_port,
            otlp_port,
        })
    }

    fn workdir(&self) -> PathBuf {
        self.tmp.path().join("wd")
    }

    fn spawn(&self, index: u32) -> WorkerProcess {
        WorkerProcess::spawn(&testkit::worker_exe(), &[index.to_string()], &self.env).unwrap()
    }

    /// Runs a Python script of `examples/` against the OTLP/HTTP intake; its JSON lines.
    fn post(&self, script: &str) -> Vec<Value> {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("examples")
            .join(script);
        let output = std::process::Command::new(&self.python)
            .arg(&script)
            .arg(format!("http://127.0.0.1:{}", self.otlp_port))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The samples of every payload the Push API receiver stored.
    fn pushed_samples(&self) -> Vec<Value> {
        let dir = self.tmp.path().join("received");
        let mut samples = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if let Ok(payload) = serde_json::from_str::<Value>(&text) {
                samples.extend(payload["samples"].as_array().cloned().unwrap_or_default());
            }
        }
        samples
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.workdir().join("appsignal.log")).unwrap_or_default()
    }

    /// Waits until the log says `needle` `times` times (a listener bound, for instance).
    fn await_log(&self, needle: &str, times: usize) {
        assert!(
            testkit::poll(Duration::from_secs(20), || self
                .log()
                .matches(needle)
                .count()
                >= times),
            "no {needle:?} (x{times}) in the log:\n{}",
            self.log()
        );
    }

    fn assert_totals(&self, expected: &Value) {
        testkit::setup::assert_totals(
            expected,
            || self.otlp.summary(),
            || {
                format!(
                    "UDP drops in /proc/net/udp for port {}: {:?}\n--- log ---\n{}",
                    self.statsd_port,
                    udp_drops(self.statsd_port),
                    self.log()
                )
            },
        );
    }
}

/// The kernel's drop counts of UDP sockets bound to `port` (the last column of /proc/net/udp).
fn udp_drops(port: u16) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let hex = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&hex))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect()
}

/// Sends `lines` packed into datagrams of at most ~1400 bytes, pausing 1 ms every 16 datagrams
/// (UDP has no flow control: the pause keeps a busy shared machine from overflowing the socket's
/// receive buffer). Returns how many datagrams went out.
fn send_lines(socket: &UdpSocket, port: u16, lines: &[String]) -> usize {
    let mut datagram = String::new();
    let mut sent = 0;
    let mut flush = |datagram: &mut String| {
        if datagram.is_empty() {
            return;
        }
        socket
            .send_to(datagram.as_bytes(), ("127.0.0.1", port))
            .unwrap();
        datagram.clear();
        sent += 1;
        if sent % 16 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    for line in lines {
        if datagram.len() + line.len() + 1 > 1400 {
            flush(&mut datagram);
        }
        datagram.push_str(line);
        datagram.push('\n');
    }
    flush(&mut datagram);
    sent
}

#[test]
fn statsd_counters_with_sample_rates_gauges_and_timers_arrive_exactly() {
    let Some(setup) = Setup::new("statsd exact totals") else {
        return;
    };
    let mut workers = [setup.spawn(1), setup.spawn(2)];
    assert_eq!(workers.iter().filter(|w| w.role == "leader").count(), 1);
    setup.await_log("StatsD: listening on", 1);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();

    // 100,000 counter increments over three tag sets and three sample rates whose scaling is exact.
    let mut lines = Vec::new();
    let mut expected = json!({"counters": {}, "gauges": {}, "distributions": {}});
    let mut add = |series: &str, by: f64| {
        let t = expected["counters"][series].as_f64().unwrap_or(0.0) + by;
        expected["counters"][series] = json!(t);
    };
    for i in 0..100_000u32 {
        let (route, rate, weight) = match i % 3 {
            0 => ("home", "", 1.0),
            1 => ("search", "|@0.5", 2.0),
            _ => ("checkout", "|@0.25", 4.0),
        };
        let value = 1 + i % 5;
        lines.push(format!(
            "statsd.requests:{value}|c{rate}|#route:{route},region:eu"
        ));
        add(
            &format!("statsd.requests{{region=eu,route={route}}}"),
            f64::from(value) * weight,
        );
    }
    let mut sum = 0.0;
    for i in 0..1000u32 {
        let v = f64::from(i % 50) + 0.5;
        sum += v;
        lines.push(format!("statsd.latency:{v}|ms|#route:home"));
    }
    let datagrams = send_lines(&socket, setup.statsd_port, &lines);
    // Gauges: a set, then relative changes, in order (one datagram, so their order holds).
    socket
        .send_to(
            b"statsd.queue:40|g|#queue:mail\nstatsd.queue:+5|g|#queue:mail\nstatsd.queue:-3|g|#queue:mail\nstatsd.temp:21.25|g\n",
            ("127.0.0.1", setup.statsd_port),
        )
        .unwrap();
    // Garbage: counted, nothing else affected.
    let garbage: [&[u8]; 5] = [
        b"\xff\xfe\x00garbage",
        b"no value here",
        b"statsd.requests:x|c|#route:home",
        b"statsd.requests:1|s",
        b"statsd.requests:1|c|@7",
    ];
    for g in garbage {
        socket.send_to(g, ("127.0.0.1", setup.statsd_port)).unwrap();
    }
    // Counts of rejected input go out with the next payload that has data: send some.
    socket
        .send_to(b"statsd.after:1|c", ("127.0.0.1", setup.statsd_port))
        .unwrap();
    expected["counters"]["statsd.after{}"] = json!(1.0);
    expected["gauges"]["statsd.queue{queue=mail}"] = json!(42.0);
    expected["gauges"]["statsd.temp{}"] = json!(21.25);
    expected["distributions"]["statsd.latency{route=home}"] = json!({"count": 1000, "sum": sum});
    expected["counters"]["appsignal.agent.statsd_malformed_lines{}"] = json!(garbage.len() as f64);
    setup.assert_totals(&expected);
    eprintln!("sent {} lines in {datagrams} datagrams", lines.len());
    for w in workers.iter_mut() {
        w.sync().unwrap();
    }
    workers.sort_by_key(|w| w.role == "leader");
    for w in workers.iter_mut() {
        assert!(w.stop(Duration::from_secs(20)).unwrap().success());
    }
    let log = setup.log();
    assert_eq!(
        log.matches("StatsD: malformed line").count(),
        1,
        "one rate-limited log line for the garbage:\n{log}"
    );
    // Nothing more arrived after the stop (no double counting on the way out).
    setup.assert_totals(&expected);
}

#[test]
fn a_client_never_binds_and_a_taken_port_is_logged_once() {
    let Some(setup) = Setup::new("statsd taken port") else {
        return;
    };
    // Another program holds the port (without SO_REUSEADDR, so nobody can share it).
    let squatter = UdpSocket::bind(("127.0.0.1", setup.statsd_port)).unwrap();
    let mut workers = [setup.spawn(1), setup.spawn(2)];
    setup.await_log("StatsD: cannot bind", 1);
    // Everything else works: app data still arrives.
    let mut expected = Value::Null;
    for w in workers.iter_mut() {
        let sent = w.record(50).unwrap();
        fleet::add_sent(&mut expected, &sent);
        w.sync().unwrap();
    }
    setup.assert_totals(&expected);
    let log = setup.log();
    assert_eq!(log.matches("StatsD: cannot bind").count(), 1, "{log}");
    // Only the leader tried: the client never binds.
    assert_eq!(log.matches("StatsD: listening on").count(), 0, "{log}");
    // Once the port is free, the leader binds it.
    drop(squatter);
    setup.await_log("StatsD: bound", 1);
    workers.sort_by_key(|w| w.role == "leader");
    for w in workers.iter_mut() {
        assert!(w.stop(Duration::from_secs(20)).unwrap().success());
    }
}

#[test]
fn otlp_metrics_posted_with_the_official_python_classes_arrive_with_their_attributes() {
    let Some(setup) = Setup::new("otlp intake") else {
        return;
    };
    let mut workers = [setup.spawn(1), setup.spawn(2)];
    setup.await_log("OTLP/HTTP intake: listening on", 1);
    let steps = setup.post("otlp_post.py");
    let step = |name: &str| -> &Value {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {steps:?}"))
    };
    for ok in [
        "json",
        "jobs-1",
        "jobs-2",
        "bytes-1",
        "bytes-2",
        "gauge-1",
        "gauge-2",
        "histogram",
        "gzip",
    ] {
        assert_eq!(step(ok)["status"], 200, "{:?}", step(ok));
        assert_eq!(step(ok)["rejected"], 0, "{:?}", step(ok));
    }
    assert_eq!(step("mixed")["status"], 200);
    assert_eq!(
        step("mixed")["rejected"],
        1,
        "partial success: {:?}",
        step("mixed")
    );
    assert!(step("mixed")["message"]
        .as_str()
        .unwrap()
        .contains("exponential"));
    assert_eq!(step("truncated")["status"], 400);
    assert_eq!(step("gzip-bomb")["status"], 413);
    let oversized = &step("oversized")["status"];
    assert!(*oversized == 413 || *oversized == "reset", "{oversized}");
    assert_eq!(step("json-bad")["status"], 400);
    assert_eq!(step("xml")["status"], 415);
    assert_eq!(step("get")["status"], 405);
    assert_eq!(step("logs")["status"], 404);

    // Counts of rejected input go out with the next payload that has data: send some.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"after:1|c", ("127.0.0.1", setup.statsd_port))
        .unwrap();
    let service = "service.name=cron-job";
    let expected = json!({
        "counters": {
            format!("intake.jobs{{ok=true,queue=mail,{service}}}"): 10.0,
            format!("intake.bytes{{disk=sda,{service}}}"): 250.0,
            format!("intake.gzipped{{{service}}}"): 3.0,
            format!("intake.mixed{{{service}}}"): 1.0,
            format!("intake.json{{format=json,{service}}}"): 2.0,
            // One rejected point and seven rejected requests.
            "appsignal.agent.otlp_intake_rejected{}": 8.0,
            "after{}": 1.0,
        },
        "gauges": {format!("intake.temperature{{room=a,{service}}}"): 22.0},
        "distributions": {
            format!("intake.latency{{route=/,{service}}}"): {"count": 4, "sum": 150.0}
        },
    });
    setup.assert_totals(&expected);
    for w in workers.iter_mut() {
        w.sync().unwrap();
    }
    workers.sort_by_key(|w| w.role == "leader");
    for w in workers.iter_mut() {
        assert!(w.stop(Duration::from_secs(20)).unwrap().success());
    }
    let log = setup.log();
    assert_eq!(
        log.matches("OTLP/HTTP intake: request answered").count()
            + log.matches("data points rejected").count(),
        1,
        "one rate-limited log line for the rejections:\n{log}"
    );
    setup.assert_totals(&expected);
}

/// A trace posted with the official Python classes (root SERVER span, a SQL child, a child with an
/// exception event and its own child; protobuf), another as gzipped OTLP/JSON, a span whose parent
/// is elsewhere, a partial success, and bad bodies. The traces arrive as Push API samples and as
/// OTLP spans with their ids, parent links, names, attributes and errors, each exactly once;
/// rejected spans and requests are counted and logged once; the processes' own data is unaffected.
#[test]
fn otlp_traces_posted_with_the_official_python_classes_arrive_as_samples_and_spans() {
    let Some(setup) = Setup::with_push("otlp traces intake") else {
        return;
    };
    let mut workers = [setup.spawn(1), setup.spawn(2)];
    setup.await_log("OTLP/HTTP intake: listening on", 1);
    let mut expected = Value::Null;
    for w in workers.iter_mut() {
        let sent = w.record(20).unwrap();
        fleet::add_sent(&mut expected, &sent);
    }
    let lines = setup.post("otlp_post_traces.py");
    let ids = &lines[0]["ids"];
    let id = |name: &str| ids[name].as_str().unwrap().to_owned();
    let step = |name: &str| -> &Value {
        lines
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {lines:?}"))
    };
    for ok in ["checkout", "report", "orphan"] {
        assert_eq!(step(ok)["status"], 200, "{:?}", step(ok));
        assert_eq!(step(ok)["rejected"], 0, "{:?}", step(ok));
    }
    assert_eq!(step("partial")["status"], 200);
    assert_eq!(step("partial")["rejected"], 1, "{:?}", step("partial"));
    assert!(step("partial")["message"]
        .as_str()
        .unwrap()
        .contains("trace id"));
    assert_eq!(step("truncated")["status"], 400);
    assert_eq!(step("garbage")["status"], 400);
    assert_eq!(step("gzip-bomb")["status"], 413);
    let oversized = &step("oversized")["status"];
    assert!(*oversized == 413 || *oversized == "reset", "{oversized}");
    assert_eq!(step("json-bad")["status"], 400);

    // Counts of rejected input go out with the next payload that has data: send some.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"after:1|c", ("127.0.0.1", setup.statsd_port))
        .unwrap();
    expected["counters"]["after{}"] = json!(1.0);
    // One rejected span and five rejected requests.
    expected["counters"]["appsignal.agent.otlp_intake_rejected{}"] = json!(6.0);
    setup.assert_totals(&expected);

    // 4 + 2 + 1 + 1 spans in 4 samples.
    let spans = || {
        setup.otlp.summary()["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        testkit::poll(Duration::from_secs(30), || spans().len() >= 8),
        "spans: {:?}\n{}",
        spans(),
        setup.log()
    );
    let pushed = || setup.pushed_samples();
    assert!(
        testkit::poll(Duration::from_secs(30), || pushed().len() >= 4),
        "samples: {:?}\n{}",
        pushed(),
        setup.log()
    );
    for w in workers.iter_mut() {
        w.sync().unwrap();
    }
    workers.sort_by_key(|w| w.role == "leader");
    for w in workers.iter_mut() {
        assert!(w.stop(Duration::from_secs(20)).unwrap().success());
    }
    // Nothing more arrived after the stop: each span and sample once, app data exact.
    setup.assert_totals(&expected);
    let spans = spans();
    assert_eq!(spans.len(), 8, "{spans:#?}");
    let pushed = pushed();
    assert_eq!(pushed.len(), 4, "{pushed:#?}");
    let push_summary = setup.push.as_ref().unwrap().summary();
    assert_eq!(push_summary["samples"], 4, "{push_summary}");
    assert_eq!(push_summary["dropped_samples"], 0, "{push_summary}");

    // OTLP: ids, parent links, kinds, names, attributes, errors.
    let span = |span_id: &str| -> &Value {
        spans
            .iter()
            .find(|s| s["span_id"] == span_id)
            .unwrap_or_else(|| panic!("no span {span_id} in {spans:#?}"))
    };
    let root = span(&id("root"));
    assert_eq!(root["name"], "GET /checkout");
    assert_eq!(root["trace_id"], id("trace_a"));
    assert_eq!(root["parent_span_id"], "");
    assert_eq!(root["kind"], 2, "SERVER");
    assert_eq!(root["attributes"]["http.route"], "/checkout");
    assert_eq!(root["attributes"]["http.response.status_code"], 200);
    assert_eq!(root["attributes"]["appsignal.namespace"], "web");
    assert_eq!(root["attributes"]["appsignal.tag.user"], "u-17");
    assert_eq!(root["attributes"]["appsignal.tag.service.name"], "shop-py");
    assert_eq!(root["status"], 0);
    let sql = span(&id("sql"));
    assert_eq!(
        (&sql["name"], &sql["parent_span_id"], &sql["kind"]),
        (&json!("SELECT users"), &json!(id("root")), &json!(3))
    );
    assert_eq!(
        sql["attributes"]["db.query.text"], "SELECT * FROM users WHERE email = ?",
        "sanitised"
    );
    assert_eq!(sql["attributes"]["db.system.name"], "postgresql");
    let charge = span(&id("charge"));
    assert_eq!(charge["parent_span_id"], id("root"));
    assert_eq!(charge["status"], 2, "ERROR");
    assert_eq!(charge["events"][0]["name"], "exception");
    assert_eq!(
        charge["events"][0]["attributes"]["exception.type"],
        "PaymentDeclined"
    );
    assert_eq!(
        charge["events"][0]["attributes"]["exception.message"],
        "card declined"
    );
    assert!(charge["events"][0]["attributes"]["exception.stacktrace"]
        .as_str()
        .unwrap()
        .contains("pay.py"));
    let post = span(&id("post"));
    assert_eq!(post["parent_span_id"], id("charge"));
    assert_eq!(post["attributes"]["http.request.method"], "POST");
    assert!(
        spans
            .iter()
            .filter(|s| s["trace_id"] == id("trace_a"))
            .count()
            == 4
    );
    let report = span(&id("report"));
    assert_eq!(report["name"], "Reports#nightly");
    assert_eq!(report["trace_id"], id("trace_b"));
    assert_eq!(report["attributes"]["appsignal.namespace"], "cron");
    assert_eq!(report["status"], 2);
    assert_eq!(
        report["events"][0]["attributes"]["exception.message"],
        "disk full"
    );
    assert_eq!(span(&id("write"))["parent_span_id"], id("report"));
    assert_eq!(span(&id("late"))["parent_span_id"], id("absent"));

    // Push API: the same traces as samples of the root-span shape.
    let sample = |action: &str| -> &Value {
        pushed
            .iter()
            .find(|s| s["action"] == action)
            .unwrap_or_else(|| panic!("no sample {action} in {pushed:#?}"))
    };
    let checkout = sample("GET /checkout");
    assert_eq!(checkout["kind"], "span");
    assert_eq!(checkout["id"], id("root"));
    assert_eq!(checkout["trace_id"], id("trace_a"));
    assert_eq!(checkout["namespace"], "web");
    assert_eq!(checkout["sample_data"]["tags"]["user"], "u-17");
    assert!(checkout["error"].is_null());
    assert!((checkout["duration"].as_f64().unwrap() - 250.0).abs() < 1e-6);
    let events = checkout["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["name"], "SELECT users");
    assert_eq!(events[0]["body"], "SELECT * FROM users WHERE email = ?");
    assert_eq!(events[1]["name"], "charge card");
    assert_eq!(events[1]["attributes"]["error"]["class"], "PaymentDeclined");
    assert_eq!(events[1]["children"][0]["name"], "POST api.payments");
    assert_eq!(events[1]["children"][0]["span_id"], id("post"));
    let nightly = sample("Reports#nightly");
    assert_eq!(nightly["namespace"], "cron");
    assert_eq!(nightly["error"]["message"], "disk full");
    assert_eq!(sample("late child")["parent_span_id"], id("absent"));
    assert_eq!(sample("kept span")["namespace"], "background");

    let log = setup.log();
    assert_eq!(
        log.matches("OTLP/HTTP intake: request answered").count()
            + log.matches("spans rejected").count(),
        1,
        "one rate-limited log line for the rejections:\n{log}"
    );
}

/// The leader is SIGKILLed while a sender writes one StatsD datagram per millisecond: the next
/// leader binds the port again, and only datagrams of the gap are lost. Each datagram counts 1 in
/// a slot of 10 consecutive datagrams (tag `slot`), so the export shows where the gap was. Exact
/// checks: every slot sent completely after the new leader was seen listening arrives whole, and so
/// does every slot sent more than a second before the kill (the old leader had journaled them; the
/// new one replays them). The measured gap is printed (see docs/listeners.md).
#[test]
fn statsd_listener_moves_to_the_next_leader_after_a_sigkill() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    let Some(setup) = Setup::new("statsd failover") else {
        return;
    };
    let mut workers = vec![setup.spawn(1), setup.spawn(2)];
    setup.await_log("StatsD: listening on", 1);
    let leader = testkit::leader_index(&setup.workdir(), &workers).unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let port = setup.statsd_port;
    let sender = {
        let running = Arc::clone(&running);
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut sent_at = Vec::new();
            while running.load(Ordering::Relaxed) {
                let i = sent_at.len();
                let line = format!("failover.ticks:1|c|#slot:{:05}", i / 10);
                let _ = socket.send_to(line.as_bytes(), ("127.0.0.1", port));
                sent_at.push(Instant::now());
                std::thread::sleep(Duration::from_millis(1));
            }
            sent_at
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    let killed_at = Instant::now();
    workers[leader].child.kill().unwrap();
    workers[leader].wait(Duration::from_secs(5)).unwrap();
    assert!(
        testkit::poll(Duration::from_secs(10), || setup
            .log()
            .matches("StatsD: listening on")
            .count()
            >= 2),
        "the next leader does not listen:\n{}",
        setup.log()
    );
    let listening_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    running.store(false, Ordering::Relaxed);
    let sent_at = sender.join().unwrap();
    // Let the new leader flush the last datagrams, then stop it: it pushes everything.
    std::thread::sleep(Duration::from_millis(300));
    workers.remove(leader);
    for w in workers.iter_mut() {
        assert!(w.stop(Duration::from_secs(20)).unwrap().success());
    }
    let summary = setup.otlp.summary();
    let slots = sent_at.len().div_ceil(10);
    let mut lost = 0u64;
    let mut gap: Vec<usize> = Vec::new();
    let mut whole_missing = Vec::new();
    for slot in 0..slots {
        let sent = (sent_at.len() - slot * 10).min(10);
        let got = summary["counters"][format!("failover.ticks{{slot={slot:05}}}")]
            .as_f64()
            .unwrap_or(0.0) as usize;
        assert!(got <= sent, "slot {slot}: {got} of {sent}: counted twice");
        if got < sent {
            lost += (sent - got) as u64;
            gap.push(slot);
            let first = sent_at[slot * 10];
            let last = sent_at[slot * 10 + sent - 1];
            if first > listening_at || last + Duration::from_secs(1) < killed_at {
                whole_missing.push(format!("slot {slot}: {got} of {sent}"));
            }
        }
    }
    assert!(
        whole_missing.is_empty(),
        "datagrams lost outside the gap: {whole_missing:?}\n{}",
        setup.log()
    );
    let first_lost = gap.first().map(|&s| sent_at[s * 10]);
    let last_lost = gap
        .last()
        .map(|&s| sent_at[(s * 10 + 9).min(sent_at.len() - 1)]);
    eprintln!(
        "failover: sent {} datagrams, lost {lost} (slots {:?}..{:?}); kill -> new leader seen listening {:?}; lost span from {:?} before the kill to {:?} after it",
        sent_at.len(),
        gap.first(),
        gap.last(),
        listening_at - killed_at,
        first_lost.map(|t| killed_at.saturating_duration_since(t)),
        last_lost.map(|t| t.saturating_duration_since(killed_at)),
    );
}
