//! App-thread cost of a whole transaction through the C interface: start, 10 events (each a
//! `start_event` / `finish_event` pair with a SQL body), action, finish, complete, free. Peer in the
//! same run: an OpenTelemetry SDK trace of a root span with 10 child spans (no exporter, so the
//! SDK's own recording cost only).
//!
//! Two groups measure the same code: `transaction_10_events` in wall time (criterion's default),
//! `transaction_10_events_thread_cpu` in the calling thread's CPU time, which leaves out the time
//! the thread waited for a core: on a shared, loaded machine that is most of the noise of wall
//! times (and the sender thread, which processes the completed transactions, competes for the
//! same cores).
//!
//! `cargo bench -p appsignal-testkit --bench transaction`

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput};
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};

use testkit::bench::{start_agent, thread_cpu_ns, transaction_with_10_sql_events, SQL};

fn bench_transaction<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let mut group = c.benchmark_group(group);
    group.bench_function("libappsignal", |b| {
        b.iter(|| transaction_with_10_sql_events(false))
    });

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
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), in nanoseconds.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical_ns < 1_000.0 {
            (1.0, "ns cpu")
        } else {
            (1e-3, "µs cpu")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(&self, _: f64, _: &Throughput, _: &mut [f64]) -> &'static str {
        "ns cpu" // no throughput is configured
    }
    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn main() {
    let tmp = tempfile::tempdir().expect("temp dir");
    start_agent(tmp.path());
    let mut wall = Criterion::default().configure_from_args();
    bench_transaction(&mut wall, "transaction_10_events");
    let mut cpu = Criterion::default()
        .with_measurement(ThreadCpu)
        .configure_from_args();
    bench_transaction(&mut cpu, "transaction_10_events_thread_cpu");
    wall.final_summary();
    appsignal::appsignal_stop();
}
