//! The app-thread side of custom metrics: `set_gauge`, `increment_counter` and
//! `add_distribution_value` update an in-process pre-aggregate under a short mutex and return. No
//! I/O, no waiting on the leader. The sender thread takes the whole pre-aggregate every flush period
//! and turns it into batches.
//!
//! Policy when full: at most [`MAX_KEYS`] distinct metric keys per flush period; updates of further
//! new keys are dropped and counted, and the count travels in the next batch (reported in the payload).
//!
//! A hit costs one hash over the name and tags, one lookup and one comparison; the key is allocated
//! only the first time it is seen in a flush period.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use crate::sketch::Sketch;

use crate::data::Data;
use crate::protocol::MetricKey;

/// Distinct keys (per kind and name and tags) one process keeps per flush period.
pub const MAX_KEYS: usize = 10_000;
/// Samples one process keeps per flush period; more are dropped and counted.
pub const MAX_SAMPLES: usize = 100;
/// Log lines one process keeps per flush period; more are dropped and counted.
pub const MAX_LOGS: usize = 10_000;
/// A sample or log line whose JSON is larger than this is dropped and counted.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter = 1,
    Gauge = 2,
    Distribution = 3,
}

enum Value {
    Counter(f64),
    Gauge(f64),
    Distribution(Box<Sketch>),
}

struct Slot {
    kind: Kind,
    name: String,
    tags: Option<Data>,
    value: Value,
}

/// FxHash: a multiply-rotate hash, fast on short keys. Keys come from this process only, so
/// collision flooding is not a concern here.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.write_u64(u64::from_le_bytes(tail) ^ (rest.len() as u64) << 56);
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// The index is keyed by an already computed hash: hashing it again would be wasted work.
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _bytes: &[u8]) {
        unreachable!("only u64 keys are hashed")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn hash_data(h: &mut FxHasher, data: &Data) {
    match data {
        Data::Null => h.write_u64(0),
        Data::Bool(b) => h.write_u64(1 + u64::from(*b)),
        Data::Integer(i) => {
            h.write_u64(3);
            h.write_u64(*i as u64);
        }
        Data::Float(f) => {
            h.write_u64(4);
            h.write_u64(f.to_bits());
        }
        Data::String(s) => {
            h.write_u64(5);
            h.write(s.as_bytes());
        }
        Data::Array(items) => {
            h.write_u64(6);
            items.iter().for_each(|d| hash_data(h, d));
        }
        Data::Map(map) => {
            h.write_u64(7);
            for (k, v) in map {
                h.write(k.as_bytes());
                hash_data(h, v);
            }
        }
    }
}

fn key_hash(kind: Kind, name: &str, tags: Option<&Data>) -> u64 {
    let mut h = FxHasher(kind as u64);
    h.write(name.as_bytes());
    if let Some(tags) = tags {
        hash_data(&mut h, tags);
    }
    h.finish()
}

#[derive(Default)]
struct Local {
    index: HashMap<u64, Vec<usize>, BuildHasherDefault<PrehashedHasher>>,
    slots: Vec<Slot>,
    dropped_updates: u64,
    samples: Vec<String>,
    logs: Vec<String>,
    dropped_samples: u64,
    dropped_logs: u64,
}

/// What one flush period recorded.
#[derive(Default)]
pub struct Taken {
    pub counters: Vec<(MetricKey, f64)>,
    pub gauges: Vec<(MetricKey, f64)>,
    pub distributions: Vec<(MetricKey, Sketch)>,
    pub dropped_updates: u64,
    /// Finished samples (JSON), from transactions and root spans.
    pub samples: Vec<String>,
    /// Log lines (JSON) from `appsignal_log`.
    pub logs: Vec<String>,
    pub dropped_samples: u64,
    pub dropped_logs: u64,
}

impl Taken {
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
            && self.gauges.is_empty()
            && self.distributions.is_empty()
            && self.dropped_updates == 0
            && self.samples.is_empty()
            && self.logs.is_empty()
            && self.dropped_samples == 0
            && self.dropped_logs == 0
    }
}

/// The per-process pre-aggregate.
#[derive(Default)]
pub struct LocalMetrics {
    inner: Mutex<Local>,
}

impl LocalMetrics {
    pub fn increment_counter(&self, name: &str, value: f64, tags: Option<&Data>) {
        self.update(
            Kind::Counter,
            name,
            tags,
            |v| {
                if let Value::Counter(total) = v {
                    *total += value;
                }
            },
            || Value::Counter(value),
        );
    }

    pub fn set_gauge(&self, name: &str, value: f64, tags: Option<&Data>) {
        self.update(
            Kind::Gauge,
            name,
            tags,
            |v| {
                if let Value::Gauge(last) = v {
                    *last = value;
                }
            },
            || Value::Gauge(value),
        );
    }

    pub fn add_distribution_value(&self, name: &str, value: f64, tags: Option<&Data>) {
        self.update(
            Kind::Distribution,
            name,
            tags,
            |v| {
                if let Value::Distribution(sketch) = v {
                    sketch.add(value);
                }
            },
            || {
                let mut sketch = Sketch::new();
                sketch.add(value);
                Value::Distribution(Box::new(sketch))
            },
        );
    }

    fn update(
        &self,
        kind: Kind,
        name: &str,
        tags: Option<&Data>,
        hit: impl FnOnce(&mut Value),
        miss: impl FnOnce() -> Value,
    ) {
        // An empty tag map is the same metric as no tags.
        let tags = tags.filter(|t| !matches!(t, Data::Map(m) if m.is_empty()));
        let hash = key_hash(kind, name, tags);
        // A panic cannot happen between lock and unlock here (no user code runs), so poison is harmless.
        let mut local = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Local {
            index,
            slots,
            dropped_updates,
            ..
        } = &mut *local;
        let bucket = index.entry(hash).or_default();
        for &i in bucket.iter() {
            let slot = &mut slots[i];
            if slot.kind == kind && slot.name == name && slot.tags.as_ref() == tags {
                hit(&mut slot.value);
                return;
            }
        }
        if slots.len() >= MAX_KEYS {
            *dropped_updates = dropped_updates.saturating_add(1);
            return;
        }
        bucket.push(slots.len());
        slots.push(Slot {
            kind,
            name: name.to_owned(),
            tags: tags.cloned(),
            value: miss(),
        });
    }

    /// Keeps a finished sample (JSON) for the next flush, within [`MAX_SAMPLES`] per flush period.
    pub fn submit_sample(&self, json: String) {
        let mut local = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if local.samples.len() >= MAX_SAMPLES || json.len() > MAX_RECORD_BYTES {
            local.dropped_samples = local.dropped_samples.saturating_add(1);
        } else {
            local.samples.push(json);
        }
    }

    /// Keeps a log line (JSON) for the next flush, within [`MAX_LOGS`] per flush period.
    pub fn submit_log(&self, json: String) {
        let mut local = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if local.logs.len() >= MAX_LOGS || json.len() > MAX_RECORD_BYTES {
            local.dropped_logs = local.dropped_logs.saturating_add(1);
        } else {
            local.logs.push(json);
        }
    }

    /// Takes everything recorded since the last take.
    pub fn take(&self) -> Taken {
        let local = {
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *guard)
        };
        let mut taken = Taken {
            dropped_updates: local.dropped_updates,
            samples: local.samples,
            logs: local.logs,
            dropped_samples: local.dropped_samples,
            dropped_logs: local.dropped_logs,
            ..Taken::default()
        };
        for slot in local.slots {
            let key = MetricKey {
                name: slot.name,
                tags: render_tags(slot.tags.as_ref()),
            };
            match slot.value {
                Value::Counter(v) => taken.counters.push((key, v)),
                Value::Gauge(v) => taken.gauges.push((key, v)),
                Value::Distribution(s) => taken.distributions.push((key, *s)),
            }
        }
        taken
    }

    /// Whether nothing is waiting to be taken.
    pub fn is_empty(&self) -> bool {
        let local = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        local.slots.is_empty()
            && local.dropped_updates == 0
            && local.samples.is_empty()
            && local.logs.is_empty()
            && local.dropped_samples == 0
            && local.dropped_logs == 0
    }
}

/// Tags as sorted `(name, value)` strings. A tag map is sorted already; a tag whose value is a map
/// or an array is rendered as JSON. Tags that are not a map at all are ignored.
pub fn render_tags(tags: Option<&Data>) -> Vec<(String, String)> {
    match tags {
        Some(Data::Map(map)) => map
            .iter()
            .map(|(k, v)| (k.clone(), v.tag_value().unwrap_or_else(|| v.to_json())))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Data {
        let mut map = Data::new_map();
        for (k, v) in pairs {
            map.map_set(k.to_string(), Data::String(v.to_string()));
        }
        map
    }

    #[test]
    fn counters_sum_gauges_keep_last_distributions_merge() {
        let m = LocalMetrics::default();
        let t = tags(&[("region", "eu"), ("host", "a")]);
        for _ in 0..10 {
            m.increment_counter("requests", 1.5, Some(&t));
        }
        m.increment_counter("requests", 1.0, None);
        m.set_gauge("queue", 3.0, Some(&t));
        m.set_gauge("queue", 7.0, Some(&t));
        for v in [1.0, 2.0, 3.0] {
            m.add_distribution_value("latency", v, None);
        }
        let taken = m.take();
        assert!(m.take().is_empty(), "a take empties the pre-aggregate");
        let mut counters = taken.counters.clone();
        counters.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(counters.len(), 2);
        assert_eq!(counters[0].1, 1.0);
        assert_eq!(counters[1].1, 15.0);
        assert_eq!(
            counters[1].0.tags,
            vec![
                ("host".to_string(), "a".to_string()),
                ("region".to_string(), "eu".to_string())
            ]
        );
        assert_eq!(taken.gauges[0].1, 7.0);
        let sketch = &taken.distributions[0].1;
        assert_eq!((sketch.count(), sketch.sum()), (3, 6.0));
    }

    #[test]
    fn the_same_name_in_two_kinds_is_two_metrics() {
        let m = LocalMetrics::default();
        m.increment_counter("x", 1.0, None);
        m.set_gauge("x", 5.0, None);
        let taken = m.take();
        assert_eq!((taken.counters.len(), taken.gauges.len()), (1, 1));
    }

    #[test]
    fn new_keys_beyond_the_cap_are_dropped_and_counted() {
        let m = LocalMetrics::default();
        for i in 0..MAX_KEYS + 5 {
            m.increment_counter(&format!("c{i}"), 1.0, None);
        }
        // Existing keys still update when the cap is reached.
        m.increment_counter("c0", 1.0, None);
        let taken = m.take();
        assert_eq!(taken.counters.len(), MAX_KEYS);
        assert_eq!(taken.dropped_updates, 5);
        assert!(taken
            .counters
            .iter()
            .any(|(k, v)| k.name == "c0" && *v == 2.0));
    }
}
