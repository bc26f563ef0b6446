//! What a new leader does first: count what the previous leader left in the journal, before it
//! serves anyone, so that resent batches are recognised as counted.

use std::collections::HashSet;

use super::transmission;
use crate::aggregate::Aggregator;
use crate::config::Config;
use crate::journal::Journal;
use crate::transmit::PayloadCache;

/// Counts what the previous leader left: each journal segment (or, when its payload is already
/// cached, only its (client, seq) pairs), then the `counted` record. A batch whose counting panics
/// is quarantined. Returns (segments, batches, poisoned batches).
pub(super) fn replay(
    config: &Config,
    aggregator: &mut Aggregator,
    journal: &mut Journal,
    cache: &PayloadCache,
) -> (usize, usize, u64) {
    let now = crate::now_ms();
    let own_config = config.export_config();
    let own_config_id = own_config.id();
    // A segment is done when its last payload is cached (all the others were cached before it).
    let cached: HashSet<(String, crate::transmit::ExportKind)> =
        cache.list().into_iter().map(|e| (e.id, e.kind)).collect();
    let (mut segments, mut batches, mut poisoned) = (0, 0, 0);
    let mut pending = Vec::new();
    for replayed in journal.replay() {
        let header = &replayed.header;
        let config = if header.config_id == own_config_id {
            own_config.clone()
        } else {
            header.config.clone()
        };
        aggregator.register_as(header.config_id, &config);
        let last = transmission::last_kind(header.config.exporters);
        if cached.contains(&(replayed.id.clone(), last)) {
            for b in &replayed.batches {
                aggregator.mark_counted(b.client_id, b.seq, now);
            }
            journal.discard(&replayed);
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
    // Only now: `counted` also lists batches of the segments just replayed (still open windows),
    // which must be counted from their segment, not skipped as seen. A batch is in one segment only.
    for (client, seq) in journal.read_counted() {
        aggregator.mark_counted(client, seq, now);
    }
    (segments, batches, poisoned)
}
