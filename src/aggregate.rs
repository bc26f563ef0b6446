//! The leader's aggregation: batches from every process are merged into windows of one
//! transmission interval, kept apart per push configuration. Counters are summed, gauges keep the
//! value of the latest batch, distributions merge their sketches (count, sum, min, max, quantiles).
//!
//! A batch counts in the window its `created_ms` falls in, whenever it arrives: a late batch for a
//! window that was already pushed opens that window again and goes out in a payload of its own, so
//! nothing is dropped and the receiver's sums stay exact. Each (client, seq) counts once.
//!
//! Windows are keyed by (start, configuration, journal segment): one segment of the journal, one
//! window here, one payload (whose id is the segment id). The caller (the leader) decides the
//! segment; this module only merges.
//!
//! Bounds (everything a client sends is untrusted):
//! - at most [`MAX_CONFIGS`] configurations; a configuration that no connection uses and that has no
//!   open window is forgotten to make room, else a new one is refused (its connection is closed);
//! - at most [`MAX_KEYS_PER_WINDOW`] keys per window, and per configuration at most
//!   [`MAX_CONFIG_BYTES`] (estimated) of keys, samples and log lines across its open windows;
//!   further entries are dropped and counted in the payload;
//! - windows per configuration: the leader picks a batch's window with [`Aggregator::window_for`],
//!   which only chooses among the current window and the [`MAX_LATE_WINDOWS`] before it (a
//!   `created_ms` in the future counts now, an older one in the oldest of those), so a configuration
//!   has at most `MAX_LATE_WINDOWS + 2` open windows (one more while a closed one is pushed);
//! - client sequence records are forgotten after [`CLIENT_MEMORY`] of silence, and beyond
//!   [`MAX_CLIENTS`] the least recently seen first.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::sketch::Sketch;

use crate::counts::AgentCounts;
use crate::export_config::ExportConfig;
use crate::protocol::{Batch, GaugeValue, MetricKey};
use crate::sample::{LogLine, Sample};

pub const MAX_KEYS_PER_WINDOW: usize = 200_000;
/// Test knob (`test-knobs` builds only): a counter of this name makes counting panic.
#[cfg(any(test, feature = "test-knobs"))]
pub const TEST_PANIC_APPLY: &str = "_appsignal_test_panic_apply";
/// Test knob (`test-knobs` builds only): a counter of this name makes the leader thread panic.
#[cfg(any(test, feature = "test-knobs"))]
pub const TEST_PANIC_LEADER: &str = "_appsignal_test_panic_leader";
/// Samples kept per window and configuration; more are dropped and counted in the payload.
pub const MAX_SAMPLES_PER_WINDOW: usize = 200;
/// Log lines kept per window and configuration; more are dropped and counted in the payload.
pub const MAX_LOGS_PER_WINDOW: usize = 50_000;
pub const CLIENT_MEMORY: Duration = Duration::from_secs(3600);
/// Configurations known at once (a working directory is shared by a few apps at most).
pub const MAX_CONFIGS: usize = 8;
/// Client sequence records kept; beyond that the least recently seen are forgotten (at the next
/// window close).
pub const MAX_CLIENTS: usize = 100_000;
/// Estimated bytes of keys, samples and log lines one configuration may hold in its open windows.
pub const MAX_CONFIG_BYTES: usize = 32 * 1024 * 1024;
/// How many windows before the current one a batch may still count in. Processes on one host
/// share one clock, so the only skew is a batch's delay: a batch created in the future (beyond
/// the current window) counts in the current window; one older than this many windows (a client
/// that held it through a long leader outage) counts in the oldest of them. Either way it is
/// counted exactly once; only its timestamp moves.
pub const MAX_LATE_WINDOWS: u64 = 10;
/// Estimated memory of one map entry beside its text.
const ENTRY_OVERHEAD_BYTES: usize = 96;

fn key_cost(key: &MetricKey) -> usize {
    key.name.len()
        + key
            .tags
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum::<usize>()
        + ENTRY_OVERHEAD_BYTES
}

/// The metrics of one window.
#[derive(Default, Clone)]
pub struct MetricSet {
    pub counters: HashMap<MetricKey, f64>,
    pub gauges: HashMap<MetricKey, GaugeValue>,
    pub distributions: HashMap<MetricKey, Sketch>,
}

impl std::fmt::Debug for MetricSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricSet")
            .field("counters", &self.counters)
            .field("gauges", &self.gauges)
            .field("distributions", &self.distributions.len())
            .finish()
    }
}

impl MetricSet {
    pub fn len(&self) -> usize {
        self.counters.len() + self.gauges.len() + self.distributions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Merges a batch; returns how many entries did not fit under `max_keys` or the byte `budget`
    /// (estimated bytes still free for this window's configuration, reduced by what new keys use).
    fn merge(&mut self, batch: Batch, max_keys: usize, budget: &mut usize) -> u64 {
        let mut dropped = 0u64;
        let mut room = max_keys.saturating_sub(self.len());
        let mut fits = |key: &MetricKey| {
            let cost = key_cost(key);
            if room > 0 && cost <= *budget {
                room -= 1;
                *budget -= cost;
                true
            } else {
                false
            }
        };
        for (key, value) in batch.counters {
            if let Some(total) = self.counters.get_mut(&key) {
                *total += value;
            } else if fits(&key) {
                self.counters.insert(key, value);
            } else {
                dropped += 1;
            }
        }
        for (key, value) in batch.gauges {
            if let Some(last) = self.gauges.get_mut(&key) {
                if value.at_ms >= last.at_ms {
                    *last = value;
                }
            } else if fits(&key) {
                self.gauges.insert(key, value);
            } else {
                dropped += 1;
            }
        }
        for (key, sketch) in batch.distributions {
            if let Some(total) = self.distributions.get_mut(&key) {
                total.merge(&sketch);
            } else if fits(&key) {
                self.distributions.insert(key, sketch);
            } else {
                dropped += 1;
            }
        }
        dropped
    }
}

/// Identity of a window: its start, its configuration and the journal segment that holds its batches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowKey {
    pub start_ms: u64,
    pub config_id: u64,
    pub segment: String,
}

/// One closed window of one configuration, ready to become a payload.
#[derive(Debug, Clone)]
pub struct Window {
    pub config: ExportConfig,
    pub config_id: u64,
    /// The journal segment of this window; also the payload id.
    pub segment: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub metrics: MetricSet,
    pub batches: u64,
    /// Samples, at most [`MAX_SAMPLES_PER_WINDOW`].
    pub samples: Vec<Sample>,
    /// Log lines, at most [`MAX_LOGS_PER_WINDOW`].
    pub logs: Vec<LogLine>,
    /// What its batches dropped: updates dropped in clients (too many keys) and here (window
    /// full), samples and log lines over the caps or invalid, unacknowledged batches that
    /// processes dropped (their queue was full).
    pub counts: AgentCounts,
    /// Estimated bytes of its keys, samples and log lines (what it held of its configuration's
    /// budget while open).
    pub bytes: usize,
}

#[derive(Default)]
struct OpenWindow {
    metrics: MetricSet,
    batches: u64,
    samples: Vec<Sample>,
    logs: Vec<LogLine>,
    counts: AgentCounts,
    /// Estimated bytes this window holds (charged to its configuration's budget).
    bytes: usize,
}

impl OpenWindow {
    /// Keeps samples and logs within the window's caps and the byte `budget`, counting the rest.
    fn keep_records(&mut self, batch: &mut Batch, budget: &mut usize) {
        self.counts.add(&AgentCounts {
            dropped_samples: batch.dropped_samples,
            dropped_logs: batch.dropped_logs,
            dropped_batches: batch.dropped_batches,
            ..AgentCounts::default()
        });
        for sample in batch.samples.drain(..) {
            // Checked when the batch was read: the size is there.
            let cost = sample.check().unwrap_or(usize::MAX / 2) + ENTRY_OVERHEAD_BYTES;
            if self.samples.len() < MAX_SAMPLES_PER_WINDOW && cost <= *budget {
                *budget -= cost;
                self.samples.push(sample);
            } else {
                self.counts.dropped_samples = self.counts.dropped_samples.saturating_add(1);
            }
        }
        for line in batch.logs.drain(..) {
            let cost = line.check().unwrap_or(usize::MAX / 2) + ENTRY_OVERHEAD_BYTES;
            if self.logs.len() < MAX_LOGS_PER_WINDOW && cost <= *budget {
                *budget -= cost;
                self.logs.push(line);
            } else {
                self.counts.dropped_logs = self.counts.dropped_logs.saturating_add(1);
            }
        }
    }
}

/// Whether an applied batch was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Counted,
    Duplicate,
}

pub struct Aggregator {
    interval_ms: u64,
    configs: HashMap<u64, ExportConfig>,
    /// Connections (and the leader itself) using each configuration; unused ones may be forgotten.
    users: HashMap<u64, usize>,
    /// Estimated bytes held in open windows, per configuration.
    bytes: HashMap<u64, usize>,
    windows: BTreeMap<WindowKey, OpenWindow>,
    /// client id -> (last counted seq, last seen ms)
    clients: HashMap<u64, (u64, u64)>,
}

impl Aggregator {
    pub fn new(interval: Duration) -> Self {
        Aggregator {
            interval_ms: (interval.as_millis() as u64).max(1),
            configs: HashMap::new(),
            users: HashMap::new(),
            bytes: HashMap::new(),
            windows: BTreeMap::new(),
            clients: HashMap::new(),
        }
    }

    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// Makes a configuration known for one more user (a connection; see [`Self::release`]);
    /// returns its id, or `None` when [`MAX_CONFIGS`] configurations are in use. A configuration
    /// known without its secrets (replayed from the journal, which does not store them) gets them
    /// when a process has them.
    pub fn register(&mut self, config: &ExportConfig) -> Option<u64> {
        let id = config.id();
        if !self.configs.contains_key(&id) && self.configs.len() >= MAX_CONFIGS {
            // Forget configurations that nobody uses and that hold no window.
            let in_windows: std::collections::HashSet<u64> =
                self.windows.keys().map(|k| k.config_id).collect();
            let users = &self.users;
            self.configs
                .retain(|id, _| users.get(id).is_some_and(|n| *n > 0) || in_windows.contains(id));
            if self.configs.len() >= MAX_CONFIGS {
                return None;
            }
        }
        self.register_as(id, config);
        *self.users.entry(id).or_insert(0) += 1;
        Some(id)
    }

    /// One user of configuration `id` is gone.
    pub fn release(&mut self, id: u64) {
        if let Some(n) = self.users.get_mut(&id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.users.remove(&id);
            }
        }
    }

    /// Number of configurations known (for tests and diagnose).
    pub fn configs(&self) -> usize {
        self.configs.len()
    }

    /// Registers `config` under `id` (replay: the id of the configuration with its key).
    pub fn register_as(&mut self, id: u64, config: &ExportConfig) {
        match self.configs.get_mut(&id) {
            Some(known) if known.redacted && !config.redacted => {
                *known = config.clone();
            }
            Some(_) => {}
            None => {
                self.configs.insert(id, config.clone());
            }
        }
    }

    /// Start of the window that `created_ms` falls in.
    pub fn window_start(&self, created_ms: u64) -> u64 {
        created_ms - created_ms % self.interval_ms
    }

    /// The window a batch created at `created_ms` counts in when it arrives at `now_ms`: its own
    /// window if that is the current one or one of the [`MAX_LATE_WINDOWS`] before it; the current
    /// one for a time in the future; the oldest of those for an older time.
    pub fn window_for(&self, created_ms: u64, now_ms: u64) -> u64 {
        let oldest = now_ms.saturating_sub(MAX_LATE_WINDOWS * self.interval_ms);
        self.window_start(created_ms.clamp(oldest, now_ms))
    }

    /// The last seq counted for a client, if it was seen recently.
    pub fn last_counted(&self, client_id: u64) -> Option<u64> {
        self.clients.get(&client_id).map(|(last, _)| *last)
    }

    /// Whether (client, seq) was counted already.
    pub fn is_counted(&self, client_id: u64, seq: u64) -> bool {
        self.clients
            .get(&client_id)
            .is_some_and(|(last, _)| seq <= *last)
    }

    /// Records that (client, seq) is counted (replay of what an earlier leader counted).
    pub fn mark_counted(&mut self, client_id: u64, seq: u64, now_ms: u64) {
        let entry = self.clients.entry(client_id).or_insert((0, now_ms));
        entry.0 = entry.0.max(seq);
        entry.1 = now_ms;
    }

    /// (client, last counted seq) of every client seen recently, for the journal.
    pub fn counted_snapshot(&self) -> Vec<(u64, u64)> {
        self.clients
            .iter()
            .map(|(c, (seq, _))| (*c, *seq))
            .collect()
    }

    /// The configuration with this id, if a process with it has been seen.
    pub fn config(&self, id: u64) -> Option<&ExportConfig> {
        self.configs.get(&id)
    }

    /// Counts a batch for configuration `config_id` (registered before) in the window starting at
    /// `start_ms` (see [`Self::window_start`]) and journal segment `segment`, once per (client, seq).
    pub fn apply(
        &mut self,
        config_id: u64,
        start_ms: u64,
        segment: &str,
        batch: Batch,
        now_ms: u64,
    ) -> Applied {
        if self.is_counted(batch.client_id, batch.seq) {
            return Applied::Duplicate;
        }
        self.mark_counted(batch.client_id, batch.seq, now_ms);
        let key = WindowKey {
            start_ms,
            config_id,
            segment: segment.to_owned(),
        };
        #[cfg(any(test, feature = "test-knobs"))]
        if batch
            .counters
            .iter()
            .any(|(k, _)| k.name == TEST_PANIC_APPLY)
        {
            #[allow(clippy::panic)]
            {
                panic!("test knob: a batch that makes counting panic");
            }
        }
        let used = self.bytes.entry(config_id).or_insert(0);
        let mut budget = MAX_CONFIG_BYTES.saturating_sub(*used);
        let before = budget;
        let window = self.windows.entry(key).or_default();
        window.batches += 1;
        let mut batch = batch;
        window.keep_records(&mut batch, &mut budget);
        window.counts.dropped_updates = window
            .counts
            .dropped_updates
            .saturating_add(batch.dropped_updates);
        let dropped = window
            .metrics
            .merge(batch, MAX_KEYS_PER_WINDOW, &mut budget);
        window.counts.dropped_updates = window.counts.dropped_updates.saturating_add(dropped);
        window.bytes += before - budget;
        *used += before - budget;
        Applied::Counted
    }

    /// Removes and returns the windows that ended at or before `now_ms`.
    pub fn take_closed(&mut self, now_ms: u64) -> Vec<Window> {
        let interval = self.interval_ms;
        self.clients
            .retain(|_, (_, seen)| now_ms.saturating_sub(*seen) < CLIENT_MEMORY.as_millis() as u64);
        if self.clients.len() > MAX_CLIENTS {
            let mut seen: Vec<u64> = self.clients.values().map(|(_, seen)| *seen).collect();
            crate::sort::sort_by(&mut seen, |a, b| b.cmp(a));
            let cutoff = seen[MAX_CLIENTS - 1];
            self.clients.retain(|_, (_, seen)| *seen >= cutoff);
        }
        self.take_where(|start| start + interval <= now_ms)
    }

    /// Removes and returns every window (at stop).
    pub fn take_all(&mut self) -> Vec<Window> {
        self.take_where(|_| true)
    }

    fn take_where(&mut self, closed: impl Fn(u64) -> bool) -> Vec<Window> {
        let keys: Vec<WindowKey> = self
            .windows
            .keys()
            .filter(|k| closed(k.start_ms))
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let (Some(open), Some(config)) =
                (self.windows.remove(&key), self.configs.get(&key.config_id))
            else {
                continue;
            };
            if let Some(used) = self.bytes.get_mut(&key.config_id) {
                *used = used.saturating_sub(open.bytes);
            }
            // Even an empty window is returned: its journal segment must be dropped.
            out.push(Window {
                config: config.clone(),
                config_id: key.config_id,
                segment: key.segment,
                start_ms: key.start_ms,
                end_ms: key.start_ms + self.interval_ms,
                metrics: open.metrics,
                batches: open.batches,
                samples: open.samples,
                logs: open.logs,
                counts: open.counts,
                bytes: open.bytes,
            });
        }
        out
    }

    /// The configurations registered, with their ids.
    pub fn registered(&self) -> impl Iterator<Item = (u64, &ExportConfig)> {
        self.configs.iter().map(|(id, config)| (*id, config))
    }

    /// The open windows' metrics, with their configuration and start (for the cumulative view's
    /// live totals).
    pub fn open_metrics(&self) -> impl Iterator<Item = (&ExportConfig, u64, &MetricSet)> {
        self.windows.iter().filter_map(|(key, open)| {
            let config = self.configs.get(&key.config_id)?;
            Some((config, key.start_ms, &open.metrics))
        })
    }

    /// Number of open windows (for diagnose and tests).
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(key: &str) -> ExportConfig {
        ExportConfig {
            push_api_key: key.into(),
            app_name: "app".into(),
            environment: "test".into(),
            endpoint: "http://127.0.0.1:1".into(),
            hostname: "h".into(),
            revision: String::new(),
            ..Default::default()
        }
    }

    fn batch(client_id: u64, seq: u64, created_ms: u64, count: f64) -> Batch {
        Batch {
            client_id,
            seq,
            created_ms,
            counters: vec![(
                MetricKey {
                    name: "c".into(),
                    tags: vec![],
                },
                count,
            )],
            gauges: vec![],
            distributions: vec![],
            dropped_updates: 0,
            ..Batch::default()
        }
    }

    #[test]
    fn batches_count_once_in_the_window_of_their_creation() {
        let mut agg = Aggregator::new(Duration::from_millis(1000));
        let id = agg.register(&config("k")).unwrap();
        assert_eq!(
            agg.apply(id, 0, "s", batch(1, 1, 500, 2.0), 600),
            Applied::Counted
        );
        assert_eq!(
            agg.apply(id, 0, "s", batch(1, 1, 500, 2.0), 600),
            Applied::Duplicate
        );
        assert_eq!(
            agg.apply(id, 0, "s", batch(2, 1, 900, 3.0), 950),
            Applied::Counted
        );
        assert_eq!(
            agg.apply(id, 1000, "s", batch(1, 2, 1500, 4.0), 1600),
            Applied::Counted
        );
        assert!(agg.take_closed(999).is_empty());
        let closed = agg.take_closed(1000);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].metrics.counters.values().sum::<f64>(), 5.0);
        assert_eq!((closed[0].start_ms, closed[0].end_ms), (0, 1000));
        // A late batch of a pushed window opens it again rather than being lost.
        assert_eq!(
            agg.apply(id, 0, "s", batch(3, 1, 999, 1.0), 1700),
            Applied::Counted
        );
        let rest = agg.take_all();
        assert_eq!(rest.len(), 2);
        let total: f64 = rest
            .iter()
            .map(|w| w.metrics.counters.values().sum::<f64>())
            .sum();
        assert_eq!(total, 5.0);
    }

    #[test]
    fn configurations_are_kept_apart() {
        let mut agg = Aggregator::new(Duration::from_millis(1000));
        let a = agg.register(&config("a")).unwrap();
        let b = agg.register(&config("b")).unwrap();
        agg.apply(a, 0, "s", batch(1, 1, 10, 1.0), 10);
        agg.apply(b, 0, "s", batch(2, 1, 10, 7.0), 10);
        let windows = agg.take_all();
        assert_eq!(windows.len(), 2);
        for w in windows {
            let expected = if w.config.push_api_key == "a" {
                1.0
            } else {
                7.0
            };
            assert_eq!(w.metrics.counters.values().sum::<f64>(), expected);
        }
    }

    #[test]
    fn gauges_keep_the_latest_and_sketches_merge() {
        let mut agg = Aggregator::new(Duration::from_millis(1000));
        let id = agg.register(&config("k")).unwrap();
        let key = MetricKey {
            name: "g".into(),
            tags: vec![],
        };
        let mut b1 = batch(1, 1, 100, 0.0);
        b1.gauges.push((
            key.clone(),
            GaugeValue {
                value: 9.0,
                at_ms: 200,
            },
        ));
        let mut s = Sketch::new();
        s.add(1.0);
        b1.distributions.push((key.clone(), s.clone()));
        let mut b2 = batch(2, 1, 100, 0.0);
        b2.gauges.push((
            key.clone(),
            GaugeValue {
                value: 4.0,
                at_ms: 150,
            },
        ));
        s.add(3.0);
        b2.distributions.push((key.clone(), s));
        agg.apply(id, 0, "s", b1, 300);
        agg.apply(id, 0, "s", b2, 300);
        let w = agg.take_all().remove(0);
        assert_eq!(w.metrics.gauges[&key].value, 9.0);
        let d = &w.metrics.distributions[&key];
        assert_eq!(
            (d.count(), d.sum(), d.min(), d.max()),
            (3, 5.0, Some(1.0), Some(3.0))
        );
    }

    #[test]
    fn created_ms_only_picks_the_current_or_a_recent_window() {
        let agg = Aggregator::new(Duration::from_millis(1000));
        let now = 1_000_000_500;
        assert_eq!(agg.window_for(now - 2_000, now), 999_998_000);
        assert_eq!(agg.window_for(u64::MAX, now), 1_000_000_000, "future: now");
        assert_eq!(
            agg.window_for(0, now),
            1_000_000_500 - MAX_LATE_WINDOWS * 1000 - 500,
            "long ago: the oldest recent window"
        );
    }

    #[test]
    fn configurations_are_capped_and_unused_ones_make_room() {
        let mut agg = Aggregator::new(Duration::from_millis(1000));
        let ids: Vec<u64> = (0..MAX_CONFIGS)
            .map(|i| agg.register(&config(&format!("k{i}"))).unwrap())
            .collect();
        assert_eq!(agg.register(&config("one-too-many")), None);
        // Known configurations still register.
        assert_eq!(agg.register(&config("k0")), Some(ids[0]));
        // One without users and without windows is forgotten for a new one.
        agg.release(ids[1]);
        assert!(agg.register(&config("new")).is_some());
        assert_eq!(agg.configs(), MAX_CONFIGS);
        // One with an open window is kept even without users.
        agg.apply(ids[2], 0, "s", batch(1, 1, 10, 1.0), 10);
        agg.release(ids[2]);
        assert_eq!(agg.register(&config("newer")), None);
    }

    #[test]
    fn a_configuration_holds_its_byte_budget_at_most() {
        let mut agg = Aggregator::new(Duration::from_millis(1000));
        let id = agg.register(&config("k")).unwrap();
        let mut b = batch(1, 1, 10, 0.0);
        b.counters = (0..2_000)
            .map(|i| {
                (
                    MetricKey {
                        name: format!("{i}-{}", "x".repeat(32 * 1024)),
                        tags: vec![],
                    },
                    1.0,
                )
            })
            .collect();
        agg.apply(id, 0, "s", b, 10);
        let w = agg.take_all().remove(0);
        assert!(w.metrics.len() < 1_100, "{} keys kept", w.metrics.len());
        assert_eq!(w.metrics.len() as u64 + w.counts.dropped_updates, 2_000);
    }
}
