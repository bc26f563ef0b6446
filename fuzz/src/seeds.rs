//! The seed corpus: real inputs for each target, made with the agent's own code (frames encoded by
//! `protocol::encode` from messages built the way a client builds them, log lines from
//! `apm::log::build_line`). `cargo run -p appsignal-fuzz --bin fuzz_seeds` writes them to
//! `fuzz/corpus/<target>/`; the files are committed so that AFL and the replay test start from them.

use appsignal_agent::apm::log;
use appsignal_agent::data::Data;
use appsignal_agent::export_config::ExportConfig;
use appsignal_agent::metrics::LocalMetrics;
use appsignal_agent::protocol::{self, Batch, ClientMessage, GaugeValue, Hello, PROTOCOL_VERSION};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;

fn push_config() -> ExportConfig {
    ExportConfig {
        push_api_key: "seed-key".into(),
        app_name: "shop".into(),
        environment: "production".into(),
        endpoint: "https://push.appsignal.com".into(),
        hostname: "web-1".into(),
        revision: "abc123".into(),
        ..ExportConfig::default()
    }
}

fn hello(client_id: u64) -> ClientMessage {
    ClientMessage::Hello(Hello {
        protocol_version: appsignal_agent::protocol::OLDEST_PROTOCOL,
        protocol: Some(PROTOCOL_VERSION),
        library_version: appsignal_agent::VERSION.into(),
        client_id,
        pid: 4242,
        config: push_config(),
    })
}

fn tags(pairs: &[(&str, &str)]) -> Data {
    let mut map = Data::new_map();
    for (k, v) in pairs {
        map.map_set((*k).into(), Data::String((*v).into()));
    }
    map
}

/// A batch made as the client makes one: the app's calls go into the pre-aggregate, which is taken.
fn batch(client_id: u64, seq: u64, scale: usize) -> ClientMessage {
    let metrics = LocalMetrics::default();
    for i in 0..scale {
        let route = format!("/route/{}", i % 3);
        let t = appsignal_agent::data::DataBuf::from(&tags(&[("route", &route), ("worker", "0")]));
        metrics.increment_counter(b"requests", 1.0, Some(&t));
        metrics.set_gauge(b"queue_length", i as f64, None);
        metrics.add_distribution_value(b"response_time", 0.5 + i as f64 * 3.25, Some(&t));
        metrics.add_distribution_value(b"payload_bytes", 1e6 / (i as f64 + 1.0), None);
    }
    if scale > 0 {
        let mut attributes = Data::new_map();
        attributes.map_set("user_id".into(), Data::Integer(17));
        let mut line = log::build_line(
            "app",
            3,
            3,
            "user=17 action=checkout duration=12.5",
            Some(&attributes),
        );
        // A fixed time, so that the committed seeds are reproducible.
        line.timestamp = 1_700_000_000_000;
        metrics.submit_log(line);
        let sample = serde_json::json!({
            "kind": "transaction", "id": "txn-1", "namespace": "web", "action": "GET /checkout",
            "start": 1_700_000_000_000u64, "end": 1_700_000_000_012u64, "duration": 12.5,
            "dropped_events": 0, "hostname": "web-1", "revision": "abc123",
            "environment_metadata": {}, "metadata": {}, "sample_data": {},
            "events": [{"name": "sql.active_record", "group": "active_record", "title": "",
                        "body": "SELECT ?", "body_format": 1, "start": 0.5, "duration": 3.0,
                        "gc_duration": 0, "children": []}]
        });
        metrics.submit_sample(
            appsignal_agent::sample::Sample::from_json(&sample.to_string())
                .expect("a valid sample"),
        );
    }
    let taken = metrics.take();
    let created_ms = 1_700_000_000_000 + seq * 100;
    ClientMessage::Batch(Batch {
        client_id,
        seq,
        created_ms,
        counters: taken.counters,
        gauges: taken
            .gauges
            .into_iter()
            .map(|(k, value)| {
                (
                    k,
                    GaugeValue {
                        value,
                        at_ms: created_ms,
                    },
                )
            })
            .collect(),
        distributions: taken.distributions,
        dropped_updates: taken.dropped_updates,
        samples: taken.samples.into_iter().map(|(s, _)| s).collect(),
        logs: taken.logs.into_iter().map(|(l, _)| l).collect(),
        dropped_samples: taken.dropped_samples,
        dropped_logs: taken.dropped_logs,
        dropped_batches: 0,
    })
}

fn frames(messages: &[ClientMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        // Seeds are small: encoding cannot exceed the frame limit.
        if let Ok(frame) = protocol::encode(m) {
            out.extend_from_slice(&frame);
        }
    }
    out
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn otlp_span(trace: u8, id: u8, parent: u8, name: &str, kind: span::SpanKind) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if parent == 0 {
            Vec::new()
        } else {
            vec![parent; 8]
        },
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: 1_767_225_600_000_000_000 + u64::from(id) * 1_000_000,
        end_time_unix_nano: 1_767_225_600_500_000_000,
        ..Default::default()
    }
}

fn traces(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "shop-py")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A request as an SDK sends one: a SERVER root, a SQL child, a child with an exception and a
/// child of its own, a span of another trace whose parent is elsewhere.
fn checkout_traces() -> ExportTraceServiceRequest {
    let mut sql = otlp_span(1, 2, 1, "SELECT users", span::SpanKind::Client);
    sql.attributes = vec![
        kv("db.query.text", "SELECT * FROM users WHERE id = 42"),
        kv("db.system.name", "postgresql"),
    ];
    let mut charge = otlp_span(1, 3, 1, "charge card", span::SpanKind::Internal);
    charge.events = vec![span::Event {
        name: "exception".into(),
        attributes: vec![
            kv("exception.type", "PaymentDeclined"),
            kv("exception.message", "card declined"),
            kv("exception.stacktrace", "Traceback\n  pay.py:3"),
        ],
        ..Default::default()
    }];
    charge.status = Some(Status {
        code: status::StatusCode::Error as i32,
        message: "declined".into(),
    });
    let mut root = otlp_span(1, 1, 0, "GET /checkout", span::SpanKind::Server);
    root.attributes = vec![
        kv("http.route", "/checkout"),
        kv("appsignal.tag.user", "u-17"),
        kv("appsignal.namespace", "web"),
    ];
    traces(vec![
        otlp_span(1, 4, 3, "POST api", span::SpanKind::Client),
        sql,
        charge,
        root,
        otlp_span(2, 9, 8, "late child", span::SpanKind::Consumer),
    ])
}

/// `request` in OTLP/JSON as SDKs write it (camelCase, 64-bit integers as strings, ids as hex),
/// for what the seeds hold: string attributes, spans with events and a status.
fn otlp_json(request: &ExportTraceServiceRequest) -> serde_json::Value {
    use serde_json::{json, Value};
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let attributes = |kvs: &[KeyValue]| -> Value {
        kvs.iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => json!({"stringValue": s}),
                    _ => json!({}),
                };
                json!({"key": kv.key, "value": value})
            })
            .collect()
    };
    let span = |s: &Span| -> Value {
        let events: Value = s
            .events
            .iter()
            .map(|e| {
                json!({"timeUnixNano": e.time_unix_nano.to_string(), "name": e.name,
                       "attributes": attributes(&e.attributes)})
            })
            .collect();
        json!({
            "traceId": hex(&s.trace_id), "spanId": hex(&s.span_id),
            "parentSpanId": hex(&s.parent_span_id), "name": s.name, "kind": s.kind,
            "startTimeUnixNano": s.start_time_unix_nano.to_string(),
            "endTimeUnixNano": s.end_time_unix_nano.to_string(),
            "attributes": attributes(&s.attributes), "events": events,
            "status": s.status.as_ref().map(|st| json!({"code": st.code, "message": st.message})),
        })
    };
    let resource_spans: Value = request
        .resource_spans
        .iter()
        .map(|r| {
            let scope_spans: Value = r
                .scope_spans
                .iter()
                .map(|ss| json!({"spans": ss.spans.iter().map(span).collect::<Value>()}))
                .collect();
            json!({
                "resource": r.resource.as_ref().map(|res| json!({"attributes": attributes(&res.attributes)})),
                "scopeSpans": scope_spans,
            })
        })
        .collect();
    json!({ "resourceSpans": resource_spans })
}

/// (target, file name, bytes) of every seed.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        seeds.push((target, name.to_owned(), bytes));
    };

    // frame: a handshake alone, a handshake and batches, an empty batch, a truncated conversation.
    add("frame", "hello", frames(&[hello(7)]));
    add("frame", "hello-batch", frames(&[hello(7), batch(7, 1, 4)]));
    add(
        "frame",
        "hello-three-batches",
        frames(&[hello(9), batch(9, 1, 1), batch(9, 2, 8), batch(9, 3, 0)]),
    );
    add(
        "frame",
        "hello-empty-batch",
        frames(&[hello(3), batch(3, 1, 0)]),
    );
    let mut cut = frames(&[hello(5), batch(5, 1, 2)]);
    cut.truncate(cut.len() - 7);
    add("frame", "truncated", cut);

    // traceparent
    for (name, header) in [
        (
            "valid",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        (
            "unsampled",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ),
        (
            "future-version",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ),
        (
            "zero-trace",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        ),
        (
            "uppercase",
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        ),
        (
            "spaces",
            "  00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ",
        ),
    ] {
        add("traceparent", name, header.as_bytes().to_vec());
    }

    // sql
    for (name, query) in [
        ("select", "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = 42 AND name = 'O''Brien' LIMIT 1"),
        ("in-list", "SELECT * FROM t WHERE id IN (1, 2, 3) AND x > -1.5e3"),
        ("insert", "INSERT INTO posts (title, body) VALUES ('a', E'b\\'c'), ('d', 'e') RETURNING id"),
        ("dollar", "SELECT $tag$it's$tag$, $$x$$, $1, :name FROM t -- comment 'x'\n/* c */ WHERE a = 0x1F"),
        ("mysql", "UPDATE `t` SET `a` = 'x\\'y', b = TRUE WHERE c IS NULL"),
        ("unterminated", "SELECT 'abc FROM t /* never closed"),
    ] {
        add("sql", name, query.as_bytes().to_vec());
    }

    // data: message, 0xff, then the tree program (see `build_data`).
    let program: Vec<u8> = vec![
        4, 4, b'n', b'a', b'm', b'e', 3, b'b', b'o', b'b', // "name": "bob"
        2, 2, b'i', b'd', 42, 0, 0, 0, 0, 0, 0, 0, // "id": 42
        6, 6, b'p', b'a', b'r', b'a', b'm', b's', // "params": {
        4, 8, b'p', b'a', b's', b's', b'w', b'o', b'r', b'd', 2, b'x',
        b'y', // "password": "xy"
        7, 4, b'l', b'i', b's', b't', // "list": [
        1, 3, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f, 0, // true, NaN, null
        8, 8, // ] }
    ];
    let mut with_logfmt = b"user=17 action=\"check out\" ok".to_vec();
    with_logfmt.push(0xff);
    with_logfmt.extend_from_slice(&program);
    add("data", "logfmt-and-tree", with_logfmt);
    let mut with_json = br#"{"a": 1, "b": [true, null], "c": {"d": "e"}}"#.to_vec();
    with_json.push(0xff);
    with_json.extend_from_slice(&program);
    add("data", "json-and-tree", with_json);
    add("data", "tree-only", program);

    // config: `<index><value>` lines (index into CONFIG_KEYS).
    let index = |key: &str| {
        crate::CONFIG_KEYS
            .iter()
            .position(|k| *k == key)
            .map_or(0, |i| i as u8)
    };
    let mut lines = Vec::new();
    for (key, value) in [
        ("_APPSIGNAL_ACTIVE", "true"),
        ("_APPSIGNAL_PUSH_API_KEY", "x"),
        ("_APPSIGNAL_APP_NAME", "shop"),
        ("_APPSIGNAL_TRANSMISSION_INTERVAL_MS", "500"),
        ("_APPSIGNAL_FILES_WORLD_ACCESSIBLE", "maybe"),
        ("_APPSIGNAL_LOG_LEVEL", "verbose"),
        ("_APPSIGNAL_SAMPLE_RATE", "NaN"),
        ("_APPSIGNAL_IGNORE_ACTIONS", "GET /health, ,POST /x"),
        (
            "_APPSIGNAL_PUSH_API_ENDPOINT",
            "http://127.0.0.1:1/?api_key=oops",
        ),
        ("_APPSIGNAL_PAYLOAD_CACHE_MAX_BYTES", "18446744073709551616"),
    ] {
        lines.push(index(key));
        lines.extend_from_slice(value.as_bytes());
        lines.push(b'\n');
    }
    add("config", "typical", lines);

    // otlp_traces: protobuf and OTLP/JSON bodies, a cycle and duplicate ids, a deep chain.
    let checkout = checkout_traces();
    add("otlp_traces", "checkout.pb", checkout.encode_to_vec());
    add(
        "otlp_traces",
        "checkout.json",
        otlp_json(&checkout).to_string().into_bytes(),
    );
    let tangled = traces(vec![
        otlp_span(3, 1, 2, "cycle a", span::SpanKind::Internal),
        otlp_span(3, 2, 1, "cycle b", span::SpanKind::Internal),
        otlp_span(3, 3, 3, "own parent", span::SpanKind::Internal),
        otlp_span(3, 4, 0, "root", span::SpanKind::Internal),
        otlp_span(3, 4, 0, "same id", span::SpanKind::Internal),
    ]);
    add("otlp_traces", "tangled.pb", tangled.encode_to_vec());
    let chain = traces(
        (1..=40u8)
            .map(|i| otlp_span(4, i, i - 1, "level", span::SpanKind::Internal))
            .collect(),
    );
    add("otlp_traces", "chain.pb", chain.encode_to_vec());
    seeds
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_json_seed_decodes_to_the_protobuf_seed() {
        let checkout = super::checkout_traces();
        let json = super::otlp_json(&checkout).to_string();
        assert_eq!(
            appsignal_agent::intake::otlp_json::trace_request(json.as_bytes()).unwrap(),
            checkout
        );
    }
}
