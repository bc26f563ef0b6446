//! The OTLP exporter end to end: worker processes load libappsignal.so, elect a leader, and the
//! leader exports OTLP/HTTP to a Python receiver that parses every request with the official
//! `opentelemetry-proto` classes (`examples/otlp_receiver.py`): no code of ours decodes for it.
//! Totals received must equal totals sent, exactly, also with leaders SIGKILLed.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use testkit::fleet::{self, WorkerProcess};
use testkit::otlp_receiver::OtlpReceiver;
use testkit::receiver::Receiver;
use testkit::setup::stop_all;

const PUSH_KEY: &str = "otlp-test-push-key";
const HEADER_SECRET: &str = "otlp-header-secret-value";

struct Setup {
    otlp: Option<OtlpReceiver>,
    push: Option<Receiver>,
    tmp: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Setup {
    /// Workers exporting OTLP to a fresh Python receiver (and, with `push`, also to the reference
    /// Push API receiver). `None` when the test is skipped (no Python with the package, not in CI).
    fn new(test: &str, interval_ms: u64, push: bool) -> Option<Setup> {
        let python = testkit::otlp_python_or_skip(test)?;
        let otlp = OtlpReceiver::start(&python).unwrap();
        let mut setup = Self::with_url(&otlp.url, interval_ms, push);
        setup.otlp = Some(otlp);
        Some(setup)
    }

    /// Workers exporting OTLP to `url` (a receiver may be started there later).
    fn with_url(url: &str, interval_ms: u64, push: bool) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let push_receiver = push.then(|| Receiver::start(PUSH_KEY, None).unwrap());
        let push_url = push_receiver
            .as_ref()
            .map_or("http://127.0.0.1:9".to_owned(), |r| r.url.clone());
        let mut env = fleet::config_env(&push_url, PUSH_KEY, &tmp.path().join("wd"), interval_ms);
        env.retain(|(k, _)| push || k != "_APPSIGNAL_PUSH_API_KEY");
        let exporter = if push { "push,otlp" } else { "otlp" };
        env.extend(
            [
                ("_APPSIGNAL_EXPORTER", exporter.to_owned()),
                ("_APPSIGNAL_OTLP_ENDPOINT", url.to_owned()),
                (
                    "_APPSIGNAL_OTLP_HEADERS",
                    format!("x-api-key={HEADER_SECRET}"),
                ),
                ("_APPSIGNAL_FILTER_PARAMETERS", "password".to_owned()),
                (
                    "APPSIGNAL_LIBRARY",
                    testkit::library_path().display().to_string(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        Setup {
            otlp: None,
            push: push_receiver,
            tmp,
            env,
        }
    }

    fn otlp(&self) -> &OtlpReceiver {
        self.otlp.as_ref().expect("an OTLP receiver")
    }

    fn workdir(&self) -> PathBuf {
        self.tmp.path().join("wd")
    }

    fn spawn(&self, index: u32) -> WorkerProcess {
        WorkerProcess::spawn(&testkit::worker_exe(), &[index.to_string()], &self.env).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.workdir().join("appsignal.log")).unwrap_or_default()
    }

    /// Waits until the OTLP receiver's totals equal `expected`; fails with the differences.
    fn assert_otlp_totals(&self, expected: &Value) {
        testkit::setup::assert_totals(
            expected,
            || self.otlp().summary(),
            || format!("--- log ---\n{}", self.log()),
        );
    }
}

fn find<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

#[test]
fn three_processes_export_metrics_traces_and_logs_over_otlp_exactly() {
    let Some(setup) = Setup::new("otlp three processes", 300, false) else {
        return;
    };
    let mut workers: Vec<WorkerProcess> = (1..=3).map(|i| setup.spawn(i)).collect();
    assert_eq!(workers.iter().filter(|w| w.role == "leader").count(), 1);
    let mut expected = Value::Null;
    for w in workers.iter_mut() {
        w.record(500).unwrap();
        let sent = w.record(250).unwrap();
        fleet::add_sent(&mut expected, &sent);
    }
    workers[1].send("showcase order-7").unwrap();
    workers[1].expect("sent", Duration::from_secs(10)).unwrap();
    for w in workers.iter_mut() {
        w.sync().unwrap();
    }
    // Diagnose names the exporters and endpoints, and the header's name but never its value.
    let report = workers[0].diagnose().unwrap();
    let config = &report["leader_election"]["config"];
    assert_eq!(config["exporters"]["otlp"], true, "{report}");
    assert_eq!(config["exporters"]["push"], false, "{report}");
    assert_eq!(
        config["otlp"]["headers"],
        serde_json::json!(["x-api-key"]),
        "{report}"
    );
    assert_eq!(
        config["otlp"]["metrics_endpoint"],
        format!("{}/v1/metrics", setup.otlp().url)
    );
    assert!(!report.to_string().contains(HEADER_SECRET), "{report}");
    stop_all(&mut workers);
    setup.assert_otlp_totals(&expected);

    let s = setup.otlp().summary();
    assert_eq!(s["duplicates"], 0, "{s}");
    assert_eq!(s["bad_requests"], 0, "{s}");
    // Counters are delta, monotonic sums (temporality 1 = DELTA); histograms delta too.
    assert!(
        s["temporalities"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["sum", 1, true])),
        "{}",
        s["temporalities"]
    );
    assert!(s["temporalities"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(["exponential_histogram", 1, false])));
    // Histograms: the bucket counts add up to the count, and min/max are the values recorded.
    for (name, h) in s["distributions"].as_object().unwrap() {
        assert_eq!(h["bucket_total"], h["count"], "{name}: {h}");
        if name.starts_with("response_time") {
            assert_eq!(
                (h["min"].as_f64(), h["max"].as_f64()),
                (Some(0.5), Some(96.5)),
                "{name}: {h}"
            );
        }
    }
    // The showcase transaction: a SERVER root span with the sanitised, filtered, nested tree.
    let spans = s["spans"].as_array().unwrap();
    let root = find(spans, "Checkout#pay");
    assert_eq!(root["kind"], 2, "http_request is a SERVER span: {root}");
    assert_eq!(root["parent_span_id"], "");
    assert_eq!(root["status"], 2, "status ERROR: {root}");
    let attrs = &root["attributes"];
    assert_eq!(attrs["appsignal.namespace"], "http_request");
    assert_eq!(attrs["appsignal.action_name"], "Checkout#pay");
    assert_eq!(attrs["error.type"], "PaymentError");
    let payload: Value =
        serde_json::from_str(attrs["appsignal.request.payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["password"], "[FILTERED]");
    assert_eq!(payload["user"], "alice");
    assert!(
        !s.to_string().contains("hunter2"),
        "a filtered value left the process"
    );
    let exception = &root["events"][0];
    assert_eq!(exception["name"], "exception");
    assert_eq!(exception["attributes"]["exception.type"], "PaymentError");
    assert_eq!(
        exception["attributes"]["exception.message"],
        "card declined"
    );
    assert_eq!(
        exception["attributes"]["exception.stacktrace"],
        "app/pay.rb:10\nlib/rack.rb:3"
    );
    assert_eq!(exception["attributes"]["appsignal.alert_this_error"], true);
    let controller = find(spans, "process_action.rails");
    assert_eq!(controller["parent_span_id"], root["span_id"]);
    assert_eq!(controller["trace_id"], root["trace_id"]);
    let sql = find(spans, "sql.active_record (Card Load)");
    assert_eq!(
        sql["parent_span_id"], controller["span_id"],
        "SQL nested in the controller event"
    );
    assert_eq!(sql["trace_id"], root["trace_id"]);
    let query = sql["attributes"]["db.query.text"].as_str().unwrap();
    assert_eq!(query, "SELECT * FROM cards WHERE number = ?");
    assert_eq!(sql["attributes"]["db.system.name"], "other_sql");
    assert!(
        !s.to_string().contains("4111111111111111"),
        "an unsanitised literal left the process"
    );
    // The log line.
    let log = s["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["body"] == "payment declined")
        .unwrap_or_else(|| panic!("no log record in {}", s["logs"]));
    assert_eq!(log["severity_number"], 13, "warn: {log}");
    assert_eq!(log["severity_text"], "warn");
    assert_eq!(log["attributes"]["order"], "order-7");
    assert_eq!(log["attributes"]["appsignal.group"], "checkout");
    // One resource, with AppSignal's and OpenTelemetry's attributes, and no push key (none set).
    let resources = s["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 1, "{resources:?}");
    let r = &resources[0];
    assert_eq!(r["service.name"], "demo-app");
    assert_eq!(r["appsignal.config.name"], "demo-app");
    assert_eq!(r["appsignal.config.environment"], "demo");
    assert_eq!(r["deployment.environment.name"], "demo");
    assert_eq!(r["appsignal.config.revision"], "unknown");
    assert_eq!(r["telemetry.sdk.name"], "libappsignal");
    assert_eq!(r["appsignal.config.language_integration"], "c");
    assert_eq!(
        r["appsignal.config.filter_request_payload"],
        serde_json::json!(["password"])
    );
    assert!(r["host.name"].as_str().is_some_and(|h| !h.is_empty()));
    assert!(r.get("appsignal.config.push_api_key").is_none());
    // A UUID v5, the same from every leader of this working directory.
    let instance = r["service.instance.id"].as_str().unwrap_or_default();
    assert_eq!(
        (instance.len(), instance.get(14..15)),
        (36, Some("5")),
        "{r}"
    );
    // Every scope carries the request's stable id; ids are unique per signal.
    for scope in s["scopes"].as_array().unwrap() {
        assert_eq!(scope["name"], "appsignal-agent");
        assert_eq!(
            scope["attributes"]["appsignal.export.id"]
                .as_str()
                .map(str::len),
            Some(32)
        );
    }
    // The header secret is nowhere on disk or in the log.
    let log_text = setup.log();
    assert!(!log_text.contains(HEADER_SECRET));
    for entry in walk(&setup.workdir()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(HEADER_SECRET),
            "{} holds the OTLP header value",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.is_file() {
            files.push(path);
        }
    }
    files
}

fn otlp_chaos(push: bool) {
    let test = if push {
        "otlp+push chaos"
    } else {
        "otlp chaos"
    };
    let Some(setup) = Setup::new(test, 400, push) else {
        return;
    };
    let mut next_index = 0u32;
    let run = testkit::chaos(
        &setup.workdir(),
        || {
            next_index += 1;
            setup.spawn(next_index)
        },
        false,
        10,
        Duration::from_secs(240),
    );
    let mut workers = run.survivors;
    stop_all(&mut workers);
    assert_eq!((run.leader_kills, run.client_kills), (10, 0));
    setup.assert_otlp_totals(&run.expected);
    // The push key (set with both exporters) is put in every request when it is sent.
    let summary = setup.otlp().summary();
    let resources = summary["resources"].as_array().unwrap();
    assert!(!resources.is_empty());
    for r in resources {
        let expected = push.then_some(PUSH_KEY);
        assert_eq!(
            r.get("appsignal.config.push_api_key")
                .and_then(Value::as_str),
            expected,
            "{r}"
        );
    }
    if let Some(push) = &setup.push {
        let rows = fleet::await_totals(&run.expected, || push.summary(), Duration::from_secs(30));
        let wrong: Vec<_> = rows
            .iter()
            .filter(|r| !r.equal)
            .map(|r| &r.series)
            .collect();
        assert!(wrong.is_empty(), "Push API totals differ: {wrong:?}");
    }
    assert!(setup.log().contains("replayed"));
}

#[test]
fn chaos_with_the_otlp_exporter_loses_nothing_and_counts_nothing_twice() {
    otlp_chaos(false);
}

#[test]
fn chaos_with_both_exporters_each_gets_exact_totals() {
    otlp_chaos(true);
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn cached_otlp_files(workdir: &std::path::Path) -> usize {
    std::fs::read_dir(workdir.join("payloads"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".otlp.gz"))
        .count()
}

#[test]
fn an_otlp_endpoint_that_is_down_gets_the_data_once_it_is_up() {
    let Some(python) = testkit::otlp_python_or_skip("otlp endpoint down") else {
        return;
    };
    let port = free_port();
    let mut setup = Setup::with_url(&format!("http://127.0.0.1:{port}"), 200, false);
    let mut worker = setup.spawn(1);
    let sent = worker.record(300).unwrap();
    worker.sync().unwrap();
    // Nothing listens: the exports are refused and wait in payloads/, named as OTLP requests.
    assert!(
        testkit::poll(Duration::from_secs(20), || {
            cached_otlp_files(&setup.workdir()) >= 1 && setup.log().contains("kept in payloads/")
        }),
        "no OTLP request cached while the endpoint is down:\n{}",
        setup.log()
    );
    setup.otlp = Some(OtlpReceiver::start_on(&python, port).unwrap());
    let mut expected = Value::Null;
    fleet::add_sent(&mut expected, &sent);
    setup.assert_otlp_totals(&expected);
    worker.stop(Duration::from_secs(20)).unwrap();
    assert!(testkit::poll(
        Duration::from_secs(10),
        || cached_otlp_files(&setup.workdir()) == 0
    ));
    assert_eq!(setup.otlp().summary()["duplicates"], 0);
}

#[test]
fn a_503_with_retry_after_is_retried_after_the_delay_and_nothing_is_lost() {
    let Some(setup) = Setup::new("otlp 503", 200, false) else {
        return;
    };
    setup.otlp().fail_next(3, 503, Some(1)).unwrap();
    let mut worker = setup.spawn(1);
    let sent = worker.record(300).unwrap();
    worker.sync().unwrap();
    let mut expected = Value::Null;
    fleet::add_sent(&mut expected, &sent);
    setup.assert_otlp_totals(&expected);
    let s = setup.otlp().summary();
    assert_eq!(s["failed_on_purpose"], 3, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    let log = setup.log();
    assert!(log.contains("next try in 1 s or later"), "{log}");
    worker.stop(Duration::from_secs(20)).unwrap();
}

#[test]
fn a_400_drops_that_request_logs_it_once_and_counts_it() {
    let Some(setup) = Setup::new("otlp 400", 200, false) else {
        return;
    };
    let mut worker = setup.spawn(1);
    // The first request is rejected: that window's metrics are dropped (not retryable).
    setup.otlp().fail_next(1, 400, None).unwrap();
    worker.record(100).unwrap();
    worker.sync().unwrap();
    assert!(testkit::poll(Duration::from_secs(20), || {
        setup.otlp().summary()["failed_on_purpose"] == 1
    }));
    // Windows recorded after the rejection arrive, and one of them reports it; the rejected
    // request is not retried, so fewer increments arrive than were sent.
    worker.record(50).unwrap();
    worker.sync().unwrap();
    let received = || -> f64 {
        setup.otlp().summary()["counters"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("requests{"))
            .map(|(_, v)| v.as_f64().unwrap_or(0.0))
            .sum()
    };
    assert!(
        testkit::poll(Duration::from_secs(20), || {
            setup.otlp().summary()["counters"]["appsignal.agent.rejected_exports{}"] == 1.0
                && received() >= 50.0
        }),
        "{}",
        setup.otlp().summary()
    );
    assert!(received() < 150.0, "the rejected request was sent again");
    worker.stop(Duration::from_secs(20)).unwrap();
    let log = setup.log();
    assert_eq!(
        log.matches("dropped: OTLP metrics export").count(),
        1,
        "{log}"
    );
    assert!(log.contains("answered 400"), "{log}");
    assert!(!log.contains(HEADER_SECRET));
}
