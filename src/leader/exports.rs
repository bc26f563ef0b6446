//! What the leader's exporters remember between transmissions: endpoints that asked to wait
//! (`Retry-After`), configurations whose credentials a receiver refused (401/403) and when one of
//! their payloads is tried again, and counts of dropped payloads (for the next payload and for
//! diagnose).
//!
//! Policy for refused credentials (a wrong or revoked push key, wrong OTLP headers): the first 401
//! or 403 for a (configuration, exporter) is logged once, naming the configuration by app name
//! and environment (never its key). From then on that configuration's payloads for that exporter
//! are dropped without a request and counted, except one payload every `retry_interval`
//! (`_APPSIGNAL_REFUSED_KEY_RETRY_INTERVAL_MS`, 1 h by default), which is sent as a probe: if the
//! receiver accepts it (the key was fixed on the server), sending resumes and that is logged once.
//! Other configurations and exporters are not affected. The state lives in the leader's memory: a
//! new leader tries once more.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::export_config::{ExportConfig, Exporters};
use crate::otlp::Signal;
use crate::transmit::ExportKind;

/// A (configuration, exporter) pair.
pub(super) type Target = (u64, ExportKind);

/// Whether a payload of a (configuration, exporter) may be sent now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gate {
    /// Nothing refused: send.
    Open,
    /// Refused, and the time for one probe has come: send this one (the next probe is scheduled).
    Probe,
    /// Refused: drop it without a request.
    Closed,
}

struct Refusal {
    app_name: String,
    environment: String,
    why: String,
    since_ms: u64,
    next_try: Instant,
    dropped: u64,
}

/// A refused (configuration, exporter), as diagnose shows it.
#[derive(Debug, Clone)]
pub struct RefusedExport {
    pub app_name: String,
    pub environment: String,
    /// `push`, or the OTLP signal (`metrics`, `traces`, `logs`).
    pub exporter: &'static str,
    /// The receiver's answer (endpoint and status; never the key).
    pub reason: String,
    pub since_ms: u64,
    /// Payloads dropped since the refusal (the refused one included).
    pub dropped_payloads: u64,
    /// When the next probe may go out.
    pub next_try_in_ms: u64,
}

/// What diagnose shows of a leader's exporters.
#[derive(Debug, Clone, Default)]
pub struct ExportsReport {
    pub refused: Vec<RefusedExport>,
    /// Payloads dropped because a receiver refused or rejected them, since this leader started.
    pub rejected_payloads: u64,
}

pub struct ExportState {
    retry_interval: Duration,
    /// Endpoint → not before this instant (`Retry-After`).
    throttled: Mutex<HashMap<String, Instant>>,
    /// (configuration, exporter) pairs whose rejection (other than refused credentials) was logged.
    rejections_logged: Mutex<HashSet<Target>>,
    refused: Mutex<HashMap<Target, Refusal>>,
    /// Payloads dropped because a receiver rejected them or refused their credentials, since the
    /// last payload (reported in the next one as `agent.rejected_exports`).
    rejected: AtomicU64,
    /// The same, since this leader started (diagnose).
    rejected_total: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ExportState {
    pub(super) fn new(retry_interval: Duration) -> ExportState {
        ExportState {
            retry_interval,
            throttled: Mutex::default(),
            rejections_logged: Mutex::default(),
            refused: Mutex::default(),
            rejected: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
        }
    }

    pub(super) fn throttled(&self, endpoint: &str) -> bool {
        lock(&self.throttled)
            .get(endpoint)
            .is_some_and(|until| Instant::now() < *until)
    }

    pub(super) fn throttle(&self, endpoint: &str, after: Duration) {
        lock(&self.throttled).insert(endpoint.to_owned(), Instant::now() + after);
    }

    /// `true` the first time a payload of `target` is rejected (log it then, count it always).
    pub(super) fn first_rejection(&self, target: Target) -> bool {
        lock(&self.rejections_logged).insert(target)
    }

    /// Counts a payload dropped because a receiver rejected it or refused its credentials.
    pub(super) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the count of payloads dropped since the last take (for the next payload).
    pub(super) fn take_rejected(&self) -> u64 {
        self.rejected.swap(0, Ordering::Relaxed)
    }

    /// Whether `target` is refused and no probe is due: its payloads are dropped unsent.
    pub(super) fn is_closed(&self, target: Target) -> bool {
        lock(&self.refused)
            .get(&target)
            .is_some_and(|r| Instant::now() < r.next_try)
    }

    /// Whether a payload of `target` may be sent now; a due probe is handed out once.
    pub(super) fn gate(&self, target: Target) -> Gate {
        let mut refused = lock(&self.refused);
        match refused.get_mut(&target) {
            None => Gate::Open,
            Some(r) if Instant::now() < r.next_try => Gate::Closed,
            Some(r) => {
                r.next_try = Instant::now() + self.retry_interval;
                Gate::Probe
            }
        }
    }

    /// The receiver refused `target`'s credentials. `true` when this is news (log it once).
    pub(super) fn refuse(&self, target: Target, config: &ExportConfig, why: &str) -> bool {
        let mut refused = lock(&self.refused);
        if let Some(r) = refused.get_mut(&target) {
            r.why = why.to_owned();
            return false;
        }
        refused.insert(
            target,
            Refusal {
                app_name: config.app_name.clone(),
                environment: config.environment.clone(),
                why: why.to_owned(),
                since_ms: crate::now_ms(),
                next_try: Instant::now() + self.retry_interval,
                dropped: 0,
            },
        );
        true
    }

    /// A payload of refused `target` was dropped (unsent, or refused again).
    pub(super) fn dropped_refused(&self, target: Target) {
        if let Some(r) = lock(&self.refused).get_mut(&target) {
            r.dropped += 1;
        }
        self.count_rejected();
    }

    /// The receiver accepted a payload of `target`: if it was refused, it is not any more.
    /// Returns how many payloads were dropped meanwhile, if it was.
    pub(super) fn accepted(&self, target: Target) -> Option<u64> {
        lock(&self.refused).remove(&target).map(|r| r.dropped)
    }

    /// Whether every exporter of a configuration is refused (its payloads carry nothing anyone
    /// reads, so the round's agent counts go in another configuration's payload).
    pub(super) fn all_refused(&self, config_id: u64, exporters: Exporters) -> bool {
        let refused = lock(&self.refused);
        let push = exporters.push || !exporters.otlp;
        (!push || refused.contains_key(&(config_id, ExportKind::Push)))
            && (!exporters.otlp
                || refused.contains_key(&(config_id, ExportKind::Otlp(Signal::Metrics))))
    }

    pub fn report(&self) -> ExportsReport {
        let now = Instant::now();
        let mut refused: Vec<RefusedExport> = lock(&self.refused)
            .iter()
            .map(|((_, kind), r)| RefusedExport {
                app_name: r.app_name.clone(),
                environment: r.environment.clone(),
                exporter: kind.name(),
                reason: r.why.clone(),
                since_ms: r.since_ms,
                dropped_payloads: r.dropped,
                next_try_in_ms: r.next_try.saturating_duration_since(now).as_millis() as u64,
            })
            .collect();
        crate::sort::sort_by(&mut refused, |a, b| {
            (&a.app_name, &a.environment, a.exporter).cmp(&(
                &b.app_name,
                &b.environment,
                b.exporter,
            ))
        });
        ExportsReport {
            refused,
            rejected_payloads: self.rejected_total.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ExportConfig {
        crate::config::Config::load_from(&|k| match k {
            "_APPSIGNAL_ACTIVE" => Some("true".into()),
            "_APPSIGNAL_PUSH_API_KEY" => Some("k".into()),
            "_APPSIGNAL_APP_NAME" => Some("shop".into()),
            _ => None,
        })
        .config
        .export_config()
    }

    #[test]
    fn a_refused_target_is_closed_until_one_probe_is_due_and_opens_when_accepted() {
        let state = ExportState::new(Duration::from_millis(200));
        let (a, b) = ((1, ExportKind::Push), (2, ExportKind::Push));
        assert_eq!(state.gate(a), Gate::Open);
        assert!(state.refuse(a, &config(), "push answered 401"));
        assert!(
            !state.refuse(a, &config(), "push answered 401"),
            "news once"
        );
        state.dropped_refused(a);
        assert!(state.is_closed(a) && !state.is_closed(b));
        assert_eq!(state.gate(a), Gate::Closed);
        assert_eq!(state.gate(b), Gate::Open, "other configurations go on");
        assert_eq!(
            state.gate((1, ExportKind::Otlp(Signal::Metrics))),
            Gate::Open,
            "other exporters go on"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(state.gate(a), Gate::Probe);
        assert_eq!(state.gate(a), Gate::Closed, "one probe per interval");
        state.dropped_refused(a);
        let report = state.report();
        assert_eq!(report.refused.len(), 1);
        assert_eq!(report.refused[0].app_name, "shop");
        assert_eq!(report.refused[0].dropped_payloads, 2);
        assert_eq!(report.rejected_payloads, 2);
        assert_eq!(state.take_rejected(), 2);
        assert_eq!(state.take_rejected(), 0);
        assert_eq!(state.accepted(a), Some(2));
        assert_eq!(state.gate(a), Gate::Open);
        assert_eq!(state.accepted(a), None);
    }

    #[test]
    fn agent_counts_avoid_a_configuration_whose_every_exporter_is_refused() {
        let state = ExportState::new(Duration::from_secs(3600));
        let both = Exporters {
            push: true,
            otlp: true,
        };
        state.refuse((1, ExportKind::Push), &config(), "401");
        assert!(state.all_refused(1, Exporters::default()));
        assert!(!state.all_refused(1, both), "OTLP still reads them");
        state.refuse((1, ExportKind::Otlp(Signal::Metrics)), &config(), "401");
        assert!(state.all_refused(1, both));
        assert!(!state.all_refused(2, Exporters::default()));
    }
}
