//! Cost on the leader of turning one closed window into what goes out: the Push API payload
//! (JSON, gzip) and the OTLP requests (protobuf, gzip), for the same window: 1,000 counters,
//! 200 gauges, 100 distributions of 1,000 values each, 50 samples with 10 events, 500 log lines.
//! This runs on the leader's thread once per window and configuration, never on an app thread.

use std::hint::black_box;

use appsignal_agent::aggregate::{MetricSet, Window};
use appsignal_agent::export_config::ExportConfig;
use appsignal_agent::otlp::mapping::{requests, LiveView};
use appsignal_agent::payload::{AgentReport, Payload};
use appsignal_agent::protocol::{GaugeValue, MetricKey};
use appsignal_agent::sketch::Sketch;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

fn key(name: &str, i: usize) -> MetricKey {
    MetricKey {
        name: name.to_owned(),
        tags: vec![
            ("route".to_owned(), format!("/r/{}", i % 50)),
            ("worker".to_owned(), (i / 50).to_string()),
        ],
    }
}

fn window() -> Window {
    let mut metrics = MetricSet::default();
    for i in 0..1000 {
        metrics.counters.insert(key("requests", i), i as f64);
    }
    for i in 0..200 {
        metrics.gauges.insert(
            key("queue", i),
            GaugeValue {
                value: i as f64,
                at_ms: 1_500,
            },
        );
    }
    for i in 0..100 {
        let mut s = Sketch::new();
        for v in 0..1000 {
            s.add(f64::from(v) * 0.37 + 1.0);
        }
        metrics.distributions.insert(key("latency", i), s);
    }
    let events: Vec<_> = (0..10)
        .map(|e| json!({"name": "sql.active_record", "title": "Load", "body": "SELECT * FROM t WHERE id = ?",
                        "body_format": 1, "start": e as f64, "duration": 1.0, "children": [],
                        "group": "active_record", "gc_duration": 0}))
        .collect();
    let samples = (0..50)
        .map(|i| {
            json!({"kind": "transaction", "id": format!("req-{i}"), "namespace": "http_request",
                   "action": "Users#show", "start": 1_000, "duration": 25.0, "events": events,
                   "sample_data": {"params": {"id": "1"}}, "metadata": {"path": "/users/1"},
                   "dropped_events": 0, "hostname": "h", "revision": "", "environment_metadata": {}})
            .to_string()
        })
        .map(|text| appsignal_agent::sample::Sample::from_json(&text).unwrap())
        .collect();
    let logs = (0..500)
        .map(|i| {
            json!({"timestamp": 1_200, "group": "app", "severity": "info", "severity_number": 3,
                   "message": format!("line {i}"), "attributes": {"n": i},
                   "format": "plaintext", "hostname": "h"})
            .to_string()
        })
        .map(|text| appsignal_agent::sample::LogLine::from_json(&text).unwrap())
        .collect();
    Window {
        config: ExportConfig {
            app_name: "bench".into(),
            environment: "prod".into(),
            hostname: "h".into(),
            ..ExportConfig::default()
        },
        config_id: 1,
        segment: "0".repeat(32),
        start_ms: 1_000,
        end_ms: 31_000,
        metrics,
        batches: 100,
        samples,
        logs,
        counts: Default::default(),
        bytes: 0,
    }
}

fn export(c: &mut Criterion) {
    let window = window();
    let report = AgentReport::default();
    let mut group = c.benchmark_group("export_window");
    group.sample_size(20);
    group.bench_function("push_api_json_gzip", |b| {
        b.iter(|| {
            let payload = Payload::from_window(&window, window.segment.clone(), report.clone());
            black_box(payload.to_gzip().unwrap())
        })
    });
    group.bench_function("otlp_protobuf_gzip", |b| {
        b.iter(|| {
            black_box(
                appsignal_agent::otlp::encode(requests(
                    &window,
                    &window.segment,
                    &report,
                    &LiveView::DELTA,
                ))
                .unwrap(),
            )
        })
    });
    group.finish();
    let push = Payload::from_window(&window, window.segment.clone(), report.clone())
        .to_gzip()
        .unwrap();
    let otlp = appsignal_agent::otlp::encode(requests(
        &window,
        &window.segment,
        &report,
        &LiveView::DELTA,
    ))
    .unwrap();
    println!(
        "bytes on the wire: push API {} B; OTLP {} B ({})",
        push.len(),
        otlp.iter().map(|(_, b)| b.len()).sum::<usize>(),
        otlp.iter()
            .map(|(s, b)| format!("{} {} B", s.name(), b.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

criterion_group!(benches, export);
criterion_main!(benches);
