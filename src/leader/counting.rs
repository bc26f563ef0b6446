//! Counting in the leader: the aggregator and the journal under one lock, a batch journaled
//! before it is counted (and acknowledged), each (client, seq) once, a batch whose counting panics
//! skipped and reported; spool files of stopped processes counted; closed windows taken out.
//!
//! [`Counting`] owns that state; the connections, the leader's own process, the listeners and the
//! host metrics count through [`Counting::count`], the transmission takes windows and drops their
//! segments through it, and the leader closes it (under the same lock) before it lets go of the
//! lock file.
//!
//! It also keeps, until [`super::totals`] has added them, a copy of the metrics of the windows it
//! handed out (taken in the same step, under the same lock), so that a scrape sees every counted
//! update exactly once: in an open window, in a taken window, or in the cumulative state.

use std::sync::{Arc, Mutex, MutexGuard};

use super::knobs::Knobs;
use super::tally::Tally;
use crate::aggregate::{Aggregator, MetricSet, Window};
use crate::export_config::{ExportConfig, PrometheusSettings};
use crate::journal::Journal;
use crate::log::{suppressed_note, RateLimit};
use crate::protocol::Batch;
use crate::workdir::WorkDir;

static JOURNAL_ERROR_LOG: RateLimit = RateLimit::new(10_000);
static POISON_LOG: RateLimit = RateLimit::new(10_000);

/// Counting state under one lock: the aggregator, the journal, and whether batches are accepted.
pub(super) struct State {
    pub(super) aggregator: Aggregator,
    pub(super) journal: Journal,
    pub(super) open: bool,
    /// Metrics of windows taken and not yet added to the cumulative state, with their segment
    /// ids (a few: the windows of one transmission and those held back).
    pending: Vec<(String, Uncounted)>,
}

/// A window's metrics not yet in the cumulative state (a copy, for scrapes).
#[derive(Clone)]
pub(super) struct Uncounted {
    pub(super) app: String,
    pub(super) env: String,
    pub(super) start_ms: u64,
    pub(super) metrics: MetricSet,
}

/// A journal segment, as the journal names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SegmentRef {
    pub(super) start_ms: u64,
    pub(super) config_id: u64,
    pub(super) id: String,
}

impl SegmentRef {
    pub(super) fn of(window: &Window) -> SegmentRef {
        SegmentRef {
            start_ms: window.start_ms,
            config_id: window.config_id,
            id: window.segment.clone(),
        }
    }
}

pub(super) struct Counting {
    state: Mutex<State>,
    /// The leader's own configuration (its process, its listeners, its host metrics).
    own_config_id: u64,
    own_config: ExportConfig,
    workdir: WorkDir,
    /// Where poisoned batches are counted.
    tally: Arc<Tally>,
    knobs: Arc<Knobs>,
}

impl Counting {
    /// Counting into `aggregator` and `journal` (replayed already), open.
    pub(super) fn new(
        aggregator: Aggregator,
        journal: Journal,
        own_config: &ExportConfig,
        own_config_id: u64,
        workdir: &WorkDir,
        tally: Arc<Tally>,
        knobs: Arc<Knobs>,
    ) -> Counting {
        Counting {
            state: Mutex::new(State {
                aggregator,
                journal,
                open: true,
                pending: Vec::new(),
            }),
            own_config_id,
            own_config: own_config.clone(),
            workdir: workdir.clone(),
            tally,
            knobs,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Aggregation code does not panic on data; if it ever did, the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state itself, for the leader's tests.
    #[cfg(test)]
    pub(super) fn state_in_test(&self) -> MutexGuard<'_, State> {
        self.state()
    }

    #[cfg(test)]
    pub(super) fn own_config_id(&self) -> u64 {
        self.own_config_id
    }

    /// Journals and counts a batch of the leader's own configuration (see [`Self::count`]).
    pub(super) fn count_own(&self, batch: Batch) -> bool {
        self.count(self.own_config_id, batch)
    }

    /// Journals and counts a batch. `true`: the batch may be acknowledged (it is on disk, or it was
    /// counted before). `false`: counting has stopped or the journal failed; the client keeps it.
    pub(super) fn count(&self, config_id: u64, batch: Batch) -> bool {
        let mut guard = self.state();
        let state = &mut *guard;
        if !state.open {
            return false;
        }
        if state.aggregator.is_counted(batch.client_id, batch.seq) {
            return true;
        }
        let Some(config) = state.aggregator.config(config_id).cloned() else {
            return false;
        };
        self.knobs.see(&batch);
        let now = crate::now_ms();
        let start = state.aggregator.window_for(batch.created_ms, now);
        match state.journal.append(start, config_id, &config, &batch) {
            Ok(segment) => {
                let (client, seq) = (batch.client_id, batch.seq);
                let aggregator = &mut state.aggregator;
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    aggregator.apply(config_id, start, &segment, batch, now)
                }));
                if applied.is_err() {
                    // Acknowledged all the same (it is journaled), so that its process does not
                    // resend it forever; the next leader quarantines it on replay.
                    state.aggregator.mark_counted(client, seq, now);
                    self.poisoned(client, seq);
                }
                true
            }
            Err(e) => {
                if let Some(n) = JOURNAL_ERROR_LOG.check() {
                    tracing::error!(
                        "cannot journal a batch, so it is not acknowledged (its process keeps it): {e:#}{}",
                        suppressed_note(n)
                    );
                }
                false
            }
        }
    }

    fn poisoned(&self, client: u64, seq: u64) {
        self.tally.one(|c| &mut c.poisoned_batches);
        if let Some(n) = POISON_LOG.check() {
            tracing::error!(
                "counting batch {seq} of client {client:016x} panicked (a bug in libappsignal); the batch is skipped{}",
                suppressed_note(n)
            );
        }
    }

    /// Counts the batches of spool files that stopping processes left, then deletes them. A spool
    /// whose batches cannot all be journaled stays for the next round.
    pub(super) fn ingest_spools(&self) {
        for spooled in Journal::read_spools(&self.workdir) {
            let header = &spooled.header;
            let config = if header.config_id == self.own_config_id {
                self.own_config.clone()
            } else {
                header.config.clone()
            };
            self.state()
                .aggregator
                .register_as(header.config_id, &config);
            let total = spooled.batches.len();
            let mut ok = true;
            for batch in spooled.batches {
                if !self.count(header.config_id, batch) {
                    ok = false;
                    break;
                }
            }
            if ok {
                if let Err(e) = std::fs::remove_file(&spooled.path) {
                    tracing::warn!("cannot remove {}: {e}", spooled.path.display());
                }
                tracing::info!(
                    "counted {total} batches that a stopping process left in {}",
                    spooled.path.display()
                );
            }
        }
    }

    /// Takes the windows that started before `closed_before` (all with `None`) and seals their
    /// journal segments, so that late batches open new ones.
    pub(super) fn take_windows(&self, closed_before: Option<u64>) -> Vec<Window> {
        let mut guard = self.state();
        let state = &mut *guard;
        let windows = match closed_before {
            Some(now) => state.aggregator.take_closed(now),
            None => state.aggregator.take_all(),
        };
        for w in &windows {
            state.journal.seal(w.start_ms, w.config_id, &w.segment);
            if !w.metrics.is_empty() {
                let uncounted = Uncounted {
                    app: w.config.app_name.clone(),
                    env: w.config.environment.clone(),
                    start_ms: w.start_ms,
                    metrics: w.metrics.clone(),
                };
                state.pending.push((w.segment.clone(), uncounted));
            }
        }
        windows
    }

    /// The metrics not yet in the cumulative state: the taken windows' and the open windows'
    /// (copies, so that a scrape renders without this lock). In the order they will be added (the
    /// taken ones as taken, then the open ones oldest first, as they close): a series new in two
    /// of them shows the start of the one that will add it first, the start the state then keeps,
    /// and a scrape of a full state shows the new series the commits will take, not others.
    pub(super) fn uncounted(&self) -> Vec<Uncounted> {
        let state = self.state();
        let open = state
            .aggregator
            .open_metrics()
            .map(|(config, start_ms, metrics)| Uncounted {
                app: config.app_name.clone(),
                env: config.environment.clone(),
                start_ms,
                metrics: metrics.clone(),
            });
        state
            .pending
            .iter()
            .map(|(_, u)| u.clone())
            .chain(open)
            .collect()
    }

    /// The taken window of `segment` is in the cumulative state now (or will never be, by this
    /// leader): scrapes no longer add it.
    pub(super) fn counted_in_totals(&self, segment: &str) {
        self.state().pending.retain(|(id, _)| id != segment);
    }

    /// Drops the journal segment of `window`: its payloads are cached or sent.
    pub(super) fn drop_segment(&self, window: &Window) {
        self.drop_segment_of(&SegmentRef::of(window));
    }

    /// Drops the journal segment `segment`.
    pub(super) fn drop_segment_of(&self, segment: &SegmentRef) {
        self.state()
            .journal
            .remove(segment.start_ms, segment.config_id, &segment.id);
    }

    /// The (client, seq) pairs counted so far, for the `counted` record.
    pub(super) fn counted_snapshot(&self) -> Vec<(u64, u64)> {
        self.state().aggregator.counted_snapshot()
    }

    /// A registered configuration (to send its cached payloads).
    pub(super) fn config(&self, config_id: u64) -> Option<ExportConfig> {
        self.state().aggregator.config(config_id).cloned()
    }

    /// Registers a connection's configuration; `None` when too many are in use.
    pub(super) fn register(&self, config: &ExportConfig) -> Option<u64> {
        self.state().aggregator.register(config)
    }

    /// A connection that registered `config_id` has ended.
    pub(super) fn release(&self, config_id: u64) {
        self.state().aggregator.release(config_id);
    }

    /// The last seq counted for `client`.
    pub(super) fn last_counted(&self, client: u64) -> Option<u64> {
        self.state().aggregator.last_counted(client)
    }

    /// The Prometheus endpoint the configurations ask for: the leader's own, else the one of the
    /// registered configuration with the lowest id (never a copy from the journal: its token is
    /// gone).
    pub(super) fn prometheus(&self) -> Option<PrometheusSettings> {
        if let Some(own) = &self.own_config.prometheus {
            return Some(own.clone());
        }
        let state = self.state();
        state
            .aggregator
            .registered()
            .filter(|(_, c)| !c.redacted)
            .filter_map(|(id, c)| Some((id, c.prometheus.as_ref()?)))
            .min_by_key(|(id, _)| *id)
            .map(|(_, p)| p.clone())
    }

    /// Whether batches are still accepted.
    pub(super) fn is_open(&self) -> bool {
        self.state().open
    }

    /// Accepts no more batches (what is counted stays in the windows and the journal).
    pub(super) fn close(&self) {
        self.state().open = false;
    }
}
