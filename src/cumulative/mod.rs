//! The cumulative view: per configuration (app name and environment) and series (kind, metric
//! name, tags), the totals since the series was first counted, continued by every leader. It owns
//! the state in memory (this file) and its file in the working directory ([`file`]).
//!
//! Per series: a counter's running total, a gauge's last value (the one with the latest `at_ms`),
//! a distribution's merged [`Sketch`], the series' start (the start of the first window that
//! counted it; it never moves, so that an exporter's start time never signals a reset) and its last
//! update (the `now_ms` of the last window that changed it, for expiry).
//!
//! **Identity.** A state is keyed by (app name, environment), not by the configuration id: the id
//! hashes the push key and the revision, so a deploy would reset every counter. Those two are
//! also the `appsignal_app` and `appsignal_env` labels, so two states never render one series.
//!
//! **Non-monotonic counters.** A counter series is monotonic until a window adds a negative (or
//! non-finite) amount to it, or its total goes negative; from then on, for as long as it lives, it
//! is exported as a gauge-like sum (Prometheus `gauge`, OTLP non-monotonic Sum). A negative
//! increment cancelled within one window (+5 and −3 in one window add +2) is not seen, and need not
//! be: the exported total still never decreases. The live view (see [`Cumulative::live`]) never
//! shows a monotonic counter's negative open delta, so a scrape of a monotonic counter never goes
//! back either; if that window closes negative, the series turns non-monotonic then.
//!
//! **Exactly once.** How the leader must call this module (one commit point per transmission):
//! 1. for every closed window, after its payloads are in the payload cache:
//!    [`Cumulative::add_window`] with the window's segment id (skips a segment already included);
//! 2. then [`Cumulative::expire`] and [`Cumulative::save`] (one atomic file per state): the commit
//!    point. If `save` fails, keep going (the state stays dirty, the next `save` retries) but do not
//!    delete the segments it would have covered before a later `save` succeeds;
//! 3. then delete the journal segments and call [`Cumulative::segment_done`] for each.
//!
//! Replay by a new leader, before it serves anything: [`Cumulative::load`] (a torn, foreign or
//! unreadable file is reported and that state starts empty: the journal rebuilds what it still
//! holds); then for every replayed segment:
//! - [`Cumulative::includes`] its id → the state has it: treat it exactly like a segment whose
//!   payload is in the cache (read it for its (client, seq) pairs, delete it; never adopt it);
//! - else, its payload in the cache → aggregate its batches into a window (a scratch `Aggregator`:
//!   register, apply, `take_all`), `add_window` it, `save`, then delete the segment;
//! - else → adopt it as today; it is added when its window closes (step 1).
//!
//! A scrape calls [`Cumulative::live`] with every window not yet added: the open ones and those
//! taken from the aggregator but not yet added (being turned into payloads); otherwise a scrape
//! between `take_closed` and `add_window` would see a counter go back.
//!
//! Segment ids are random, so no order among them can be relied on (a late window of an old start
//! closes after newer ones): the state remembers the ids it includes until the leader says the
//! segment is gone ([`Cumulative::segment_done`]), at most [`MAX_REMEMBERED_SEGMENTS`] per state.
//!
//! **Bounds.** At most [`MAX_STATES`] states, [`MAX_SERIES`] series and [`MAX_STATE_BYTES`]
//! (estimated) per state; a series that does not fit is refused and counted
//! ([`Cumulative::take_drops`], for `agent.*`). A series not updated for the expiry (24 h by
//! default) is dropped and counted; if it comes back it starts again from zero with a new start.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::time::Duration;

use crate::aggregate::MetricSet;
use crate::protocol::{GaugeValue, MetricKey};
use crate::sketch::Sketch;

pub mod file;

/// Series per state, at most (as many as keys in one window).
pub const MAX_SERIES: usize = crate::aggregate::MAX_KEYS_PER_WINDOW;
/// Estimated bytes of one state's series, at most.
pub const MAX_STATE_BYTES: usize = 32 * 1024 * 1024;
/// States (app name, environment) kept at once.
pub const MAX_STATES: usize = 16;
/// Included segment ids a state remembers until they are reported done; beyond, the oldest go.
pub const MAX_REMEMBERED_SEGMENTS: usize = 1024;
/// A series not updated for this long is dropped, by default.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// What a series is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Counter,
    Gauge,
    Distribution,
}

/// A series' cumulative value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter { total: f64, monotonic: bool },
    Gauge(GaugeValue),
    Distribution(Sketch),
}

impl Value {
    pub fn kind(&self) -> Kind {
        match self {
            Value::Counter { .. } => Kind::Counter,
            Value::Gauge(_) => Kind::Gauge,
            Value::Distribution(_) => Kind::Distribution,
        }
    }

    /// Adds a window's `other` of the same kind (a kind mismatch is ignored).
    fn add(&mut self, other: &Value) {
        match (self, other) {
            (Value::Counter { total, monotonic }, Value::Counter { total: delta, .. }) => {
                *total += delta;
                *monotonic &= delta.is_finite() && *delta >= 0.0 && *total >= 0.0;
            }
            (Value::Gauge(last), Value::Gauge(new)) if new.at_ms >= last.at_ms => *last = *new,
            (Value::Distribution(sketch), Value::Distribution(new)) => sketch.merge(new),
            _ => {}
        }
    }

    fn counter(delta: f64) -> Value {
        Value::Counter {
            total: delta,
            monotonic: delta.is_finite() && delta >= 0.0,
        }
    }

    /// Estimated bytes beside the key.
    fn cost(&self) -> usize {
        match self {
            Value::Distribution(s) => {
                64 + 8 * (s.positive().counts().len() + s.negative().counts().len())
            }
            _ => 32,
        }
    }
}

/// One series' state.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Start of the first window that counted it (ms since the epoch).
    pub start_ms: u64,
    /// When a window last changed it (ms since the epoch; for expiry).
    pub updated_ms: u64,
    pub value: Value,
}

fn key_cost(key: &MetricKey) -> usize {
    96 + key.name.len()
        + key
            .tags
            .iter()
            .map(|(k, v)| 48 + k.len() + v.len())
            .sum::<usize>()
}

/// A series' identity within a state.
pub type SeriesId = (Kind, MetricKey);

fn order(a: (Kind, &MetricKey), b: (Kind, &MetricKey)) -> Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

/// The order of a state's series (one function for both of its sorts).
fn by_id(a: &(SeriesId, Series), b: &(SeriesId, Series)) -> Ordering {
    order((a.0 .0, &a.0 .1), (b.0 .0, &b.0 .1))
}

/// A state's series sorted by (kind, key), searched by bisection. Not a `BTreeMap`: each map of
/// a new key type is its own copy of the tree's code in the library; this is one small copy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesMap {
    items: Vec<(SeriesId, Series)>,
}

impl SeriesMap {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sorted by (kind, key).
    pub fn iter(&self) -> std::slice::Iter<'_, (SeriesId, Series)> {
        self.items.iter()
    }

    fn find(&self, kind: Kind, key: &MetricKey) -> Result<usize, usize> {
        self.items
            .binary_search_by(|((k, other), _)| order((*k, other), (kind, key)))
    }

    pub fn get(&self, kind: Kind, key: &MetricKey) -> Option<&Series> {
        self.find(kind, key).ok().map(|at| &self.items[at].1)
    }

    fn get_mut(&mut self, kind: Kind, key: &MetricKey) -> Option<&mut Series> {
        self.find(kind, key).ok().map(|at| &mut self.items[at].1)
    }

    pub fn contains_key(&self, id: &SeriesId) -> bool {
        self.find(id.0, &id.1).is_ok()
    }

    /// The series of `items` (any order); `None` when one id appears twice.
    fn from_unsorted(mut items: Vec<(SeriesId, Series)>) -> Option<SeriesMap> {
        crate::sort::sort_by(&mut items, by_id);
        if items.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        Some(SeriesMap { items })
    }

    /// Adds series whose ids are not in the map (nor twice in `new`).
    fn extend_new(&mut self, new: Vec<(SeriesId, Series)>) {
        if new.is_empty() {
            return;
        }
        self.items.extend(new);
        crate::sort::sort_by(&mut self.items, by_id);
    }

    fn retain(&mut self, mut keep: impl FnMut(&Series) -> bool) {
        self.items.retain(|(_, s)| keep(s));
    }
}

#[cfg(test)]
impl std::ops::Index<&SeriesId> for SeriesMap {
    type Output = Series;

    fn index(&self, id: &SeriesId) -> &Series {
        match self.get(id.0, &id.1) {
            Some(s) => s,
            None => panic!("no series {id:?}"),
        }
    }
}

/// What a state dropped since the last [`Cumulative::take_drops`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Series refused (a cap), counted once per window that brought them.
    pub refused: u64,
    /// Series dropped because they were not updated for the expiry.
    pub expired: u64,
    /// Included segment ids forgotten before they were reported done.
    pub forgotten_segments: u64,
}

/// The cumulative state of one (app name, environment).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub app: String,
    pub env: String,
    pub series: SeriesMap,
    /// Segment ids included and not yet reported done, oldest first.
    pub segments: Vec<String>,
    bytes: usize,
    dirty: bool,
    drops: Drops,
}

impl State {
    pub fn new(app: &str, env: &str) -> State {
        State {
            app: app.to_owned(),
            env: env.to_owned(),
            ..State::default()
        }
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Recomputes the byte estimate (after loading).
    fn recount(&mut self) {
        self.bytes = self
            .series
            .iter()
            .map(|((_, key), s)| key_cost(key) + s.value.cost())
            .sum();
    }

    /// Adds `value` to its series; a series not in the state yet goes to `new` (one window's
    /// new series are added at once, so that a window of many is not one shift of the state each).
    fn add(
        &mut self,
        key: &MetricKey,
        value: Value,
        (start_ms, now_ms): (u64, u64),
        new: &mut Vec<(SeriesId, Series)>,
    ) {
        if let Some(series) = self.series.get_mut(value.kind(), key) {
            let before = series.value.cost();
            series.value.add(&value);
            series.updated_ms = now_ms;
            self.bytes = self.bytes + series.value.cost() - before;
            return;
        }
        let cost = key_cost(key) + value.cost();
        if self.series.len() + new.len() >= crate::test_knobs::cumulative_max_series(MAX_SERIES)
            || self.bytes + cost > MAX_STATE_BYTES
        {
            self.drops.refused += 1;
            return;
        }
        self.bytes += cost;
        let series = Series {
            start_ms,
            updated_ms: now_ms,
            value,
        };
        new.push(((series.value.kind(), key.clone()), series));
    }
}

/// A window (closed or open) as this module reads it.
#[derive(Clone, Copy)]
pub struct WindowRef<'a> {
    pub app: &'a str,
    pub env: &'a str,
    pub start_ms: u64,
    pub metrics: &'a MetricSet,
}

/// One series as a scrape or an export shows it (its value borrowed from the state unless an
/// open window changed it).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSeries<'a> {
    pub key: &'a MetricKey,
    pub start_ms: u64,
    pub value: Cow<'a, Value>,
}

impl<'a> LiveSeries<'a> {
    pub fn new(key: &'a MetricKey, start_ms: u64, value: Value) -> LiveSeries<'a> {
        LiveSeries {
            key,
            start_ms,
            value: Cow::Owned(value),
        }
    }
}

/// The series of one state as a scrape shows them, sorted by (kind, key).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveState<'a> {
    pub app: &'a str,
    pub env: &'a str,
    pub series: Vec<LiveSeries<'a>>,
}

/// Whether [`Cumulative::add_window`] counted a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Counted,
    /// Its segment was counted before.
    AlreadyIncluded,
    /// [`MAX_STATES`] states are known; the window is not counted (and not remembered).
    Refused,
}

/// Every state the leader knows.
pub struct Cumulative {
    expiry_ms: u64,
    /// Sorted by (app, env).
    states: Vec<State>,
    refused_windows: u64,
}

impl Cumulative {
    pub fn new(expiry: Duration) -> Cumulative {
        Cumulative {
            expiry_ms: (expiry.as_millis() as u64).max(1),
            states: Vec::new(),
            refused_windows: 0,
        }
    }

    /// The state of (app, env), if any.
    pub fn state(&self, app: &str, env: &str) -> Option<&State> {
        self.find(app, env).ok().map(|at| &self.states[at])
    }

    /// Where the state of (app, env) is, or would be.
    fn find(&self, app: &str, env: &str) -> Result<usize, usize> {
        self.states
            .binary_search_by(|s| (s.app.as_str(), s.env.as_str()).cmp(&(app, env)))
    }

    /// Adds a loaded state (the caller checked that it is not known yet).
    fn insert(&mut self, state: State) {
        if let Err(at) = self.find(&state.app, &state.env) {
            self.states.insert(at, state);
        }
    }

    pub fn states(&self) -> impl Iterator<Item = &State> {
        self.states.iter()
    }

    /// Whether the window of journal segment `segment` is counted in some state.
    pub fn includes(&self, segment: &str) -> bool {
        self.states
            .iter()
            .any(|s| s.segments.iter().any(|id| id == segment))
    }

    /// Counts a closed window whose journal segment is `segment`, once per segment.
    pub fn add_window(&mut self, window: WindowRef<'_>, segment: &str, now_ms: u64) -> Added {
        if self.includes(segment) {
            return Added::AlreadyIncluded;
        }
        let at = match self.find(window.app, window.env) {
            Ok(at) => at,
            Err(_) if self.states.len() >= MAX_STATES => {
                self.refused_windows += 1;
                return Added::Refused;
            }
            Err(at) => {
                self.states.insert(at, State::new(window.app, window.env));
                at
            }
        };
        let state = &mut self.states[at];
        let m = window.metrics;
        let times = (window.start_ms, now_ms);
        let mut new = Vec::new();
        for (key, delta) in &m.counters {
            state.add(key, Value::counter(*delta), times, &mut new);
        }
        for (key, gauge) in &m.gauges {
            state.add(key, Value::Gauge(*gauge), times, &mut new);
        }
        for (key, sketch) in &m.distributions {
            state.add(key, Value::Distribution(sketch.clone()), times, &mut new);
        }
        state.series.extend_new(new);
        state.segments.push(segment.to_owned());
        if state.segments.len() > MAX_REMEMBERED_SEGMENTS {
            let extra = state.segments.len() - MAX_REMEMBERED_SEGMENTS;
            state.segments.drain(..extra);
            state.drops.forgotten_segments += extra as u64;
        }
        state.dirty = true;
        Added::Counted
    }

    /// The journal segment `segment` is deleted: its id need not be remembered any more (the file
    /// forgets it at the next save).
    pub fn segment_done(&mut self, segment: &str) {
        for state in self.states.iter_mut() {
            if let Some(at) = state.segments.iter().position(|id| id == segment) {
                state.segments.remove(at);
                state.dirty = true;
            }
        }
    }

    /// Drops the series not updated for the expiry, and states left with nothing.
    pub fn expire(&mut self, now_ms: u64) {
        let expiry = self.expiry_ms;
        for state in self.states.iter_mut() {
            let before = state.series.len();
            state
                .series
                .retain(|s| now_ms.saturating_sub(s.updated_ms) < expiry);
            let gone = before - state.series.len();
            if gone > 0 {
                state.drops.expired += gone as u64;
                state.recount();
                state.dirty = true;
            }
        }
    }

    /// What the states dropped since the last call, added up (for `agent.*`, which counts them
    /// for the leader as a whole).
    pub fn take_drops(&mut self) -> Drops {
        let mut sum = Drops::default();
        for state in &mut self.states {
            let d = std::mem::take(&mut state.drops);
            sum.refused += d.refused;
            sum.expired += d.expired;
            sum.forgotten_segments += d.forgotten_segments;
        }
        sum
    }

    /// Windows not counted because [`MAX_STATES`] states were known (since the last call).
    pub fn take_refused_windows(&mut self) -> u64 {
        std::mem::take(&mut self.refused_windows)
    }

    /// What a scrape shows: the committed state plus the `open` windows (not yet closed), without
    /// changing the state. Per (app, env), sorted by app and env; series sorted by (kind, key). A
    /// series only in open windows starts at its window's start; beyond the series cap, such a
    /// series is not shown (it would be refused when its window closes).
    pub fn live<'a>(&'a self, open: &[WindowRef<'a>]) -> Vec<LiveState<'a>> {
        let mut out: Vec<LiveState<'a>> = self
            .states
            .iter()
            .map(|state| LiveState {
                app: &state.app,
                env: &state.env,
                series: committed(state),
            })
            .collect();
        for w in open {
            let at = match out.iter().position(|l| (l.app, l.env) == (w.app, w.env)) {
                Some(at) => at,
                // A state `add_window` would refuse: not shown either.
                None if out.len() >= MAX_STATES => continue,
                None => {
                    out.push(LiveState {
                        app: w.app,
                        env: w.env,
                        series: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            self.add_open(&mut out[at].series, w);
        }
        crate::sort::sort_by(&mut out, |a, b| (a.app, a.env).cmp(&(b.app, b.env)));
        out
    }

    /// The series of (app, env) as [`Cumulative::live`] shows them: for an exporter, which needs
    /// one state, without the cost of the others.
    pub fn live_of<'a>(
        &'a self,
        app: &str,
        env: &str,
        open: &[WindowRef<'a>],
    ) -> Vec<LiveSeries<'a>> {
        let mut series = match self.state(app, env) {
            Some(state) => committed(state),
            // A state `add_window` would refuse: not shown either.
            None if self.states.len() >= MAX_STATES => return Vec::new(),
            None => Vec::new(),
        };
        for w in open.iter().filter(|w| (w.app, w.env) == (app, env)) {
            self.add_open(&mut series, w);
        }
        series
    }

    /// Adds the open window `w` to `series`, the live series of its state (see [`Cumulative::live`]).
    fn add_open<'a>(&self, series: &mut Vec<LiveSeries<'a>>, w: &WindowRef<'a>) {
        let cap = crate::test_knobs::cumulative_max_series(MAX_SERIES);
        let mut new = Vec::new();
        let m = w.metrics;
        let values = m
            .counters
            .iter()
            .map(|(k, d)| (k, Value::counter(*d)))
            .chain(m.gauges.iter().map(|(k, g)| (k, Value::Gauge(*g))))
            .chain(
                m.distributions
                    .iter()
                    .map(|(k, s)| (k, Value::Distribution(s.clone()))),
            );
        for (key, value) in values {
            let found =
                series.binary_search_by(|l| order((l.value.kind(), l.key), (value.kind(), key)));
            match found {
                Ok(i) => match (&*series[i].value, &value) {
                    // A monotonic counter's negative open delta is not shown (see the module doc).
                    (
                        Value::Counter {
                            monotonic: true, ..
                        },
                        Value::Counter { total, .. },
                    ) if *total < 0.0 || !total.is_finite() => {}
                    _ => series[i].value.to_mut().add(&value),
                },
                // Within the cap, as `add_window` will count them: a series the commit refuses
                // never shows (it would vanish from the next scrape).
                Err(_) if series.len() + new.len() < cap => {
                    new.push(LiveSeries::new(key, w.start_ms, value))
                }
                Err(_) => {}
            }
        }
        if !new.is_empty() {
            series.extend(new);
            crate::sort::sort_by(series, |a, b| {
                order((a.value.kind(), a.key), (b.value.kind(), b.key))
            });
        }
    }
}

/// The committed series of `state`, borrowed, as the live view starts from them.
fn committed(state: &State) -> Vec<LiveSeries<'_>> {
    state
        .series
        .iter()
        .map(|((_, key), s)| LiveSeries {
            key,
            start_ms: s.start_ms,
            value: Cow::Borrowed(&s.value),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> MetricKey {
        MetricKey {
            name: name.into(),
            tags: vec![],
        }
    }

    fn window(m: &MetricSet, start_ms: u64) -> WindowRef<'_> {
        WindowRef {
            app: "app",
            env: "prod",
            start_ms,
            metrics: m,
        }
    }

    fn counters(pairs: &[(&str, f64)]) -> MetricSet {
        let mut m = MetricSet::default();
        for (name, v) in pairs {
            m.counters.insert(key(name), *v);
        }
        m
    }

    fn seg(n: u8) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn windows_add_up_once_per_segment_and_keep_their_start() {
        let mut c = Cumulative::new(DEFAULT_EXPIRY);
        let m = counters(&[("a", 2.0)]);
        assert_eq!(
            c.add_window(window(&m, 1000), &seg(1), 1500),
            Added::Counted
        );
        assert_eq!(
            c.add_window(window(&m, 1000), &seg(1), 1600),
            Added::AlreadyIncluded
        );
        assert_eq!(
            c.add_window(window(&m, 2000), &seg(2), 2500),
            Added::Counted
        );
        // A late window of an earlier start does not move the start.
        assert_eq!(c.add_window(window(&m, 0), &seg(3), 2600), Added::Counted);
        let s = &c.state("app", "prod").unwrap().series[&(Kind::Counter, key("a"))];
        assert_eq!(
            s.value,
            Value::Counter {
                total: 6.0,
                monotonic: true
            }
        );
        assert_eq!((s.start_ms, s.updated_ms), (1000, 2600));
        assert!(c.includes(&seg(2)));
        c.segment_done(&seg(2));
        assert!(!c.includes(&seg(2)));
        assert!(c.includes(&seg(1)));
    }

    #[test]
    fn gauges_keep_the_latest_and_sketches_merge() {
        let mut c = Cumulative::new(DEFAULT_EXPIRY);
        let mut m = MetricSet::default();
        m.gauges.insert(
            key("g"),
            GaugeValue {
                value: 5.0,
                at_ms: 20,
            },
        );
        let mut s = Sketch::new();
        s.add(2.0);
        m.distributions.insert(key("d"), s.clone());
        c.add_window(window(&m, 0), &seg(1), 30);
        m.gauges.insert(
            key("g"),
            GaugeValue {
                value: 9.0,
                at_ms: 10,
            },
        );
        c.add_window(window(&m, 0), &seg(2), 40);
        let state = c.state("app", "prod").unwrap();
        assert_eq!(
            state.series[&(Kind::Gauge, key("g"))].value,
            Value::Gauge(GaugeValue {
                value: 5.0,
                at_ms: 20
            })
        );
        let Value::Distribution(d) = &state.series[&(Kind::Distribution, key("d"))].value else {
            panic!("not a distribution");
        };
        assert_eq!((d.count(), d.sum()), (2, 4.0));
    }

    #[test]
    fn a_negative_increment_makes_a_counter_non_monotonic_for_good() {
        let mut c = Cumulative::new(DEFAULT_EXPIRY);
        c.add_window(window(&counters(&[("a", 5.0)]), 0), &seg(1), 1);
        c.add_window(window(&counters(&[("a", -1.0)]), 0), &seg(2), 2);
        c.add_window(window(&counters(&[("a", 3.0)]), 0), &seg(3), 3);
        let s = &c.state("app", "prod").unwrap().series[&(Kind::Counter, key("a"))];
        assert_eq!(
            s.value,
            Value::Counter {
                total: 7.0,
                monotonic: false
            }
        );
    }

    #[test]
    fn series_expire_after_the_setting_and_start_again() {
        let mut c = Cumulative::new(Duration::from_millis(100));
        c.add_window(
            window(&counters(&[("old", 1.0), ("kept", 1.0)]), 0),
            &seg(1),
            1000,
        );
        c.add_window(window(&counters(&[("kept", 1.0)]), 50), &seg(2), 1050);
        c.expire(1099);
        assert_eq!(c.state("app", "prod").unwrap().series.len(), 2);
        c.expire(1100);
        let state = c.state("app", "prod").unwrap();
        assert_eq!(state.series.len(), 1);
        assert!(state.series.contains_key(&(Kind::Counter, key("kept"))));
        let drops = c.take_drops();
        assert_eq!(drops.expired, 1);
        assert_eq!(c.take_drops(), Drops::default());
        c.add_window(window(&counters(&[("old", 4.0)]), 2000), &seg(3), 2000);
        let s = &c.state("app", "prod").unwrap().series[&(Kind::Counter, key("old"))];
        assert_eq!(
            (s.start_ms, &s.value),
            (
                2000,
                &Value::Counter {
                    total: 4.0,
                    monotonic: true
                }
            )
        );
    }

    #[test]
    fn series_states_and_segment_memory_are_capped() {
        let mut c = Cumulative::new(DEFAULT_EXPIRY);
        let mut m = MetricSet::default();
        for i in 0..MAX_SERIES + 10 {
            m.counters.insert(key(&format!("c{i}")), 1.0);
        }
        c.add_window(window(&m, 0), &seg(1), 1);
        assert_eq!(c.state("app", "prod").unwrap().series.len(), MAX_SERIES);
        assert_eq!(c.take_drops().refused, 10);
        // A scrape shows no series beyond the cap; nor, in a state one short of it, more than one
        // new series of an open window (the commit refuses the others).
        let open = counters(&[("new1", 1.0), ("new2", 1.0)]);
        let live = c.live(&[window(&open, 5)]);
        assert_eq!(live[0].series.len(), MAX_SERIES);
        let mut short = Cumulative::new(DEFAULT_EXPIRY);
        let mut m = MetricSet::default();
        for i in 1..MAX_SERIES {
            m.counters.insert(key(&format!("c{i}")), 1.0);
        }
        short.add_window(window(&m, 0), &seg(1), 1);
        assert_eq!(
            short.state("app", "prod").unwrap().series.len(),
            MAX_SERIES - 1
        );
        let live = short.live(&[window(&open, 5)]);
        assert_eq!(live[0].series.len(), MAX_SERIES);
        // Known series still count when the state is full.
        c.add_window(window(&counters(&[("c0", 1.0)]), 0), &seg(2), 2);
        let s = &c.state("app", "prod").unwrap().series[&(Kind::Counter, key("c0"))];
        assert_eq!(
            s.value,
            Value::Counter {
                total: 2.0,
                monotonic: true
            }
        );
        // The byte budget.
        let mut c = Cumulative::new(DEFAULT_EXPIRY);
        let mut m = MetricSet::default();
        for i in 0..2_000 {
            m.counters
                .insert(key(&format!("{i}-{}", "x".repeat(32 * 1024))), 1.0);
        }
        c.add_window(window(&m, 0), &seg(1), 1);
        let state = c.state("app", "prod").unwrap();
        assert!(state.bytes() <= MAX_STATE_BYTES);
        assert_eq!(state.series.len() as u64 + c.take_drops().refused, 2_000);
        // States.
        let m = counters(&[("a", 1.0)]);
        for i in 1..=MAX_STATES {
            let env = format!("env{i}");
            let w = WindowRef {
                env: &env,
                ..window(&m, 0)
            };
            let expected = if i < MAX_STATES {
                Added::Counted
            } else {
                Added::Refused
            };
            assert_eq!(c.add_window(w, &seg(10 + i as u8), 1), expected);
        }
        assert_eq!(c.take_refused_windows(), 1);
        // A scrape does not show the state refused either.
        let env = format!("env{MAX_STATES}");
        let refused = WindowRef {
            env: &env,
            ..window(&m, 0)
        };
        assert_eq!(c.live(&[refused]).len(), MAX_STATES);
        assert!(c.live(&[refused]).iter().all(|l| l.env != env));
        // Segment ids.
        for i in 0..MAX_REMEMBERED_SEGMENTS + 3 {
            c.add_window(window(&m, 0), &format!("f{i:031x}"), 1);
        }
        assert_eq!(
            c.state("app", "prod").unwrap().segments.len(),
            MAX_REMEMBERED_SEGMENTS
        );
        assert!(!c.includes(&format!("f{:031x}", 0)));
    }

    #[test]
    fn the_live_view_adds_open_windows_without_changing_the_state() {
        let mut c = Cumulative::new(DEFAULT_EXPIRY);
        c.add_window(
            window(&counters(&[("a", 5.0), ("b", 1.0)]), 1000),
            &seg(1),
            1,
        );
        let before = c.state("app", "prod").unwrap().clone();
        let open = counters(&[("a", 2.0), ("b", -1.0), ("new", 1.0)]);
        let other = counters(&[("x", 1.0)]);
        let live = c.live(&[
            window(&open, 2000),
            WindowRef {
                app: "other",
                ..window(&other, 3000)
            },
        ]);
        assert_eq!(c.state("app", "prod").unwrap(), &before);
        assert_eq!((live[0].app, live[1].app), ("app", "other"));
        let got: Vec<(&str, u64, &Value)> = live[0]
            .series
            .iter()
            .map(|s| (s.key.name.as_str(), s.start_ms, &*s.value))
            .collect();
        let counter = |total| Value::Counter {
            total,
            monotonic: true,
        };
        assert_eq!(
            got,
            vec![
                ("a", 1000, &counter(7.0)),
                // A monotonic counter's negative open delta is not shown.
                ("b", 1000, &counter(1.0)),
                ("new", 2000, &counter(1.0)),
            ]
        );
        assert_eq!(live[1].series[0].start_ms, 3000);
        // One state's view is that state's part of the whole.
        let windows = [
            window(&open, 2000),
            WindowRef {
                app: "other",
                ..window(&other, 3000)
            },
        ];
        assert_eq!(c.live_of("app", "prod", &windows), live[0].series);
        assert_eq!(c.live_of("other", "prod", &windows), live[1].series);
        assert_eq!(c.live_of("none", "prod", &windows), vec![]);
    }
}
