//! OTLP/HTTP intake (placeholder while the StatsD listener lands).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::{IntakeStats, Sink};

pub async fn run(
    _addr: SocketAddr,
    _sink: Sink,
    _stats: Arc<IntakeStats>,
    _stop: watch::Receiver<bool>,
) {
}
