//! The leader's cumulative view ([`crate::cumulative`]): it owns the [`Cumulative`] state, adds
//! each window to it at the transmission's commit point, and renders scrapes of it
//! ([`crate::prometheus`]).
//!
//! The commit point, in the order [`crate::cumulative`] prescribes: once every payload of a window
//! is cached or sent, [`Totals::commit`] adds the window, expires, and saves; only the segments it
//! returns may be deleted (this window's, and those of earlier commits whose save failed, once a
//! save succeeds), and each deletion is reported back ([`Totals::segment_gone`]). A window whose
//! payloads are held back is not added: its segment stays, and a kill then leaves it to the next
//! leader's replay, which adds it once.
//!
//! OTLP requests under a cumulative temporality read the same live view as a scrape, for one app
//! and environment ([`Totals::with_live_of`]).
//!
//! Locks: the state's lock is taken before the counting lock, never after it. A scrape holds the
//! state's lock while it copies what counting holds (the open windows, the windows taken and not
//! yet added), and a commit adds a window and tells counting so under the same lock: so a scrape
//! sees every counted update exactly once. Counting never waits for the state's lock; a scrape
//! waits for a save in progress.

use std::sync::{Arc, Mutex, MutexGuard};

use super::counting::{Counting, SegmentRef};
use super::tally::Tally;
use crate::aggregate::Window;
use crate::counts::AgentCounts;
use crate::cumulative::{Cumulative, LiveSeries, WindowRef};
use crate::log::{suppressed_note, RateLimit};
use crate::prometheus::{self, Format};
use crate::workdir::WorkDir;

/// Segments kept waiting for a successful save at most; beyond, the oldest are left on disk for
/// the next leader (whose replay adds their windows from the payload cache's record).
const MAX_UNSAVED: usize = 1024;

static SAVE_LOG: RateLimit = RateLimit::new(60_000);
static FORGOTTEN_LOG: RateLimit = RateLimit::new(60_000);
static KEPT_OUT_LOG: RateLimit = RateLimit::new(3_600_000);

struct Inner {
    cumulative: Cumulative,
    /// Segments whose windows are added but not yet saved: they may go only after a save.
    unsaved: Vec<SegmentRef>,
}

pub(super) struct Totals {
    inner: Mutex<Inner>,
    workdir: WorkDir,
    counting: Arc<Counting>,
    tally: Arc<Tally>,
}

/// Reads the saved states (a new leader, before its replay); a file that cannot be used is logged
/// and that state starts empty (the replay rebuilds what the journal still holds).
pub(super) fn load(workdir: &WorkDir, expiry: std::time::Duration) -> Cumulative {
    let (cumulative, errors) = Cumulative::load(workdir, expiry);
    for e in errors {
        tracing::warn!("{e:#}");
    }
    cumulative
}

impl Totals {
    /// Over the replayed `cumulative`.
    pub(super) fn new(
        cumulative: Cumulative,
        workdir: &WorkDir,
        counting: Arc<Counting>,
        tally: Arc<Tally>,
    ) -> Totals {
        Totals {
            inner: Mutex::new(Inner {
                cumulative,
                unsaved: Vec::new(),
            }),
            workdir: workdir.clone(),
            counting,
            tally,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `window` (every payload of it is cached or sent), expires and saves: the commit point.
    /// Returns the segments that may be deleted now (none when the save failed). Blocking (the
    /// save writes and syncs a file): call it off the runtime thread.
    pub(super) fn commit(&self, window: &Window) -> Vec<SegmentRef> {
        let mut guard = self.inner();
        let inner = &mut *guard;
        let now = crate::now_ms();
        let added = WindowRef {
            app: &window.config.app_name,
            env: &window.config.environment,
            start_ms: window.start_ms,
            metrics: &window.metrics,
        };
        inner.cumulative.add_window(added, &window.segment, now);
        self.counting.counted_in_totals(&window.segment);
        crate::test_knobs::kill_at("after-add");
        inner.cumulative.expire(now);
        self.tally_drops(&mut inner.cumulative);
        inner.unsaved.push(SegmentRef::of(window));
        match inner.cumulative.save(&self.workdir, now) {
            Ok(()) => std::mem::take(&mut inner.unsaved),
            Err(e) => {
                if let Some(n) = SAVE_LOG.check() {
                    tracing::error!(
                        "cannot save the cumulative state: {e:#}; {} journal segments stay until it can{}",
                        inner.unsaved.len(),
                        suppressed_note(n)
                    );
                }
                if inner.unsaved.len() > MAX_UNSAVED {
                    let extra = inner.unsaved.len() - MAX_UNSAVED;
                    inner.unsaved.drain(..extra);
                }
                Vec::new()
            }
        }
    }

    /// The state itself, for the leader's tests.
    #[cfg(test)]
    pub(super) fn with_state<R>(&self, f: impl FnOnce(&Cumulative) -> R) -> R {
        f(&self.inner().cumulative)
    }

    /// The journal segment `id` is deleted.
    pub(super) fn segment_gone(&self, id: &str) {
        self.inner().cumulative.segment_done(id);
    }

    /// The taken window `window` leaves this leader's memory without being added (its segment
    /// stays for the next leader): scrapes stop showing it.
    pub(super) fn never_added(&self, window: &Window) {
        let _guard = self.inner();
        self.counting.counted_in_totals(&window.segment);
    }

    /// The drops of the states, into the agent counts.
    fn tally_drops(&self, cumulative: &mut Cumulative) {
        let mut counts = AgentCounts {
            cumulative_refused_series: cumulative.take_refused_windows(),
            ..AgentCounts::default()
        };
        let drops = cumulative.take_drops();
        counts.cumulative_refused_series += drops.refused;
        counts.cumulative_expired_series += drops.expired;
        let forgotten = drops.forgotten_segments;
        if !counts.is_zero() {
            self.tally.give_back(&counts);
        }
        if forgotten > 0 {
            if let Some(n) = FORGOTTEN_LOG.check() {
                tracing::warn!(
                    "the cumulative state forgot {forgotten} journal segments it includes before they were deleted (too many at once){}",
                    suppressed_note(n)
                );
            }
        }
    }

    /// `f` over the live series of (`app`, `env`): the committed totals plus, with `open`, every
    /// window not yet added, exactly as a scrape shows them (an OTLP request under a cumulative
    /// temporality); without, the committed totals only (enough to tell which counters are
    /// monotonic, without copying the open windows). Under the state's lock. Blocking (O(series),
    /// and it waits for a save in progress): call it off the runtime thread, and keep `f` short
    /// (scrapes and commits wait for it).
    pub(super) fn with_live_of<R>(
        &self,
        app: &str,
        env: &str,
        open: bool,
        f: impl FnOnce(&[LiveSeries<'_>]) -> R,
    ) -> R {
        let inner = self.inner();
        let uncounted = if open {
            self.counting.uncounted()
        } else {
            Vec::new()
        };
        let open = open_windows(&uncounted);
        f(&inner.cumulative.live_of(app, env, &open))
    }

    /// One scrape: the committed totals plus every window not yet added, in `format`. Blocking
    /// (it renders every series): call it off the runtime thread.
    pub(super) fn scrape(&self, format: Format) -> String {
        let inner = self.inner();
        let uncounted = self.counting.uncounted();
        let open = open_windows(&uncounted);
        let live = inner.cumulative.live(&open);
        let mut out = String::new();
        let rendered = prometheus::render(format, &live, &mut out);
        if rendered.kept_out > 0 {
            if let Some(n) = KEPT_OUT_LOG.check() {
                tracing::warn!(
                    "Prometheus endpoint: {} series kept out of the scrape (names that collide after sanitising, or one name used as two kinds; docs/prometheus.md){}",
                    rendered.kept_out,
                    suppressed_note(n)
                );
            }
        }
        out
    }
}

/// What counting holds and the state does not, as the state reads windows.
fn open_windows(uncounted: &[super::counting::Uncounted]) -> Vec<WindowRef<'_>> {
    uncounted
        .iter()
        .map(|u| WindowRef {
            app: &u.app,
            env: &u.env,
            start_ms: u.start_ms,
            metrics: &u.metrics,
        })
        .collect()
}
