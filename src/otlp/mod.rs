//! The OTLP exporter's content: a closed window becomes up to three OTLP/HTTP protobuf requests
//! (metrics, traces, logs), which go through the same payload cache, retry and no-loss rules as
//! Push API payloads (sent by `transmit`). The mapping is in [`mapping`] and `docs/otlp.md`; the
//! settings (`_APPSIGNAL_OTLP_*`, `OTEL_EXPORTER_OTLP_*`) are read by `config::otlp` and reach the
//! leader in each configuration's [`ExportConfig`](crate::export_config::ExportConfig). Pure: no I/O here.

pub mod mapping;

use anyhow::{Context, Result};
use prost::Message;

use crate::aggregate::Window;
use crate::export_config::OtlpSettings;

/// One of the three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    Metrics,
    Traces,
    Logs,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }

    /// This signal's endpoint in `settings`.
    pub fn endpoint(self, settings: &OtlpSettings) -> &str {
        match self {
            Signal::Metrics => &settings.metrics_endpoint,
            Signal::Traces => &settings.traces_endpoint,
            Signal::Logs => &settings.logs_endpoint,
        }
    }
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    crate::gzip::compress(bytes).context("cannot compress an OTLP request")
}

/// A metrics request with no metrics (resource and scope only): it completes a window's set of
/// cached requests when the window had no metrics (see `leader::transmission`).
pub fn encode_empty_metrics(window: &Window, export_id: &str) -> Result<Vec<u8>> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(mapping::resource(&window.config)),
            scope_metrics: vec![ScopeMetrics {
                scope: mapping::scope(export_id),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    gzip(&request.encode_to_vec())
}

/// The requests of a window ([`mapping::requests`]) as gzip-compressed protobuf bodies, one per
/// signal that has data.
pub fn encode(requests: mapping::Requests) -> Result<Vec<(Signal, Vec<u8>)>> {
    let mut bodies = Vec::new();
    if let Some(r) = requests.metrics {
        bodies.push((Signal::Metrics, gzip(&r.encode_to_vec())?));
    }
    if let Some(r) = requests.traces {
        bodies.push((Signal::Traces, gzip(&r.encode_to_vec())?));
    }
    if let Some(r) = requests.logs {
        bodies.push((Signal::Logs, gzip(&r.encode_to_vec())?));
    }
    Ok(bodies)
}
