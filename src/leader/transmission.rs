//! The leader's transmission: every interval (after a grace period for the last flushes) the closed
//! windows become payloads in the payload cache, their journal segments are dropped, and the cache
//! is pushed oldest first. Every payload goes through the cache, so that a kill at any point leaves
//! either the journal segment or the cached payload (with the segment's id), never neither and
//! never both counted. When the cache cannot be written (a full disk) a payload is sent directly;
//! a window whose payloads can be neither cached nor sent is held in memory (at most
//! [`MAX_HELD_WINDOWS`]) and tried again at the next transmission, its segment kept until then.
//! Whether a configuration's payloads are sent at all is [`super::exports`]'s call.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::exports::Gate;
use super::Shared;
use crate::aggregate::Window;
use crate::config::Config;
use crate::export_config::{ExportConfig, Exporters};
use crate::log::{suppressed_note, RateLimit};
use crate::otlp::Signal;
use crate::payload::{AgentReport, Payload};
use crate::transmit::{ExportKind, Outgoing, PushError, Pusher};

/// How long after a window's end the leader waits for the last flushes before pushing it.
pub(super) fn grace_ms(config: &Config) -> u64 {
    let interval = config.transmission_interval.as_millis() as u64;
    (config.flush_interval.as_millis() as u64 * 3 + 50).min(interval / 2)
}

pub(super) async fn transmit_loop(
    shared: Arc<Shared>,
    pusher: Arc<Pusher>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = shared.config.transmission_interval.as_millis() as u64;
    let grace = grace_ms(&shared.config);
    loop {
        let now = crate::now_ms();
        let next = (now.saturating_sub(grace) / interval + 1) * interval + grace;
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(next.saturating_sub(now))) => {}
        }
        // Batches that stopping processes could not hand over count before the windows close.
        let spools = Arc::clone(&shared);
        if tokio::task::spawn_blocking(move || spools.ingest_spools())
            .await
            .is_err()
        {
            tracing::error!("counting spool files panicked (a bug in libappsignal)");
        }
        let windows = shared.take_windows(Some(crate::now_ms().saturating_sub(grace)));
        transmit(&shared, &pusher, windows, None).await;
    }
}

async fn push_until(
    pusher: &Pusher,
    config: &ExportConfig,
    payload: &Outgoing,
    deadline: Option<Instant>,
) -> Result<(), PushError> {
    match deadline {
        None => pusher.send(config, payload).await,
        Some(deadline) => tokio::time::timeout_at(deadline.into(), pusher.send(config, payload))
            .await
            .unwrap_or_else(|_| Err(PushError::Retryable("stop deadline reached".into()))),
    }
}

/// Turns `windows` (after those held back last time) into cached payloads, then pushes the cache
/// oldest first until `deadline`.
pub(super) async fn transmit(
    shared: &Arc<Shared>,
    pusher: &Pusher,
    windows: Vec<Window>,
    deadline: Option<Instant>,
) {
    let mut windows = windows;
    let held = std::mem::take(&mut *shared.held_windows());
    windows.splice(0..0, held);
    if !windows.is_empty() {
        cache_windows(shared, pusher, windows, deadline).await;
    }
    push_cached(shared, pusher, deadline).await;
}

/// The payloads of `window`, one per exporter and OTLP signal, in the order they are cached. The
/// last one is always there ([`last_kind`]): once it is in the cache, all of them are.
fn exports(window: &Window, report: &AgentReport) -> anyhow::Result<Vec<Outgoing>> {
    let mut out = Vec::new();
    let outgoing = |kind, body_gz| Outgoing {
        id: window.segment.clone(),
        config_id: window.config_id,
        created_ms: window.start_ms,
        kind,
        body_gz,
    };
    let exporters = window.config.exporters;
    if exporters.otlp {
        let mut bodies = crate::otlp::encode(window, &window.segment, report)?;
        // Metrics last, and always (an empty request if need be): it marks the set complete.
        if !bodies.iter().any(|(signal, _)| *signal == Signal::Metrics) {
            let empty = crate::otlp::encode_empty_metrics(window, &window.segment)?;
            bodies.push((Signal::Metrics, empty));
        }
        crate::sort::sort_by_key(&mut bodies, |(signal, _)| *signal != Signal::Metrics);
        bodies.reverse();
        out.extend(
            bodies
                .into_iter()
                .map(|(signal, body)| outgoing(ExportKind::Otlp(signal), body)),
        );
    }
    if exporters.push || !exporters.otlp {
        let payload = Payload::from_window(window, window.segment.clone(), report.clone());
        out.push(outgoing(ExportKind::Push, payload.to_gzip()?));
    }
    Ok(out)
}

/// The payload cached last for a configuration with `exporters` (see [`exports`]).
pub(super) fn last_kind(exporters: Exporters) -> ExportKind {
    if exporters.push || !exporters.otlp {
        ExportKind::Push
    } else {
        ExportKind::Otlp(Signal::Metrics)
    }
}

/// Windows held back (their payloads could be neither cached nor sent) at most, and their
/// estimated bytes at most; beyond that the oldest leave memory (their journal segments stay for
/// the next leader).
const MAX_HELD_WINDOWS: usize = 12;
const MAX_HELD_BYTES: usize = 32 * 1024 * 1024;

/// Write failures of the transmission (a full disk): at most one line per 10 s each.
static COUNTED_WRITE_LOG: RateLimit = RateLimit::new(10_000);
static CACHE_WRITE_LOG: RateLimit = RateLimit::new(10_000);
static HELD_LOG: RateLimit = RateLimit::new(10_000);

/// Keeps `windows` for the next transmission: their payloads could be neither cached nor sent.
/// Their journal segments stay on disk until they are (or for the next leader).
fn hold(shared: &Shared, windows: Vec<Window>) {
    let mut held = shared.held_windows();
    held.extend(windows);
    let mut bytes: usize = held.iter().map(|w| w.bytes).sum();
    while held.len() > MAX_HELD_WINDOWS || (bytes > MAX_HELD_BYTES && held.len() > 1) {
        let oldest = held.remove(0);
        bytes = bytes.saturating_sub(oldest.bytes);
        if let Some(n) = HELD_LOG.check() {
            tracing::warn!(
                "window {} (payload {}) no longer held in memory: too many windows wait; its journal segment stays for the next leader{}",
                oldest.start_ms,
                oldest.segment,
                suppressed_note(n)
            );
        }
    }
}

/// Puts round counts that no delivered or cached payload carries back, for the next payload.
fn give_back(shared: &Shared, report: &AgentReport) {
    shared
        .rejected_frames
        .fetch_add(report.rejected_frames, Ordering::Relaxed);
    shared
        .exports
        .rejected
        .fetch_add(report.rejected_exports, Ordering::Relaxed);
    shared
        .refused_connections
        .fetch_add(report.refused_connections, Ordering::Relaxed);
    shared
        .poisoned_batches
        .fetch_add(report.poisoned_batches, Ordering::Relaxed);
    shared
        .intake
        .statsd_malformed_lines
        .fetch_add(report.statsd_malformed_lines, Ordering::Relaxed);
    shared
        .intake
        .otlp_rejected
        .fetch_add(report.otlp_intake_rejected, Ordering::Relaxed);
    shared
        .cache
        .give_back_evictions(report.payload_cache_evictions);
}

/// Turns `windows` into payloads in the cache and deletes their journal segments. A payload that
/// cannot be cached (a full disk) is sent directly; a window whose payloads can be neither cached
/// nor sent is held for the next transmission, its segment kept ([`hold`]).
async fn cache_windows(
    shared: &Arc<Shared>,
    pusher: &Pusher,
    windows: Vec<Window>,
    deadline: Option<Instant>,
) {
    // First the (client, seq) pairs counted so far: once a segment is gone, this is how a later
    // leader knows that a resent batch inside it was counted.
    if shared.workdir.journal_dir().is_dir() {
        // Snapshot under the counting lock, written without it (a slow disk must not stall acks).
        let counted = shared.counting().aggregator.counted_snapshot();
        let workdir = shared.workdir.clone();
        let written = tokio::task::spawn_blocking(move || {
            crate::journal::Journal::write_counted(&workdir, &counted)
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
        if let Err(e) = written {
            if let Some(n) = COUNTED_WRITE_LOG.check() {
                tracing::error!(
                    "cannot record counted batches: {e:#}; {} windows wait in memory and their journal segments stay until it can{}",
                    windows.len(),
                    suppressed_note(n)
                );
            }
            hold(shared, windows);
            return;
        }
    }
    // Without a journal directory (the working directory was deleted) the segments are gone too:
    // the windows in memory are all there is, and go out directly (below, when caching fails).
    let mut report = AgentReport {
        leader_pid: std::process::id(),
        payload_cache_evictions: shared.cache.take_evictions(),
        rejected_frames: shared.rejected_frames.swap(0, Ordering::Relaxed),
        rejected_exports: shared.exports.rejected.swap(0, Ordering::Relaxed),
        refused_connections: shared.refused_connections.swap(0, Ordering::Relaxed),
        poisoned_batches: shared.poisoned_batches.swap(0, Ordering::Relaxed),
        statsd_malformed_lines: shared.intake.take_statsd_malformed(),
        otlp_intake_rejected: shared.intake.take_otlp_rejected(),
        ..AgentReport::default()
    };
    let mut held = Vec::new();
    for window in windows {
        if window.metrics.is_empty()
            && window.dropped_updates == 0
            && window.samples.is_empty()
            && window.logs.is_empty()
            && window.dropped_samples == 0
            && window.dropped_logs == 0
            && window.dropped_batches == 0
        {
            shared
                .counting()
                .journal
                .remove(window.start_ms, window.config_id, &window.segment);
            continue;
        }
        // Counts of dropped things go out once, in the first payload of the round that a
        // receiver reads (not one of a configuration whose credentials are refused).
        let carries = !shared
            .exports
            .all_refused(window.config_id, window.config.exporters);
        let carried = if carries {
            std::mem::replace(
                &mut report,
                AgentReport {
                    leader_pid: std::process::id(),
                    ..AgentReport::default()
                },
            )
        } else {
            AgentReport {
                leader_pid: std::process::id(),
                ..AgentReport::default()
            }
        };
        let window_report = AgentReport {
            batches: window.batches,
            dropped_updates: window.dropped_updates,
            dropped_samples: window.dropped_samples,
            dropped_logs: window.dropped_logs,
            dropped_batches: window.dropped_batches,
            ..carried.clone()
        };
        // Encoding (JSON, protobuf, gzip) and the cache's fsync run on the blocking pool, not on
        // the thread that serves the sockets.
        let storing = Arc::clone(shared);
        let stored = tokio::task::spawn_blocking(move || {
            let outgoing = exports(&window, &window_report);
            let outgoing = match outgoing {
                Ok(o) => o,
                Err(e) => return (window, Err(e)),
            };
            tracing::debug!(
                "window {} of {}/{} is payload {} ({} metrics, {} samples, {} logs, {} batches; {} exports)",
                window.start_ms,
                window.config.app_name,
                window.config.environment,
                window.segment,
                window.metrics.len(),
                window.samples.len(),
                window.logs.len(),
                window.batches,
                outgoing.len()
            );
            let total = outgoing.len();
            let mut not_cached = Vec::new();
            for o in outgoing {
                if let Err(e) = storing.cache.store(&o) {
                    // No cache (disk full, directory gone): sent directly (below).
                    if let Some(n) = CACHE_WRITE_LOG.check() {
                        tracing::error!(
                            "cannot cache {} payload {}: {e:#}; sending it directly, and keeping its journal segment until it is out{}",
                            o.kind.name(),
                            o.id,
                            suppressed_note(n)
                        );
                    }
                    not_cached.push(o);
                }
            }
            let none_cached = not_cached.len() == total;
            (window, Ok((not_cached, none_cached)))
        })
        .await;
        let (window, not_cached, none_cached) = match stored {
            Ok((window, Ok((not_cached, none_cached)))) => (window, not_cached, none_cached),
            Ok((window, Err(e))) => {
                tracing::error!(
                    "cannot encode payload {}: {e:#}; it stays in the journal for the next leader",
                    window.segment
                );
                give_back(shared, &carried);
                continue;
            }
            Err(e) => {
                tracing::error!(
                    "caching a payload failed: {e}; its journal segment stays for the next leader"
                );
                give_back(shared, &carried);
                continue;
            }
        };
        // If a payload can be neither cached nor sent, the window waits for the next round and its
        // journal segment stays.
        let mut all_out = true;
        for o in &not_cached {
            match export(shared, pusher, &window.config, o, deadline).await {
                Exported::Delivered => tracing::info!("sent {} payload {}", o.kind.name(), o.id),
                Exported::Dropped => {}
                Exported::Kept(e) => {
                    all_out = false;
                    tracing::debug!(
                        "{} payload {} not sent either ({e}); held for the next transmission",
                        o.kind.name(),
                        o.id
                    );
                }
            }
        }
        if all_out {
            shared
                .counting()
                .journal
                .remove(window.start_ms, window.config_id, &window.segment);
        } else {
            // The counts go out with the next payload, unless a cached one of this window has them.
            if none_cached {
                give_back(shared, &carried);
            }
            held.push(window);
        }
    }
    // Counts that no payload of this round carried (every window was empty) wait for the next one.
    give_back(shared, &report);
    if !held.is_empty() {
        hold(shared, held);
    }
}

/// What became of a payload handed to [`export`].
enum Exported {
    Delivered,
    /// Not to be sent again: rejected, or its configuration's credentials are refused (counted).
    Dropped,
    /// Not delivered, may be later: keep it.
    Kept(PushError),
}

/// Sends one payload, unless its configuration's credentials are refused for its exporter (then
/// it is dropped and counted, except for the one probe per retry interval; see
/// [`super::exports`]).
async fn export(
    shared: &Shared,
    pusher: &Pusher,
    config: &ExportConfig,
    payload: &Outgoing,
    deadline: Option<Instant>,
) -> Exported {
    let target = (payload.config_id, payload.kind);
    let probe = match shared.exports.gate(target) {
        Gate::Closed => {
            shared.exports.dropped_refused(target);
            return Exported::Dropped;
        }
        Gate::Probe => true,
        Gate::Open => false,
    };
    let exporter = exporter_name(payload.kind);
    match push_until(pusher, config, payload, deadline).await {
        Ok(()) => {
            if let Some(dropped) = shared.exports.accepted(target) {
                tracing::info!(
                    "{exporter} accepts the credentials of app {:?} environment {:?} again ({dropped} payloads were dropped meanwhile); sending resumes",
                    config.app_name,
                    config.environment
                );
            }
            Exported::Delivered
        }
        Err(PushError::Unauthorized(why)) => {
            if shared.exports.refuse(target, config, &why) {
                tracing::error!(
                    "{exporter} refused the credentials of app {:?} environment {:?} ({why}): its {} payloads are dropped and counted (agent.rejected_exports, diagnose), not sent; one is tried again every {} s",
                    config.app_name,
                    config.environment,
                    payload.kind.name(),
                    shared.config.refused_key_retry_interval.as_secs()
                );
            } else if probe {
                tracing::debug!(
                    "{exporter} still refuses the credentials of app {:?} environment {:?} ({why})",
                    config.app_name,
                    config.environment
                );
            }
            shared.exports.dropped_refused(target);
            Exported::Dropped
        }
        Err(e @ PushError::Rejected(_)) => {
            shared.exports.count_rejected();
            if shared.exports.first_rejection(target) {
                tracing::error!(
                    "{} payload {} dropped: {e}; further rejections of this configuration's {} payloads are counted, not logged",
                    payload.kind.name(),
                    payload.id,
                    payload.kind.name()
                );
            }
            Exported::Dropped
        }
        Err(e) => Exported::Kept(e),
    }
}

/// The receiver of an exporter, for log lines.
fn exporter_name(kind: ExportKind) -> String {
    match kind {
        ExportKind::Push => "the Push API".to_owned(),
        ExportKind::Otlp(signal) => format!("the OTLP {} endpoint", signal.name()),
    }
}

/// Pushes cached payloads oldest first. An endpoint that fails once is not tried again this round;
/// one that asked to wait (`Retry-After`) is not tried before then. Payloads of a configuration
/// whose secrets no connected process has sent wait in the cache; those of a configuration whose
/// credentials were refused are dropped (see [`export`]).
async fn push_cached(shared: &Shared, pusher: &Pusher, deadline: Option<Instant>) {
    let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
    let mut down: HashSet<String> = HashSet::new();
    for entry in shared.cache.list() {
        if past_deadline() {
            break;
        }
        let target = (entry.config_id, entry.kind);
        if shared.exports.is_closed(target) {
            // Refused credentials: dropped without a request, whether or not the key is known.
            shared.exports.dropped_refused(target);
            shared.cache.remove(&entry);
            continue;
        }
        let Some(config) = shared
            .counting()
            .aggregator
            .config(entry.config_id)
            .filter(|c| can_export(c, entry.kind))
            .cloned()
        else {
            continue;
        };
        let endpoint = match (entry.kind, &config.otlp) {
            (ExportKind::Otlp(signal), Some(settings)) => signal.endpoint(settings).to_owned(),
            _ => config.endpoint.clone(),
        };
        if down.contains(&endpoint) || shared.exports.throttled(&endpoint) {
            continue;
        }
        let payload = match shared.cache.load(&entry) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("dropping unreadable cached payload: {e:#}");
                shared.cache.remove(&entry);
                continue;
            }
        };
        match export(shared, pusher, &config, &payload, deadline).await {
            Exported::Delivered => {
                shared.cache.remove(&entry);
                tracing::info!(
                    "sent {} payload {} (window {} of {}/{})",
                    entry.kind.name(),
                    entry.id,
                    entry.created_ms,
                    config.app_name,
                    config.environment
                );
            }
            Exported::Dropped => shared.cache.remove(&entry),
            Exported::Kept(PushError::RetryAfter(why, after)) => {
                tracing::warn!(
                    "{} payload {} not sent: {why}; kept in payloads/, next try in {} s or later",
                    entry.kind.name(),
                    entry.id,
                    after.as_secs()
                );
                shared.exports.throttle(&endpoint, after);
                down.insert(endpoint);
            }
            Exported::Kept(e) => {
                tracing::warn!(
                    "{} payload {} not sent: {e}; kept in payloads/ for the next transmission",
                    entry.kind.name(),
                    entry.id
                );
                down.insert(endpoint);
            }
        }
    }
}

/// Whether `config` has what a payload of `kind` needs: its secrets, and a push key for the Push API.
fn can_export(config: &ExportConfig, kind: ExportKind) -> bool {
    if config.redacted {
        return false;
    }
    match kind {
        ExportKind::Push => !config.push_api_key.is_empty(),
        ExportKind::Otlp(_) => config.otlp.is_some(),
    }
}
