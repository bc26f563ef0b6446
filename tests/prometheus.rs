//! The leader's Prometheus endpoint, with real processes: worker processes record through the C
//! interface while leaders are SIGKILLed and others take over, and a plain HTTP client scrapes
//! the endpoint. Counters equal exactly what was acknowledged and never go back; the bearer token
//! and the loopback rule hold; the format follows `Accept`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use testkit::fleet::{self, WorkerProcess};
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
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request =
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".to_owned();
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

/// The samples of a text exposition: `name{labels}` → value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The series a worker's `requests{route=…,worker=…}` counter is exposed as.
fn exposed(series: &str) -> String {
    let (name, tags) = series.split_once('{').unwrap();
    let tags = tags.trim_end_matches('}');
    let mut labels = vec![
        ("appsignal_app".to_owned(), "demo-app".to_owned()),
        ("appsignal_env".to_owned(), "demo".to_owned()),
    ];
    labels.extend(tags.split(',').filter(|t| !t.is_empty()).map(|t| {
        let (k, v) = t.split_once('=').unwrap();
        (k.to_owned(), v.to_owned())
    }));
    labels.sort();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}_total{{{}}}", labels.join(","))
}

/// The counters of `expected` (the workers' acknowledged totals), as exposed.
fn expected_counters(expected: &Value) -> BTreeMap<String, f64> {
    expected["counters"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (exposed(k), v.as_f64().unwrap()))
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
        let leader = testkit::leader_index(&setup.workdir(), &workers).expect("a leader");
        workers[leader].child.kill().unwrap();
        workers[leader].wait(Duration::from_secs(10)).unwrap();
        workers.remove(leader);
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
}
