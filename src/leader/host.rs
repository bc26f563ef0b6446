//! Host metrics in the leader: collected every `host_metrics_interval` on the blocking pool and
//! counted as gauges of the leader's own configuration, like a batch from a client of its own, so
//! that they follow the same journal, windows and pushes. Only the lock holder runs this.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::counting::Counting;
use crate::host_metrics::HostMetricsCollector;
use crate::protocol::{Batch, GaugeValue, MetricKey};

/// Collects host metrics every interval and counts them as gauges of the leader's own configuration,
/// like a batch from a client of its own (so that they follow the same windows and pushes).
pub(super) async fn host_metrics_loop(
    counting: Arc<Counting>,
    hostname: String,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let collector = Arc::new(Mutex::new(HostMetricsCollector::new(hostname)));
    let client_id = crate::ids::random_u64();
    let mut seq = 0u64;
    // The first tick fires at once: it takes the baseline readings that interval metrics need.
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let collector = Arc::clone(&collector);
        // Reading /proc and statvfs can block: keep it off the runtime thread.
        let gauges = match crate::blocking::run(move || {
            collector
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .collect()
        })
        .await
        {
            Ok(gauges) => gauges,
            Err(e) => {
                tracing::warn!("host metrics collection failed: {e}");
                continue;
            }
        };
        if gauges.is_empty() {
            continue;
        }
        seq += 1;
        let now = crate::now_ms();
        let batch = Batch {
            client_id,
            seq,
            created_ms: now,
            counters: Vec::new(),
            gauges: gauges
                .into_iter()
                .map(|g| {
                    let mut tags = g.tags;
                    crate::sort::sort(&mut tags);
                    (
                        MetricKey { name: g.name, tags },
                        GaugeValue {
                            value: g.value,
                            at_ms: now,
                        },
                    )
                })
                .collect(),
            ..Batch::default()
        };
        if !counting.count_own(batch) {
            return;
        }
    }
}
