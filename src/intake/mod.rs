//! Listeners the leader hosts for every other process on the host: StatsD/DogStatsD over UDP
//! ([`statsd`] parses, [`udp`] serves) and OTLP/HTTP `POST /v1/metrics` and `/v1/traces`
//! ([`otlp_http`] serves, [`otlp_metrics`] converts points, [`otlp_traces`] turns spans into
//! samples). Both are off by default, run only in the leader (the listener moves with
//! leadership), and hand what they parse to the leader as batches of a client of their own (own
//! client id, own sequence), so that the data follows the same journal, windows and exporters as
//! the processes' own data. The data belongs to the leader's own configuration.
//!
//! Policies: every queue and map is bounded ([`pending`]); what does not fit is counted; malformed
//! input is counted, reported in the next payload (`AgentReport`) and logged at most once a minute.

pub mod otlp_http;
pub mod otlp_json;
pub mod otlp_metrics;
pub mod otlp_traces;
pub mod pending;
pub mod statsd;
pub mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::log::{suppressed_note, RateLimit};
use crate::protocol::Batch;

/// How often a listener hands what it parsed to the leader.
pub const FLUSH_PERIOD: Duration = Duration::from_millis(100);

/// Journals and counts a batch (the leader's `count` for its own configuration); `false` when the
/// leader no longer counts.
pub type Sink = Arc<dyn Fn(Batch) -> bool + Send + Sync>;

/// Counts of rejected input since the last payload.
#[derive(Debug, Default)]
pub struct IntakeStats {
    /// StatsD lines that did not parse.
    pub statsd_malformed_lines: AtomicU64,
    /// OTLP data points and spans rejected (reported back as `partial_success` too) and OTLP
    /// requests that could not be read at all (oversized, truncated, not decodable).
    pub otlp_rejected: AtomicU64,
}

impl IntakeStats {
    pub fn take_statsd_malformed(&self) -> u64 {
        self.statsd_malformed_lines.swap(0, Ordering::Relaxed)
    }

    pub fn take_otlp_rejected(&self) -> u64 {
        self.otlp_rejected.swap(0, Ordering::Relaxed)
    }
}

/// Binds `addr` (UDP or TCP) with `SO_REUSEADDR`, so that a new leader can bind while the socket of
/// the one before is still being released. Retries with a backoff (50 ms doubling to 5 s) until it
/// binds or `stop` fires; the first failure that outlives the quick retries (about 1.5 s: the
/// previous leader's socket is gone by then) is logged once, as the port being taken by another
/// program. `None` when stopped first.
pub async fn bind_with_retry(
    what: &str,
    addr: SocketAddr,
    udp: bool,
    stop: &mut watch::Receiver<bool>,
) -> Option<socket2::Socket> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut logged = false;
    loop {
        match bind(addr, udp) {
            Ok(socket) => {
                if logged {
                    tracing::info!("{what}: bound {addr} at last; listening");
                } else {
                    tracing::info!("{what}: listening on {addr}");
                }
                return Some(socket);
            }
            Err(e) => {
                if !logged && started.elapsed() >= Duration::from_millis(1500) {
                    logged = true;
                    tracing::warn!(
                        "{what}: cannot bind {addr} ({e}); another program holds it? Everything else works; retrying every 5 s"
                    );
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn bind(addr: SocketAddr, udp: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (ty, proto) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    if udp {
        // Room for bursts while the leader thread counts a batch (the kernel caps it at rmem_max).
        let _ = socket.set_recv_buffer_size(4 * 1024 * 1024);
    }
    socket.bind(&addr.into())?;
    if !udp {
        socket.listen(128)?;
    }
    Ok(socket)
}

/// Logs, at most once per `limit`, that the leader did not count a batch of `listener`'s data (it
/// is stopping, or its journal failed): those `what` are lost.
fn report_uncounted(counted: bool, limit: &RateLimit, listener: &str, what: &str) {
    if !counted {
        if let Some(n) = limit.check() {
            tracing::warn!(
                "{listener}: the leader did not count a batch (it is stopping, or its journal failed); those {what} are lost{}",
                suppressed_note(n)
            );
        }
    }
}

/// What answers one HTTP request of a leader's HTTP listener.
pub type HttpHandler = Arc<
    dyn Fn(
            hyper::Request<hyper::body::Incoming>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = hyper::Response<http_body_util::Full<hyper::body::Bytes>>,
                    > + Send,
            >,
        > + Send
        + Sync,
>;

/// Serves one HTTP/1.1 connection of a leader's HTTP listener (the OTLP/HTTP intake, the
/// Prometheus endpoint) with `handler`: one request at a time, headers within `max_buf` bytes and
/// `header_timeout`, closed between requests after `max_age`. One function for every listener,
/// so that hyper's connection code is in the library once.
pub async fn serve_http(
    stream: tokio::net::TcpStream,
    handler: HttpHandler,
    header_timeout: Duration,
    max_buf: usize,
    max_age: Duration,
) -> Result<(), hyper::Error> {
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper::service::service_fn(move |request| {
        let answer = handler(request);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_buf)
        .serve_connection(io, service);
    tokio::pin!(connection);
    // An idle keep-alive connection holds a permit: after `max_age` it is closed once the request
    // in progress (if any) is answered; the client reconnects.
    tokio::select! {
        served = connection.as_mut() => served,
        _ = tokio::time::sleep(max_age) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// A task of the leader, boxed: the HTTP listeners' connections and the leader's loops are all
/// spawned as this one type, so that the runtime's code around a task is in the library once.
pub type ConnectionTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub fn boxed(task: impl std::future::Future<Output = ()> + Send + 'static) -> ConnectionTask {
    Box::pin(task)
}
