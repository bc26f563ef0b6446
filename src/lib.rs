//! appsignal-agent: the core of `libappsignal`, a monitoring agent that lives inside the app's own
//! processes. Every process loads the library; whichever wins the lock on `agent.lock` leads. This
//! crate knows nothing about C: the `ffi/` crate converts types and calls in here.
//!
//! # Layout
//! - [`config`]: configuration from the environment and the library's own table.
//! - [`workdir`]: where the working directory is, creating it safely, its permissions.
//! - [`election`]: `flock` on `agent.lock` decides the leader.
//! - [`protocol`]: frames and messages on `agent.socket` (pure codec).
//! - [`fork`]: what a forked child must close, and noticing that a fork happened.
//! - [`metrics`]: the app-thread pre-aggregate of custom metrics (never blocks on I/O).
//! - [`client`]: the per-process sender thread: batches, acks, connecting or leading.
//! - [`leader`]: the socket server, aggregation windows and the transmission loop.
//! - [`apm`]: transactions, spans, samples, SQL sanitising, filtering and logs.
//! - [`aggregate`]: merging batches into windows per configuration.
//! - [`sketch`]: the mergeable distribution sketch (exponential buckets, as OTLP has them).
//! - [`host_metrics`]: CPU, memory, disk and network of the host, collected by the leader only.
//! - [`journal`]: batches on disk before they are acknowledged, replayed by the next leader.
//! - [`payload`]: the Push API document.
//! - [`transmit`]: the HTTP push and the on-disk payload cache.
//! - [`otlp`]: the OTLP exporter (mapping a window to OTLP requests, settings, sending).
//! - [`log`]: `appsignal.log` through `tracing`.
//! - [`diagnose`]: the JSON report of `appsignal_diagnose()`.
//! - [`data`]: the value type behind `appsignal_data_t`.
//! - [`agent`]: the process-wide lifecycle (`start`, `stop`) and the calls the C interface makes.
//! - `test_knobs`: hooks for tests, compiled in only with the `test-knobs` feature.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod agent;
pub mod aggregate;
pub mod apm;
pub mod client;
pub mod config;
pub mod data;
pub mod diagnose;
pub mod election;
pub mod fork;
pub mod host_metrics;
pub mod journal;
pub mod leader;
pub mod log;
pub mod metrics;
pub mod otlp;
pub mod payload;
pub mod protocol;
pub mod sketch;
mod test_knobs;
pub mod transmit;
pub mod workdir;

/// This library's version, as written into the lock file, the handshake and every payload.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
