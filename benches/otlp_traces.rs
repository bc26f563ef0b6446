//! Cost on the leader of one OTLP/HTTP `POST /v1/traces` body: decoding the protobuf and turning its
//! spans into sample JSON (what `intake::otlp_http` does per request on the blocking pool; reading
//! the HTTP body, gzip and adding the samples to the pending batch are not included).
//!
//! Each case is measured twice: wall time (criterion's default) and the benchmark thread's CPU time
//! (`cpu/…`, `CLOCK_THREAD_CPUTIME_ID`), which a shared, loaded machine distorts much less: time
//! spent descheduled is not the mapping's cost.

use std::hint::black_box;
use std::time::Duration;

use appsignal_agent::apm::ApmConfig;
use appsignal_agent::intake::otlp_traces::samples;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prost::Message;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// `traces` traces of a SERVER root with 4 attributes and `children` children (every third a SQL
/// query, the others HTTP client calls with 3 attributes), as an SDK's batch exporter sends them.
fn request(traces: u8, children: u64) -> ExportTraceServiceRequest {
    let t0 = 1_767_225_600_000_000_000u64;
    let mut spans = Vec::new();
    for t in 0..traces {
        let trace_id = vec![t + 1; 16];
        for c in 1..=children {
            let (name, kind, attributes) = if c % 3 == 0 {
                (
                    "SELECT orders",
                    SpanKind::Client,
                    vec![
                        kv("db.system.name", s("postgresql")),
                        kv(
                            "db.query.text",
                            s("SELECT * FROM orders WHERE user_id = 42 AND state = 'open' LIMIT 10"),
                        ),
                    ],
                )
            } else {
                (
                    "GET inventory",
                    SpanKind::Client,
                    vec![
                        kv("http.request.method", s("GET")),
                        kv("url.full", s("http://inventory.internal/items?sku=A-1001")),
                        kv("http.response.status_code", any_value::Value::IntValue(200)),
                    ],
                )
            };
            spans.push(Span {
                trace_id: trace_id.clone(),
                span_id: (u64::from(t) << 32 | (c + 1)).to_be_bytes().to_vec(),
                parent_span_id: (u64::from(t) << 32 | 1).to_be_bytes().to_vec(),
                name: name.into(),
                kind: kind as i32,
                start_time_unix_nano: t0 + c * 1_000_000,
                end_time_unix_nano: t0 + c * 1_000_000 + 800_000,
                attributes,
                ..Default::default()
            });
        }
        spans.push(Span {
            trace_id,
            span_id: (u64::from(t) << 32 | 1).to_be_bytes().to_vec(),
            name: "GET /orders/:id".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: t0,
            end_time_unix_nano: t0 + (children + 1) * 1_000_000,
            attributes: vec![
                kv("http.request.method", s("GET")),
                kv("http.route", s("/orders/:id")),
                kv("http.response.status_code", any_value::Value::IntValue(200)),
                kv("appsignal.tag.customer", s("c-1234")),
            ],
            ..Default::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s("orders-py"))],
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

/// CPU time of this thread so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn traces(c: &mut Criterion) {
    let config = ApmConfig::default();
    let mut group = c.benchmark_group("otlp_traces");
    for (name, traces, children) in [
        ("10_traces_of_10_spans", 10u8, 9u64),
        ("1_trace_of_100_spans", 1, 99),
    ] {
        let request = request(traces, children);
        let body = request.encode_to_vec();
        let spans = u64::from(traces) * (children + 1);
        group.throughput(Throughput::Elements(spans));
        group.bench_function(format!("map/{name}"), |b| {
            b.iter_batched(
                || request.clone(),
                |r| black_box(samples(r, &config)),
                criterion::BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("decode_and_map/{name}"), |b| {
            b.iter(|| {
                let r = ExportTraceServiceRequest::decode(black_box(&body[..])).unwrap();
                black_box(samples(r, &config))
            })
        });
        group.bench_function(format!("cpu/decode_and_map/{name}"), |b| {
            b.iter_custom(|iterations| {
                let start = thread_cpu();
                for _ in 0..iterations {
                    let r = ExportTraceServiceRequest::decode(black_box(&body[..])).unwrap();
                    black_box(samples(r, &config));
                }
                thread_cpu() - start
            })
        });
    }
    group.finish();
}

criterion_group!(benches, traces);
criterion_main!(benches);
