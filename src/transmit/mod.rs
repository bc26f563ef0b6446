//! Getting payloads out: the HTTP client both exporters send with (reqwest over rustls, never
//! OpenSSL), what a payload is for ([`ExportKind`]), what a failed send means ([`PushError`]),
//! and the Push API request. The OTLP request is in [`otlp`]; the payload cache every payload goes
//! through in [`cache`].

mod cache;
mod otlp;
mod tls;

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::export_config::ExportConfig;
use crate::otlp::Signal;

pub use cache::PayloadCache;

/// Which exporter a payload is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExportKind {
    /// A Push API payload: gzip-compressed JSON.
    Push,
    /// An OTLP request of one signal: gzip-compressed protobuf.
    Otlp(Signal),
}

impl ExportKind {
    pub const ALL: [ExportKind; 4] = [
        ExportKind::Push,
        ExportKind::Otlp(Signal::Metrics),
        ExportKind::Otlp(Signal::Traces),
        ExportKind::Otlp(Signal::Logs),
    ];

    /// The cache file name's ending.
    pub fn suffix(self) -> &'static str {
        match self {
            ExportKind::Push => ".json.gz",
            ExportKind::Otlp(Signal::Metrics) => ".metrics.otlp.gz",
            ExportKind::Otlp(Signal::Traces) => ".traces.otlp.gz",
            ExportKind::Otlp(Signal::Logs) => ".logs.otlp.gz",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportKind::Push => "push",
            ExportKind::Otlp(signal) => signal.name(),
        }
    }
}

/// A payload ready to go, gzip-compressed.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: String,
    pub config_id: u64,
    pub created_ms: u64,
    pub kind: ExportKind,
    pub body_gz: Vec<u8>,
}

/// Why a push did not deliver.
#[derive(Debug)]
pub enum PushError {
    /// Can succeed later (connection failure, timeout, 408, 429, 5xx): keep the payload.
    Retryable(String),
    /// Can succeed later, but not before the delay the receiver asked for (`Retry-After`).
    RetryAfter(String, Duration),
    /// The receiver refused the configuration's credentials (401, 403: a wrong or revoked push
    /// key, wrong OTLP headers): no payload of that configuration and exporter will succeed until
    /// the key is fixed on one side or the other. Drop the payload; the leader stops sending that
    /// configuration's payloads to this exporter for a while.
    Unauthorized(String),
    /// This payload will not succeed later (e.g. 400, 413): drop it and say so.
    Rejected(String),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Retryable(why) => write!(f, "{why} (will retry)"),
            PushError::RetryAfter(why, after) => {
                write!(f, "{why} (will retry after {} s)", after.as_secs())
            }
            PushError::Unauthorized(why) => write!(f, "{why} (credentials refused)"),
            PushError::Rejected(why) => write!(f, "{why} (not retryable)"),
        }
    }
}

/// The HTTP client of both exporters.
pub struct Pusher {
    http: reqwest::Client,
}

impl Pusher {
    pub fn new(config: &Config) -> Result<Pusher> {
        // Our own copy of rustls needs a process default provider; a second install is harmless.
        let _ = tls::provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(config.push_timeout)
            .connect_timeout(config.push_timeout.min(Duration::from_secs(5)))
            .user_agent(format!("appsignal-agent/{}", crate::VERSION));
        builder = match &config.http_proxy {
            Some(proxy) => builder.proxy(
                reqwest::Proxy::all(proxy.as_str())
                    .with_context(|| format!("invalid _APPSIGNAL_HTTP_PROXY {proxy:?}"))?,
            ),
            None => builder.no_proxy(),
        };
        if let Some(ca) = &config.ca_file_path {
            let pem =
                fs::read(ca).with_context(|| format!("cannot read CA file {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("invalid CA file {}", ca.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().context("cannot build the HTTP client")?;
        Ok(Pusher { http })
    }

    /// Sends a payload with the exporter it was made for.
    pub async fn send(&self, config: &ExportConfig, payload: &Outgoing) -> Result<(), PushError> {
        match payload.kind {
            ExportKind::Push => self.push(config, payload).await,
            ExportKind::Otlp(signal) => match &config.otlp {
                Some(settings) => {
                    otlp::send(
                        &self.http,
                        settings,
                        &config.push_api_key,
                        signal,
                        &payload.id,
                        &payload.body_gz,
                    )
                    .await
                }
                None => Err(PushError::Rejected(format!(
                    "no OTLP settings for the {} payload {}",
                    signal.name(),
                    payload.id
                ))),
            },
        }
    }

    /// `POST {endpoint}/1/collect` with the payload. Errors never contain the URL (it holds the key).
    pub async fn push(&self, config: &ExportConfig, payload: &Outgoing) -> Result<(), PushError> {
        let url = format!("{}/1/collect", config.endpoint);
        let response = self
            .http
            .post(&url)
            .query(&[
                ("api_key", config.push_api_key.as_str()),
                ("name", config.app_name.as_str()),
                ("environment", config.environment.as_str()),
                ("hostname", config.hostname.as_str()),
                ("version", crate::VERSION),
                ("payload_id", payload.id.as_str()),
            ])
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(payload.body_gz.clone())
            .send()
            .await
            .map_err(|e| {
                PushError::Retryable(format!(
                    "push to {} failed: {}",
                    config.endpoint,
                    e.without_url()
                ))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let why = format!("push to {} answered {status}", config.endpoint);
        // Not before the delay the Push API asked for (seconds; the next transmission otherwise).
        if matches!(status.as_u16(), 429 | 503) {
            if let Some(after) = otlp::retry_after(&response) {
                return Err(PushError::RetryAfter(why, after));
            }
        }
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(PushError::Retryable(why))
        } else if matches!(status.as_u16(), 401 | 403) {
            Err(PushError::Unauthorized(why))
        } else {
            Err(PushError::Rejected(why))
        }
    }
}
