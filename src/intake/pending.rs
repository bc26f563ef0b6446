//! What a listener parsed since its last flush, keyed like a process's pre-aggregate: counters
//! summed, gauges last, distributions in a [`Sketch`]. Bounded: at most [`MAX_PENDING_KEYS`]
//! distinct keys between two flushes; updates of further keys are dropped and counted (they go out
//! as the batch's `dropped_updates`, like a process's own drops).

use std::collections::HashMap;

use crate::protocol::{Batch, GaugeValue, MetricKey};
use crate::sketch::Sketch;

/// Distinct keys a listener holds between two flushes (~100 ms).
pub const MAX_PENDING_KEYS: usize = 10_000;
/// Gauges whose last value a listener remembers for relative updates (`+n|g`).
pub const MAX_REMEMBERED_GAUGES: usize = 10_000;

#[derive(Default)]
pub struct Pending {
    counters: HashMap<MetricKey, f64>,
    gauges: HashMap<MetricKey, GaugeValue>,
    distributions: HashMap<MetricKey, Sketch>,
    /// Last value of each gauge across flushes, for relative updates.
    last_gauges: HashMap<MetricKey, f64>,
    dropped: u64,
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.dropped == 0
    }

    /// Everything since the last flush as a batch of `client_id` (or `None` when there is nothing).
    pub fn take_batch(&mut self, client_id: u64, seq: u64, now_ms: u64) -> Option<Batch> {
        if self.is_empty() {
            return None;
        }
        Some(Batch {
            client_id,
            seq,
            created_ms: now_ms,
            counters: self.counters.drain().collect(),
            gauges: self.gauges.drain().collect(),
            distributions: self.distributions.drain().collect(),
            dropped_updates: std::mem::take(&mut self.dropped),
            ..Batch::default()
        })
    }
}

/// A metric key with its tags sorted by name (the order the aggregator expects).
pub fn key(name: &str, tags: impl IntoIterator<Item = (String, String)>) -> MetricKey {
    let mut tags: Vec<(String, String)> = tags.into_iter().collect();
    tags.sort();
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
