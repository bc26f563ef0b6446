//! One OTLP/HTTP request: `POST` a protobuf body to a signal's endpoint, and what its answer means,
//! following the OTLP specification's client rules: 2xx is delivered (a `partial_success` in the
//! answer is logged with its rejected count); 429, 502, 503 and 504 are retried, not before the
//! `Retry-After` the receiver gave; 401 and 403 mean the credentials (headers) were refused; every
//! other status is not retried. Errors and log lines name the endpoint, never a header value.

use std::time::Duration;

use prost::Message;

use super::PushError;
use crate::export_config::OtlpSettings;
use crate::otlp::Signal;

/// The HTTP header that carries a request's stable id (also a scope attribute, see
/// [`crate::otlp::mapping::EXPORT_ID_ATTRIBUTE`]): a receiver can drop a request it has seen.
pub const EXPORT_ID_HEADER: &str = "x-appsignal-export-id";
/// Longest answer body read (a `partial_success` is a few bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// `Retry-After` in seconds (the HTTP-date form is not read: the next transmission retries).
pub(super) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

fn gunzip(body: &[u8]) -> Result<Vec<u8>, PushError> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .map_err(|e| PushError::Rejected(format!("cached OTLP request unreadable: {e}")))?;
    Ok(out)
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of the answer.
async fn read_body(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    body
}

/// `(rejected count, message)` of a `partial_success` in a protobuf answer, when it reports any.
fn partial_success(signal: Signal, body: &[u8]) -> Option<(i64, String)> {
    use opentelemetry_proto::tonic::collector::{
        logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
        trace::v1::ExportTraceServiceResponse,
    };
    let (rejected, message) = match signal {
        Signal::Metrics => {
            let p = ExportMetricsServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            (p.rejected_data_points, p.error_message)
        }
        Signal::Traces => {
            let p = ExportTraceServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            (p.rejected_spans, p.error_message)
        }
        Signal::Logs => {
            let p = ExportLogsServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            (p.rejected_log_records, p.error_message)
        }
    };
    (rejected != 0 || !message.is_empty()).then_some((rejected, message))
}

/// Sends one cached request (`body_gz`: the gzip-compressed protobuf) of `signal`.
pub async fn send(
    http: &reqwest::Client,
    settings: &OtlpSettings,
    signal: Signal,
    export_id: &str,
    body_gz: &[u8],
) -> Result<(), PushError> {
    let endpoint = signal.endpoint(settings);
    let mut request = http
        .post(endpoint)
        .timeout(Duration::from_millis(settings.timeout_ms))
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .header(EXPORT_ID_HEADER, export_id);
    for (name, value) in &settings.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    request = if settings.gzip {
        request
            .header(reqwest::header::CONTENT_ENCODING, "gzip")
            .body(body_gz.to_vec())
    } else {
        request.body(gunzip(body_gz)?)
    };
    let response = request.send().await.map_err(|e| {
        PushError::Retryable(format!(
            "OTLP {} export to {endpoint} failed: {}",
            signal.name(),
            e.without_url()
        ))
    })?;
    let status = response.status();
    if status.is_success() {
        let is_protobuf = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-protobuf"));
        if is_protobuf {
            if let Some((rejected, message)) = partial_success(signal, &read_body(response).await) {
                tracing::warn!(
                    "OTLP {} export {export_id} to {endpoint}: the receiver rejected {rejected} of its items ({message:?})",
                    signal.name()
                );
            }
        }
        return Ok(());
    }
    let why = format!(
        "OTLP {} export to {endpoint} answered {status}",
        signal.name()
    );
    match status.as_u16() {
        429 | 502 | 503 | 504 => match retry_after(&response) {
            Some(after) => Err(PushError::RetryAfter(why, after)),
            None => Err(PushError::Retryable(why)),
        },
        401 | 403 => Err(PushError::Unauthorized(why)),
        _ => Err(PushError::Rejected(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
    };

    #[test]
    fn partial_success_is_read_and_an_empty_one_ignored() {
        let answer = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 3,
                error_message: "bad points".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            partial_success(Signal::Metrics, &answer),
            Some((3, "bad points".to_owned()))
        );
        let empty = ExportMetricsServiceResponse::default().encode_to_vec();
        assert_eq!(partial_success(Signal::Metrics, &empty), None);
        assert_eq!(partial_success(Signal::Traces, b"\xff\xff garbage"), None);
    }
}
