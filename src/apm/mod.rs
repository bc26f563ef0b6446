//! APM: transactions, spans and logs recorded through the C interface, and everything they need
//! (SQL sanitising, parameter filtering, samples and the sampling decision, server state,
//! container detection, environment metadata, the allocation counter).
//!
//! This module owns the *content* of what is recorded; it hands finished results on through four
//! calls of [`crate::recorder`] only (`increment_counter`, `add_distribution_value`,
//! `submit_sample`, `submit_log`). Its configuration is handed down by the agent's `start()`
//! through [`configure`]; before that it is the default (nothing ignored, nothing filtered).
//!
//! # Layout
//! - [`transaction`]: transactions and the per-action metrics.
//! - [`events`]: what a transaction records on the app thread (the caller's bytes, event records).
//! - [`span`]: root and child spans, W3C `traceparent` parsing.
//! - [`sql`]: the SQL sanitiser (literals replaced by `?`).
//! - [`filter`]: `filter_parameters` / `filter_session_data` and the ignore rules.
//! - [`sample`]: events, errors, the sample JSON and the sampling decision.
//! - [`log`]: log lines from `appsignal_log` (severity, logfmt / JSON parsing).
//! - [`misc`]: server state, container detection, environment metadata, allocation counter.

pub mod events;
pub mod filter;
pub mod log;
pub mod misc;
pub mod sample;
pub mod span;
pub mod sql;
pub mod transaction;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use once_cell::sync::Lazy;

pub use span::Span;
pub use transaction::Transaction;

/// The configuration values the APM code needs. The agent fills it from its `Config`
/// (`_APPSIGNAL_IGNORE_*`, `_APPSIGNAL_FILTER_*`, `_APPSIGNAL_RUNNING_IN_CONTAINER`,
/// `_APP_REVISION`, `_APPSIGNAL_HOSTNAME`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApmConfig {
    /// Actions whose transactions are dropped (exact match).
    pub ignore_actions: Vec<String>,
    /// Error classes that are not reported (exact match); the transaction still counts.
    pub ignore_errors: Vec<String>,
    /// Namespaces whose transactions are dropped (exact match).
    pub ignore_namespaces: Vec<String>,
    /// Keys replaced by `[FILTERED]` in `params` (case-insensitive, any depth).
    pub filter_parameters: Vec<String>,
    /// Keys replaced by `[FILTERED]` in `session_data` (case-insensitive, any depth).
    pub filter_session_data: Vec<String>,
    /// `Some` overrides container detection.
    pub running_in_container: Option<bool>,
    pub revision: String,
    pub hostname: String,
}

static CONFIG: Lazy<RwLock<Option<Arc<ApmConfig>>>> = Lazy::new(|| RwLock::new(None));
/// The sampling rate as `f64` bits; 0.0 (only errors and slow transactions are sampled).
static SAMPLE_RATE: AtomicU64 = AtomicU64::new(0);

/// Replaces the configuration used from now on (transactions already started see the new one
/// when they complete).
pub fn configure(config: ApmConfig) {
    let mut slot = CONFIG.write().unwrap_or_else(|e| e.into_inner());
    *slot = Some(Arc::new(config));
}

/// The APM code's locks, held by the thread that forks across the `fork()` (see
/// `agent::install_fork_handlers`), in the order: configuration, then the misc tables.
pub(crate) struct ForkGuard {
    _config: std::sync::RwLockWriteGuard<'static, Option<Arc<ApmConfig>>>,
    _misc: misc::ForkGuard,
}

pub(crate) fn hold_for_fork() -> ForkGuard {
    ForkGuard {
        _config: CONFIG.write().unwrap_or_else(|e| e.into_inner()),
        _misc: misc::hold_for_fork(),
    }
}

/// The current configuration.
pub fn config() -> Arc<ApmConfig> {
    if let Some(c) = CONFIG.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Arc::clone(c);
    }
    let mut slot = CONFIG.write().unwrap_or_else(|e| e.into_inner());
    Arc::clone(slot.get_or_insert_with(|| Arc::new(ApmConfig::default())))
}

/// Sets the share (0.0 … 1.0) of transactions and root spans sampled although they are neither
/// erroneous nor slow. Default 0.0; values outside the range are clamped, NaN is 0.
pub fn set_sample_rate(rate: f64) {
    let rate = if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    };
    SAMPLE_RATE.store(rate.to_bits(), Ordering::Relaxed);
}

pub fn sample_rate() -> f64 {
    f64::from_bits(SAMPLE_RATE.load(Ordering::Relaxed))
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Nanoseconds on the monotonic clock (`CLOCK_MONOTONIC`, what `Instant` reads): for durations.
/// Read directly, because `Instant::elapsed` costs several times the clock read itself in
/// checked arithmetic, and a transaction reads the clock twice per event.
#[inline]
pub(crate) fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux, and on
    // failure `ts` stays zero (a duration then reads as 0, never as garbage).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // `time_t` and `c_long` are 64-bit here (the casts are no-ops) but may not be elsewhere.
    #[allow(clippy::unnecessary_cast)]
    (ts.tv_sec as i64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as i64)
}

/// Epoch nanoseconds from seconds + nanoseconds as C passes them (saturating, never negative).
pub fn timestamp_ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000)
        .saturating_add(nsec)
        .max(0)
}

/// Nanoseconds as fractional milliseconds.
pub(crate) fn ns_to_ms(ns: i64) -> f64 {
    ns as f64 / 1_000_000.0
}

/// Longest name, title, key or message kept (bytes); longer text is cut at a character boundary.
pub(crate) const MAX_TEXT: usize = 1_024;
/// Longest event body, attribute value or log message kept (bytes).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Most keys kept in one map (sample data keys, metadata, attributes, environment metadata).
pub(crate) const MAX_KEYS: usize = 256;

/// Cuts `text` to at most `max` bytes at a character boundary.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Inserts into a bounded map: a new key beyond [`MAX_KEYS`] is refused (returns false); an
/// existing key is always replaced.
pub(crate) fn bounded_insert<V>(map: &mut BTreeMap<String, V>, key: String, value: V) -> bool {
    if map.len() >= MAX_KEYS && !map.contains_key(&key) {
        return false;
    }
    map.insert(key, value);
    true
}

/// A map of string tags for the agent's metric calls (cheapest with the keys in sorted order).
pub(crate) fn tags(pairs: &[(&str, &str)]) -> crate::data::DataBuf {
    let mut map = crate::data::DataBuf::new_map();
    for (k, v) in pairs {
        map.map_set_string(k.as_bytes(), v.as_bytes());
    }
    map
}

/// Logs `message` as a warning at most once per 10 s for one call site (`last` is that site's
/// clock), so that a misbehaving integration cannot flood `appsignal.log`.
pub(crate) fn warn_limited(last: &AtomicI64, message: &str) {
    let now = now_ns() / 1_000_000_000;
    let previous = last.load(Ordering::Relaxed);
    if now - previous >= 10
        && last
            .compare_exchange(previous, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!("{message}");
    }
}

pub(crate) use crate::ids::{random_hex, random_unit};

#[cfg(test)]
pub(crate) mod test_support {
    //! One configuration shared by every test in the crate (tests run in parallel in one
    //! process, so they must agree on it): unique names keep them from affecting each other.
    use super::*;

    pub fn config() -> ApmConfig {
        ApmConfig {
            ignore_actions: vec!["Ignored#action".into()],
            ignore_errors: vec!["IgnoredError".into()],
            ignore_namespaces: vec!["ignored_namespace".into()],
            filter_parameters: vec!["password".into(), "Secret".into()],
            filter_session_data: vec!["token".into()],
            running_in_container: None,
            revision: "abc123".into(),
            hostname: "test-host".into(),
        }
    }

    pub fn setup() {
        configure(config());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_at_a_character_boundary() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("héllo".into(), 3), "hé");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }

    #[test]
    fn bounded_maps_refuse_new_keys_beyond_the_limit() {
        let mut map = BTreeMap::new();
        for i in 0..MAX_KEYS {
            assert!(bounded_insert(&mut map, i.to_string(), i));
        }
        assert!(!bounded_insert(&mut map, "new".into(), 0));
        assert!(bounded_insert(&mut map, "0".into(), 7));
        assert_eq!(map["0"], 7);
    }

    #[test]
    fn timestamps_saturate_and_never_go_negative() {
        assert_eq!(timestamp_ns(1, 5), 1_000_000_005);
        assert_eq!(timestamp_ns(-5, 0), 0);
        assert_eq!(timestamp_ns(i64::MAX, 1), i64::MAX);
    }

    #[test]
    fn random_ids_are_hex_of_the_right_length() {
        let id = random_hex(8);
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(random_hex(16), random_hex(16));
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
