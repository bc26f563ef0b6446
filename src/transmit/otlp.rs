//! One OTLP/HTTP request: `POST` a protobuf body to a signal's endpoint, and what its answer means,
//! following the OTLP specification's client rules: 2xx is delivered (a `partial_success` in the
//! answer is logged with its rejected count); 429, 502, 503 and 504 are retried, not before the
//! `Retry-After` the receiver gave; 401 and 403 mean the credentials (headers) were refused; every
//! other status is not retried. Errors and log lines name the endpoint, never a header value.
//!
//! Secrets are put in here, at send time, from the configuration the leader holds in memory: the
//! header values, and the push key as the resource attribute
//! [`PUSH_API_KEY_ATTRIBUTE`](crate::otlp::mapping::PUSH_API_KEY_ATTRIBUTE) that AppSignal's
//! collector reads. The cached request holds neither.

use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::PushError;
use crate::export_config::OtlpSettings;
use crate::otlp::mapping::PUSH_API_KEY_ATTRIBUTE;
use crate::otlp::Signal;

/// The HTTP header that carries a request's stable id (also a scope attribute, see
/// [`crate::otlp::mapping::EXPORT_ID_ATTRIBUTE`]): a receiver can drop a request it has seen.
pub const EXPORT_ID_HEADER: &str = "x-appsignal-export-id";
/// Longest answer body read (a `partial_success` is a few bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The most a cached request may decompress to: far above what one window's request holds, a
/// bound against a cache file that is a gzip bomb.
const MAX_CACHED_REQUEST_BYTES: usize = 256 * 1024 * 1024;
/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// `Retry-After` in seconds (the HTTP-date form is not read: the next transmission retries).
pub(super) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

fn gunzip(body: &[u8]) -> Result<Vec<u8>, PushError> {
    crate::gzip::decompress(body, MAX_CACHED_REQUEST_BYTES)
        .map_err(|e| PushError::Rejected(format!("cached OTLP request unreadable: {e}")))
}

fn gzip(body: &[u8]) -> Result<Vec<u8>, PushError> {
    crate::gzip::compress(body)
        .map_err(|e| PushError::Retryable(format!("cannot compress an OTLP request: {e:#}")))
}

/// `resource` with the push key: the one [`PUSH_API_KEY_ATTRIBUTE`], whatever was there before.
fn set_push_key(resource: &mut Option<Resource>, push_api_key: &str) {
    let resource = resource.get_or_insert_with(Resource::default);
    resource
        .attributes
        .retain(|a| a.key != PUSH_API_KEY_ATTRIBUTE);
    resource.attributes.push(KeyValue {
        key: PUSH_API_KEY_ATTRIBUTE.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(push_api_key.to_owned())),
        }),
        ..Default::default()
    });
}

/// Reads a protobuf varint at the start of `buf`, advancing it.
fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One protobuf field of a message.
struct Field<'a> {
    number: u64,
    /// Its whole encoding, key included.
    whole: &'a [u8],
    /// The content of a length-delimited field.
    content: Option<&'a [u8]>,
}

/// The field at the start of `buf`, advancing it. Groups (deprecated, never in OTLP) are refused.
fn read_field<'a>(buf: &mut &'a [u8]) -> Option<Field<'a>> {
    let whole = *buf;
    let key = read_varint(buf)?;
    let content = match key & 7 {
        0 => {
            read_varint(buf)?;
            None
        }
        1 | 5 => {
            let n = if key & 7 == 1 { 8 } else { 4 };
            *buf = buf.get(n..)?;
            None
        }
        2 => {
            let n = usize::try_from(read_varint(buf)?).ok()?;
            let content = buf.get(..n)?;
            *buf = &buf[n..];
            Some(content)
        }
        _ => return None,
    };
    Some(Field {
        number: key >> 3,
        whole: &whole[..whole.len() - buf.len()],
        content,
    })
}

fn write_bytes_field(out: &mut Vec<u8>, number: u64, content: &[u8]) {
    write_varint(out, number << 3 | 2);
    write_varint(out, content.len() as u64);
    out.extend_from_slice(content);
}

/// A `ResourceMetrics`, `ResourceSpans` or `ResourceLogs` with the push key on its resource
/// (field 1, merged as protobuf merges repeated occurrences); its other fields are copied as they are.
fn keyed_resource_entry(entry: &[u8], push_api_key: &str) -> Option<Vec<u8>> {
    let mut resource = None::<Resource>;
    let mut others = Vec::with_capacity(entry.len());
    let mut rest = entry;
    while !rest.is_empty() {
        match read_field(&mut rest)? {
            Field {
                number: 1,
                content: Some(content),
                ..
            } => resource
                .get_or_insert_with(Resource::default)
                .merge(content)
                .ok()?,
            field => others.extend_from_slice(field.whole),
        }
    }
    set_push_key(&mut resource, push_api_key);
    let mut out = Vec::with_capacity(entry.len() + push_api_key.len() + 64);
    write_bytes_field(&mut out, 1, &resource.unwrap_or_default().encode_to_vec());
    out.extend_from_slice(&others);
    Some(out)
}

/// The protobuf request `request` of `signal` with the push key on every resource. The three
/// requests have the same outline (field 1: the repeated resource entries; their field 1: the
/// resource), so only the resources are decoded; spans, metrics and log records are copied as
/// bytes (cheap, and no nesting limit of a decoder applies to them).
fn with_push_key(signal: Signal, request: &[u8], push_api_key: &str) -> Result<Vec<u8>, PushError> {
    let keyed = || {
        let mut out = Vec::with_capacity(request.len() + 256);
        let mut rest = request;
        while !rest.is_empty() {
            match read_field(&mut rest)? {
                Field {
                    number: 1,
                    content: Some(entry),
                    ..
                } => write_bytes_field(&mut out, 1, &keyed_resource_entry(entry, push_api_key)?),
                field => out.extend_from_slice(field.whole),
            }
        }
        Some(out)
    };
    keyed().ok_or_else(|| {
        PushError::Rejected(format!("cached OTLP {} request unreadable", signal.name()))
    })
}

/// The body that goes out for the cached request `body_gz` (gzip-compressed protobuf) of
/// `signal`: with the push key when there is one (none with the OTLP exporter alone), compressed
/// when `compress`. Without a key and compressed, the cached bytes as they are.
fn request_body(
    signal: Signal,
    body_gz: &[u8],
    push_api_key: &str,
    compress: bool,
) -> Result<Vec<u8>, PushError> {
    if push_api_key.is_empty() {
        return if compress {
            Ok(body_gz.to_vec())
        } else {
            gunzip(body_gz)
        };
    }
    let keyed = with_push_key(signal, &gunzip(body_gz)?, push_api_key)?;
    if compress {
        gzip(&keyed)
    } else {
        Ok(keyed)
    }
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

/// Sends one cached request (`body_gz`: the gzip-compressed protobuf) of `signal`, with the
/// configuration's `push_api_key` (when not empty) and header values put in.
pub async fn send(
    http: &reqwest::Client,
    settings: &OtlpSettings,
    push_api_key: &str,
    signal: Signal,
    export_id: &str,
    body_gz: &[u8],
) -> Result<(), PushError> {
    let endpoint = signal.endpoint(settings);
    // Decoding and encoding a large request runs on the blocking pool, not on the thread that
    // serves the sockets.
    let (cached, key, compress) = (body_gz.to_vec(), push_api_key.to_owned(), settings.gzip);
    let body = crate::blocking::run(move || request_body(signal, &cached, &key, compress))
        .await
        .map_err(|e| {
            PushError::Retryable(format!(
                "preparing the OTLP {} request failed: {e}",
                signal.name()
            ))
        })??;
    let mut request = http
        .post(endpoint)
        .timeout(Duration::from_millis(settings.timeout_ms))
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .header(EXPORT_ID_HEADER, export_id);
    for (name, value) in &settings.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    if settings.gzip {
        request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
    }
    request = request.body(body);
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
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::KeyValueList;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    const KEY: &str = "push-key-0c1d";

    fn config() -> crate::export_config::ExportConfig {
        crate::export_config::ExportConfig {
            push_api_key: KEY.into(),
            app_name: "app".into(),
            environment: "prod".into(),
            ..Default::default()
        }
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    /// `(key, value)` of every resource attribute named [`PUSH_API_KEY_ATTRIBUTE`], per resource.
    fn keys(resources: Vec<Option<Resource>>) -> Vec<Vec<String>> {
        resources
            .into_iter()
            .map(|r| {
                r.unwrap_or_default()
                    .attributes
                    .into_iter()
                    .filter(|a| a.key == PUSH_API_KEY_ATTRIBUTE)
                    .map(|a| match a.value.and_then(|v| v.value) {
                        Some(any_value::Value::StringValue(s)) => s,
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .collect()
    }

    /// A value nested `depth` maps deep (three messages a level: deeper than a decoder's limit).
    fn nested(depth: usize) -> Option<AnyValue> {
        let mut value = AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        };
        for _ in 0..depth {
            value = AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: vec![KeyValue {
                        key: "k".into(),
                        value: Some(value),
                        ..Default::default()
                    }],
                })),
            };
        }
        Some(value)
    }

    /// What `request_body` sends for `cached` (a protobuf request), as protobuf.
    fn sent(signal: Signal, cached: &[u8], compress: bool) -> Vec<u8> {
        let body = request_body(signal, &gzip(cached).unwrap(), KEY, compress).unwrap();
        if compress {
            gunzip(&body).unwrap()
        } else {
            body
        }
    }

    #[test]
    fn the_cached_request_holds_no_key_and_the_sent_one_carries_it_on_every_resource() {
        let window = crate::aggregate::Window {
            config: config(),
            config_id: 1,
            segment: "s".repeat(32),
            start_ms: 1000,
            end_ms: 2000,
            metrics: Default::default(),
            batches: 1,
            samples: Vec::new(),
            logs: Vec::new(),
            counts: Default::default(),
            bytes: 0,
        };
        // A metrics request as the leader caches it: no key, although its configuration has one.
        let metrics_gz = crate::otlp::encode_empty_metrics(&window, &window.segment).unwrap();
        let metrics = gunzip(&metrics_gz).unwrap();
        assert!(!contains(&metrics, KEY));
        // Traces and logs requests with that resource, one that names the attribute already, and
        // none.
        let resource = crate::otlp::mapping::resource(&window.config);
        let mut stale = resource.clone();
        stale.attributes.push(KeyValue {
            key: PUSH_API_KEY_ATTRIBUTE.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("stale".into())),
            }),
            ..Default::default()
        });
        let span = Span {
            name: "deep".into(),
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: nested(20),
                ..Default::default()
            }],
            ..Default::default()
        };
        let traces = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span.clone()],
                        ..Default::default()
                    }],
                    schema_url: "schema".into(),
                },
                ResourceSpans {
                    resource: Some(stale),
                    ..Default::default()
                },
            ],
        }
        .encode_to_vec();
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: None,
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        severity_text: "warn".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();

        for compress in [false, true] {
            // What is sent is the cached request with the key set on every resource, and only that.
            let mut expected = ExportMetricsServiceRequest::decode(&metrics[..]).unwrap();
            for r in &mut expected.resource_metrics {
                set_push_key(&mut r.resource, KEY);
            }
            let got =
                ExportMetricsServiceRequest::decode(&sent(Signal::Metrics, &metrics, compress)[..])
                    .unwrap();
            assert_eq!(got, expected);
            assert_eq!(
                keys(
                    got.resource_metrics
                        .into_iter()
                        .map(|r| r.resource)
                        .collect()
                ),
                vec![vec![KEY.to_owned()]]
            );

            let got = sent(Signal::Traces, &traces, compress);
            let mut keyless = ExportTraceServiceRequest::decode(&got[..]).unwrap();
            for r in &mut keyless.resource_spans {
                let attributes = &mut r.resource.as_mut().unwrap().attributes;
                assert_eq!(attributes.pop().unwrap().key, PUSH_API_KEY_ATTRIBUTE);
            }
            assert_eq!(keyless.resource_spans[0].scope_spans[0].spans[0], span);
            assert_eq!(keyless.resource_spans[0].schema_url, "schema");
            assert_eq!(keyless.resource_spans[0].resource, Some(resource.clone()));
            let got = ExportTraceServiceRequest::decode(&got[..]).unwrap();
            assert_eq!(
                keys(got.resource_spans.into_iter().map(|r| r.resource).collect()),
                vec![vec![KEY.to_owned()]; 2]
            );

            let got =
                ExportLogsServiceRequest::decode(&sent(Signal::Logs, &logs, compress)[..]).unwrap();
            assert_eq!(
                got.resource_logs[0].scope_logs[0].log_records[0].severity_text,
                "warn"
            );
            assert_eq!(
                keys(got.resource_logs.into_iter().map(|r| r.resource).collect()),
                vec![vec![KEY.to_owned()]]
            );
        }
        // A span nested deeper than a protobuf decoder allows (three messages a level) goes
        // out as it was cached: only the resources are decoded.
        let deep = Span {
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: nested(60),
                ..Default::default()
            }],
            ..Default::default()
        };
        let deep_traces = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    spans: vec![deep.clone()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        assert!(ExportTraceServiceRequest::decode(&deep_traces[..]).is_err());
        let got = sent(Signal::Traces, &deep_traces, false);
        assert!(got
            .windows(deep.encoded_len())
            .any(|w| w == deep.encode_to_vec()));
        assert!(contains(&got, KEY));

        // No key (the OTLP exporter alone): the cached request goes out as it is.
        let traces_gz = gzip(&traces).unwrap();
        assert_eq!(
            request_body(Signal::Traces, &traces_gz, "", true).unwrap(),
            traces_gz
        );
        assert_eq!(
            request_body(Signal::Traces, &traces_gz, "", false).unwrap(),
            traces
        );
        // A damaged cached request is not retried.
        for damaged in [&b"\xff\xff"[..], b"\x0a\x05ab", b"\x0b"] {
            assert!(matches!(
                request_body(Signal::Logs, &gzip(damaged).unwrap(), KEY, true),
                Err(PushError::Rejected(_))
            ));
        }
    }

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
