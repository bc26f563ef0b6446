//! Cost on the leader's thread of one StatsD datagram: parsing its lines and adding them to the
//! listener's pending batch (what `intake::udp` does per datagram; the socket read is not included).

use std::hint::black_box;
use std::sync::Arc;

use appsignal_agent::intake::udp::Parser;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn datagrams(c: &mut Criterion) {
    let mut group = c.benchmark_group("statsd_datagram");
    let one = b"checkout.requests:1|c|@0.5|#route:/cart,region:eu-west-1,status:200".to_vec();
    let mixed: Vec<u8> = (0..30)
        .map(|i| match i % 3 {
            0 => format!("app.requests:1|c|#route:/r{},region:eu\n", i % 10),
            1 => format!("app.queue_depth:{i}|g|#queue:q{}\n", i % 5),
            _ => format!("app.latency:{}.5|ms|@0.25|#route:/r{}\n", i * 3, i % 10),
        })
        .collect::<String>()
        .into_bytes();
    for (name, datagram, lines) in [("1_line", &one, 1u64), ("30_lines", &mixed, 30)] {
        let mut parser = Parser::new(Arc::default());
        let mut seq = 0;
        group.throughput(Throughput::Elements(lines));
        group.bench_function(name, |b| {
            b.iter(|| {
                parser.datagram(black_box(datagram), None, 1);
                seq += 1;
                // As the listener does every 100 ms: keeps the pending maps at their real size.
                if seq % 1000 == 0 {
                    black_box(parser.pending.take_batch(1, seq, 1));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, datagrams);
criterion_main!(benches);
