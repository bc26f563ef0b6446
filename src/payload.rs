//! The Push API payload: one JSON document per window and configuration, documented in
//! `docs/push-api.md`. Built by the leader from a closed [`Window`]; gzip-compressed for the wire
//! and for the on-disk cache.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::aggregate::Window;
use crate::counts::AgentCounts;
use crate::protocol::MetricKey;
use crate::sample::{LogLine, Sample};

/// Quantiles reported for every distribution.
pub const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    pub payload_id: String,
    pub library_version: String,
    pub protocol_version: u32,
    pub app_name: String,
    pub environment: String,
    pub hostname: String,
    pub revision: String,
    /// `_APPSIGNAL_HOST_ROLE` of the configuration, if set.
    #[serde(default)]
    pub host_role: Option<String>,
    /// `_APPSIGNAL_LANGUAGE_INTEGRATION_VERSION` of the configuration, if set.
    #[serde(default)]
    pub language_integration_version: Option<String>,
    pub window: WindowSpan,
    pub counters: Vec<ValueEntry>,
    pub gauges: Vec<ValueEntry>,
    pub distributions: Vec<DistributionEntry>,
    /// Samples of transactions and root spans (see docs/apm.md for their shape).
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// Log lines from `appsignal_log`.
    #[serde(default)]
    pub logs: Vec<LogLine>,
    pub agent: AgentReport,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct WindowSpan {
    pub start_ms: u64,
    pub end_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValueEntry {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistributionEntry {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub quantiles: BTreeMap<String, f64>,
}

/// What the agent itself has to say about this payload: who pushed it, what it merged, and
/// counts of anything dropped ([`AgentCounts`], written as fields of `agent`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentReport {
    pub leader_pid: u32,
    /// Batches merged into this window.
    pub batches: u64,
    #[serde(flatten)]
    pub counts: AgentCounts,
}

impl AgentReport {
    /// The report of `window`'s payload: its own counts plus `leader`'s (those the leader counted
    /// since the previous payload, carried by this one).
    pub fn of_window(window: &Window, leader: &AgentCounts) -> AgentReport {
        let mut counts = window.counts;
        counts.add(leader);
        AgentReport {
            leader_pid: std::process::id(),
            batches: window.batches,
            counts,
        }
    }
}

fn tags(key: &MetricKey) -> BTreeMap<String, String> {
    key.tags.iter().cloned().collect()
}

impl Payload {
    /// Builds the payload of a closed window, with `agent` as its report (see
    /// [`AgentReport::of_window`]). Entries are sorted by name and tags, so that the same
    /// window always renders the same document.
    pub fn from_window(window: &Window, payload_id: String, agent: AgentReport) -> Payload {
        let mut counters: Vec<ValueEntry> = window
            .metrics
            .counters
            .iter()
            .map(|(k, v)| ValueEntry {
                name: k.name.clone(),
                tags: tags(k),
                value: *v,
            })
            .collect();
        let mut gauges: Vec<ValueEntry> = window
            .metrics
            .gauges
            .iter()
            .map(|(k, v)| ValueEntry {
                name: k.name.clone(),
                tags: tags(k),
                value: v.value,
            })
            .collect();
        let mut distributions: Vec<DistributionEntry> = window
            .metrics
            .distributions
            .iter()
            .map(|(k, sketch)| DistributionEntry {
                name: k.name.clone(),
                tags: tags(k),
                count: sketch.count(),
                sum: sketch.sum(),
                min: sketch.min().unwrap_or(0.0),
                max: sketch.max().unwrap_or(0.0),
                quantiles: QUANTILES
                    .iter()
                    .filter_map(|(name, q)| sketch.quantile(*q).map(|v| (name.to_string(), v)))
                    .collect(),
            })
            .collect();
        crate::sort::sort_by(&mut counters, |a, b| {
            (&a.name, &a.tags).cmp(&(&b.name, &b.tags))
        });
        crate::sort::sort_by(&mut gauges, |a, b| {
            (&a.name, &a.tags).cmp(&(&b.name, &b.tags))
        });
        crate::sort::sort_by(&mut distributions, |a, b| {
            (&a.name, &a.tags).cmp(&(&b.name, &b.tags))
        });
        Payload {
            payload_id,
            library_version: crate::VERSION.to_owned(),
            protocol_version: crate::protocol::PROTOCOL_VERSION,
            app_name: window.config.app_name.clone(),
            environment: window.config.environment.clone(),
            hostname: window.config.hostname.clone(),
            revision: window.config.revision.clone(),
            host_role: window.config.host_role.clone(),
            language_integration_version: window.config.language_integration_version.clone(),
            window: WindowSpan {
                start_ms: window.start_ms,
                end_ms: window.end_ms,
            },
            counters,
            gauges,
            distributions,
            // Checked when their batch was read; their fields are the document's keys.
            samples: window.samples.clone(),
            logs: window.logs.clone(),
            agent,
        }
    }

    /// JSON, gzip-compressed: the request body.
    pub fn to_gzip(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self).context("cannot serialise payload")?;
        crate::gzip::compress(&json).context("cannot compress payload")
    }
}

pub use crate::ids::new_payload_id;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::MetricSet;
    use crate::export_config::ExportConfig;
    use crate::sketch::Sketch;
    use std::io::Read;

    #[test]
    fn a_window_renders_the_documented_shape() {
        let mut metrics = MetricSet::default();
        let key = MetricKey {
            name: "latency".into(),
            tags: vec![("route".into(), "/".into())],
        };
        let mut sketch = Sketch::new();
        for v in 1..=100 {
            sketch.add(f64::from(v));
        }
        metrics.distributions.insert(key.clone(), sketch);
        metrics.counters.insert(key, 4.0);
        let window = Window {
            config: ExportConfig {
                push_api_key: "secret".into(),
                app_name: "app".into(),
                environment: "prod".into(),
                endpoint: "http://x".into(),
                hostname: "h".into(),
                revision: "abc".into(),
                host_role: Some("web".into()),
                ..Default::default()
            },
            config_id: 1,
            segment: "0".repeat(32),
            start_ms: 0,
            end_ms: 1000,
            metrics,
            batches: 5,
            samples: vec![crate::sample::Sample {
                action: Some("home".into()),
                ..crate::sample::test_sample(2)
            }],
            logs: vec![],
            counts: AgentCounts {
                dropped_updates: 2,
                dropped_samples: 1,
                ..AgentCounts::default()
            },
            bytes: 0,
        };
        let leader = AgentCounts {
            rejected_frames: 3,
            dropped_samples: 1,
            ..AgentCounts::default()
        };
        let report = AgentReport::of_window(&window, &leader);
        let payload = Payload::from_window(&window, new_payload_id(), report);
        let mut json = String::new();
        flate2::read::GzDecoder::new(&payload.to_gzip().unwrap()[..])
            .read_to_string(&mut json)
            .unwrap();
        assert!(
            !json.contains("secret"),
            "the push key is not part of the body"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["counters"][0]["value"], 4.0);
        assert_eq!(v["counters"][0]["tags"]["route"], "/");
        let d = &v["distributions"][0];
        assert_eq!(
            (d["count"].as_u64(), d["sum"].as_f64()),
            (Some(100), Some(5050.0))
        );
        let p50 = d["quantiles"]["p50"].as_f64().unwrap();
        assert!((p50 - 50.0).abs() <= 1.0, "p50 {p50}");
        assert_eq!(v["agent"]["dropped_updates"], 2);
        assert_eq!(
            v["agent"]["dropped_samples"], 2,
            "the window's and the leader's"
        );
        assert_eq!(v["agent"]["rejected_frames"], 3);
        assert_eq!(v["agent"]["batches"], 5);
        assert_eq!(v["agent"]["poisoned_batches"], 0, "every count is written");
        assert_eq!(v["payload_id"].as_str().unwrap().len(), 32);
        assert_eq!(v["host_role"], "web");
        assert_eq!(v["language_integration_version"], serde_json::Value::Null);
    }

    #[test]
    fn payload_ids_differ() {
        assert_ne!(new_payload_id(), new_payload_id());
    }
}
