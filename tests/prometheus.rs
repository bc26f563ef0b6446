//! The leader's Prometheus endpoint, with real processes: worker processes record through the C
//! interface while leaders are SIGKILLed and others take over, and a plain HTTP client scrapes
//! the endpoint. Counters equal exactly what was acknowledged and never go back; the bearer token
//! and the loopback rule hold; the format follows `Accept`. The run with a real Prometheus
//! server also exports OTLP with the cumulative temporality to the Python receiver (the official
//! `opentelemetry-proto` classes decode it): the last point of every series is what was recorded,
//! from one start time and one `service.instance.id`, and no series goes back.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use testkit::exposition::{exposed, samples};
use testkit::fleet::{self, WorkerProcess};
use testkit::otlp_receiver::OtlpReceiver;
use testkit::setup::{stop_all, Setup};

const KEY: &str = "prometheus-test-secret-key";
const TOKEN: &str = "scrape-token-secret";

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `GET /metrics` with `headers`; `None` when nothing listens (or the answer is cut off).
fn get(port: u16, headers: &[(&str, &str)]) -> Option<Answer> {
    get_path(port, "/metrics", headers, "1.1")
}

/// `GET path` with `headers`, one request per connection; `version` `1.0` for a server that would
/// answer HTTP/1.1 in chunks (this client reads no chunks).
fn get_path(port: u16, path: &str, headers: &[(&str, &str)], version: &str) -> Option<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request =
        format!("GET {path} HTTP/{version}\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: Option<usize> =
        headers_get(&headers, "content-length").and_then(|v| v.parse().ok());
    if length.is_some_and(|n| n != body.len()) {
        return None;
    }
    Some(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

fn headers_get<'a>(headers: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    headers.get(name).map(String::as_str)
}

/// The counters of `expected` (the workers' acknowledged totals), as exposed.
fn expected_counters(expected: &Value) -> BTreeMap<String, f64> {
    expected["counters"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                exposed(k, &format!("{}_total", k.split('{').next().unwrap())),
                v.as_f64().unwrap(),
            )
        })
        .collect()
}

/// Scrapes and checks that no counter went back since `last`; returns whether it got an answer.
fn scrape_monotonic(port: u16, last: &mut BTreeMap<String, f64>) -> bool {
    let Some(answer) = get(port, &[]) else {
        return false;
    };
    if answer.status != 200 {
        return false;
    }
    for (series, value) in samples(&answer.body) {
        if !series.starts_with("requests_total") {
            continue;
        }
        let before = last.get(&series).copied().unwrap_or(0.0);
        assert!(
            value >= before,
            "{series} went back from {before} to {value}:\n{}",
            answer.body
        );
        last.insert(series, value);
    }
    true
}

/// What a test's workers acknowledged, by process.
#[derive(Default)]
struct Acked(BTreeMap<u32, Value>);

impl Acked {
    /// Every worker records `n` and syncs; what each acknowledged is kept.
    fn round(&mut self, workers: &mut [WorkerProcess], n: u64) {
        for w in workers.iter_mut() {
            w.send(&format!("record {n}")).unwrap();
        }
        for w in workers.iter_mut() {
            let totals = w.sync().unwrap();
            self.0.insert(w.pid, totals);
        }
    }

    /// Everything acknowledged so far (`counters`, `distributions`, … keyed like the workers'
    /// series).
    fn sent(&self) -> Value {
        let mut expected = Value::Null;
        for sent in self.0.values() {
            fleet::add_sent(&mut expected, sent);
        }
        expected
    }

    /// The counters acknowledged so far, as exposed.
    fn counters(&self) -> BTreeMap<String, f64> {
        expected_counters(&self.sent())
    }
}

/// SIGKILLs the leader among `workers` (what it recorded is acknowledged) and removes it.
fn kill_leader(setup: &Setup, workers: &mut Vec<WorkerProcess>) {
    let leader = testkit::leader_index(&setup.workdir(), workers).expect("a leader");
    workers[leader].child.kill().unwrap();
    workers[leader].wait(Duration::from_secs(10)).unwrap();
    workers.remove(leader);
}

#[test]
fn scrapes_equal_what_was_recorded_and_never_go_back_across_leader_kills() {
    let port = free_port();
    let setup = Setup::new(KEY, 500)
        .with("_APPSIGNAL_PROMETHEUS_PORT", &port.to_string())
        .with("_APPSIGNAL_LOG_LEVEL", "info");
    let mut next_index = 0;
    let mut spawn = || {
        next_index += 1;
        setup.spawn(next_index)
    };
    let mut workers: Vec<WorkerProcess> = (0..4).map(|_| spawn()).collect();
    let mut acked: BTreeMap<u32, Value> = BTreeMap::new();
    let mut last = BTreeMap::new();
    let mut answered = 0;
    let kills = 3;
    for round in 0..=kills {
        for w in workers.iter_mut() {
            w.send("record 30").unwrap();
        }
        for w in workers.iter_mut() {
            let totals = w.sync().unwrap();
            acked.insert(w.pid, totals);
            answered += u32::from(scrape_monotonic(port, &mut last));
        }
        if round == kills {
            break;
        }
        // A window of this round was pushed: it is in the cumulative state, not in the journal.
        let pushed = setup.receiver.summary()["payloads"].as_u64().unwrap_or(0);
        assert!(
            testkit::poll(Duration::from_secs(20), || {
                answered += u32::from(scrape_monotonic(port, &mut last));
                setup.receiver.summary()["payloads"].as_u64() > Some(pushed)
            }),
            "no window was pushed"
        );
        // SIGKILL the leader (everything it recorded is acknowledged), scrape through the
        // election, and replace it.
        kill_leader(&setup, &mut workers);
        for _ in 0..20 {
            answered += u32::from(scrape_monotonic(port, &mut last));
            std::thread::sleep(Duration::from_millis(25));
        }
        workers.push(spawn());
    }
    let mut expected = Value::Null;
    for sent in acked.values() {
        fleet::add_sent(&mut expected, sent);
    }
    let expected = expected_counters(&expected);
    // Four processes recorded 30 in each of the 1 + kills rounds.
    assert_eq!(
        expected.values().sum::<f64>(),
        f64::from(4 * 30 * (kills + 1))
    );
    let mut seen = BTreeMap::new();
    let equal = testkit::poll(Duration::from_secs(30), || {
        scrape_monotonic(port, &mut last);
        seen = last.clone();
        seen == expected
    });
    assert!(
        equal,
        "scraped {seen:#?}\nexpected {expected:#?}\n--- log ---\n{}",
        testkit::setup::tail(&setup.log(), 60)
    );
    assert!(answered > 0);
    let state_files = std::fs::read_dir(setup.workdir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("cumulative-"))
        .count();
    assert_eq!(state_files, 1, "one state: one app and environment");
    stop_all(&mut workers);
    assert!(!setup.log().contains(KEY));
}

#[test]
fn the_token_is_required_when_set_and_a_bind_beyond_loopback_needs_one() {
    // Beyond loopback without a token: refused, with one log line, and nothing listens.
    let port = free_port();
    let setup = Setup::new(KEY, 500)
        .with("_APPSIGNAL_PROMETHEUS_PORT", &port.to_string())
        .with("_APPSIGNAL_PROMETHEUS_BIND", "0.0.0.0");
    let mut workers = vec![setup.spawn(0)];
    setup.await_log("Prometheus endpoint refused", Duration::from_secs(10));
    assert!(get(port, &[]).is_none(), "nothing listens on {port}");
    stop_all(&mut workers);
    assert_eq!(
        setup.log().matches("Prometheus endpoint refused").count(),
        1,
        "{}",
        setup.log()
    );

    // With a token: 401 without it or with another, the metrics with it; in the format asked for.
    let port = free_port();
    let setup = Setup::new(KEY, 500)
        .with("_APPSIGNAL_PROMETHEUS_PORT", &port.to_string())
        .with("_APPSIGNAL_PROMETHEUS_BIND", "0.0.0.0")
        .with("_APPSIGNAL_PROMETHEUS_BEARER_TOKEN", TOKEN);
    let mut workers = vec![setup.spawn(0), setup.spawn(1)];
    for w in workers.iter_mut() {
        w.send("record 3").unwrap();
        w.sync().unwrap();
    }
    let bearer = format!("Bearer {TOKEN}");
    assert!(
        testkit::poll(Duration::from_secs(10), || get(port, &[]).is_some()),
        "the endpoint never listened"
    );
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", TOKEN)],
    ] {
        let answer = get(port, &headers).unwrap();
        assert_eq!(answer.status, 401, "{headers:?}");
        assert!(!answer.body.contains("requests"));
    }
    let text = get(port, &[("Authorization", &bearer)]).unwrap();
    assert_eq!(text.status, 200);
    assert_eq!(
        headers_get(&text.headers, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        text.body.contains("# TYPE requests_total counter"),
        "{}",
        text.body
    );
    assert!(!text.body.contains("# EOF"));
    // What Prometheus sends: OpenMetrics first.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let open = get(port, &[("Authorization", &bearer), ("Accept", accept)]).unwrap();
    assert_eq!(open.status, 200);
    assert_eq!(
        headers_get(&open.headers, "content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(
        open.body.contains("# TYPE requests counter"),
        "{}",
        open.body
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    // The same counts in both.
    let counters = |body: &str| -> BTreeMap<String, f64> {
        samples(body)
            .into_iter()
            .filter(|(k, _)| k.starts_with("requests_total"))
            .collect()
    };
    assert_eq!(counters(&text.body), counters(&open.body));
    assert_eq!(counters(&text.body).values().sum::<f64>(), 6.0);
    stop_all(&mut workers);
    let log = setup.log();
    assert!(!log.contains(TOKEN) && !log.contains(KEY));
    // The token travelled in the handshake only: no file of the working directory (journal
    // headers, cached payloads, the cumulative state) holds it.
    let mut dirs = vec![setup.workdir()];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files += 1;
                let found = bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes());
                assert!(!found, "the token is in {}", path.display());
            }
        }
    }
    assert!(files > 0);
}

/// `s` for a URL's query string.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server (Debian's `prometheus` package) scraping `target` every second, with its
/// data in `dir`; killed when dropped.
struct PrometheusServer {
    child: std::process::Child,
    port: u16,
}

impl PrometheusServer {
    /// `None` (skipped) without the binary, except under `CI`, where that fails.
    fn start(dir: &std::path::Path, target: u16) -> Option<PrometheusServer> {
        let exe = std::path::Path::new("/usr/bin/prometheus");
        if !exe.exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "no /usr/bin/prometheus (.ci/run installs Debian's prometheus package)"
            );
            eprintln!("SKIPPED: no /usr/bin/prometheus (apt-get install prometheus)");
            return None;
        }
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: appsignal\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = std::process::Command::new(exe)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = PrometheusServer { child, port };
        assert!(
            testkit::poll(Duration::from_secs(60), || server.query("up").is_some()),
            "the Prometheus server never answered"
        );
        Some(server)
    }

    /// The instant vector of `query`: (labels, value); `None` when the server does not answer.
    fn query(&self, query: &str) -> Option<Vec<(Value, f64)>> {
        let path = format!("/api/v1/query?query={}", url_encode(query));
        let answer = get_path(self.port, &path, &[], "1.0")?;
        let v: Value = serde_json::from_str(&answer.body).ok()?;
        if v["status"] != "success" {
            return None;
        }
        v["data"]["result"]
            .as_array()?
            .iter()
            .map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?)))
            .collect()
    }

    /// `requests_total` per series, named as the endpoint exposes it.
    fn requests(&self) -> BTreeMap<String, f64> {
        let Some(result) = self.query("requests_total") else {
            return BTreeMap::new();
        };
        result
            .into_iter()
            .map(|(metric, value)| {
                let mut labels: Vec<(String, String)> = metric
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| !["__name__", "job", "instance"].contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                labels.sort();
                let labels: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                (format!("requests_total{{{}}}", labels.join(",")), value)
            })
            .collect()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One series' cumulative OTLP points as the receiver lists them: (time, start, value), in the
/// order of their time.
type Points = Vec<(u64, u64, f64)>;

/// The cumulative points of `kind` (`cumulative_sums`, `cumulative_histograms`: the value is the
/// histogram's count) per series, each sorted by time; checks that every sum is monotonic.
fn cumulative_points(summary: &Value, kind: &str) -> BTreeMap<String, Points> {
    let Some(all) = summary[kind].as_object() else {
        return BTreeMap::new();
    };
    all.iter()
        .map(|(series, points)| {
            let mut points: Points = points
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    if kind == "cumulative_sums" {
                        assert_eq!(p[3], true, "{series}: a counter is a monotonic sum: {p}");
                    }
                    (
                        p[0].as_u64().unwrap(),
                        p[1].as_u64().unwrap(),
                        p[2].as_f64().unwrap(),
                    )
                })
                .collect();
            points.sort_by_key(|p| p.0);
            (series.clone(), points)
        })
        .collect()
}

/// The value of the latest point of every series of `points`.
fn latest(points: &BTreeMap<String, Points>) -> BTreeMap<String, f64> {
    points
        .iter()
        .filter_map(|(series, p)| Some((series.clone(), p.last()?.2)))
        .collect()
}

/// What the cumulative OTLP export of the whole run must show, once its last point of every series
/// is what was recorded (`expected`: the workers' acknowledged totals).
fn assert_cumulative_otlp(otlp: &OtlpReceiver, expected: &Value, log: impl Fn() -> String) {
    let want: BTreeMap<String, f64> = expected["counters"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    let want_counts: BTreeMap<String, f64> = expected["distributions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["count"].as_f64().unwrap()))
        .collect();
    // The transmissions after the last round carry every total: the latest points are the totals.
    let mut summary = Value::Null;
    let arrived = testkit::poll(Duration::from_secs(30), || {
        summary = otlp.summary();
        latest(&cumulative_points(&summary, "cumulative_sums")) == want
            && latest(&cumulative_points(&summary, "cumulative_histograms")) == want_counts
    });
    let sums = cumulative_points(&summary, "cumulative_sums");
    let histograms = cumulative_points(&summary, "cumulative_histograms");
    assert!(
        arrived,
        "latest cumulative points {:#?} {:#?}\nexpected {want:#?} {want_counts:#?}\n--- log ---\n{}",
        latest(&sums),
        latest(&histograms),
        log()
    );
    // Every request carries every series, also those whose totals stopped growing: the first
    // workers' series have points from several leaders.
    assert!(sums.values().any(|p| p.len() > 2), "{sums:?}");
    for (series, points) in sums.iter().chain(&histograms) {
        // One start per series, whichever leader built the point: a leader change is no reset.
        let starts: std::collections::BTreeSet<u64> = points.iter().map(|p| p.1).collect();
        assert_eq!(starts.len(), 1, "{series}: starts {starts:?} in {points:?}");
        // In time order, a total never goes back.
        for pair in points.windows(2) {
            assert!(
                pair[1].2 >= pair[0].2,
                "{series} went back from {:?} to {:?}",
                pair[0],
                pair[1]
            );
        }
        assert!(points.iter().all(|p| p.0 >= p.1), "{series}: {points:?}");
    }
    // Every sum and histogram was cumulative (the agent's own counts are gauges then).
    let temporalities = summary["temporalities"].as_array().unwrap();
    assert!(!temporalities.is_empty());
    for t in temporalities {
        assert_eq!(t[1], 2, "a delta point arrived: {temporalities:?}");
    }
    // One `service.instance.id`, in every request, from every leader.
    let ids = summary["metrics_instance_ids"].as_array().unwrap();
    assert!(ids.len() > 1);
    let first = &ids[0];
    assert_eq!(first.as_array().map(Vec::len), Some(1), "{first}");
    assert!(ids.iter().all(|id| id == first), "{ids:?}");
    assert!(summary["bad_requests"] == 0, "{summary}");
}

#[test]
fn a_real_prometheus_server_sees_exact_totals_and_no_reset_across_leader_kills() {
    const TEST: &str =
        "a_real_prometheus_server_sees_exact_totals_and_no_reset_across_leader_kills";
    let port = free_port();
    // The same run exports OTLP, cumulative, when a Python with the official classes is there.
    let otlp =
        testkit::otlp_python_or_skip(TEST).map(|python| OtlpReceiver::start(&python).unwrap());
    let mut setup = Setup::new(KEY, 500)
        .with("_APPSIGNAL_PROMETHEUS_PORT", &port.to_string())
        .with("_APPSIGNAL_LOG_LEVEL", "info");
    if let Some(otlp) = &otlp {
        setup = setup
            .with("_APPSIGNAL_EXPORTER", "push,otlp")
            .with("_APPSIGNAL_OTLP_ENDPOINT", &otlp.url)
            .with(
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "Cumulative",
            );
    }
    let Some(server) = PrometheusServer::start(setup.tmp.path(), port) else {
        return;
    };
    let mut next_index = 0;
    let mut spawn = || {
        next_index += 1;
        setup.spawn(next_index)
    };
    let mut workers: Vec<WorkerProcess> = (0..3).map(|_| spawn()).collect();
    let mut acked = Acked::default();
    let kills = 3;
    for round in 0..=kills {
        acked.round(&mut workers, 20);
        // Prometheus has scraped this round's totals (read through its own API).
        let expected = acked.counters();
        let mut seen = BTreeMap::new();
        let scraped = testkit::poll(Duration::from_secs(30), || {
            seen = server.requests();
            seen == expected
        });
        assert!(
            scraped,
            "round {round}: Prometheus has {seen:#?}\nexpected {expected:#?}\n--- targets ---\n{}\n--- log ---\n{}",
            get_path(server.port, "/api/v1/targets", &[], "1.0").map_or_else(String::new, |a| a.body)
                + &get(port, &[("Accept", "application/openmetrics-text")])
                    .map_or_else(String::new, |a| a.body)
                + &format!("{:?}", server.query("count by (__name__) ({job=\"appsignal\"})")),
            testkit::setup::tail(&setup.log(), 40)
        );
        if round < kills {
            kill_leader(&setup, &mut workers);
            workers.push(spawn());
        }
    }
    let expected = acked.counters();
    assert_eq!(
        expected.values().sum::<f64>(),
        f64::from(3 * 20 * (kills + 1))
    );
    assert_eq!(server.requests(), expected);
    // No counter reset over the whole run, by Prometheus' own reckoning.
    let resets = server.query("resets(requests_total[1h])").unwrap();
    assert_eq!(resets.len(), expected.len());
    assert!(resets.iter().all(|(_, n)| *n == 0.0), "{resets:?}");
    if let Some(otlp) = &otlp {
        assert_cumulative_otlp(otlp, &acked.sent(), || {
            testkit::setup::tail(&setup.log(), 40)
        });
    }
    stop_all(&mut workers);
}

#[test]
fn a_leader_without_the_setting_serves_the_endpoint_a_connected_process_asks_for() {
    let port = free_port();
    let setup = Setup::new(KEY, 500);
    let mut workers = vec![setup.spawn(0)];
    assert_eq!(workers[0].role, "leader");
    let mut env = setup.env.clone();
    env.push(("_APPSIGNAL_PROMETHEUS_PORT".into(), port.to_string()));
    let asking = WorkerProcess::spawn(&testkit::worker_exe(), &["1".into()], &env).unwrap();
    assert_eq!(asking.role, "client");
    workers.push(asking);
    for w in workers.iter_mut() {
        w.send("record 3").unwrap();
        w.sync().unwrap();
    }
    let mut body = String::new();
    assert!(
        testkit::poll(Duration::from_secs(10), || {
            body = get(port, &[]).map(|a| a.body).unwrap_or_default();
            samples(&body)
                .iter()
                .filter(|(k, _)| k.starts_with("requests_total"))
                .map(|(_, v)| v)
                .sum::<f64>()
                == 6.0
        }),
        "the leader did not serve what the client asked for: {body}"
    );
    stop_all(&mut workers);
}
