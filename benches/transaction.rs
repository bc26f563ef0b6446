//! App-thread cost of a whole transaction through the C interface: start, 10 events (each a
//! `start_event` / `finish_event` pair with a SQL body, so sanitising is included), action, finish,
//! complete, free. Peer in the same run: an OpenTelemetry SDK trace of a root span with 10 child
//! spans (no exporter, so the SDK's own recording cost only).
//!
//! `cargo bench -p appsignal-testkit --bench transaction`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};

mod common;
use common::{cstr, start_agent};

const SQL: &str = "SELECT * FROM users WHERE id = 42 AND email = 'a@example.com'";

fn transaction_with_10_events() {
    let txn = appsignal::appsignal_start_transaction(cstr("req"), cstr("web"), 0);
    for _ in 0..10 {
        appsignal::appsignal_start_event(txn, 0);
        appsignal::appsignal_finish_event(
            txn,
            cstr("sql.active_record"),
            cstr("User Load"),
            cstr(SQL),
            1,
            0,
        );
    }
    appsignal::appsignal_set_transaction_action(txn, cstr("UsersController#show"));
    black_box(appsignal::appsignal_finish_transaction(txn, 0));
    appsignal::appsignal_complete_transaction(txn);
    appsignal::appsignal_free_transaction(txn.cast());
}

fn bench_transaction(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    start_agent(tmp.path());
    let mut group = c.benchmark_group("transaction_10_events");
    group.bench_function("libappsignal", |b| b.iter(transaction_with_10_events));

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer("bench");
    group.bench_function("opentelemetry_sdk/root_and_10_child_spans", |b| {
        b.iter(|| {
            let root = tracer.start("UsersController#show");
            let cx = opentelemetry::Context::current_with_span(root);
            for _ in 0..10 {
                let mut child = tracer.start_with_context("sql.active_record", &cx);
                child.set_attribute(opentelemetry::KeyValue::new("db.statement", SQL));
                child.end();
            }
            cx.span().end();
        })
    });
    group.finish();
    appsignal::appsignal_stop();
}

criterion_group!(benches, bench_transaction);
criterion_main!(benches);
