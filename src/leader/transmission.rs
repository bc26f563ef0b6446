//! The leader's transmission: every interval (after a grace period for the last flushes) the closed
//! windows become payloads in the payload cache, their journal segments are dropped, and the cache
//! is pushed oldest first. Every payload goes through the cache, so that a kill at any point leaves
//! either the journal segment or the cached payload (with the segment's id), never neither and
//! never both counted. When the cache cannot be written (a full disk) a payload is sent directly;
//! a window whose payloads can be neither cached nor sent is held in memory (at most
//! [`MAX_HELD_WINDOWS`]) and tried again at the next transmission, its segment kept until then.
//! Whether a configuration's payloads are sent at all is [`super::exports`]'s call.
//!
//! When every payload of a window is out (cached or sent) the window is added to the cumulative
//! view ([`super::totals`]) and saved before its segment is deleted: one commit point for both.
//! OTLP metrics under a cumulative temporality are read from that view when a window's requests
//! are built ([`exports`]), at a build time that never repeats on one leader.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::counting::Counting;
use super::exports::{ExportState, Gate};
use super::tally::Tally;
use super::totals::Totals;
use crate::aggregate::Window;
use crate::config::Config;
use crate::counts::AgentCounts;
use crate::export_config::{ExportConfig, Exporters, ResourceValue, Temporality};
use crate::log::{suppressed_note, RateLimit};
use crate::otlp::mapping::LiveView;
use crate::otlp::Signal;
use crate::payload::{AgentReport, Payload};
use crate::transmit::{ExportKind, Outgoing, PayloadCache, PushError, Pusher};
use crate::workdir::WorkDir;

/// How long after a window's end the leader waits for the last flushes before pushing it.
pub(super) fn grace_ms(config: &Config) -> u64 {
    let interval = config.transmission_interval.as_millis() as u64;
    (config.flush_interval.as_millis() as u64 * 3 + 50).min(interval / 2)
}

/// The transmission's state: the payload cache, what the exporters remember, the windows held
/// back; and what it takes windows and counts from.
pub(super) struct Transmission {
    config: Config,
    workdir: WorkDir,
    pusher: Pusher,
    cache: Arc<PayloadCache>,
    /// Throttled endpoints, refused credentials and rejections of the exporters (also read by
    /// diagnose, through [`super::Leader::exports`]).
    exports: Arc<ExportState>,
    counting: Arc<Counting>,
    tally: Arc<Tally>,
    totals: Arc<Totals>,
    /// Closed windows whose payloads could be neither cached nor sent (a full disk and a failing
    /// endpoint): tried again at the next transmission; their journal segments stay until then.
    held: Mutex<Vec<Window>>,
    /// The build time of the last window's requests (ms since the epoch): the next one is later,
    /// so that two cumulative points of one series never share a timestamp with different values.
    last_built_ms: AtomicU64,
}

/// Where a window's payloads are after [`Transmission::store`].
struct Stored {
    window: Window,
    /// Payloads that could not be cached: they go out directly.
    not_cached: Vec<Outgoing>,
    /// Not one payload of the window is in the cache.
    none_cached: bool,
}

impl Transmission {
    pub(super) fn new(
        config: &Config,
        workdir: &WorkDir,
        pusher: Pusher,
        cache: PayloadCache,
        counting: Arc<Counting>,
        tally: Arc<Tally>,
        totals: Arc<Totals>,
    ) -> Transmission {
        Transmission {
            config: config.clone(),
            workdir: workdir.clone(),
            pusher,
            cache: Arc::new(cache),
            exports: Arc::new(ExportState::new(config.refused_key_retry_interval)),
            counting,
            tally,
            totals,
            held: Mutex::new(Vec::new()),
            last_built_ms: AtomicU64::new(0),
        }
    }

    /// Now, or just after the previous build time if the clock has not moved past it.
    fn build_time(&self) -> u64 {
        let now = crate::now_ms();
        let next = |last: u64| now.max(last.saturating_add(1));
        match self
            .last_built_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(next(last))
            }) {
            Ok(last) | Err(last) => next(last),
        }
    }

    /// What the exporters remember, for diagnose.
    pub(super) fn exports(&self) -> Arc<ExportState> {
        Arc::clone(&self.exports)
    }

    /// Every interval (after the grace period): counts the spool files, then transmits the closed
    /// windows. Ends when `stop` fires.
    pub(super) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let interval = self.config.transmission_interval.as_millis() as u64;
        let grace = grace_ms(&self.config);
        loop {
            let now = crate::now_ms();
            let next = (now.saturating_sub(grace) / interval + 1) * interval + grace;
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(next.saturating_sub(now))) => {}
            }
            // Batches that stopping processes could not hand over count before the windows close.
            let spools = Arc::clone(&self.counting);
            if crate::blocking::run(move || spools.ingest_spools())
                .await
                .is_err()
            {
                tracing::error!("counting spool files panicked (a bug in libappsignal)");
            }
            let windows = self
                .counting
                .take_windows(Some(crate::now_ms().saturating_sub(grace)));
            self.transmit(windows, None).await;
        }
    }

    /// Takes every window, open ones included (the leader stops), and transmits them until
    /// `deadline`.
    pub(super) async fn transmit_all(&self, deadline: Instant) {
        let windows = self.counting.take_windows(None);
        self.transmit(windows, Some(deadline)).await;
    }

    /// Turns `windows` (after those held back last time) into cached payloads, then pushes the
    /// cache oldest first until `deadline`.
    async fn transmit(&self, windows: Vec<Window>, deadline: Option<Instant>) {
        let mut windows = windows;
        let held = std::mem::take(&mut *self.held());
        windows.splice(0..0, held);
        if !windows.is_empty() {
            self.cache_windows(windows, deadline).await;
        }
        self.push_cached(deadline).await;
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<Window>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns `windows` into payloads in the cache and deletes their journal segments. A payload
    /// that cannot be cached (a full disk) is sent directly; a window whose payloads can be
    /// neither cached nor sent is held for the next transmission, its segment kept ([`Self::hold`]).
    async fn cache_windows(&self, windows: Vec<Window>, deadline: Option<Instant>) {
        if !self.record_counted(windows.len()).await {
            self.hold(windows);
            return;
        }
        // Without a journal directory (the working directory was deleted) the segments are gone
        // too: the windows in memory are all there is, and go out directly (when caching fails).
        let mut round = self.round_counts();
        let mut held = Vec::new();
        for window in windows {
            if window.metrics.is_empty()
                && window.samples.is_empty()
                && window.logs.is_empty()
                && window.counts.is_zero()
            {
                self.counting.drop_segment(&window);
                continue;
            }
            let carried = self.carried_counts(&window, &mut round);
            let report = AgentReport::of_window(&window, &carried);
            let Some(stored) = self.store(window, report).await else {
                self.tally.give_back(&carried);
                continue;
            };
            if let Some(window) = self.send_uncached(stored, &carried, deadline).await {
                held.push(window);
            }
        }
        // Counts that no payload of this round carried (every window was empty) wait for the next one.
        self.tally.give_back(&round);
        if !held.is_empty() {
            self.hold(held);
        }
    }

    /// Writes the (client, seq) pairs counted so far: once a segment is gone, this is how a later
    /// leader knows that a resent batch inside it was counted. `false` (logged) when it cannot be
    /// written: then no segment may go.
    async fn record_counted(&self, windows: usize) -> bool {
        if !self.workdir.journal_dir().is_dir() {
            return true;
        }
        // Snapshot under the counting lock, written without it (a slow disk must not stall acks).
        let counted = self.counting.counted_snapshot();
        let workdir = self.workdir.clone();
        let written = crate::blocking::run(move || {
            crate::journal::Journal::write_counted(&workdir, &counted)
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
        if let Err(e) = written {
            if let Some(n) = COUNTED_WRITE_LOG.check() {
                tracing::error!(
                    "cannot record counted batches: {e:#}; {windows} windows wait in memory and their journal segments stay until it can{}",
                    suppressed_note(n)
                );
            }
            return false;
        }
        true
    }

    /// The agent counts of this round: the leader's and those its parts keep.
    fn round_counts(&self) -> AgentCounts {
        let mut round = self.tally.take();
        round.add(&AgentCounts {
            payload_cache_evictions: self.cache.take_evictions(),
            rejected_exports: self.exports.take_rejected(),
            ..AgentCounts::default()
        });
        round
    }

    /// The round's counts go out once, in the first payload of the round that a receiver reads
    /// (not one of a configuration whose credentials are refused): all of them for that window,
    /// none for the others.
    fn carried_counts(&self, window: &Window, round: &mut AgentCounts) -> AgentCounts {
        if self
            .exports
            .all_refused(window.config_id, window.config.exporters)
        {
            AgentCounts::default()
        } else {
            std::mem::take(round)
        }
    }

    /// Encodes the payloads of `window` and caches them, on the blocking pool (encoding and the
    /// cache's fsync must not stall the thread that serves the sockets). `None` (logged) when it
    /// cannot be encoded: its segment stays for the next leader.
    async fn store(&self, mut window: Window, report: AgentReport) -> Option<Stored> {
        with_instance_id(&mut window.config, self.workdir.path());
        let cache = Arc::clone(&self.cache);
        let totals = Arc::clone(&self.totals);
        let built_ms = self.build_time();
        let stored = crate::blocking::run(move || {
            let outgoing = match exports(&window, &report, &totals, built_ms) {
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
                if let Err(e) = cache.store(&o) {
                    // No cache (disk full, directory gone): sent directly.
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
        match stored {
            Ok((window, Ok((not_cached, none_cached)))) => Some(Stored {
                window,
                not_cached,
                none_cached,
            }),
            Ok((window, Err(e))) => {
                self.totals.never_added(&window);
                tracing::error!(
                    "cannot encode payload {}: {e:#}; it stays in the journal for the next leader",
                    window.segment
                );
                None
            }
            Err(e) => {
                tracing::error!(
                    "caching a payload failed: {e}; its journal segment stays for the next leader"
                );
                None
            }
        }
    }

    /// Sends what could not be cached. When all of the window's payloads are out (cached, sent or
    /// dropped for good) its segment goes; otherwise the window is returned, to be held for the
    /// next round with its segment, and the counts it carried wait for the next payload unless a
    /// cached payload of it has them.
    async fn send_uncached(
        &self,
        stored: Stored,
        carried: &AgentCounts,
        deadline: Option<Instant>,
    ) -> Option<Window> {
        let Stored {
            window,
            not_cached,
            none_cached,
        } = stored;
        let mut all_out = true;
        for o in &not_cached {
            match self.export(&window.config, o, deadline).await {
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
            self.finish(window).await;
            return None;
        }
        if none_cached {
            self.tally.give_back(carried);
        }
        Some(window)
    }

    /// Every payload of `window` is out: adds it to the cumulative view, then deletes the
    /// segments whose windows are saved there ([`Totals::commit`]).
    async fn finish(&self, window: Window) {
        if window.metrics.is_empty() {
            self.counting.drop_segment(&window);
            return;
        }
        let totals = Arc::clone(&self.totals);
        let committed = crate::blocking::run(move || totals.commit(&window)).await;
        match committed {
            Ok(segments) => {
                crate::test_knobs::kill_at("before-segment-delete");
                for segment in segments {
                    self.counting.drop_segment_of(&segment);
                    crate::test_knobs::kill_at("after-segment-delete");
                    self.totals.segment_gone(&segment.id);
                }
            }
            Err(e) => tracing::error!(
                "adding a window to the cumulative state failed: {e}; its journal segment stays for the next leader"
            ),
        }
    }

    /// Keeps `windows` for the next transmission: their payloads could be neither cached nor
    /// sent. Their journal segments stay on disk until they are (or for the next leader).
    fn hold(&self, windows: Vec<Window>) {
        let mut held = self.held();
        held.extend(windows);
        let mut bytes: usize = held.iter().map(|w| w.bytes).sum();
        while held.len() > MAX_HELD_WINDOWS || (bytes > MAX_HELD_BYTES && held.len() > 1) {
            let oldest = held.remove(0);
            bytes = bytes.saturating_sub(oldest.bytes);
            self.totals.never_added(&oldest);
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

/// The payloads of `window`, one per exporter and OTLP signal, in the order they are cached. The
/// last one is always there ([`last_kind`]): once it is in the cache, all of them are. OTLP
/// metrics take the live view of the window's app and environment from `totals` (under its
/// lock; blocking), or under delta its committed totals (for the monotonic flags, and only for a
/// window with counters); cumulative points carry `built_ms`.
fn exports(
    window: &Window,
    report: &AgentReport,
    totals: &Totals,
    built_ms: u64,
) -> anyhow::Result<Vec<Outgoing>> {
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
        let temporality = window
            .config
            .otlp
            .as_ref()
            .map_or(Temporality::Delta, |o| o.temporality());
        let requests = |series: &[crate::cumulative::LiveSeries<'_>]| {
            let live = LiveView {
                temporality,
                series,
                now_ms: built_ms,
            };
            crate::otlp::mapping::requests(window, &window.segment, report, &live)
        };
        // Under delta the committed totals only tell which counters are monotonic.
        let delta = temporality == Temporality::Delta;
        let requests = if delta && window.metrics.counters.is_empty() {
            requests(&[])
        } else {
            let (app, env) = (&window.config.app_name, &window.config.environment);
            totals.with_live_of(app, env, !delta, requests)
        };
        let mut bodies = crate::otlp::encode(requests)?;
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

/// Puts `service.instance.id` on the OTLP resource of `config` (unless its own resource attributes
/// set it): stable across leaders, one per host, working directory, app and environment
/// ([`crate::ids::service_instance_id`]), so that every stream has one writer.
fn with_instance_id(config: &mut ExportConfig, workdir: &std::path::Path) {
    const KEY: &str = "service.instance.id";
    let missing = config
        .otlp
        .as_ref()
        .is_some_and(|otlp| !otlp.resource.iter().any(|(k, _)| k == KEY));
    if !missing {
        return;
    }
    let id = crate::ids::service_instance_id(
        &config.hostname,
        workdir,
        &config.app_name,
        &config.environment,
    );
    if let Some(otlp) = config.otlp.as_mut() {
        otlp.resource.push((KEY.to_owned(), ResourceValue::Str(id)));
    }
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

/// What became of a payload handed to [`Transmission::export`].
enum Exported {
    Delivered,
    /// Not to be sent again: rejected, or its configuration's credentials are refused (counted).
    Dropped,
    /// Not delivered, may be later: keep it.
    Kept(PushError),
}

impl Transmission {
    /// Sends one payload, unless its configuration's credentials are refused for its exporter (then
    /// it is dropped and counted, except for the one probe per retry interval; see
    /// [`super::exports`]).
    async fn export(
        &self,
        config: &ExportConfig,
        payload: &Outgoing,
        deadline: Option<Instant>,
    ) -> Exported {
        let target = (payload.config_id, payload.kind);
        let probe = match self.exports.gate(target) {
            Gate::Closed => {
                self.exports.dropped_refused(target);
                return Exported::Dropped;
            }
            Gate::Probe => true,
            Gate::Open => false,
        };
        let exporter = exporter_name(payload.kind);
        match push_until(&self.pusher, config, payload, deadline).await {
            Ok(()) => {
                if let Some(dropped) = self.exports.accepted(target) {
                    tracing::info!(
                        "{exporter} accepts the credentials of app {:?} environment {:?} again ({dropped} payloads were dropped meanwhile); sending resumes",
                        config.app_name,
                        config.environment
                    );
                }
                Exported::Delivered
            }
            Err(PushError::Unauthorized(why)) => {
                if self.exports.refuse(target, config, &why) {
                    tracing::error!(
                        "{exporter} refused the credentials of app {:?} environment {:?} ({why}): its {} payloads are dropped and counted (agent.rejected_exports, diagnose), not sent; one is tried again every {} s",
                        config.app_name,
                        config.environment,
                        payload.kind.name(),
                        self.config.refused_key_retry_interval.as_secs()
                    );
                } else if probe {
                    tracing::debug!(
                        "{exporter} still refuses the credentials of app {:?} environment {:?} ({why})",
                        config.app_name,
                        config.environment
                    );
                }
                self.exports.dropped_refused(target);
                Exported::Dropped
            }
            Err(e @ PushError::Rejected(_)) => {
                self.exports.count_rejected();
                if self.exports.first_rejection(target) {
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

    /// Pushes cached payloads oldest first. An endpoint that fails once is not tried again this round;
    /// one that asked to wait (`Retry-After`) is not tried before then. Payloads of a configuration
    /// whose secrets no connected process has sent wait in the cache; those of a configuration whose
    /// credentials were refused are dropped (see [`Self::export`]).
    async fn push_cached(&self, deadline: Option<Instant>) {
        let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
        let mut down: HashSet<String> = HashSet::new();
        for entry in self.cache.list() {
            if past_deadline() {
                break;
            }
            let target = (entry.config_id, entry.kind);
            if self.exports.is_closed(target) {
                // Refused credentials: dropped without a request, whether or not the key is known.
                self.exports.dropped_refused(target);
                self.cache.remove(&entry);
                continue;
            }
            let Some(config) = self
                .counting
                .config(entry.config_id)
                .filter(|c| can_export(c, entry.kind))
            else {
                continue;
            };
            let endpoint = match (entry.kind, &config.otlp) {
                (ExportKind::Otlp(signal), Some(settings)) => signal.endpoint(settings).to_owned(),
                _ => config.endpoint.clone(),
            };
            if down.contains(&endpoint) || self.exports.throttled(&endpoint) {
                continue;
            }
            let payload = match self.cache.load(&entry) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("dropping unreadable cached payload: {e:#}");
                    self.cache.remove(&entry);
                    continue;
                }
            };
            match self.export(&config, &payload, deadline).await {
                Exported::Delivered => {
                    self.cache.remove(&entry);
                    tracing::info!(
                        "sent {} payload {} (window {} of {}/{})",
                        entry.kind.name(),
                        entry.id,
                        entry.created_ms,
                        config.app_name,
                        config.environment
                    );
                }
                Exported::Dropped => self.cache.remove(&entry),
                Exported::Kept(PushError::RetryAfter(why, after)) => {
                    tracing::warn!(
                        "{} payload {} not sent: {why}; kept in payloads/, next try in {} s or later",
                        entry.kind.name(),
                        entry.id,
                        after.as_secs()
                    );
                    self.exports.throttle(&endpoint, after);
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
}

/// The receiver of an exporter, for log lines.
fn exporter_name(kind: ExportKind) -> String {
    match kind {
        ExportKind::Push => "the Push API".to_owned(),
        ExportKind::Otlp(signal) => format!("the OTLP {} endpoint", signal.name()),
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

/// A transmission round on a real payload cache in a temporary directory (sending is covered by
/// `tests/push_faults.rs`): where the agent counts go.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, MetricSet};
    use crate::journal::Journal;
    use crate::protocol::MetricKey;
    use std::io::Read;

    struct Round {
        transmission: Transmission,
        tally: Arc<Tally>,
        config_id: u64,
        config: ExportConfig,
    }

    fn round(dir: &std::path::Path) -> Round {
        let path = dir.display().to_string();
        let config = Config::load_from(&move |key| {
            match key {
                "_APPSIGNAL_ACTIVE" => Some("true"),
                "_APPSIGNAL_PUSH_API_KEY" => Some("transmission-test-key"),
                "_APPSIGNAL_HOSTNAME" => Some("h"),
                "_APPSIGNAL_WORKING_DIRECTORY_PATH" => Some(path.as_str()),
                _ => None,
            }
            .map(str::to_owned)
        })
        .config;
        let workdir = WorkDir::prepare(dir, false).unwrap();
        let mut aggregator = Aggregator::new(config.transmission_interval);
        let config_id = aggregator.register(&config.export_config()).unwrap();
        let tally = Arc::new(Tally::default());
        let counting = Arc::new(Counting::new(
            aggregator,
            Journal::new(workdir.clone()),
            &config.export_config(),
            config_id,
            &workdir,
            Arc::clone(&tally),
            Arc::default(),
        ));
        let transmission = Transmission::new(
            &config,
            &workdir,
            Pusher::new(&config).unwrap(),
            PayloadCache::new(workdir.clone(), 100, 1 << 20),
            Arc::clone(&counting),
            Arc::clone(&tally),
            Arc::new(Totals::new(
                crate::cumulative::Cumulative::new(config.cumulative_expiry),
                &workdir,
                counting,
                Arc::clone(&tally),
            )),
        );
        Round {
            transmission,
            tally,
            config_id,
            config: config.export_config(),
        }
    }

    fn window(r: &Round, start_ms: u64, counts: AgentCounts, with_metric: bool) -> Window {
        let mut metrics = MetricSet::default();
        if with_metric {
            let key = MetricKey {
                name: "jobs".into(),
                tags: vec![],
            };
            metrics.counters.insert(key, 1.0);
        }
        Window {
            config: r.config.clone(),
            config_id: r.config_id,
            segment: format!("{start_ms:032}"),
            start_ms,
            end_ms: start_ms + 1000,
            metrics,
            batches: 1,
            samples: vec![],
            logs: vec![],
            counts,
            bytes: 0,
        }
    }

    /// The `agent` object of every cached payload, by window start.
    fn cached_reports(t: &Transmission) -> std::collections::BTreeMap<u64, serde_json::Value> {
        t.cache
            .list()
            .iter()
            .map(|entry| {
                let payload = t.cache.load(entry).unwrap();
                let mut json = String::new();
                flate2::read::GzDecoder::new(&payload.body_gz[..])
                    .read_to_string(&mut json)
                    .unwrap();
                let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                (entry.created_ms, v["agent"].clone())
            })
            .collect()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn the_leaders_counts_go_out_once_beside_each_windows_own() {
        let tmp = tempfile::tempdir().unwrap();
        let r = round(tmp.path());
        r.tally.one(|c| &mut c.rejected_frames);
        r.tally.one(|c| &mut c.rejected_frames);
        let dropped = AgentCounts {
            dropped_updates: 4,
            ..AgentCounts::default()
        };
        let windows = vec![
            window(&r, 1000, dropped, true),
            window(&r, 2000, AgentCounts::default(), true),
        ];
        block_on(r.transmission.cache_windows(windows, None));
        let reports = cached_reports(&r.transmission);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[&1000]["rejected_frames"], 2, "in the first payload");
        assert_eq!(reports[&1000]["dropped_updates"], 4, "the window's own");
        assert_eq!(reports[&2000]["rejected_frames"], 0, "once");
        assert_eq!(reports[&2000]["dropped_updates"], 0);
        assert_eq!(reports[&2000]["batches"], 1);
        assert!(r.tally.take().is_zero(), "nothing waits");
    }

    #[test]
    fn counts_that_no_payload_carries_wait_for_the_next_round() {
        let tmp = tempfile::tempdir().unwrap();
        let r = round(tmp.path());
        r.tally.one(|c| &mut c.refused_connections);
        // An empty window has no payload: its segment goes, the counts stay.
        let empty = window(&r, 1000, AgentCounts::default(), false);
        block_on(r.transmission.cache_windows(vec![empty], None));
        assert!(cached_reports(&r.transmission).is_empty());
        block_on(
            r.transmission
                .cache_windows(vec![window(&r, 2000, AgentCounts::default(), true)], None),
        );
        assert_eq!(
            cached_reports(&r.transmission)[&2000]["refused_connections"],
            1
        );
    }

    #[test]
    fn the_otlp_resource_gets_a_stable_service_instance_id_unless_the_app_sets_one() {
        let tmp = tempfile::tempdir().unwrap();
        let r = round(tmp.path());
        let mut config = ExportConfig {
            otlp: Some(crate::export_config::OtlpSettings {
                metrics_endpoint: "http://c/v1/metrics".into(),
                traces_endpoint: "http://c/v1/traces".into(),
                logs_endpoint: "http://c/v1/logs".into(),
                headers: vec![],
                timeout_ms: 1000,
                gzip: true,
                resource: vec![],
                temporality: String::new(),
            }),
            ..r.config.clone()
        };
        let instance = |c: &ExportConfig| -> Vec<ResourceValue> {
            let otlp = c.otlp.as_ref().unwrap();
            otlp.resource
                .iter()
                .filter(|(k, _)| k == "service.instance.id")
                .map(|(_, v)| v.clone())
                .collect()
        };
        let mut again = config.clone();
        with_instance_id(&mut config, tmp.path());
        with_instance_id(&mut config, tmp.path());
        with_instance_id(&mut again, tmp.path());
        let expected = crate::ids::service_instance_id(
            &config.hostname,
            tmp.path(),
            &config.app_name,
            &config.environment,
        );
        assert_eq!(
            instance(&config),
            [ResourceValue::Str(expected)],
            "once, the same"
        );
        assert_eq!(instance(&again), instance(&config));
        let mut other_dir = again.clone();
        other_dir.otlp.as_mut().unwrap().resource.clear();
        with_instance_id(&mut other_dir, &tmp.path().join("other"));
        assert_ne!(instance(&other_dir), instance(&config));
        // Set by the app (OTEL_RESOURCE_ATTRIBUTES): kept.
        let own = vec![(
            "service.instance.id".to_owned(),
            ResourceValue::Str("mine".into()),
        )];
        let mut set = again.clone();
        set.otlp.as_mut().unwrap().resource = own.clone();
        with_instance_id(&mut set, tmp.path());
        assert_eq!(set.otlp.unwrap().resource, own);
        // Push only: nothing to put it on.
        let mut push = r.config.clone();
        push.otlp = None;
        with_instance_id(&mut push, tmp.path());
        assert!(push.otlp.is_none());
    }
}
