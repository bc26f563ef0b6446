//! The agent counts ([`AgentCounts`]) the leader gathers between two payloads: what it counts
//! itself (connections refused, frames rejected, batches poisoned) and what its listeners count
//! (input they rejected). The transmission takes them for the next payload and gives back what no
//! payload carried out.

use std::sync::{Arc, Mutex};

use crate::counts::AgentCounts;
use crate::intake::IntakeStats;

#[derive(Default)]
pub(super) struct Tally {
    counts: Mutex<AgentCounts>,
    /// Kept by the listeners ([`crate::intake`]), read here.
    intake: Arc<IntakeStats>,
}

impl Tally {
    /// A tally that starts with `counts` (what the replay found).
    pub(super) fn new(counts: AgentCounts) -> Tally {
        Tally {
            counts: Mutex::new(counts),
            intake: Arc::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, AgentCounts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one of `field` (`|c| &mut c.refused_connections`).
    pub(super) fn one(&self, field: fn(&mut AgentCounts) -> &mut u64) {
        let mut counts = self.counts();
        let n = field(&mut counts);
        *n = n.saturating_add(1);
    }

    /// The counts the intake listeners keep.
    pub(super) fn intake(&self) -> Arc<IntakeStats> {
        Arc::clone(&self.intake)
    }

    /// Takes everything counted since the last take.
    pub(super) fn take(&self) -> AgentCounts {
        let mut counts = std::mem::take(&mut *self.counts());
        counts.add(&AgentCounts {
            statsd_malformed_lines: self.intake.take_statsd_malformed(),
            otlp_intake_rejected: self.intake.take_otlp_rejected(),
            ..AgentCounts::default()
        });
        counts
    }

    /// Puts back counts that no delivered or cached payload carries, for the next payload.
    pub(super) fn give_back(&self, counts: &AgentCounts) {
        self.counts().add(counts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn what_is_taken_is_gone_until_given_back() {
        let tally = Tally::new(AgentCounts {
            poisoned_batches: 1,
            ..AgentCounts::default()
        });
        tally.one(|c| &mut c.refused_connections);
        tally.intake().otlp_rejected.fetch_add(2, Ordering::Relaxed);
        let taken = tally.take();
        assert_eq!(
            (
                taken.poisoned_batches,
                taken.refused_connections,
                taken.otlp_intake_rejected
            ),
            (1, 1, 2)
        );
        assert!(tally.take().is_zero());
        tally.give_back(&taken);
        assert_eq!(tally.take(), taken);
    }
}
