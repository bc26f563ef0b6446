//! Counting in the leader: the aggregator and the journal under one lock, a batch journaled
//! before it is counted (and acknowledged), each (client, seq) once, a batch whose counting panics
//! skipped and reported; spool files of stopped processes counted; closed windows taken out.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Shared, JOURNAL_ERROR_LOG, POISON_LOG};
use crate::aggregate::{Aggregator, Window};
use crate::journal::Journal;
use crate::log::suppressed_note;
use crate::protocol::Batch;

/// Counting state under one lock: the aggregator, the journal, and whether batches are accepted.
pub(super) struct Counting {
    pub(super) aggregator: Aggregator,
    pub(super) journal: Journal,
    pub(super) open: bool,
}

/// Ends leadership when dropped, also while unwinding from a panic: counting stops before the lock
/// (dropped after this guard) is released, so that this process never journals beside the next leader.
pub(super) struct StopCounting(pub(super) Arc<Shared>);

impl Drop for StopCounting {
    fn drop(&mut self) {
        self.0.counting().open = false;
        self.0.stopped.store(true, Ordering::Release);
        if let Some(waker) = &self.0.on_stop {
            waker.wake();
        }
    }
}

impl Shared {
    pub(super) fn counting(&self) -> std::sync::MutexGuard<'_, Counting> {
        // Aggregation code does not panic on data; if it ever did, the state is still usable.
        self.counting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journals and counts a batch. `true`: the batch may be acknowledged (it is on disk, or it was
    /// counted before). `false`: counting has stopped or the journal failed; the client keeps it.
    pub(super) fn count(&self, config_id: u64, batch: Batch) -> bool {
        let mut guard = self.counting();
        let counting = &mut *guard;
        if !counting.open {
            return false;
        }
        if counting.aggregator.is_counted(batch.client_id, batch.seq) {
            return true;
        }
        let Some(config) = counting.aggregator.config(config_id).cloned() else {
            return false;
        };
        #[cfg(any(test, feature = "test-knobs"))]
        if batch
            .counters
            .iter()
            .any(|(k, _)| k.name == crate::aggregate::TEST_PANIC_LEADER)
        {
            self.panic_requested.store(true, Ordering::Release);
            self.check_now.notify_one();
        }
        let now = crate::now_ms();
        let start = counting.aggregator.window_for(batch.created_ms, now);
        match counting.journal.append(start, config_id, &config, &batch) {
            Ok(segment) => {
                let (client, seq) = (batch.client_id, batch.seq);
                let aggregator = &mut counting.aggregator;
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    aggregator.apply(config_id, start, &segment, batch, now)
                }));
                if applied.is_err() {
                    // Acknowledged all the same (it is journaled), so that its process does not
                    // resend it forever; the next leader quarantines it on replay.
                    counting.aggregator.mark_counted(client, seq, now);
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

    pub(super) fn poisoned(&self, client: u64, seq: u64) {
        self.poisoned_batches.fetch_add(1, Ordering::Relaxed);
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
                self.config.export_config()
            } else {
                header.config.clone()
            };
            self.counting()
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
        let mut guard = self.counting();
        let counting = &mut *guard;
        let windows = match closed_before {
            Some(now) => counting.aggregator.take_closed(now),
            None => counting.aggregator.take_all(),
        };
        for w in &windows {
            counting.journal.seal(w.start_ms, w.config_id, &w.segment);
        }
        windows
    }
}
