//! What a listener parsed since its last flush, keyed like a process's pre-aggregate: counters
//! summed, gauges last, distributions in a [`Sketch`]. Bounded: at most [`MAX_PENDING_KEYS`]
//! distinct keys between two flushes; updates of further keys are dropped and counted (they go out
//! as the batch's `dropped_updates`, like a process's own drops). Samples (the OTLP intake's traces)
//! are held within [`MAX_PENDING_SAMPLES`] and [`MAX_PENDING_SAMPLE_BYTES`] per flush, each at most
//! [`MAX_SAMPLE_BYTES`]; the others are dropped and counted (the batch's `dropped_samples`).

use std::collections::HashMap;

use crate::protocol::{Batch, GaugeValue, MetricKey};
use crate::sample::Sample;
use crate::sketch::Sketch;

/// Distinct keys a listener holds between two flushes (~100 ms).
pub const MAX_PENDING_KEYS: usize = 10_000;
/// Gauges whose last value a listener remembers for relative updates (`+n|g`).
pub const MAX_REMEMBERED_GAUGES: usize = 10_000;
/// Samples a listener holds between two flushes: as many as one process may hand over.
pub const MAX_PENDING_SAMPLES: usize = crate::metrics::MAX_SAMPLES;
/// Bytes of samples (estimated CBOR) a listener holds between two flushes, so that a batch stays far below the
/// protocol's frame limit (the journal writes it as one frame).
pub const MAX_PENDING_SAMPLE_BYTES: usize = 2 * 1024 * 1024;
/// Largest sample kept, as for a process's own samples.
pub const MAX_SAMPLE_BYTES: usize = crate::metrics::MAX_RECORD_BYTES;

#[derive(Default)]
pub struct Pending {
    counters: HashMap<MetricKey, f64>,
    gauges: HashMap<MetricKey, GaugeValue>,
    distributions: HashMap<MetricKey, Sketch>,
    /// Last value of each gauge across flushes, for relative updates.
    last_gauges: HashMap<MetricKey, f64>,
    dropped: u64,
    samples: Vec<Sample>,
    sample_bytes: usize,
    dropped_samples: u64,
}

impl Pending {
    fn len(&self) -> usize {
        self.counters.len() + self.gauges.len() + self.distributions.len()
    }

    fn room_for(&mut self, has_key: bool) -> bool {
        if has_key || self.len() < MAX_PENDING_KEYS {
            true
        } else {
            self.dropped = self.dropped.saturating_add(1);
            false
        }
    }

    pub fn count(&mut self, key: MetricKey, value: f64) {
        if let Some(v) = self.counters.get_mut(&key) {
            *v += value;
        } else if self.room_for(false) {
            self.counters.insert(key, value);
        }
    }

    pub fn set_gauge(&mut self, key: MetricKey, value: f64, at_ms: u64) {
        if !self.room_for(self.gauges.contains_key(&key)) {
            return;
        }
        if self.last_gauges.len() < MAX_REMEMBERED_GAUGES || self.last_gauges.contains_key(&key) {
            self.last_gauges.insert(key.clone(), value);
        }
        self.gauges.insert(key, GaugeValue { value, at_ms });
    }

    /// A relative update: from the last value remembered, else from 0.
    pub fn change_gauge(&mut self, key: MetricKey, by: f64, at_ms: u64) {
        let last = self.last_gauges.get(&key).copied().unwrap_or(0.0);
        self.set_gauge(key, last + by, at_ms);
    }

    pub fn record(&mut self, key: MetricKey, value: f64, times: u64) {
        if let Some(s) = self.distributions.get_mut(&key) {
            s.add_n(value, times);
        } else if self.room_for(false) {
            let mut s = Sketch::new();
            s.add_n(value, times);
            self.distributions.insert(key, s);
        }
    }

    /// Merges a whole sketch (a histogram point of another format).
    pub fn merge(&mut self, key: MetricKey, sketch: &Sketch) {
        if let Some(s) = self.distributions.get_mut(&key) {
            s.merge(sketch);
        } else if self.room_for(false) {
            self.distributions.insert(key, sketch.clone());
        }
    }

    /// Counts `n` updates that were dropped before they got here.
    pub fn drop_updates(&mut self, n: u64) {
        self.dropped = self.dropped.saturating_add(n);
    }

    /// Keeps a finished sample for the next flush; `false` when it is dropped (out of
    /// [`crate::sample`]'s bounds, over [`MAX_SAMPLE_BYTES`], or the flush already holds
    /// [`MAX_PENDING_SAMPLES`] or [`MAX_PENDING_SAMPLE_BYTES`]) and counted in `dropped_samples`.
    pub fn add_sample(&mut self, sample: Sample) -> bool {
        let size = sample.check().unwrap_or(usize::MAX);
        if size > MAX_SAMPLE_BYTES
            || self.samples.len() >= MAX_PENDING_SAMPLES
            || self.sample_bytes + size > MAX_PENDING_SAMPLE_BYTES
        {
            self.dropped_samples = self.dropped_samples.saturating_add(1);
            return false;
        }
        self.sample_bytes += size;
        self.samples.push(sample);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.dropped == 0 && self.samples.is_empty() && self.dropped_samples == 0
    }

    /// Everything since the last flush as a batch of `client_id` (or `None` when there is nothing).
    pub fn take_batch(&mut self, client_id: u64, seq: u64, now_ms: u64) -> Option<Batch> {
        if self.is_empty() {
            return None;
        }
        self.sample_bytes = 0;
        Some(Batch {
            client_id,
            seq,
            created_ms: now_ms,
            counters: self.counters.drain().collect(),
            gauges: self.gauges.drain().collect(),
            distributions: self.distributions.drain().collect(),
            dropped_updates: std::mem::take(&mut self.dropped),
            samples: std::mem::take(&mut self.samples),
            dropped_samples: std::mem::take(&mut self.dropped_samples),
            ..Batch::default()
        })
    }
}

/// A metric key with its tags sorted by name (the order the aggregator expects).
pub fn key(name: &str, tags: impl IntoIterator<Item = (String, String)>) -> MetricKey {
    let mut tags: Vec<(String, String)> = tags.into_iter().collect();
    crate::sort::sort(&mut tags);
    MetricKey {
        name: name.to_owned(),
        tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_beyond_the_bound_are_dropped_and_counted() {
        let mut p = Pending::default();
        for i in 0..MAX_PENDING_KEYS + 5 {
            p.count(key(&format!("c{i}"), []), 1.0);
        }
        // Known keys still update.
        p.count(key("c0", []), 1.0);
        let b = p.take_batch(1, 1, 0).unwrap();
        assert_eq!(b.counters.len(), MAX_PENDING_KEYS);
        assert_eq!(b.dropped_updates, 5);
        assert!(p.take_batch(1, 2, 0).is_none());
    }

    #[test]
    fn samples_beyond_the_count_or_byte_budget_are_dropped_and_counted() {
        let mut p = Pending::default();
        use crate::sample::test_sample;
        assert!(!p.add_sample(test_sample(MAX_SAMPLE_BYTES + 1)));
        for _ in 0..MAX_PENDING_SAMPLES {
            assert!(p.add_sample(test_sample(1)));
        }
        assert!(!p.add_sample(test_sample(1)));
        let b = p.take_batch(1, 1, 0).unwrap();
        assert_eq!(
            (b.samples.len(), b.dropped_samples),
            (MAX_PENDING_SAMPLES, 2)
        );
        // The byte budget: two samples of half of it fit, a third does not (until the flush).
        let half = test_sample(MAX_PENDING_SAMPLE_BYTES / 2 - 4096);
        assert!(p.add_sample(half.clone()) && p.add_sample(half.clone()));
        assert!(!p.add_sample(test_sample(10_000)));
        assert_eq!(p.take_batch(1, 2, 0).unwrap().samples.len(), 2);
        assert!(p.add_sample(half));
        assert!(p.take_batch(1, 3, 0).is_some());
        assert!(p.take_batch(1, 4, 0).is_none());
    }

    #[test]
    fn relative_gauges_continue_from_the_last_value_across_flushes() {
        let mut p = Pending::default();
        p.set_gauge(key("g", []), 10.0, 1);
        p.take_batch(1, 1, 0);
        p.change_gauge(key("g", []), 5.0, 2);
        p.change_gauge(key("g", []), -1.0, 3);
        let b = p.take_batch(1, 2, 0).unwrap();
        assert_eq!(b.gauges[0].1.value, 14.0);
    }
}
