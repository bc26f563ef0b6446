//! Turning one flush period's pre-aggregate into numbered batches that each fit a frame, and
//! carrying the drop counts of a batch that had to be dropped.
//!
//! Each batch stays under [`BATCH_BUDGET_BYTES`] (estimated), far below the protocol's frame limit;
//! a single metric key over [`MAX_ENTRY_BYTES`] is dropped and counted.

use crate::metrics::Taken;
use crate::protocol::{Batch, GaugeValue, MetricKey};

pub const BATCH_BUDGET_BYTES: usize = 1024 * 1024;
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Serialised size we assume for one distribution sketch (an upper bound for typical data).
const SKETCH_ESTIMATE_BYTES: usize = 16 * 1024;

/// Adds what `dropped` held (and the drops it reported) to the drop counts of `lost`.
pub(super) fn add_drops(lost: &mut Batch, dropped: &Batch) {
    let entries = dropped.counters.len() + dropped.gauges.len() + dropped.distributions.len();
    lost.dropped_batches = lost
        .dropped_batches
        .saturating_add(1)
        .saturating_add(dropped.dropped_batches);
    lost.dropped_updates = lost
        .dropped_updates
        .saturating_add(dropped.dropped_updates)
        .saturating_add(entries as u64);
    lost.dropped_samples = lost
        .dropped_samples
        .saturating_add(dropped.dropped_samples)
        .saturating_add(dropped.samples.len() as u64);
    lost.dropped_logs = lost
        .dropped_logs
        .saturating_add(dropped.dropped_logs)
        .saturating_add(dropped.logs.len() as u64);
}

pub(super) fn key_bytes(key: &MetricKey) -> usize {
    key.name.len()
        + key
            .tags
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
        + 32
}

/// Splits one flush period's data into batches under [`BATCH_BUDGET_BYTES`] each.
pub(super) fn split(
    taken: Taken,
    client_id: u64,
    next_seq: &mut u64,
    created_ms: u64,
) -> Vec<Batch> {
    let mut splitter = Splitter {
        batches: Vec::new(),
        current: Batch::default(),
        used: 0,
        client_id,
        created_ms,
        next_seq,
    };
    splitter.start_batch();
    let mut dropped = taken.dropped_updates;
    for (key, value) in taken.counters {
        match splitter.room(key_bytes(&key), MAX_ENTRY_BYTES) {
            Some(batch) => batch.counters.push((key, value)),
            None => dropped += 1,
        }
    }
    for (key, value) in taken.gauges {
        match splitter.room(key_bytes(&key), MAX_ENTRY_BYTES) {
            Some(batch) => batch.gauges.push((
                key,
                GaugeValue {
                    value,
                    at_ms: created_ms,
                },
            )),
            None => dropped += 1,
        }
    }
    for (key, sketch) in taken.distributions {
        match splitter.room(
            key_bytes(&key) + SKETCH_ESTIMATE_BYTES,
            MAX_ENTRY_BYTES + SKETCH_ESTIMATE_BYTES,
        ) {
            Some(batch) => batch.distributions.push((key, sketch)),
            None => dropped += 1,
        }
    }
    // Samples and logs were checked and sized when submitted (metrics::MAX_RECORD_BYTES).
    for (sample, size) in taken.samples {
        if let Some(batch) = splitter.room(size, crate::metrics::MAX_RECORD_BYTES) {
            batch.samples.push(sample);
        }
    }
    for (line, size) in taken.logs {
        if let Some(batch) = splitter.room(size, crate::metrics::MAX_RECORD_BYTES) {
            batch.logs.push(line);
        }
    }
    let mut batches = splitter.finish();
    if let Some(first) = batches.first_mut() {
        first.dropped_updates = dropped;
        first.dropped_samples = taken.dropped_samples;
        first.dropped_logs = taken.dropped_logs;
    }
    batches
}

/// Fills numbered batches up to the budget.
pub(super) struct Splitter<'a> {
    batches: Vec<Batch>,
    current: Batch,
    used: usize,
    client_id: u64,
    created_ms: u64,
    next_seq: &'a mut u64,
}

impl Splitter<'_> {
    pub(super) fn start_batch(&mut self) {
        self.current = Batch {
            client_id: self.client_id,
            seq: *self.next_seq,
            created_ms: self.created_ms,
            ..Batch::default()
        };
        *self.next_seq += 1;
        self.used = 0;
    }

    /// The batch to put an entry of `cost` bytes in; `None` when the entry is over `limit`.
    pub(super) fn room(&mut self, cost: usize, limit: usize) -> Option<&mut Batch> {
        if cost > limit {
            return None;
        }
        if self.used + cost > BATCH_BUDGET_BYTES && self.current.entries() > 0 {
            let full = std::mem::take(&mut self.current);
            self.batches.push(full);
            self.start_batch();
        }
        self.used += cost;
        Some(&mut self.current)
    }

    pub(super) fn finish(mut self) -> Vec<Batch> {
        let last = std::mem::take(&mut self.current);
        self.batches.push(last);
        self.batches
    }
}
