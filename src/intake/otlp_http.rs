//! The OTLP/HTTP intake task of the leader: `POST /v1/metrics` with a protobuf or JSON body
//! (OTLP/JSON: camelCase keys, integer enums, 64-bit integers as strings), gzip or not,
//! served by hyper's HTTP/1.1 connection code on the leader's runtime. Points are converted by
//! [`super::otlp_metrics`] and handed to the leader every [`FLUSH_PERIOD`], like the StatsD
//! listener's.
//!
//! Answers follow the OTLP/HTTP specification: 200 with an `ExportMetricsServiceResponse`
//! (`partial_success` says how many points were rejected and why); 400 with a `google.rpc.Status`
//! body for a body that cannot be read (truncated, not protobuf, bad gzip); 413 over
//! [`MAX_BODY_BYTES`] (compressed) or [`MAX_DECODED_BYTES`] (decompressed); 415 for another content
//! type; 404 for other paths; 405 for other methods. Every rejected request and point is counted in
//! `appsignal.agent.otlp_intake_rejected` and logged at most once a minute.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections (a permit is taken before `accept`), each
//! closed between requests after [`MAX_CONNECTION_AGE`]; headers within [`HEADER_TIMEOUT`], a body
//! within [`BODY_TIMEOUT`]; converted points go into the bounded
//! [`super::pending::Pending`]. A request never panics the leader: decoding is prost's, over bytes
//! whose size was checked first.

use std::convert::Infallible;
use std::io::Read;
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

static REJECT_LOG: RateLimit = RateLimit::new(60_000);
static COUNT_LOG: RateLimit = RateLimit::new(60_000);

struct State {
    converter: Mutex<Converter>,
    stats: Arc<IntakeStats>,
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
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let client_id = crate::ids::random_u64();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(FLUSH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flushing: Option<tokio::task::JoinHandle<bool>> = None;
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                if flushing.as_ref().is_some_and(|f| !f.is_finished()) {
                    continue;
                }
                if let Some(done) = flushing.take() {
                    report(done.await.unwrap_or(false));
                }
                let batch = state.converter().pending.take_batch(client_id, seq + 1, crate::now_ms());
                if let Some(batch) = batch {
                    seq += 1;
                    let sink = Arc::clone(&sink);
                    flushing = Some(tokio::task::spawn_blocking(move || sink(batch)));
                }
            }
            (permit, accepted) = async {
                let permit = Arc::clone(&permits).acquire_owned().await.ok();
                (permit, listener.accept().await)
            } => {
                match accepted {
                    Ok((stream, _)) => {
                        let state = Arc::clone(&state);
                        connections.spawn(async move {
                            serve(stream, state).await;
                            drop(permit);
                        });
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
        report(done.await.unwrap_or(false));
    }
    let batch = state
        .converter()
        .pending
        .take_batch(client_id, seq + 1, crate::now_ms());
    if let Some(batch) = batch {
        report(
            tokio::task::spawn_blocking(move || sink(batch))
                .await
                .unwrap_or(false),
        );
    }
}

fn report(counted: bool) {
    super::report_uncounted(counted, &COUNT_LOG, "OTLP/HTTP intake", "points");
}

async fn serve(stream: tokio::net::TcpStream, state: Arc<State>) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper::service::service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(request, &state).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    tokio::pin!(connection);
    // An idle keep-alive connection holds a permit: after MAX_CONNECTION_AGE it is closed once
    // the request in progress (if any) is answered; the sender reconnects.
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!("OTLP/HTTP intake: connection ended: {e}");
    }
}

/// An answer: status, content type, body.
type Answer = (StatusCode, &'static str, Vec<u8>);

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

async fn handle(request: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
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
    let (status, content_type, body) = match answer(request, encoding, state).await {
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
            "OTLP/HTTP intake: {what}; counted in appsignal.agent.otlp_intake_rejected{}",
            suppressed_note(n)
        );
    }
}

async fn answer(
    request: Request<Incoming>,
    encoding: Encoding,
    state: &State,
) -> Result<Answer, (StatusCode, String)> {
    if request.uri().path() != "/v1/metrics" {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "{} is not served here (only /v1/metrics)",
                request.uri().path()
            ),
        ));
    }
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
    let decoded = if gzip {
        let mut out = Vec::new();
        let mut reader =
            flate2::read::GzDecoder::new(&bytes[..]).take(MAX_DECODED_BYTES as u64 + 1);
        reader
            .read_to_end(&mut out)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
        if out.len() > MAX_DECODED_BYTES {
            return Err(too_large(MAX_DECODED_BYTES));
        }
        Bytes::from(out)
    } else {
        bytes
    };
    let request = match encoding {
        Encoding::Protobuf => ExportMetricsServiceRequest::decode(decoded).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("not an ExportMetricsServiceRequest: {e}"),
            )
        })?,
        Encoding::Json => serde_json::from_slice(&decoded).map_err(|e| {
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
    let response = ExportMetricsServiceResponse { partial_success };
    let body = match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()),
    };
    Ok((StatusCode::OK, encoding.content_type(), body))
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
