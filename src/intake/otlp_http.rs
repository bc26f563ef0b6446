//! The OTLP/HTTP intake task of the leader: `POST /v1/metrics` and `POST /v1/traces` with a
//! protobuf or JSON body (OTLP/JSON: camelCase keys, integer enums, 64-bit integers as strings,
//! trace and span ids as hex), gzip or not, served by hyper's HTTP/1.1 connection code on the
//! leader's runtime. Bodies are decoded on the blocking pool, at most [`MAX_DECODING`] at a time,
//! so that a large request never holds up the leader's connections. Points are converted by
//! [`super::otlp_metrics`], spans become samples by [`super::otlp_traces`]; both are handed to
//! the leader every [`FLUSH_PERIOD`], like the StatsD listener's data.
//!
//! Answers follow the OTLP/HTTP specification: 200 with an `ExportMetricsServiceResponse` or
//! `ExportTraceServiceResponse` (`partial_success` says how many points or spans were rejected
//! and why); 400 with a `google.rpc.Status`
//! body for a body that cannot be read (truncated, not protobuf, bad gzip); 413 over
//! [`MAX_BODY_BYTES`] (compressed) or [`MAX_DECODED_BYTES`] (decompressed); 415 for another content
//! type; 404 for other paths; 405 for other methods. Every rejected request, point and span is
//! counted in `appsignal.agent.otlp_intake_rejected` (samples dropped by the listener's per-flush
//! budget in `dropped_samples` instead) and logged at most once a minute.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections (a permit is taken before `accept`), each
//! closed between requests after [`MAX_CONNECTION_AGE`]; headers within [`HEADER_TIMEOUT`], a body
//! within [`BODY_TIMEOUT`]; converted points go into the bounded
//! [`super::pending::Pending`]. A request never panics the leader: decoding is prost's (protobuf)
//! or [`super::otlp_json`]'s (JSON), over bytes whose size was checked first.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::otlp_metrics::Converter;
use super::{IntakeStats, Sink, FLUSH_PERIOD};
use crate::log::{suppressed_note, RateLimit};

/// Largest request body read (as sent, compressed or not).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Largest body after gzip decompression.
pub const MAX_DECODED_BYTES: usize = 16 * 1024 * 1024;
pub const MAX_CONNECTIONS: usize = 64;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest life of one connection (then it closes between requests).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// Request bodies decoded (and converted) at the same time; other requests wait with their body.
pub const MAX_DECODING: usize = 2;

static REJECT_LOG: RateLimit = RateLimit::new(60_000);
static COUNT_LOG: RateLimit = RateLimit::new(60_000);

struct State {
    converter: Mutex<Converter>,
    stats: Arc<IntakeStats>,
    decoding: Arc<Semaphore>,
}

impl State {
    fn converter(&self) -> std::sync::MutexGuard<'_, Converter> {
        // Conversion does not panic on data; if it ever did, the state is still usable.
        self.converter.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves OTLP/HTTP on `addr` until `stop` fires.
pub async fn run(
    addr: SocketAddr,
    sink: Sink,
    stats: Arc<IntakeStats>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(socket) = super::bind_with_retry("OTLP/HTTP intake", addr, false, &mut stop).await
    else {
        return;
    };
    let listener = match TcpListener::from_std(std::net::TcpListener::from(socket)) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("OTLP/HTTP intake: cannot serve {addr}: {e}");
            return;
        }
    };
    let _registered = crate::fork::Registered::new(listener.as_raw_fd());
    let state = Arc::new(State {
        converter: Mutex::new(Converter::new(crate::now_ms())),
        stats,
        decoding: Arc::new(Semaphore::new(MAX_DECODING)),
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let client_id = crate::ids::random_u64();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(FLUSH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flushing: Option<crate::blocking::Started<bool>> = None;
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                if flushing.as_ref().is_some_and(|f| !f.is_finished()) {
                    continue;
                }
                if let Some(done) = flushing.take() {
                    report(done.join().await.unwrap_or(false));
                }
                let batch = state.converter().pending.take_batch(client_id, seq + 1, crate::now_ms());
                if let Some(batch) = batch {
                    seq += 1;
                    let sink = Arc::clone(&sink);
                    flushing = Some(crate::blocking::start(move || sink(batch)));
                }
            }
            (permit, accepted) = async {
                let permit = Arc::clone(&permits).acquire_owned().await.ok();
                (permit, listener.accept().await)
            } => {
                match accepted {
                    Ok((stream, _)) => {
                        let state = Arc::clone(&state);
                        connections.spawn(super::boxed(async move {
                            serve(stream, state).await;
                            drop(permit);
                        }));
                    }
                    Err(e) => {
                        tracing::debug!("OTLP/HTTP intake: accept on {addr} failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
    // Requests in progress are cut off (their senders retry); what was converted is counted.
    drop(listener);
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    if let Some(done) = flushing.take() {
        report(done.join().await.unwrap_or(false));
    }
    let batch = state
        .converter()
        .pending
        .take_batch(client_id, seq + 1, crate::now_ms());
    if let Some(batch) = batch {
        report(
            crate::blocking::run(move || sink(batch))
                .await
                .unwrap_or(false),
        );
    }
}

fn report(counted: bool) {
    super::report_uncounted(counted, &COUNT_LOG, "OTLP/HTTP intake", "points and spans");
}

async fn serve(stream: tokio::net::TcpStream, state: Arc<State>) {
    let handler: super::HttpHandler = Arc::new(move |request| {
        let state = Arc::clone(&state);
        Box::pin(async move { handle(request, state).await })
    });
    let served = super::serve_http(
        stream,
        handler,
        HEADER_TIMEOUT,
        64 * 1024,
        MAX_CONNECTION_AGE,
    )
    .await;
    if let Err(e) = served {
        tracing::debug!("OTLP/HTTP intake: connection ended: {e}");
    }
}

/// An answer: status, content type, body.
type Answer = (StatusCode, &'static str, Vec<u8>);

/// What a path carries.
#[derive(Clone, Copy, PartialEq)]
enum Signal {
    Metrics,
    Traces,
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

async fn handle(request: Request<Incoming>, state: Arc<State>) -> Response<Full<Bytes>> {
    let encoding = if request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        }) {
        Encoding::Json
    } else {
        Encoding::Protobuf
    };
    let (status, content_type, body) = match answer(request, encoding, &state).await {
        Ok(a) => a,
        Err((status, message)) => {
            state.stats.otlp_rejected.fetch_add(1, Ordering::Relaxed);
            log_rejection(&format!("request answered {status}: {message}"));
            (
                status,
                encoding.content_type(),
                rpc_status(status, &message, encoding),
            )
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn log_rejection(what: &str) {
    if let Some(n) = REJECT_LOG.check() {
        tracing::warn!(
            "OTLP/HTTP intake: {what}; counted in the agent report (otlp_intake_rejected; samples over the budget in dropped_samples){}",
            suppressed_note(n)
        );
    }
}

async fn answer(
    request: Request<Incoming>,
    encoding: Encoding,
    state: &Arc<State>,
) -> Result<Answer, (StatusCode, String)> {
    let signal = match request.uri().path() {
        "/v1/metrics" => Signal::Metrics,
        "/v1/traces" => Signal::Traces,
        other => {
            return Err((
                StatusCode::NOT_FOUND,
                format!("{other} is not served here (only /v1/metrics and /v1/traces)"),
            ))
        }
    };
    if request.method() != Method::POST {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "only POST".to_owned()));
    }
    let header = |name: hyper::header::HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let content_type = header(hyper::header::CONTENT_TYPE);
    if encoding == Encoding::Protobuf && !content_type.starts_with("application/x-protobuf") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {content_type:?} is not application/x-protobuf or application/json"
            ),
        ));
    }
    let gzip = match header(hyper::header::CONTENT_ENCODING).as_str() {
        "" | "identity" => false,
        "gzip" => true,
        other => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content encoding {other:?} is not gzip"),
            ))
        }
    };
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large(MAX_BODY_BYTES));
    }
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => {
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {BODY_TIMEOUT:?}"),
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(too_large(MAX_BODY_BYTES))
        }
        Ok(Err(e)) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    // Decoding and converting is CPU work over up to MAX_DECODED_BYTES: on the blocking pool, a
    // few at a time, so that the leader's (single-threaded) runtime keeps serving its clients.
    let permit = Arc::clone(&state.decoding)
        .acquire_owned()
        .await
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "stopping".to_owned()))?;
    let state = Arc::clone(state);
    crate::blocking::run(move || {
        let _permit = permit;
        let decoded = gunzip(bytes, gzip)?;
        match signal {
            Signal::Metrics => metrics(decoded, encoding, &state),
            Signal::Traces => traces(decoded, encoding, &state),
        }
    })
    .await
    .map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("decoding failed: {e}"),
        )
    })?
}

/// The body as sent, or gunzipped within [`MAX_DECODED_BYTES`].
fn gunzip(bytes: Bytes, gzip: bool) -> Result<Bytes, (StatusCode, String)> {
    Ok(if gzip {
        match crate::gzip::decompress(&bytes, MAX_DECODED_BYTES) {
            Ok(out) => Bytes::from(out),
            Err(crate::gzip::DecompressError::TooLarge) => {
                return Err(too_large(MAX_DECODED_BYTES))
            }
            Err(e) => return Err((StatusCode::BAD_REQUEST, format!("bad gzip body: {e}"))),
        }
    } else {
        bytes
    })
}

/// Decodes an `ExportMetricsServiceRequest` and adds its points to the pending batch.
fn metrics(
    decoded: Bytes,
    encoding: Encoding,
    state: &State,
) -> Result<Answer, (StatusCode, String)> {
    let request = match encoding {
        Encoding::Protobuf => ExportMetricsServiceRequest::decode(decoded).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("not an ExportMetricsServiceRequest: {e}"),
            )
        })?,
        Encoding::Json => super::otlp_json::metrics_request(&decoded).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("not an ExportMetricsServiceRequest in OTLP/JSON: {e}"),
            )
        })?,
    };
    let outcome = state.converter().export(request, crate::now_ms());
    let partial_success = (outcome.rejected > 0).then(|| {
        state
            .stats
            .otlp_rejected
            .fetch_add(outcome.rejected, Ordering::Relaxed);
        let message = outcome.reason.unwrap_or_default();
        log_rejection(&format!(
            "{} data points rejected ({message})",
            outcome.rejected
        ));
        ExportMetricsPartialSuccess {
            rejected_data_points: i64::try_from(outcome.rejected).unwrap_or(i64::MAX),
            error_message: message,
        }
    });
    let body = match encoding {
        Encoding::Protobuf => ExportMetricsServiceResponse { partial_success }.encode_to_vec(),
        Encoding::Json => json_response(
            "rejectedDataPoints",
            partial_success.map(|p| (p.rejected_data_points, p.error_message)),
        ),
    };
    Ok(ok(body, encoding))
}

/// Decodes an `ExportTraceServiceRequest`, turns its spans into samples and adds them to the
/// pending batch. Spans rejected for what they are count in `otlp_intake_rejected`; samples that
/// do not fit the flush's budget in the batch's `dropped_samples`; the sender hears of both.
fn traces(
    decoded: Bytes,
    encoding: Encoding,
    state: &State,
) -> Result<Answer, (StatusCode, String)> {
    let request = match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(decoded).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("not an ExportTraceServiceRequest: {e}"),
            )
        })?,
        Encoding::Json => super::otlp_json::trace_request(&decoded).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("not an ExportTraceServiceRequest in OTLP/JSON: {e}"),
            )
        })?,
    };
    let mapped = super::otlp_traces::samples(request, &crate::apm::config());
    if mapped.rejected > 0 {
        state
            .stats
            .otlp_rejected
            .fetch_add(mapped.rejected, Ordering::Relaxed);
    }
    let mut rejected = mapped.rejected;
    let mut reason = mapped.reason;
    {
        let mut converter = state.converter();
        for (sample, spans) in mapped.samples {
            if !converter.pending.add_sample(sample) {
                rejected = rejected.saturating_add(spans);
                reason.get_or_insert_with(|| {
                    format!(
                        "the intake holds at most {} samples ({} KiB) per {} ms, each at most {} KiB; counted in dropped_samples",
                        super::pending::MAX_PENDING_SAMPLES,
                        super::pending::MAX_PENDING_SAMPLE_BYTES / 1024,
                        FLUSH_PERIOD.as_millis(),
                        super::pending::MAX_SAMPLE_BYTES / 1024,
                    )
                });
            }
        }
    }
    let partial_success = (rejected > 0).then(|| {
        let message = reason.unwrap_or_default();
        log_rejection(&format!("{rejected} spans rejected ({message})"));
        ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: message,
        }
    });
    let body = match encoding {
        Encoding::Protobuf => ExportTraceServiceResponse { partial_success }.encode_to_vec(),
        Encoding::Json => json_response(
            "rejectedSpans",
            partial_success.map(|p| (p.rejected_spans, p.error_message)),
        ),
    };
    Ok(ok(body, encoding))
}

/// A 200 answer with `body`, an export response in the request's encoding.
fn ok(body: Vec<u8>, encoding: Encoding) -> Answer {
    (StatusCode::OK, encoding.content_type(), body)
}

/// An export response in OTLP/JSON: `{}` when nothing was rejected, else its `partialSuccess`
/// with the count (under `rejected`, its field's name; a 64-bit integer, so a string) and why.
fn json_response(rejected: &str, partial_success: Option<(i64, String)>) -> Vec<u8> {
    let Some((count, message)) = partial_success else {
        return b"{}".to_vec();
    };
    let mut partial = serde_json::Map::new();
    partial.insert(rejected.to_owned(), count.to_string().into());
    partial.insert("errorMessage".to_owned(), message.into());
    serde_json::json!({ "partialSuccess": partial })
        .to_string()
        .into_bytes()
}

fn too_large(limit: usize) -> (StatusCode, String) {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body over {limit} bytes"),
    )
}

/// A `google.rpc.Status` message (code 3 INVALID_ARGUMENT or 8 RESOURCE_EXHAUSTED, and the
/// message), encoded by hand: it is two fields, and the generated type is not in our features.
fn rpc_status(status: StatusCode, message: &str, encoding: Encoding) -> Vec<u8> {
    let code: i32 = match status {
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::NOT_FOUND => 5,
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::UNSUPPORTED_MEDIA_TYPE => 12,
        StatusCode::REQUEST_TIMEOUT => 4,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::INTERNAL_SERVER_ERROR => 13,
        _ => 3,
    };
    if encoding == Encoding::Json {
        return serde_json::json!({"code": code, "message": message})
            .to_string()
            .into_bytes();
    }
    let mut buf = Vec::new();
    prost::encoding::int32::encode(1, &code, &mut buf);
    prost::encoding::string::encode(2, &message.to_owned(), &mut buf);
    buf
}
