//! Cost of one `HostMetricsCollector::collect()` on the real machine, after a warm-up call
//! (so the interval metrics — CPU, disk I/O, network — are computed too).

use std::hint::black_box;

use appsignal_agent::host_metrics::HostMetricsCollector;
use criterion::{criterion_group, criterion_main, Criterion};

fn collect(c: &mut Criterion) {
    let mut collector = HostMetricsCollector::new("bench-host".to_owned());
    collector.collect();
    c.bench_function("host_metrics_collect", |b| {
        b.iter(|| black_box(collector.collect()))
    });
}

criterion_group!(benches, collect);
criterion_main!(benches);
