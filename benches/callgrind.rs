//! The loops that `benches/callgrind.sh` runs under callgrind, one row of the table in
//! docs/benchmarks.md each. Every row is one `#[inline(never)]` function named `row_*`: the script
//! collects instructions only inside it (`--toggle-collect`), so agent start-up, the sender thread
//! and the leader are not counted, and divides by the number of calls.
//!
//! Usage: `callgrind <row> <calls>` (the script passes both); without arguments it lists the rows.
//! Run natively (not under valgrind), it prints the row's wall time and the calling thread's CPU
//! time per call to stderr: the CPU time leaves out the time the thread waited for a core, which on
//! a loaded machine is most of the noise in wall times.
//! Rows that need the agent start it first (leader, in a temporary working directory, host metrics
//! off, pushes to a port nobody listens on), exactly like the criterion benches.

use std::ffi::c_void;
use std::hint::black_box;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};

use testkit::bench::{
    cstr, start_agent, thread_cpu_ns, transaction_with_10_sql_events as transaction, SQL,
};

const NAME: &str = "requests";
const TAGS: [(&str, &str); 2] = [("region", "eu"), ("route", "/checkout")];

const ROWS: &[&str] = &[
    "counter_prebuilt",
    "counter_per_call",
    "distribution_prebuilt",
    "transaction_10_sql",
    "transaction_10_sql_sampled",
    "otel_counter",
    "otel_histogram",
    "otel_10_spans",
    "metrics_crate_counter",
    "metrics_crate_histogram",
];

/// Runs the measured loop of `row`, printing its wall and thread CPU time per call.
fn timed(row: &str, calls: u64, measured: impl FnOnce()) {
    let (wall, cpu) = (std::time::Instant::now(), thread_cpu_ns());
    measured();
    let cpu = thread_cpu_ns() - cpu;
    let wall = wall.elapsed().as_nanos() as u64;
    eprintln!(
        "{row}: {calls} calls, {:.1} ns/call wall, {:.1} ns/call thread CPU",
        wall as f64 / calls.max(1) as f64,
        cpu as f64 / calls.max(1) as f64
    );
}

fn new_tags_map() -> *mut appsignal::appsignal_data_t {
    let map = appsignal::appsignal_data_map_new();
    for (k, v) in TAGS {
        appsignal::appsignal_data_map_set_string(map, cstr(k), cstr(v));
    }
    map
}

#[inline(never)]
fn row_counter_prebuilt(calls: u64, tags: *mut appsignal::appsignal_data_t) {
    let key = cstr(NAME);
    for _ in 0..calls {
        appsignal::appsignal_increment_counter(black_box(key), black_box(1.0), black_box(tags));
    }
}

#[inline(never)]
fn row_counter_per_call(calls: u64) {
    let key = cstr(NAME);
    for _ in 0..calls {
        let map = new_tags_map();
        appsignal::appsignal_increment_counter(black_box(key), black_box(1.0), black_box(map));
        appsignal::appsignal_free_data(map as *mut c_void);
    }
}

#[inline(never)]
fn row_distribution_prebuilt(calls: u64, tags: *mut appsignal::appsignal_data_t) {
    let key = cstr("latency");
    for i in 0..calls {
        let value = (i % 1000) as f64 * 0.37;
        appsignal::appsignal_add_distribution_value(black_box(key), value, black_box(tags));
    }
}

#[inline(never)]
fn row_transaction_10_sql(calls: u64) {
    for _ in 0..calls {
        transaction(false);
    }
}

#[inline(never)]
fn row_transaction_10_sql_sampled(calls: u64) {
    for _ in 0..calls {
        transaction(true);
    }
}

#[inline(never)]
fn row_otel_counter(calls: u64, counter: &opentelemetry::metrics::Counter<f64>, kv: &[KeyValue]) {
    for _ in 0..calls {
        counter.add(black_box(1.0), black_box(kv));
    }
}

#[inline(never)]
fn row_otel_histogram(
    calls: u64,
    histogram: &opentelemetry::metrics::Histogram<f64>,
    kv: &[KeyValue],
) {
    for i in 0..calls {
        histogram.record((i % 1000) as f64 * 0.37, black_box(kv));
    }
}

#[inline(never)]
fn row_otel_10_spans(calls: u64, tracer: &opentelemetry_sdk::trace::SdkTracer) {
    for _ in 0..calls {
        let root = tracer.start("UsersController#show");
        let cx = opentelemetry::Context::current_with_span(root);
        for _ in 0..10 {
            let mut child = tracer.start_with_context("sql.active_record", &cx);
            child.set_attribute(KeyValue::new("db.statement", SQL));
            child.end();
        }
        cx.span().end();
    }
}

#[inline(never)]
fn row_metrics_crate_counter(calls: u64) {
    for _ in 0..calls {
        metrics::counter!(NAME, "region" => "eu", "route" => "/checkout").increment(black_box(1));
    }
}

#[inline(never)]
fn row_metrics_crate_histogram(calls: u64) {
    for i in 0..calls {
        metrics::histogram!("latency", "region" => "eu", "route" => "/checkout")
            .record((i % 1000) as f64 * 0.37);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(row) = args.first().filter(|a| !a.starts_with("--")) else {
        // `cargo bench` runs every bench target with `--bench`: this one only runs from the script.
        println!(
            "callgrind harness: run benches/callgrind.sh; rows: {}",
            ROWS.join(", ")
        );
        return;
    };
    let calls: u64 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let warm = calls / 10 + 1;
    match row.as_str() {
        "counter_prebuilt" | "counter_per_call" | "distribution_prebuilt" => {
            start_agent(tmp.path());
            let tags = new_tags_map();
            match row.as_str() {
                "counter_prebuilt" => {
                    row_counter_prebuilt(0, tags);
                    for _ in 0..warm {
                        appsignal::appsignal_increment_counter(cstr(NAME), 1.0, tags);
                    }
                    timed(row, calls, || row_counter_prebuilt(calls, tags))
                }
                "counter_per_call" => {
                    for _ in 0..warm {
                        appsignal::appsignal_increment_counter(cstr(NAME), 1.0, tags);
                    }
                    timed(row, calls, || row_counter_per_call(calls))
                }
                _ => {
                    for _ in 0..warm {
                        appsignal::appsignal_add_distribution_value(cstr("latency"), 1.0, tags);
                    }
                    timed(row, calls, || row_distribution_prebuilt(calls, tags))
                }
            }
            appsignal::appsignal_free_data(tags as *mut c_void);
            appsignal::appsignal_stop();
        }
        "transaction_10_sql" | "transaction_10_sql_sampled" => {
            start_agent(tmp.path());
            let sampled = row == "transaction_10_sql_sampled";
            for _ in 0..warm {
                transaction(sampled);
            }
            if sampled {
                timed(row, calls, || row_transaction_10_sql_sampled(calls))
            } else {
                timed(row, calls, || row_transaction_10_sql(calls))
            }
            appsignal::appsignal_stop();
        }
        "otel_counter" | "otel_histogram" => {
            let provider = SdkMeterProvider::builder()
                .with_reader(ManualReader::builder().build())
                .build();
            let meter = provider.meter("bench");
            let kv = [
                KeyValue::new(TAGS[0].0, TAGS[0].1),
                KeyValue::new(TAGS[1].0, TAGS[1].1),
            ];
            if row == "otel_counter" {
                let counter = meter.f64_counter(NAME).build();
                row_otel_counter(warm, &counter, &kv);
                timed(row, calls, || row_otel_counter(calls, &counter, &kv));
            } else {
                let histogram = meter.f64_histogram("latency").build();
                row_otel_histogram(warm, &histogram, &kv);
                timed(row, calls, || row_otel_histogram(calls, &histogram, &kv));
            }
            let _ = provider.shutdown();
        }
        "otel_10_spans" => {
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
            let tracer = provider.tracer("bench");
            row_otel_10_spans(warm, &tracer);
            timed(row, calls, || row_otel_10_spans(calls, &tracer));
        }
        "metrics_crate_counter" | "metrics_crate_histogram" => {
            let recorder = testkit::bench::RegistryRecorder::default();
            metrics::with_local_recorder(&recorder, || {
                if row == "metrics_crate_counter" {
                    row_metrics_crate_counter(warm);
                    timed(row, calls, || row_metrics_crate_counter(calls));
                } else {
                    row_metrics_crate_histogram(warm);
                    timed(row, calls, || row_metrics_crate_histogram(calls));
                }
            });
        }
        other => {
            eprintln!("unknown row {other}; rows: {}", ROWS.join(", "));
            std::process::exit(2);
        }
    }
}
