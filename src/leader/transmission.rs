//! The leader's transmission: every interval (after a grace period for the last flushes) the closed
//! windows become payloads in the payload cache, their journal segments are dropped, and the cache
//! is pushed oldest first. Every payload goes through the cache, so that a kill at any point leaves
//! either the journal segment or the cached payload (with the segment's id), never neither and
//! never both counted.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Shared;
use crate::aggregate::Window;
use crate::config::{Config, PushConfig};
use crate::payload::{AgentReport, Payload};
use crate::transmit::{Outgoing, PushError, Pusher};

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
    config: &PushConfig,
    payload: &Outgoing,
    deadline: Option<Instant>,
) -> Result<(), PushError> {
    match deadline {
        None => pusher.push(config, payload).await,
        Some(deadline) => tokio::time::timeout_at(deadline.into(), pusher.push(config, payload))
            .await
            .unwrap_or_else(|_| Err(PushError::Retryable("stop deadline reached".into()))),
    }
}

/// Turns `windows` into cached payloads, then pushes the cache oldest first until `deadline`.
pub(super) async fn transmit(
    shared: &Arc<Shared>,
    pusher: &Pusher,
    windows: Vec<Window>,
    deadline: Option<Instant>,
) {
    if !windows.is_empty() {
        cache_windows(shared, pusher, windows, deadline).await;
    }
    push_cached(shared, pusher, deadline).await;
}

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
            tracing::error!("cannot record counted batches: {e:#}; keeping the journal segments");
            return;
        }
    }
    // Without a journal directory (the working directory was deleted) the segments are gone too:
    // the windows in memory are all there is, and go out directly (below, when caching fails).
    let mut report = AgentReport {
        leader_pid: std::process::id(),
        payload_cache_evictions: shared.cache.take_evictions(),
        rejected_frames: shared.rejected_frames.swap(0, Ordering::Relaxed),
        refused_connections: shared.refused_connections.swap(0, Ordering::Relaxed),
        poisoned_batches: shared.poisoned_batches.swap(0, Ordering::Relaxed),
        ..AgentReport::default()
    };
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
        let payload = Payload::from_window(&window, window.segment.clone(), report.clone());
        // Counts of dropped things go out once, in the first payload of the round.
        report.payload_cache_evictions = 0;
        report.rejected_frames = 0;
        report.refused_connections = 0;
        report.poisoned_batches = 0;
        let body_gz = match payload.to_gzip() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(
                    "cannot encode payload {}: {e:#}; it stays in the journal",
                    payload.payload_id
                );
                continue;
            }
        };
        let outgoing = Outgoing {
            id: window.segment.clone(),
            config_id: window.config_id,
            created_ms: window.start_ms,
            body_gz,
        };
        tracing::debug!(
            "window {} of {}/{} is payload {} ({} counters, {} gauges, {} distributions, {} batches)",
            window.start_ms,
            window.config.app_name,
            window.config.environment,
            outgoing.id,
            payload.counters.len(),
            payload.gauges.len(),
            payload.distributions.len(),
            window.batches
        );
        // The cache writes with fsync: on the blocking pool, not on the thread that serves sockets.
        let storing = (Arc::clone(shared), outgoing.clone());
        let stored = tokio::task::spawn_blocking(move || storing.0.cache.store(&storing.1))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
        match stored {
            Ok(()) => {
                shared.counting().journal.remove(
                    window.start_ms,
                    window.config_id,
                    &window.segment,
                );
            }
            Err(e) => {
                // No cache (disk full, directory gone): push it directly; if that fails too, the
                // journal segment stays and the next leader replays it.
                tracing::error!(
                    "cannot cache payload {}: {e:#}; pushing it directly",
                    outgoing.id
                );
                match push_until(pusher, &window.config, &outgoing, deadline).await {
                    Ok(()) => {
                        shared.counting().journal.remove(window.start_ms, window.config_id, &window.segment);
                        tracing::info!("pushed payload {}", outgoing.id);
                    }
                    Err(e) => tracing::error!(
                        "payload {} not pushed either ({e}); its journal segment stays for the next leader",
                        outgoing.id
                    ),
                }
            }
        }
    }
    // Counts that no payload of this round carried (every window was empty) wait for the next one.
    shared
        .rejected_frames
        .fetch_add(report.rejected_frames, Ordering::Relaxed);
    shared
        .refused_connections
        .fetch_add(report.refused_connections, Ordering::Relaxed);
    shared
        .poisoned_batches
        .fetch_add(report.poisoned_batches, Ordering::Relaxed);
}

/// Pushes cached payloads oldest first. An endpoint that fails once is not tried again this round.
/// Payloads of a configuration whose push key no connected process has wait in the cache.
async fn push_cached(shared: &Shared, pusher: &Pusher, deadline: Option<Instant>) {
    let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
    let mut down: HashSet<String> = HashSet::new();
    for entry in shared.cache.list() {
        if past_deadline() {
            break;
        }
        let Some(config) = shared
            .counting()
            .aggregator
            .config(entry.config_id)
            .filter(|c| !c.push_api_key.is_empty())
            .cloned()
        else {
            continue;
        };
        if down.contains(&config.endpoint) {
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
        match push_until(pusher, &config, &payload, deadline).await {
            Ok(()) => {
                shared.cache.remove(&entry);
                tracing::info!(
                    "pushed payload {} (window {} of {}/{})",
                    entry.id,
                    entry.created_ms,
                    config.app_name,
                    config.environment
                );
            }
            Err(PushError::Retryable(why)) => {
                tracing::warn!(
                    "payload {} not pushed: {why}; kept in payloads/ for the next transmission",
                    entry.id
                );
                down.insert(config.endpoint);
            }
            Err(e @ PushError::Rejected(_)) => {
                tracing::error!("payload {} dropped: {e}", entry.id);
                shared.cache.remove(&entry);
            }
        }
    }
}
