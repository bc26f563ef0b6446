//! The app-thread side of custom metrics: `set_gauge`, `increment_counter` and
//! `add_distribution_value` update an in-process pre-aggregate under a short mutex and return. No
//! I/O, no waiting on the leader. The sender thread takes the whole pre-aggregate every flush period
//! and turns it into batches.
//!
//! Policy when full: at most [`MAX_KEYS`] distinct metric keys per flush period; updates of further
//! new keys are dropped and counted, and the count travels in the next batch (reported in the payload).
//!
//! A hit costs one hash over the caller's name bytes (the tags map's hash is computed once per
//! map and kept with it), one probe of an index keyed by that hash, and one byte comparison of name
//! and tags; no UTF-8 validation, no allocation. The key is allocated only the first time it is seen
//! in a flush period; names are turned into text (invalid UTF-8 replaced) and tags rendered when the
//! sender thread takes the pre-aggregate.
//!
//! Idle: the sender thread may go to sleep until the next record ([`LocalMetrics::sleep_if_empty`]);
//! the first record into an empty pre-aggregate then wakes it, once per flush period.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use crate::sketch::Sketch;

use crate::data::{bytes_eq, hash_bytes, hash_word, DataBuf, TagsRef};
use crate::protocol::MetricKey;
use crate::sample::{LogLine, Sample};

/// Distinct keys (per kind and name and tags) one process keeps per flush period.
pub const MAX_KEYS: usize = 10_000;
/// Samples one process keeps per flush period; more are dropped and counted.
pub const MAX_SAMPLES: usize = 100;
/// Log lines one process keeps per flush period; more are dropped and counted.
pub const MAX_LOGS: usize = 10_000;
/// A sample or log line larger than this (estimated CBOR bytes) is dropped and counted.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Finished transactions and spans waiting for the sender thread; more are dropped and counted.
pub const MAX_RECORDS: usize = 10_000;

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
    /// The name's bytes followed by the tags' flat body, as the caller gave them.
    key: Box<[u8]>,
    name_len: usize,
    value: Value,
    /// The previous slot whose key has the same hash.
    next: Option<u32>,
    /// The identity of the last tags map whose bytes matched `key` (see [`DataBuf::tags`]).
    tags_identity: u64,
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

/// The tags' bytes compared out of line: inlined in the probe loop, its set-up is hoisted in front
/// of the loop and paid by every hit, also those that skip it (the same tags map as last time).
#[inline(never)]
fn tags_eq(a: &[u8], b: &[u8]) -> bool {
    bytes_eq(a, b)
}

/// Something finished on an app thread (a transaction or root span) that the sender thread turns
/// into metrics and a sample: building them is not the app's time. Handed over as an `Arc`, so that
/// a state the app thread already shares (a transaction's) is handed over without an allocation.
pub trait Record: Send + Sync {
    fn process(self: Arc<Self>);
}

thread_local! {
    /// Set while this thread processes finished records: what they record is kept even when the
    /// app has stopped recording (they were finished before it stopped).
    static PROCESSING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is processing finished records (see [`LocalMetrics::process_records`]).
pub fn processing_records() -> bool {
    PROCESSING.with(std::cell::Cell::get)
}

/// Wakes the sender thread.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

#[derive(Default)]
struct Period {
    /// Head slot per key hash.
    index: HashMap<u64, u32, BuildHasherDefault<PrehashedHasher>>,
    slots: Vec<Slot>,
    dropped_updates: u64,
    samples: Vec<(Sample, usize)>,
    logs: Vec<(LogLine, usize)>,
    dropped_samples: u64,
    dropped_logs: u64,
}

impl Period {
    fn is_empty(&self) -> bool {
        self.slots.is_empty()
            && self.dropped_updates == 0
            && self.samples.is_empty()
            && self.logs.is_empty()
            && self.dropped_samples == 0
            && self.dropped_logs == 0
    }
}

#[derive(Default)]
struct Local {
    period: Period,
    records: Vec<Arc<dyn Record>>,
    dropped_records: u64,
    /// The sender sleeps until the next record (see [`LocalMetrics::sleep_if_empty`]).
    sender_asleep: bool,
    waker: Option<Arc<dyn Wake>>,
}

impl Local {
    /// The waker to call (after unlocking) when this record is the first one the sleeping sender
    /// waits for.
    fn first_record(&mut self) -> Option<Arc<dyn Wake>> {
        if !self.sender_asleep {
            return None;
        }
        self.sender_asleep = false;
        self.waker.clone()
    }
}

/// Unlocks `local` and, when this was the first record since the sender went to sleep, wakes it
/// (after the unlock, so that the sender does not wake into a held lock).
fn release_and_wake(mut local: std::sync::MutexGuard<'_, Local>) {
    let waker = local.first_record();
    drop(local);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// What one flush period recorded.
#[derive(Default)]
pub struct Taken {
    pub counters: Vec<(MetricKey, f64)>,
    pub gauges: Vec<(MetricKey, f64)>,
    pub distributions: Vec<(MetricKey, Sketch)>,
    pub dropped_updates: u64,
    /// Finished samples, from transactions and root spans, with their estimated size.
    pub samples: Vec<(Sample, usize)>,
    /// Log lines from `appsignal_log`, with their estimated size.
    pub logs: Vec<(LogLine, usize)>,
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

/// The pre-aggregate's lock, held across a `fork()` ([`LocalMetrics::hold_for_fork`]).
pub struct ForkHold<'a>(#[allow(dead_code)] std::sync::MutexGuard<'a, Local>);

/// The per-process pre-aggregate.
#[derive(Default)]
pub struct LocalMetrics {
    inner: Mutex<Local>,
}

impl LocalMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        // A panic cannot happen between lock and unlock here (no user code runs), so poison is harmless.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn increment_counter(&self, name: &[u8], value: f64, tags: Option<&DataBuf>) {
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

    pub fn set_gauge(&self, name: &[u8], value: f64, tags: Option<&DataBuf>) {
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

    pub fn add_distribution_value(&self, name: &[u8], value: f64, tags: Option<&DataBuf>) {
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

    #[inline]
    fn update(
        &self,
        kind: Kind,
        name: &[u8],
        tags: Option<&DataBuf>,
        hit: impl FnOnce(&mut Value),
        miss: impl FnOnce() -> Value,
    ) {
        // An empty tag map (or tags that are not a map) is the same metric as no tags.
        let tags = tags.and_then(DataBuf::tags);
        let (tags, tags_hash, identity) = match &tags {
            Some(t) => (&t.body[..], t.hash, t.identity),
            None => (&[][..], 0, 0),
        };
        let hash = hash_word(hash_bytes(kind as u64, name), tags_hash);
        let mut local = self.lock();
        let period = &mut local.period;
        let head = period.index.get(&hash).copied();
        let mut at = head;
        while let Some(i) = at {
            let slot = &mut period.slots[i as usize];
            if slot.kind == kind
                && slot.name_len == name.len()
                && slot.key.len() == name.len() + tags.len()
                && bytes_eq(&slot.key[..name.len()], name)
                && ((identity != 0 && slot.tags_identity == identity)
                    || tags_eq(&slot.key[name.len()..], tags))
            {
                slot.tags_identity = identity;
                hit(&mut slot.value);
                return;
            }
            at = slot.next;
        }
        if period.slots.len() >= MAX_KEYS {
            period.dropped_updates = period.dropped_updates.saturating_add(1);
            return;
        }
        let mut key = Vec::with_capacity(name.len() + tags.len());
        key.extend_from_slice(name);
        key.extend_from_slice(tags);
        period.index.insert(hash, period.slots.len() as u32);
        period.slots.push(Slot {
            kind,
            key: key.into_boxed_slice(),
            name_len: name.len(),
            value: miss(),
            next: head,
            tags_identity: identity,
        });
        release_and_wake(local);
    }

    /// Keeps a finished sample for the next flush, within [`MAX_SAMPLES`] per flush period; one
    /// out of [`crate::sample`]'s bounds or over [`MAX_RECORD_BYTES`] is dropped and counted.
    pub fn submit_sample(&self, sample: Sample) {
        let size = sample.check().ok();
        self.keep(sample, size, MAX_SAMPLES, |p| {
            (&mut p.samples, &mut p.dropped_samples)
        });
    }

    /// Keeps a log line for the next flush, within [`MAX_LOGS`] per flush period, like
    /// [`LocalMetrics::submit_sample`].
    pub fn submit_log(&self, line: LogLine) {
        let size = line.check().ok();
        self.keep(line, size, MAX_LOGS, |p| (&mut p.logs, &mut p.dropped_logs));
    }

    /// Adds `item` to the period's list that `pick` names, or counts it in that list's drop count
    /// when the list holds `max` already or its `size` is unknown (invalid) or over
    /// [`MAX_RECORD_BYTES`].
    fn keep<T>(
        &self,
        item: T,
        size: Option<usize>,
        max: usize,
        pick: impl FnOnce(&mut Period) -> (&mut Vec<(T, usize)>, &mut u64),
    ) {
        let mut local = self.lock();
        let (list, dropped) = pick(&mut local.period);
        match size {
            Some(size) if list.len() < max && size <= MAX_RECORD_BYTES => list.push((item, size)),
            _ => *dropped = dropped.saturating_add(1),
        }
        release_and_wake(local);
    }

    /// Hands a finished transaction or span to the sender thread, which processes it before its
    /// next take. Beyond [`MAX_RECORDS`] waiting, it is dropped and counted as a dropped sample.
    pub fn submit_record(&self, record: Arc<dyn Record>) {
        let mut local = self.lock();
        if local.records.len() >= MAX_RECORDS {
            local.dropped_records = local.dropped_records.saturating_add(1);
            return;
        }
        local.records.push(record);
        release_and_wake(local);
    }

    /// Processes the finished records (on the sender thread): their metrics and samples land in
    /// the current period.
    pub fn process_records(&self) {
        let (records, dropped) = {
            let mut local = self.lock();
            (
                std::mem::take(&mut local.records),
                std::mem::take(&mut local.dropped_records),
            )
        };
        if dropped > 0 {
            let mut local = self.lock();
            local.period.dropped_samples = local.period.dropped_samples.saturating_add(dropped);
        }
        PROCESSING.with(|p| p.set(true));
        for record in records {
            record.process();
        }
        PROCESSING.with(|p| p.set(false));
    }

    /// Sets what wakes the sender thread when it sleeps until the next record.
    pub fn set_waker(&self, waker: Option<Arc<dyn Wake>>) {
        let mut local = self.lock();
        local.waker = waker;
        local.sender_asleep = false;
    }

    /// Called by the sender thread before it sleeps with no timeout: true (and the next record
    /// wakes it) when nothing is waiting; false when something is, so it must not sleep.
    pub fn sleep_if_empty(&self) -> bool {
        let mut local = self.lock();
        let empty = local.period.is_empty() && local.records.is_empty() && local.waker.is_some();
        local.sender_asleep = empty;
        empty
    }

    /// Takes everything recorded since the last take.
    pub fn take(&self) -> Taken {
        let local = std::mem::take(&mut self.lock().period);
        let mut taken = Taken {
            dropped_updates: local.dropped_updates,
            samples: local.samples,
            logs: local.logs,
            dropped_samples: local.dropped_samples,
            dropped_logs: local.dropped_logs,
            ..Taken::default()
        };
        for slot in local.slots {
            let (name, tags) = slot.key.split_at(slot.name_len);
            let key = MetricKey {
                name: String::from_utf8_lossy(name).into_owned(),
                tags: TagsRef::render(tags),
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
        let local = self.lock();
        local.period.is_empty() && local.records.is_empty()
    }

    /// In a forked child: empties the pre-aggregate without running a destructor of what it held
    /// (the parent's data, records and wake-up pipe, whose descriptor numbers the child may reuse).
    /// `false` when its lock is held: a thread of the parent held it at the fork.
    pub fn forget_after_fork(&self) -> bool {
        let mut local = match self.inner.try_lock() {
            Ok(local) => local,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        std::mem::forget(std::mem::take(&mut *local));
        true
    }

    /// The lock, held by the fork prepare handler across `fork()` so that a child never inherits
    /// it held (see [`LocalMetrics::forget_after_fork`]).
    pub fn hold_for_fork(&self) -> ForkHold<'_> {
        ForkHold(self.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> DataBuf {
        let mut map = DataBuf::new_map();
        for (k, v) in pairs {
            map.map_set(k, crate::data::Value::Str(v));
        }
        map
    }

    #[test]
    fn counters_sum_gauges_keep_last_distributions_merge() {
        let m = LocalMetrics::default();
        let t = tags(&[("region", "eu"), ("host", "a")]);
        for _ in 0..10 {
            m.increment_counter(b"requests", 1.5, Some(&t));
        }
        m.increment_counter(b"requests", 1.0, None);
        m.set_gauge(b"queue", 3.0, Some(&t));
        m.set_gauge(b"queue", 7.0, Some(&t));
        for v in [1.0, 2.0, 3.0] {
            m.add_distribution_value(b"latency", v, None);
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
        m.increment_counter(b"x", 1.0, None);
        m.set_gauge(b"x", 5.0, None);
        let taken = m.take();
        assert_eq!((taken.counters.len(), taken.gauges.len()), (1, 1));
    }

    #[test]
    fn new_keys_beyond_the_cap_are_dropped_and_counted() {
        let m = LocalMetrics::default();
        for i in 0..MAX_KEYS + 5 {
            m.increment_counter(format!("c{i}").as_bytes(), 1.0, None);
        }
        // Existing keys still update when the cap is reached.
        m.increment_counter(b"c0", 1.0, None);
        let taken = m.take();
        assert_eq!(taken.counters.len(), MAX_KEYS);
        assert_eq!(taken.dropped_updates, 5);
        assert!(taken
            .counters
            .iter()
            .any(|(k, v)| k.name == "c0" && *v == 2.0));
    }

    #[test]
    fn a_sleeping_sender_is_woken_once_by_the_first_record() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        #[derive(Default)]
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(&self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let m = LocalMetrics::default();
        assert!(
            !m.sleep_if_empty(),
            "without a waker the sender must not sleep"
        );
        let count = Arc::new(Count::default());
        m.set_waker(Some(Arc::clone(&count) as Arc<dyn Wake>));
        assert!(m.sleep_if_empty());
        m.increment_counter(b"a", 1.0, None);
        m.increment_counter(b"a", 1.0, None);
        m.increment_counter(b"b", 1.0, None);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(!m.sleep_if_empty(), "something waits: no sleep");
        m.take();
        assert!(m.sleep_if_empty());
        m.submit_log(crate::sample::test_line("x"));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        m.take();
        assert!(m.sleep_if_empty());
        m.set_waker(None);
        m.increment_counter(b"a", 1.0, None);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
