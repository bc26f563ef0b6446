//! appsignal-agent: the core of `libappsignal`, a monitoring agent that lives inside the app's own
//! processes. Every process loads the library; whichever wins the lock on `agent.lock` leads. This
//! crate knows nothing about C: the `ffi/` crate converts types and calls in here.
//!
//! # Interface
//! What the C layer calls: [`agent`] (`start`, `stop`, the role), [`recorder`] (the app-thread
//! calls), [`apm`] (transactions, spans, logs), [`data`] (the value behind `appsignal_data_t`),
//! [`config`] (the environment table), [`diagnose`]. Modules marked hidden in the docs are public
//! only so that the test kit, the benches and the fuzz targets can drive them; they are not a
//! stable interface. Everything else is private to the crate.
//!
//! # Layout
//! Dependencies point one way: `agent` → {`client`, `leader`} → the rest; nothing below the agent
//! imports it (see `docs/architecture.md`, one line per module).
//! - [`agent`]: the process-wide lifecycle, one `Agent` value (`start`, `stop`, fork restart, the
//!   roles, diagnose's status).
//! - [`recorder`]: the app-thread calls (metrics, samples, logs) into the pre-aggregate; its
//!   `Recorder` value (recording flag, pre-aggregate, fork generation), driven by the agent.
//! - `client`: the per-process sender thread: batches, acks, connecting or leading (`client::link`,
//!   `client::batching`).
//! - `leader`: the socket server (`connection`), counting (`counting`), journal replay (`replay`),
//!   host metrics (`host`) and the transmission loop (`transmission`).
//! - [`apm`]: transactions, spans, samples, SQL sanitising, filtering and logs.
//! - [`config`]: configuration from the environment and the library's own table (and the OTLP
//!   settings in it: `config::otlp`).
//! - [`export_config`]: what a leader needs of a process's configuration (sent in the handshake,
//!   kept without secrets in journal headers); its id and the one function that removes secrets.
//! - `workdir`: where the working directory is, creating it safely, its permissions.
//! - `election`: `flock` on `agent.lock` decides the leader.
//! - [`protocol`]: frames and messages on `agent.socket` (pure codec).
//! - [`cbor`]: the reader the protocol and the journal decode their CBOR with.
//! - `fork`: what a forked child must close, and noticing that a fork happened.
//! - [`metrics`]: the per-process pre-aggregate of custom metrics.
//! - [`aggregate`]: merging batches into windows per configuration.
//! - [`counts`]: the agent's counts about itself (drops, rejections) that travel with a window.
//! - [`cumulative`]: totals since a series' start per app and environment, continued by every
//!   leader (the state file in the working directory).
//! - [`prometheus`]: the cumulative view in the Prometheus and OpenMetrics text formats.
//! - [`sketch`]: the mergeable distribution sketch (exponential buckets, as OTLP has them).
//! - [`host_metrics`]: CPU, memory, disk and network of the host, collected by the leader only.
//! - `intake`: the leader's StatsD (UDP) and OTLP/HTTP listeners for other local processes.
//! - [`journal`]: batches on disk before they are acknowledged, replayed by the next leader.
//! - [`payload`]: the Push API document.
//! - [`otlp`]: the OTLP exporter (mapping a window to OTLP requests).
//! - `transmit`: the HTTP sends of both exporters and the on-disk payload cache.
//! - `role`: what this process is (the roles, and one writing handle per start).
//! - `ids`: random ids.
//! - `sort`: stable sorting with one copy of the algorithm for the whole crate.
//! - `blocking`: work moved off the leader's runtime thread, with one copy of the blocking-task
//!   code for the whole crate.
//! - `log`: `appsignal.log` through `tracing`.
//! - [`diagnose`]: the JSON report of `appsignal_diagnose()`.
//! - [`data`]: the value type behind `appsignal_data_t`.
//! - `test_knobs`: hooks for tests, compiled in only with the `test-knobs` feature.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod agent;
pub mod apm;
mod blocking;
pub mod config;
pub mod data;
pub mod diagnose;
pub mod recorder;

#[doc(hidden)]
pub mod aggregate;
#[doc(hidden)]
pub mod cbor;
#[doc(hidden)]
pub mod counts;
#[doc(hidden)]
pub mod cumulative;
#[doc(hidden)]
pub mod export_config;
#[doc(hidden)]
pub mod host_metrics;
#[doc(hidden)]
pub mod intake;
#[doc(hidden)]
pub mod journal;
#[doc(hidden)]
pub mod metrics;
#[doc(hidden)]
pub mod otlp;
#[doc(hidden)]
pub mod payload;
#[doc(hidden)]
pub mod prometheus;
#[doc(hidden)]
pub mod protocol;
#[doc(hidden)]
pub mod sample;
#[doc(hidden)]
pub mod sketch;

pub(crate) mod client;
pub(crate) mod election;
pub(crate) mod fork;
pub(crate) mod gzip;
pub(crate) mod ids;
pub(crate) mod leader;
pub(crate) mod log;
pub(crate) mod role;
pub(crate) mod sort;
mod test_knobs;
pub(crate) mod transmit;
pub(crate) mod workdir;

/// This library's version, as written into the lock file, the handshake and every payload.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
