//! The agent's counts about itself (`agent.*` in a Push API payload, `appsignal.agent.*` in OTLP):
//! what was dropped, rejected or refused on the way to a payload. One type, declared once: a
//! window carries the counts of its batches, the leader adds its own since the previous payload,
//! and the payload and the OTLP mapping write every field by its name. Adding a count is one line
//! in `agent_counts!` below, and whoever counts it.

use serde::{Deserialize, Serialize};

/// Declares [`AgentCounts`] from its fields: each is a `u64`, written under its own name.
macro_rules! agent_counts {
    ($( $(#[$doc:meta])* $field:ident, )*) => {
        /// Counts of anything the agent dropped, rejected or refused (all zero: nothing was).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct AgentCounts {
            $( $(#[$doc])* #[serde(default)] pub $field: u64, )*
        }

        impl AgentCounts {
            /// Every count with its name, in declaration order.
            pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$( (stringify!($field), self.$field), )*].into_iter()
            }

            /// Adds `other` to these counts (saturating).
            pub fn add(&mut self, other: &AgentCounts) {
                $( self.$field = self.$field.saturating_add(other.$field); )*
            }
        }
    };
}

agent_counts! {
    /// Metric updates dropped because a process or the window had too many distinct keys.
    dropped_updates,
    /// Cached payloads evicted (oldest first) since the previous payload, because the cache was full.
    payload_cache_evictions,
    /// Frames from processes that were rejected (malformed or oversized) since the previous payload.
    rejected_frames,
    /// Samples dropped (per-process or per-window cap, or too large).
    dropped_samples,
    /// Log lines dropped (per-process or per-window cap, or too large).
    dropped_logs,
    /// Payloads a receiver rejected (not retryable, e.g. HTTP 400) and that were dropped, since
    /// the previous payload.
    rejected_exports,
    /// Unacknowledged batches processes dropped because their queue was full (no leader took
    /// them for a long time); their contents are in the drop counts above.
    dropped_batches,
    /// Connections the leader closed since the previous payload because they broke the protocol's
    /// rules (a batch for another client, a sequence number out of order, an id in use by
    /// another process, too many configurations or connections, a frame too slow or over the
    /// memory budget).
    refused_connections,
    /// Batches whose counting panicked (a bug): skipped and, on replay, moved aside into
    /// `journal/quarantine/`.
    poisoned_batches,
    /// StatsD lines the leader's listener could not parse since the previous payload.
    statsd_malformed_lines,
    /// OTLP/HTTP intake: data points rejected and requests that could not be read since the
    /// previous payload.
    otlp_intake_rejected,
    /// Cumulative view: series not taken into a state that was full (its series cap or byte
    /// budget), once per window that brought them, and windows not counted because too many
    /// (app, environment) states are known.
    cumulative_refused_series,
    /// Cumulative view: series dropped because no window updated them for the expiry.
    cumulative_expired_series,
}

impl AgentCounts {
    /// Whether every count is zero.
    pub fn is_zero(&self) -> bool {
        self.named().all(|(_, n)| n == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_field_by_field_and_are_named_as_their_fields() {
        let mut a = AgentCounts {
            dropped_logs: 2,
            rejected_exports: u64::MAX,
            ..AgentCounts::default()
        };
        assert!(!a.is_zero() && AgentCounts::default().is_zero());
        a.add(&AgentCounts {
            dropped_logs: 3,
            rejected_exports: 1,
            otlp_intake_rejected: 4,
            ..AgentCounts::default()
        });
        let named: Vec<_> = a.named().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            named,
            [
                ("dropped_logs", 5),
                ("rejected_exports", u64::MAX),
                ("otlp_intake_rejected", 4)
            ]
        );
        // The payload's JSON names are the same.
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(json["dropped_logs"], 5);
        assert_eq!(json.as_object().unwrap().len(), a.named().count());
    }
}
