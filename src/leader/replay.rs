//! What a new leader does first: count what the previous leader left in the journal, before it
//! serves anyone, so that resent batches are recognised as counted; and continue the cumulative
//! view ([`crate::cumulative`]) from its saved state and the journal, so that it never goes back
//! and counts no window twice.

use std::collections::HashSet;

use super::transmission;
use crate::aggregate::Aggregator;
use crate::config::Config;
use crate::cumulative::{Cumulative, WindowRef};
use crate::export_config::ExportConfig;
use crate::journal::{Journal, Replayed};
use crate::transmit::PayloadCache;
use crate::workdir::WorkDir;

/// Counts what the previous leader left: each journal segment (or, when its payload is already
/// cached, only its (client, seq) pairs), then the `counted` record. A batch whose counting panics
/// is quarantined. Returns (segments, batches, poisoned batches).
///
/// The cumulative view: a segment that `cumulative` includes is done (like a cached one); a
/// cached segment that it does not include is added to it (its batches aggregated on their own),
/// and deleted only once the state is saved; the others are adopted and added when their windows
/// close.
pub(super) fn replay(
    config: &Config,
    workdir: &WorkDir,
    aggregator: &mut Aggregator,
    journal: &mut Journal,
    cache: &PayloadCache,
    cumulative: &mut Cumulative,
) -> (usize, usize, u64) {
    let now = crate::now_ms();
    let own_config = config.export_config();
    let own_config_id = own_config.id();
    // A segment is done when its last payload is cached (all the others were cached before it).
    let cached: HashSet<(String, crate::transmit::ExportKind)> =
        cache.list().into_iter().map(|e| (e.id, e.kind)).collect();
    let (mut segments, mut batches, mut poisoned) = (0, 0, 0);
    // Cached segments added to the cumulative state: deleted once it is saved.
    let mut to_save: Vec<Replayed> = Vec::new();
    let mut pending = Vec::new();
    for mut replayed in journal.replay() {
        let header = &replayed.header;
        let config = if header.config_id == own_config_id {
            own_config.clone()
        } else {
            header.config.clone()
        };
        aggregator.register_as(header.config_id, &config);
        let last = transmission::last_kind(header.config.exporters);
        let included = cumulative.includes(&replayed.id);
        if included || cached.contains(&(replayed.id.clone(), last)) {
            for b in &replayed.batches {
                aggregator.mark_counted(b.client_id, b.seq, now);
            }
            if !included && add_to_totals(&config, &replayed, cumulative, now) {
                replayed.batches.clear();
                to_save.push(replayed);
            } else {
                journal.discard(&replayed);
            }
            continue;
        }
        segments += 1;
        pending.push(replayed);
    }
    // Batches in the order of their (client, seq), whatever segment holds them: a client's
    // batches of one window may be in two segments (one left by a leader of the previous
    // protocol, which does not list this protocol's segments), and counting a later seq first
    // would make the earlier one look counted already.
    let mut order: Vec<(u64, u64, usize, usize)> = pending
        .iter()
        .enumerate()
        .flat_map(|(s, r)| {
            r.batches
                .iter()
                .enumerate()
                .map(move |(b, batch)| (batch.client_id, batch.seq, s, b))
        })
        .collect();
    crate::sort::sort_by_key(&mut order, |&(client, seq, s, b)| (client, seq, s, b));
    let mut panicked: Vec<(usize, usize)> = Vec::new();
    for (client, seq, s, b) in order {
        let replayed = &pending[s];
        let Some(batch) = replayed.batches.get(b).cloned() else {
            continue;
        };
        batches += 1;
        let (config_id, window_start) = (replayed.header.config_id, replayed.header.window_start);
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            aggregator.apply(config_id, window_start, &replayed.id, batch, now)
        }));
        if applied.is_err() {
            poisoned += 1;
            aggregator.mark_counted(client, seq, now);
            panicked.push((s, b));
        }
    }
    // Later batches first, so that taking one out does not move the others.
    crate::sort::sort_by(&mut panicked, |a, b| b.cmp(a));
    for (s, index) in panicked {
        let replayed = &mut pending[s];
        let (client, seq) = (
            replayed.batches[index].client_id,
            replayed.batches[index].seq,
        );
        match journal.quarantine(replayed, index) {
            Ok(()) => tracing::error!(
                "replaying batch {seq} of client {client:016x} in journal segment {} panicked (a bug in libappsignal): moved aside into a quarantine file",
                replayed.id
            ),
            Err(e) => tracing::error!(
                "replaying batch {seq} of client {client:016x} in journal segment {} panicked (a bug in libappsignal), and it cannot be moved aside: {e:#}",
                replayed.id
            ),
        }
    }
    for replayed in &pending {
        if let Err(e) = journal.adopt(replayed) {
            tracing::warn!("cannot continue journal segment {}: {e:#}", replayed.id);
        }
    }
    if !to_save.is_empty() {
        match cumulative.save(workdir, now) {
            Ok(()) => {
                for replayed in &to_save {
                    journal.discard(replayed);
                    cumulative.segment_done(&replayed.id);
                }
            }
            Err(e) => tracing::error!(
                "cannot save the cumulative state: {e:#}; {} journal segments stay for the next leader",
                to_save.len()
            ),
        }
    }
    // Only now: `counted` also lists batches of the segments just replayed (still open windows),
    // which must be counted from their segment, not skipped as seen. A batch is in one segment only.
    for (client, seq) in journal.read_counted() {
        aggregator.mark_counted(client, seq, now);
    }
    (segments, batches, poisoned)
}

/// Adds the window of a segment whose payload is cached (the previous leader was killed before
/// it added it) to `cumulative`, from its batches alone. `false` when it holds no metrics (or
/// counting it panicked): then there is nothing to wait for.
fn add_to_totals(
    config: &ExportConfig,
    replayed: &Replayed,
    cumulative: &mut Cumulative,
    now: u64,
) -> bool {
    let header = &replayed.header;
    let mut scratch = Aggregator::new(std::time::Duration::from_secs(60));
    scratch.register_as(header.config_id, config);
    let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for batch in &replayed.batches {
            scratch.apply(
                header.config_id,
                header.window_start,
                &replayed.id,
                batch.clone(),
                now,
            );
        }
    }));
    if counted.is_err() {
        return false;
    }
    let mut any = false;
    for window in scratch.take_all() {
        if window.metrics.is_empty() {
            continue;
        }
        any = true;
        let added = WindowRef {
            app: &config.app_name,
            env: &config.environment,
            start_ms: window.start_ms,
            metrics: &window.metrics,
        };
        cumulative.add_window(added, &replayed.id, now);
    }
    any
}
