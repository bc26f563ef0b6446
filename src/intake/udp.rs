//! The StatsD UDP listener task of the leader: binds (see [`super::bind_with_retry`]), reads
//! datagrams on the leader's runtime thread, parses them ([`super::statsd`]) into a bounded
//! [`Pending`], and every [`FLUSH_PERIOD`] hands a batch to the leader's counting on a blocking
//! thread (at most one in flight, so that a slow journal delays batches but never the reading of
//! datagrams). On stop it flushes once more and returns.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::pending::{key, Pending};
use super::statsd::{self, Update};
use super::{IntakeStats, Sink, FLUSH_PERIOD};
use crate::log::{suppressed_note, RateLimit};

/// Largest datagram read (the UDP maximum; longer ones are truncated by the kernel and their last
/// line is then malformed).
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams read in one go before the task yields to the rest of the leader.
const DRAIN: usize = 256;

static MALFORMED_LOG: RateLimit = RateLimit::new(60_000);
static COUNT_LOG: RateLimit = RateLimit::new(60_000);

/// What the task needs to parse datagrams, apart from the socket.
pub struct Parser {
    pub pending: Pending,
    stats: Arc<IntakeStats>,
}

impl Parser {
    pub fn new(stats: Arc<IntakeStats>) -> Parser {
        Parser {
            pending: Pending::default(),
            stats,
        }
    }

    /// Parses one datagram into `pending`; malformed lines are counted (and logged rarely).
    pub fn datagram(&mut self, data: &[u8], from: Option<SocketAddr>, now_ms: u64) {
        let pending = &mut self.pending;
        let stats = &self.stats;
        statsd::parse_datagram(data, |line| match line {
            Ok(line) => {
                let k = key(
                    line.name,
                    line.tags
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                );
                match line.update {
                    Update::Count(v) => pending.count(k, v),
                    Update::Set(v) => pending.set_gauge(k, v, now_ms),
                    Update::Change(v) => pending.change_gauge(k, v, now_ms),
                    Update::Record { value, times } => pending.record(k, value, times),
                }
            }
            Err((why, raw)) => {
                stats.statsd_malformed_lines.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = MALFORMED_LOG.check() {
                    let shown: String = String::from_utf8_lossy(&raw[..raw.len().min(120)])
                        .escape_debug()
                        .collect();
                    tracing::warn!(
                        "StatsD: malformed line from {} ({why}): \"{shown}\"; skipped and counted in appsignal.agent.statsd_malformed_lines{}",
                        from.map_or_else(|| "?".to_owned(), |a| a.to_string()),
                        suppressed_note(n)
                    );
                }
            }
        });
    }
}

/// Serves StatsD on `addr` until `stop` fires.
pub async fn run(
    addr: SocketAddr,
    sink: Sink,
    stats: Arc<IntakeStats>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(socket) = super::bind_with_retry("StatsD", addr, true, &mut stop).await else {
        return;
    };
    let socket = match UdpSocket::from_std(std::net::UdpSocket::from(socket)) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("StatsD: cannot serve {addr}: {e}");
            return;
        }
    };
    // A forked child closes its copy, so that the port is free once this leader is gone.
    let _registered = crate::fork::Registered::new(socket.as_raw_fd());
    let client_id = crate::ids::random_u64();
    let mut seq = 0u64;
    let mut parser = Parser::new(stats);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut tick = tokio::time::interval(FLUSH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flushing: Option<crate::blocking::Started<bool>> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                if flushing.as_ref().is_some_and(|f| !f.is_finished()) {
                    continue;
                }
                if let Some(done) = flushing.take() {
                    report(done.join().await.unwrap_or(false));
                }
                let now = crate::now_ms();
                if let Some(batch) = parser.pending.take_batch(client_id, seq + 1, now) {
                    seq += 1;
                    let sink = Arc::clone(&sink);
                    flushing = Some(crate::blocking::start(move || sink(batch)));
                }
            }
            received = socket.recv_from(&mut buf) => {
                let now = crate::now_ms();
                match received {
                    Ok((n, from)) => parser.datagram(&buf[..n], Some(from), now),
                    Err(e) => tracing::debug!("StatsD: receive on {addr} failed: {e}"),
                }
                for _ in 0..DRAIN {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, from)) => parser.datagram(&buf[..n], Some(from), now),
                        Err(_) => break,
                    }
                }
            }
        }
    }
    drop(socket);
    if let Some(done) = flushing.take() {
        report(done.join().await.unwrap_or(false));
    }
    if let Some(batch) = parser
        .pending
        .take_batch(client_id, seq + 1, crate::now_ms())
    {
        let sink = Arc::clone(&sink);
        report(
            crate::blocking::run(move || sink(batch))
                .await
                .unwrap_or(false),
        );
    }
}

fn report(counted: bool) {
    super::report_uncounted(counted, &COUNT_LOG, "StatsD", "updates");
}
