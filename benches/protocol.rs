//! Cost on the leader of reading one `Batch` frame from a client: the protocol's own CBOR reader
//! (`appsignal_agent::cbor`, what the leader runs) next to `serde_cbor`'s derived decoder (what it
//! ran before it, whose per-message-type instantiations were 383 KB of the library: docs/benchmarks.md,
//! "Size of libappsignal.so") on the same bytes, in the same run.

use std::hint::black_box;

use appsignal_agent::cbor;
use appsignal_agent::protocol::{self, Batch, ClientMessage, GaugeValue, MetricKey};
use appsignal_agent::sketch::Sketch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A busy process's flush: 1,000 counters and 100 gauges with two tags, 100 distributions.
fn batch() -> Batch {
    let key = |i: usize| MetricKey {
        name: format!("app.metric_{}", i % 50),
        tags: vec![
            ("route".into(), format!("/route/{i}")),
            ("region".into(), "eu-west-1".into()),
        ],
    };
    Batch {
        client_id: 7,
        seq: 42,
        created_ms: 1_700_000_000_000,
        counters: (0..1_000).map(|i| (key(i), i as f64 + 0.5)).collect(),
        gauges: (0..100)
            .map(|i| {
                (
                    key(i),
                    GaugeValue {
                        value: i as f64,
                        at_ms: 1_700_000_000_000,
                    },
                )
            })
            .collect(),
        distributions: (0..100)
            .map(|i| {
                let mut sketch = Sketch::new();
                for v in 0..50 {
                    sketch.add(f64::from(v) * 1.7 + i as f64);
                }
                (key(i), sketch)
            })
            .collect(),
        ..Batch::default()
    }
}

fn decode(c: &mut Criterion) {
    let frame = protocol::encode(&ClientMessage::Batch(batch())).unwrap();
    let body = &frame[protocol::HEADER_BYTES..];
    let mut group = c.benchmark_group("batch_frame_decode");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("appsignal_cbor_reader", |b| {
        b.iter(|| black_box(cbor::from_slice::<ClientMessage>(black_box(body)).unwrap()))
    });
    group.bench_function("serde_cbor_derive", |b| {
        b.iter(|| black_box(serde_cbor::from_slice::<ClientMessage>(black_box(body)).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
