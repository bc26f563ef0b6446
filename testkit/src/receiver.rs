//! The reference Push API receiver: accepts `POST /1/collect` on 127.0.0.1, checks the key,
//! gunzips, de-duplicates by payload id, stores each payload as `{payload_id}.json` in a directory
//! (when given one), and keeps totals per metric name + tags. `GET /summary` answers them as JSON;
//! `POST /control/fail?count=N&status=S` makes the next N pushes fail with status S (for tests).
//!
//! Used by the `receiver` example and test bin, the demo and the integration tests.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// Largest request body accepted (compressed).
const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Default)]
struct Totals {
    payloads: u64,
    duplicates: u64,
    unauthorized: u64,
    bad_requests: u64,
    failed_on_purpose: u64,
    counters: BTreeMap<String, f64>,
    /// key -> (window end, value): the gauge of the latest window wins.
    gauges: BTreeMap<String, (u64, f64)>,
    distributions: BTreeMap<String, (u64, f64, f64, f64)>,
    dropped_updates: u64,
    payload_cache_evictions: u64,
    rejected_frames: u64,
    rejected_exports: u64,
    samples: u64,
    logs: u64,
    dropped_samples: u64,
    dropped_logs: u64,
    dropped_batches: u64,
    refused_connections: u64,
    poisoned_batches: u64,
    cumulative_refused_series: u64,
    cumulative_expired_series: u64,
    apps: BTreeMap<String, u64>,
}

struct State {
    key: String,
    dir: Option<PathBuf>,
    seen: HashSet<String>,
    fail_next: u32,
    fail_status: u16,
    /// `Retry-After` (seconds) sent with the failures on purpose, if any.
    fail_retry_after: Option<u64>,
    totals: Totals,
}

pub struct Receiver {
    pub url: String,
    server: Arc<tiny_http::Server>,
    state: Arc<Mutex<State>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The receiver as a program: `[--listen 127.0.0.1:8099] [--key KEY] [--dir DIR]`. Prints its URL,
/// then serves until killed.
pub fn run_cli() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:8099".to_owned();
    let mut key = "demo-key".to_owned();
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--key" => key = args.next().unwrap_or(key),
            "--dir" => dir = args.next().map(PathBuf::from),
            other => anyhow::bail!("unknown argument {other:?}; expected --listen, --key, --dir"),
        }
    }
    let receiver = Receiver::bind(&listen, &key, dir)?;
    println!(
        "receiver listening on {} (push key {key:?}); GET {}/summary for totals",
        receiver.url, receiver.url
    );
    loop {
        std::thread::park();
    }
}

/// `name{k=v,k2=v2}`: how the receiver names a metric series.
pub fn series(name: &str, tags: &Value) -> String {
    let mut pairs: Vec<String> = tags
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    format!("{name}{{{}}}", pairs.join(","))
}

fn query(url: &str) -> BTreeMap<String, String> {
    let Some((_, q)) = url.split_once('?') else {
        return BTreeMap::new();
    };
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Receiver {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub fn start(key: &str, dir: Option<PathBuf>) -> anyhow::Result<Receiver> {
        Self::bind("127.0.0.1:0", key, dir)
    }

    pub fn bind(addr: &str, key: &str, dir: Option<PathBuf>) -> anyhow::Result<Receiver> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d)?;
        }
        let server = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
        );
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or_else(|| anyhow::anyhow!("not an IP listener"))?;
        let state = Arc::new(Mutex::new(State {
            key: key.to_owned(),
            dir,
            seen: HashSet::new(),
            fail_next: 0,
            fail_status: 500,
            fail_retry_after: None,
            totals: Totals::default(),
        }));
        let (srv, st) = (Arc::clone(&server), Arc::clone(&state));
        let thread = std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                handle(&st, request);
            }
        });
        Ok(Receiver {
            url: format!("http://127.0.0.1:{port}"),
            server,
            state,
            thread: Some(thread),
        })
    }

    /// Makes the next `count` pushes fail with `status`.
    /// Answers the next `count` pushes with `status` and, when given, `Retry-After: seconds`.
    pub fn fail_next_with_retry_after(&self, count: u32, status: u16, seconds: u64) {
        let mut s = self.state.lock().unwrap();
        s.fail_next = count;
        s.fail_status = status;
        s.fail_retry_after = Some(seconds);
    }

    /// From now on accepts `key` (and answers 401 to any other): a key fixed on the server.
    pub fn set_key(&self, key: &str) {
        self.state.lock().unwrap().key = key.to_owned();
    }

    pub fn fail_next(&self, count: u32, status: u16) {
        let mut s = self.state.lock().unwrap();
        s.fail_next = count;
        s.fail_status = status;
        s.fail_retry_after = None;
    }

    pub fn summary(&self) -> Value {
        summary(&self.state.lock().unwrap())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn summary(s: &State) -> Value {
    let t = &s.totals;
    json!({
        "payloads": t.payloads,
        "duplicates": t.duplicates,
        "unauthorized": t.unauthorized,
        "bad_requests": t.bad_requests,
        "failed_on_purpose": t.failed_on_purpose,
        "counters": t.counters,
        "gauges": t.gauges.iter().map(|(k, (_, v))| (k.clone(), json!(v))).collect::<BTreeMap<_, _>>(),
        "distributions": t.distributions.iter().map(|(k, (count, sum, min, max))| {
            (k.clone(), json!({"count": count, "sum": sum, "min": min, "max": max}))
        }).collect::<BTreeMap<_, _>>(),
        "dropped_updates": t.dropped_updates,
        "payload_cache_evictions": t.payload_cache_evictions,
        "rejected_frames": t.rejected_frames,
        "rejected_exports": t.rejected_exports,
        "samples": t.samples,
        "logs": t.logs,
        "dropped_samples": t.dropped_samples,
        "dropped_logs": t.dropped_logs,
        "dropped_batches": t.dropped_batches,
        "refused_connections": t.refused_connections,
        "poisoned_batches": t.poisoned_batches,
        "cumulative_refused_series": t.cumulative_refused_series,
        "cumulative_expired_series": t.cumulative_expired_series,
        "apps": t.apps,
    })
}

fn respond(request: tiny_http::Request, status: u16, body: String) {
    let response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(
            tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("static header is valid"),
        );
    let _ = request.respond(response);
}

fn handle(state: &Mutex<State>, mut request: tiny_http::Request) {
    let url = request.url().to_owned();
    let path = url.split('?').next().unwrap_or_default().to_owned();
    let params = query(&url);
    match (request.method(), path.as_str()) {
        (tiny_http::Method::Get, "/summary") => {
            let body = summary(&state.lock().unwrap()).to_string();
            respond(request, 200, body);
        }
        (tiny_http::Method::Post, "/control/fail") => {
            let count = params
                .get("count")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            let status = params
                .get("status")
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            let mut s = state.lock().unwrap();
            s.fail_next = count;
            s.fail_status = status;
            respond(request, 200, "{}".into());
        }
        (tiny_http::Method::Post, "/1/collect") => {
            let mut gz = Vec::new();
            let read = request
                .as_reader()
                .take(MAX_BODY_BYTES)
                .read_to_end(&mut gz);
            let (status, body) = collect(state, &params, read.map(|_| gz));
            let retry_after = state.lock().unwrap().fail_retry_after;
            match retry_after {
                Some(seconds) if status == 429 || status == 503 => {
                    let header = tiny_http::Header::from_bytes(
                        &b"Retry-After"[..],
                        seconds.to_string().as_bytes(),
                    )
                    .expect("a number is a valid header value");
                    let response = tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header);
                    let _ = request.respond(response);
                }
                _ => respond(request, status, body),
            }
        }
        _ => respond(request, 404, r#"{"error":"not found"}"#.into()),
    }
}

fn collect(
    state: &Mutex<State>,
    params: &BTreeMap<String, String>,
    body: std::io::Result<Vec<u8>>,
) -> (u16, String) {
    let mut s = state.lock().unwrap();
    if params.get("api_key") != Some(&s.key) {
        s.totals.unauthorized += 1;
        return (401, r#"{"error":"invalid push api key"}"#.into());
    }
    if s.fail_next > 0 {
        s.fail_next -= 1;
        s.totals.failed_on_purpose += 1;
        return (s.fail_status, r#"{"error":"failing on purpose"}"#.into());
    }
    let mut json = String::new();
    let decoded =
        body.and_then(|gz| flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut json));
    let payload: Value = match decoded
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&json).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            s.totals.bad_requests += 1;
            return (400, json!({"error": e}).to_string());
        }
    };
    let Some(id) = payload["payload_id"].as_str().map(str::to_owned) else {
        s.totals.bad_requests += 1;
        return (400, r#"{"error":"payload_id missing"}"#.into());
    };
    if params.get("payload_id") != Some(&id) {
        s.totals.bad_requests += 1;
        return (
            400,
            r#"{"error":"payload_id differs from the query"}"#.into(),
        );
    }
    if !s.seen.insert(id.clone()) {
        s.totals.duplicates += 1;
        return (200, r#"{"status":"duplicate"}"#.into());
    }
    if let Some(dir) = &s.dir {
        let _ = std::fs::write(dir.join(format!("{id}.json")), &json);
    }
    let t = &mut s.totals;
    t.payloads += 1;
    *t.apps
        .entry(payload["app_name"].as_str().unwrap_or_default().to_owned())
        .or_default() += 1;
    let window_end = payload["window"]["end_ms"].as_u64().unwrap_or(0);
    for c in payload["counters"].as_array().into_iter().flatten() {
        *t.counters
            .entry(series(c["name"].as_str().unwrap_or_default(), &c["tags"]))
            .or_default() += c["value"].as_f64().unwrap_or(0.0);
    }
    for g in payload["gauges"].as_array().into_iter().flatten() {
        let key = series(g["name"].as_str().unwrap_or_default(), &g["tags"]);
        let value = g["value"].as_f64().unwrap_or(0.0);
        let entry = t.gauges.entry(key).or_insert((window_end, value));
        if window_end >= entry.0 {
            *entry = (window_end, value);
        }
    }
    for d in payload["distributions"].as_array().into_iter().flatten() {
        let key = series(d["name"].as_str().unwrap_or_default(), &d["tags"]);
        let (count, sum) = (
            d["count"].as_u64().unwrap_or(0),
            d["sum"].as_f64().unwrap_or(0.0),
        );
        let (min, max) = (
            d["min"].as_f64().unwrap_or(0.0),
            d["max"].as_f64().unwrap_or(0.0),
        );
        let e = t
            .distributions
            .entry(key)
            .or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
        e.0 += count;
        e.1 += sum;
        e.2 = e.2.min(min);
        e.3 = e.3.max(max);
    }
    t.dropped_updates += payload["agent"]["dropped_updates"].as_u64().unwrap_or(0);
    t.payload_cache_evictions += payload["agent"]["payload_cache_evictions"]
        .as_u64()
        .unwrap_or(0);
    t.rejected_frames += payload["agent"]["rejected_frames"].as_u64().unwrap_or(0);
    t.rejected_exports += payload["agent"]["rejected_exports"].as_u64().unwrap_or(0);
    t.samples += payload["samples"].as_array().map_or(0, |a| a.len() as u64);
    t.logs += payload["logs"].as_array().map_or(0, |a| a.len() as u64);
    t.dropped_samples += payload["agent"]["dropped_samples"].as_u64().unwrap_or(0);
    t.dropped_logs += payload["agent"]["dropped_logs"].as_u64().unwrap_or(0);
    t.dropped_batches += payload["agent"]["dropped_batches"].as_u64().unwrap_or(0);
    t.refused_connections += payload["agent"]["refused_connections"]
        .as_u64()
        .unwrap_or(0);
    t.poisoned_batches += payload["agent"]["poisoned_batches"].as_u64().unwrap_or(0);
    t.cumulative_refused_series += payload["agent"]["cumulative_refused_series"]
        .as_u64()
        .unwrap_or(0);
    t.cumulative_expired_series += payload["agent"]["cumulative_expired_series"]
        .as_u64()
        .unwrap_or(0);
    (200, r#"{"status":"ok"}"#.into())
}
