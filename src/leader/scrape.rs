//! The leader's Prometheus endpoint: `GET /metrics` answers the cumulative view ([`super::totals`])
//! in the text format 0.0.4, or in OpenMetrics when the request's `Accept` asks for it
//! ([`crate::prometheus`]). It is served when a configuration the leader knows asks for it
//! (`_APPSIGNAL_PROMETHEUS_*`: the leader's own first, else the one with the lowest id among the
//! connected ones; a copy from the journal, without its token, never opens it), and moves with
//! leadership: the next leader binds it again as soon as a configuration that asks for it is
//! known.
//!
//! Rules: a bind beyond loopback without a bearer token is refused (one log line); with a token,
//! every request must carry `Authorization: Bearer <token>` (else 401). Bounds: at most
//! [`MAX_CONNECTIONS`] connections, one request at a time on each (HTTP/1.1, no pipelining in
//! parallel), headers within [`MAX_HEADER_BYTES`] and [`HEADER_TIMEOUT`], a connection closed
//! between requests after [`MAX_CONNECTION_AGE`]; one scrape rendered at a time, on the blocking
//! pool, so that the sockets of the leader are never held up by a render.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::counting::Counting;
use super::totals::Totals;
use crate::export_config::PrometheusSettings;
use crate::prometheus::Format;

pub const MAX_CONNECTIONS: usize = 16;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How often the leader looks at which configuration asks for the endpoint.
const CHECK_PERIOD: Duration = Duration::from_millis(500);

/// Where and how to serve, once validated.
#[derive(Clone, PartialEq, Eq)]
struct Endpoint {
    addr: SocketAddr,
    token: Option<String>,
}

/// Why settings are not served (`None`: they are).
fn endpoint(settings: &PrometheusSettings) -> Result<Endpoint, String> {
    let ip: IpAddr = settings
        .bind
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", settings.bind))?;
    let token = Some(settings.bearer_token.clone()).filter(|t| !t.is_empty());
    if token.is_none() && !ip.is_loopback() {
        return Err(format!(
            "binding {ip} (beyond loopback) needs _APPSIGNAL_PROMETHEUS_BEARER_TOKEN"
        ));
    }
    Ok(Endpoint {
        addr: SocketAddr::new(ip, settings.port),
        token,
    })
}

/// Serves the endpoint that the known configurations ask for, until `stop` fires. The serving
/// runs inside this task (no task of its own): when the settings change it is dropped, which
/// closes the listener and its connections.
pub(super) async fn run(
    totals: Arc<Totals>,
    counting: Arc<Counting>,
    mut stop: watch::Receiver<bool>,
) {
    let mut current: Option<PrometheusSettings> = None;
    loop {
        let wanted = counting.prometheus();
        if wanted != current {
            current.clone_from(&wanted);
            match wanted.as_ref().map(endpoint) {
                None => {}
                Some(Err(why)) => tracing::warn!("Prometheus endpoint refused: {why}"),
                Some(Ok(endpoint)) => {
                    let (_serving, stopped) = watch::channel(false);
                    let changed = async {
                        loop {
                            tokio::time::sleep(CHECK_PERIOD).await;
                            if counting.prometheus() != wanted {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = stop.changed() => break,
                        () = changed => continue,
                        // Ended by itself (it cannot serve): wait for other settings.
                        () = serve(endpoint, Arc::clone(&totals), stopped) => {}
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(CHECK_PERIOD) => {}
        }
    }
}

async fn serve(endpoint: Endpoint, totals: Arc<Totals>, mut stop: watch::Receiver<bool>) {
    let addr = endpoint.addr;
    let Some(socket) =
        crate::intake::bind_with_retry("Prometheus endpoint", addr, false, &mut stop).await
    else {
        return;
    };
    let listener = match TcpListener::from_std(std::net::TcpListener::from(socket)) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("Prometheus endpoint: cannot serve {addr}: {e}");
            return;
        }
    };
    let _registered = crate::fork::Registered::new(listener.as_raw_fd());
    let shared = Arc::new(Shared {
        totals,
        token: endpoint.token,
        rendering: Semaphore::new(1),
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            _ = stop.changed() => break,
            (permit, accepted) = async {
                let permit = Arc::clone(&permits).acquire_owned().await.ok();
                (permit, listener.accept().await)
            } => match accepted {
                Ok((stream, _)) => {
                    let shared = Arc::clone(&shared);
                    connections.spawn(crate::intake::boxed(async move {
                        connection(stream, shared).await;
                        drop(permit);
                    }));
                }
                Err(e) => {
                    tracing::debug!("Prometheus endpoint: accept on {addr} failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

struct Shared {
    totals: Arc<Totals>,
    token: Option<String>,
    /// One render at a time.
    rendering: Semaphore,
}

async fn connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let handler: crate::intake::HttpHandler = Arc::new(move |request| {
        let shared = Arc::clone(&shared);
        Box::pin(async move { handle(request, &shared).await })
    });
    let served = crate::intake::serve_http(
        stream,
        handler,
        HEADER_TIMEOUT,
        MAX_HEADER_BYTES,
        MAX_CONNECTION_AGE,
    )
    .await;
    if let Err(e) = served {
        tracing::debug!("Prometheus endpoint: connection ended: {e}");
    }
}

/// Whether `a` equals `b`, in a time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn authorized(request: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| same_secret(given, token.as_bytes()))
}

async fn handle(request: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    let (status, content_type, body) = if !authorized(&request, shared.token.as_deref()) {
        (StatusCode::UNAUTHORIZED, plain, "unauthorized\n".into())
    } else if request.uri().path() != "/metrics" {
        (StatusCode::NOT_FOUND, plain, "not found\n".into())
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        (StatusCode::METHOD_NOT_ALLOWED, plain, "GET only\n".into())
    } else {
        let accept = request
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let format = Format::from_accept(accept);
        let _rendering = shared.rendering.acquire().await;
        let totals = Arc::clone(&shared.totals);
        match crate::blocking::run(move || totals.scrape(format)).await {
            Ok(text) => (StatusCode::OK, format.content_type(), text),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                plain,
                "the scrape failed\n".into(),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(bind: &str, token: &str) -> PrometheusSettings {
        PrometheusSettings {
            port: 9464,
            bind: bind.into(),
            bearer_token: token.into(),
        }
    }

    #[test]
    fn beyond_loopback_only_with_a_token() {
        assert!(endpoint(&settings("127.0.0.1", "")).is_ok());
        assert!(endpoint(&settings("::1", "")).is_ok());
        assert!(endpoint(&settings("0.0.0.0", "")).is_err());
        assert!(endpoint(&settings("192.0.2.1", "")).is_err());
        let open = endpoint(&settings("0.0.0.0", "t")).unwrap();
        assert_eq!(open.token.as_deref(), Some("t"));
        assert!(endpoint(&settings("localhost", "t")).is_err());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
