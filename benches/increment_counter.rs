//! App-thread cost of recording one counter increment with 2 tags (region=eu, route=/checkout),
//! through libappsignal's real C interface, next to peers measured in the same run.
//!
//! Variants (group `increment_counter_2_tags`):
//! - `libappsignal/tags_prebuilt`: `appsignal_increment_counter` with a tags map built once.
//! - `libappsignal/tags_built_per_call`: the same call, but the tags map is made, filled with 2
//!   `appsignal_data_map_set_string` calls and freed per increment (what a Ruby integration does).
//! - `statsd_udp`: one DogStatsD datagram per increment, `send_to` a bound loopback UDP socket.
//! - `opentelemetry_sdk`: `Counter<f64>::add` from an SDK `MeterProvider` with a `ManualReader`,
//!   attributes built once.
//! - `mutex_hashmap_naive`: `Mutex<HashMap<String, f64>>` keyed by a `format!`ed string per call.
//! - `metrics_crate`: `metrics::counter!` with the two labels, recorded into `metrics_util`'s atomic
//!   registry (what the crate's exporters build on).
//!
//! Group `add_distribution_value_2_tags`: `appsignal_add_distribution_value` (map built once) next to
//! `opentelemetry_sdk` `Histogram<f64>::record` and `metrics::histogram!` with the same labels.
//!
//! Group `increment_counter_2_threads`: two threads increment the same counter with the same tags
//! at once (the time per increment of one thread, so contention shows as a longer time), for
//! libappsignal and `opentelemetry_sdk`.
//!
//! Run: `cargo bench -p appsignal-testkit --bench increment_counter`

use std::collections::HashMap;
use std::ffi::c_void;
use std::hint::black_box;
use std::net::UdpSocket;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};

use testkit::bench::{cstr, start_agent};

const NAME: &str = "requests";
const TAGS: [(&str, &str); 2] = [("region", "eu"), ("route", "/checkout")];

/// Builds the 2-tag map through the C interface. The caller frees it with `appsignal_free_data`.
#[inline(always)]
fn new_tags_map() -> *mut appsignal::appsignal_data_t {
    let map = appsignal::appsignal_data_map_new();
    for (k, v) in TAGS {
        appsignal::appsignal_data_map_set_string(map, cstr(k), cstr(v));
    }
    map
}

fn bench_increment_counter(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    start_agent(tmp.path());

    let mut group = c.benchmark_group("increment_counter_2_tags");

    // 1a. libappsignal, tags map built once (the cost of the recording call itself).
    let key = cstr(NAME);
    let tags = new_tags_map();
    group.bench_function("libappsignal/tags_prebuilt", |b| {
        b.iter(|| {
            appsignal::appsignal_increment_counter(black_box(key), black_box(1.0), black_box(tags))
        })
    });

    // 1b. libappsignal, tags map built and freed per call (what a Ruby integration does per call).
    group.bench_function("libappsignal/tags_built_per_call", |b| {
        b.iter(|| {
            let map = new_tags_map();
            appsignal::appsignal_increment_counter(black_box(key), black_box(1.0), black_box(map));
            appsignal::appsignal_free_data(map as *mut c_void);
        })
    });

    // 2. statsd over UDP: one DogStatsD datagram per increment. Nobody reads the receiver; once its
    // buffer is full, loopback drops datagrams silently, so the send cost is what we measure.
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
    let target = receiver.local_addr().expect("receiver address");
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let datagram = format!(
        "{NAME}:1|c|#{}:{},{}:{}",
        TAGS[0].0, TAGS[0].1, TAGS[1].0, TAGS[1].1
    );
    assert_eq!(datagram, "requests:1|c|#region:eu,route:/checkout");
    group.bench_function("statsd_udp", |b| {
        b.iter(|| {
            // Send errors (none expected on loopback) are ignored like a statsd client would.
            let _ = black_box(sender.send_to(black_box(datagram.as_bytes()), target));
        })
    });

    // 3. OpenTelemetry SDK counter, attributes built once.
    let provider = SdkMeterProvider::builder()
        .with_reader(ManualReader::builder().build())
        .build();
    let meter = provider.meter("bench");
    let counter = meter.f64_counter(NAME).build();
    let attributes = [
        KeyValue::new(TAGS[0].0, TAGS[0].1),
        KeyValue::new(TAGS[1].0, TAGS[1].1),
    ];
    group.bench_function("opentelemetry_sdk", |b| {
        b.iter(|| counter.add(black_box(1.0), black_box(&attributes[..])))
    });

    // 4. Naive: a mutex-guarded map keyed by a string formatted per call.
    let naive: Mutex<HashMap<String, f64>> = Mutex::new(HashMap::new());
    group.bench_function("mutex_hashmap_naive", |b| {
        b.iter(|| {
            let (name, (k1, v1), (k2, v2)) = black_box((NAME, TAGS[0], TAGS[1]));
            let key = format!("{name}|{k1}={v1}|{k2}={v2}");
            let mut map = naive.lock().unwrap_or_else(|e| e.into_inner());
            *map.entry(key).or_insert(0.0) += black_box(1.0);
        })
    });

    // 5. The metrics crate: the macro looks the labelled key up in the recorder's registry.
    let recorder = testkit::bench::RegistryRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        group.bench_function("metrics_crate", |b| {
            b.iter(|| {
                metrics::counter!(NAME, "region" => "eu", "route" => "/checkout")
                    .increment(black_box(1))
            })
        });
    });
    group.finish();

    // Distributions: the same two tags, values spread over three decades.
    let mut group = c.benchmark_group("add_distribution_value_2_tags");
    let dist_key = cstr("latency");
    let mut i = 0u64;
    group.bench_function("libappsignal/tags_prebuilt", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            appsignal::appsignal_add_distribution_value(
                black_box(dist_key),
                (i % 1000) as f64 * 0.37,
                black_box(tags),
            )
        })
    });
    let histogram = meter.f64_histogram("latency").build();
    group.bench_function("opentelemetry_sdk", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            histogram.record((i % 1000) as f64 * 0.37, black_box(&attributes[..]))
        })
    });
    metrics::with_local_recorder(&recorder, || {
        group.bench_function("metrics_crate", |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                metrics::histogram!("latency", "region" => "eu", "route" => "/checkout")
                    .record((i % 1000) as f64 * 0.37)
            })
        });
    });
    group.finish();

    // Contention: two threads on the same key at once.
    let mut group = c.benchmark_group("increment_counter_2_threads");
    let tags_addr = tags as usize;
    group.bench_function("libappsignal/tags_prebuilt", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, move || {
                appsignal::appsignal_increment_counter(
                    black_box(cstr(NAME)),
                    black_box(1.0),
                    black_box(tags_addr as *mut appsignal::appsignal_data_t),
                )
            })
        })
    });
    group.bench_function("opentelemetry_sdk", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                counter.add(black_box(1.0), black_box(&attributes[..]))
            })
        })
    });
    group.finish();

    appsignal::appsignal_free_data(tags as *mut c_void);
    let _ = provider.shutdown();
    black_box(naive.lock().map(|m| m.len()).unwrap_or(0));
    appsignal::appsignal_stop();
    drop(tmp);
}

/// Runs `f` `iters` times on each of two threads started together; the wall time of the slower.
fn two_threads(iters: u64, f: impl Fn() + Sync) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let run = || {
            barrier.wait();
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed()
        };
        let other = s.spawn(run);
        let mine = run();
        mine.max(other.join().unwrap_or(mine))
    })
}

criterion_group!(benches, bench_increment_counter);
criterion_main!(benches);
