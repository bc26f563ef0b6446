//! The leader: on a background thread with its own single-threaded tokio runtime, it serves
//! `agent.socket`, counts batches into windows ([`crate::aggregate`]), and every transmission
//! interval pushes the closed windows ([`crate::transmit`]). The leader process's own app data
//! arrives through [`Leader::deliver_local`], not through the socket.
//!
//! Policies:
//! - At most [`MAX_CONNECTIONS`] connections; a permit is taken before `accept`.
//! - Every frame is untrusted: size-checked before allocation, decoded without panics. A bad frame
//!   closes that connection with a rate-limited log line and is counted; the leader keeps serving.
//! - A batch is acknowledged only after it is counted, and counting stops (under the aggregator lock)
//!   before the last windows are taken: an acknowledged batch is always in a payload or the cache.
//! - The leader watches `agent.lock` and the working directory every [`WATCHDOG_PERIOD`]: if either
//!   is gone it stops serving (pushing what it counted), so a new election can run.
//! - With `enable_host_metrics`, the leader (and only the leader: one collection per host and working
//!   directory) collects host metrics every `host_metrics_interval` on a blocking-pool thread and
//!   counts them as gauges of its own configuration.
//! - Shutdown stops accepting, lets connections finish the frame they are in, then pushes what
//!   remains within the deadline; what cannot be pushed goes to the payload cache.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::aggregate::{Aggregator, Window};
use crate::config::Config;
use crate::election::LeaderLock;
use crate::host_metrics::HostMetricsCollector;
use crate::log::{suppressed_note, RateLimit};
use crate::payload::{new_payload_id, AgentReport, Payload};
use crate::protocol::{
    self, Batch, ClientMessage, FrameError, GaugeValue, LeaderMessage, MetricKey, PROTOCOL_VERSION,
};
use crate::transmit::{Outgoing, PayloadCache, PushError, Pusher};
use crate::workdir::WorkDir;

pub const MAX_CONNECTIONS: usize = 512;
pub const WATCHDOG_PERIOD: Duration = Duration::from_millis(250);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

static BAD_FRAME_LOG: RateLimit = RateLimit::new(10_000);

/// Counting state: the aggregator and whether batches are still accepted, under one lock.
struct Counting {
    aggregator: Aggregator,
    open: bool,
}

struct Shared {
    config: Config,
    own_config_id: u64,
    workdir: WorkDir,
    counting: Mutex<Counting>,
    cache: PayloadCache,
    rejected_frames: AtomicU64,
    /// Set once the leader stopped serving (shutdown or lost lock).
    stopped: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn counting(&self) -> std::sync::MutexGuard<'_, Counting> {
        // Aggregation code does not panic on data; if it ever did, the state is still usable.
        self.counting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a batch; `false` when counting has stopped (the batch must not be acknowledged).
    fn count(&self, config_id: u64, batch: Batch) -> bool {
        let mut counting = self.counting();
        if !counting.open {
            return false;
        }
        counting.aggregator.apply(config_id, batch, crate::now_ms());
        true
    }
}

/// Handle of a running leader, owned by the process's sender thread.
pub struct Leader {
    shared: Arc<Shared>,
    shutdown: watch::Sender<Option<Instant>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Leader {
    /// Binds `agent.socket` (removing a stale one: we hold the lock) and starts serving.
    pub fn start(config: &Config, workdir: &WorkDir, lock: LeaderLock) -> Result<Leader> {
        let pusher = Pusher::new(config)?;
        let mut aggregator = Aggregator::new(config.transmission_interval);
        let own_config_id = aggregator.register(&config.push);
        let shared = Arc::new(Shared {
            config: config.clone(),
            own_config_id,
            workdir: workdir.clone(),
            counting: Mutex::new(Counting {
                aggregator,
                open: true,
            }),
            cache: PayloadCache::new(
                workdir.clone(),
                config.payload_cache_max_files,
                config.payload_cache_max_bytes,
            ),
            rejected_frames: AtomicU64::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        let socket_path = workdir.socket_path();
        match std::fs::remove_file(&socket_path) {
            Ok(()) => tracing::debug!("removed stale {}", socket_path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot remove stale {}", socket_path.display()))
            }
        }
        let (shutdown, shutdown_rx) = watch::channel(None);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("appsignal-leader".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = bound_tx.send(Err(anyhow!("cannot build the leader runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match bind(&thread_shared.workdir) {
                        Ok(listener) => {
                            let _ = bound_tx.send(Ok(()));
                            listener
                        }
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    };
                    run(thread_shared, listener, lock, pusher, shutdown_rx).await;
                });
                let _ = done_tx.send(());
            })
            .context("cannot spawn the leader thread")?;
        bound_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| {
                anyhow!(
                    "the leader thread did not bind {} in time",
                    socket_path.display()
                )
            })??;
        tracing::info!(
            "leading: listening on {}, pushing every {} ms to {}",
            socket_path.display(),
            config.transmission_interval.as_millis(),
            config.push.endpoint
        );
        Ok(Leader {
            shared,
            shutdown,
            done,
        })
    }

    /// Counts a batch of this process's own data. `Err` when this leader no longer counts.
    pub fn deliver_local(&self, batch: Batch) -> Result<()> {
        if self.shared.count(self.shared.own_config_id, batch) {
            Ok(())
        } else {
            Err(anyhow!("the leader has stopped counting"))
        }
    }

    /// Whether the leader still serves (false after it lost its lock or directory).
    pub fn is_serving(&self) -> bool {
        !self.shared.stopped.load(Ordering::Acquire)
    }

    /// Stops serving, pushes what remains until `deadline` (the rest goes to the payload cache),
    /// and releases the lock. Waits at most until shortly after the deadline.
    pub fn shutdown(self, deadline: Instant) {
        let _ = self.shutdown.send(Some(deadline));
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        if self.done.recv_timeout(wait).is_err() {
            tracing::warn!(
                "the leader thread did not finish within the stop timeout; leaving it behind"
            );
        }
    }
}

fn bind(workdir: &WorkDir) -> Result<interprocess::local_socket::tokio::Listener> {
    let path = workdir.socket_path();
    let name = path
        .as_path()
        .to_fs_name::<GenericFilePath>()
        .with_context(|| format!("invalid socket path {}", path.display()))?;
    let listener = ListenerOptions::new()
        .name(name)
        .reclaim_name(false)
        .create_tokio()
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(workdir.file_mode()))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    Ok(listener)
}

async fn run(
    shared: Arc<Shared>,
    listener: interprocess::local_socket::tokio::Listener,
    lock: LeaderLock,
    pusher: Pusher,
    mut shutdown: watch::Receiver<Option<Instant>>,
) {
    let pusher = Arc::new(pusher);
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let transmitter = tokio::spawn(transmit_loop(
        Arc::clone(&shared),
        Arc::clone(&pusher),
        stop_rx.clone(),
    ));
    let host_metrics = shared
        .config
        .enable_host_metrics
        .then(|| tokio::spawn(host_metrics_loop(Arc::clone(&shared), stop_rx.clone())));
    let mut watchdog = tokio::time::interval(WATCHDOG_PERIOD);
    let deadline = loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            _ = shutdown.changed() => break (*shutdown.borrow()).unwrap_or_else(Instant::now),
            permit = Arc::clone(&permits).acquire_owned() => permit,
        };
        tokio::select! {
            biased;
            _ = shutdown.changed() => break (*shutdown.borrow()).unwrap_or_else(Instant::now),
            _ = watchdog.tick() => {
                if !lock.still_at_path() || !shared.workdir.still_exists() {
                    tracing::warn!(
                        "{} or its directory was deleted or replaced: stopping as leader so that a new election runs",
                        lock.path().display()
                    );
                    break Instant::now() + shared.config.stop_timeout;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    let (shared, stop) = (Arc::clone(&shared), stop_rx.clone());
                    connections.spawn(async move {
                        serve(stream, &shared, stop).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("accept on {} failed: {e}", shared.workdir.socket_path().display());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    };
    // Stop accepting and remove our socket (only if the lock file is still ours: otherwise the
    // socket at that path may already belong to the next leader).
    drop(listener);
    if lock.still_at_path() {
        let _ = std::fs::remove_file(shared.workdir.socket_path());
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout_at(deadline.into(), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    let _ = tokio::time::timeout_at(deadline.into(), transmitter).await;
    if let Some(task) = host_metrics {
        let _ = tokio::time::timeout_at(deadline.into(), task).await;
    }
    let windows = {
        let mut counting = shared.counting();
        counting.open = false;
        counting.aggregator.take_all()
    };
    shared.stopped.store(true, Ordering::Release);
    transmit(&shared, &pusher, windows, Some(deadline)).await;
    drop(lock);
    tracing::info!("stopped leading");
}

/// Collects host metrics every interval and counts them as gauges of the leader's own configuration,
/// like a batch from a client of its own (so that they follow the same windows and pushes).
async fn host_metrics_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let collector = Arc::new(Mutex::new(HostMetricsCollector::new(
        shared.config.push.hostname.clone(),
    )));
    let client_id = crate::agent::random_u64();
    let mut seq = 0u64;
    // The first tick fires at once: it takes the baseline readings that interval metrics need.
    let mut tick = tokio::time::interval(shared.config.host_metrics_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let collector = Arc::clone(&collector);
        // Reading /proc and statvfs can block: keep it off the runtime thread.
        let gauges = match tokio::task::spawn_blocking(move || {
            collector
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .collect()
        })
        .await
        {
            Ok(gauges) => gauges,
            Err(e) => {
                tracing::warn!("host metrics collection failed: {e}");
                continue;
            }
        };
        if gauges.is_empty() {
            continue;
        }
        seq += 1;
        let now = crate::now_ms();
        let batch = Batch {
            client_id,
            seq,
            created_ms: now,
            counters: Vec::new(),
            gauges: gauges
                .into_iter()
                .map(|g| {
                    let mut tags = g.tags;
                    tags.sort();
                    (
                        MetricKey { name: g.name, tags },
                        GaugeValue {
                            value: g.value,
                            at_ms: now,
                        },
                    )
                })
                .collect(),
            distributions: Vec::new(),
            dropped_updates: 0,
        };
        if !shared.count(shared.own_config_id, batch) {
            return;
        }
    }
}

/// Why reading a message failed.
enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
    TruncatedFrame,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read error: {e}"),
            ReadError::Frame(e) => write!(f, "{e}"),
            ReadError::TruncatedFrame => write!(f, "connection closed in the middle of a frame"),
        }
    }
}

/// Reads the next message. `Ok(None)`: the peer closed cleanly between frames. Cancel-safe: a
/// partial frame stays in `buf`.
async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<ClientMessage>, ReadError> {
    loop {
        match protocol::decode::<ClientMessage>(buf) {
            Ok(Some((message, used))) => {
                buf.drain(..used);
                return Ok(Some(message));
            }
            Ok(None) => {}
            Err(e) => return Err(ReadError::Frame(e)),
        }
        buf.reserve(16 * 1024);
        let n = reader.read_buf(buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::TruncatedFrame)
            };
        }
    }
}

async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &LeaderMessage,
) -> Result<()> {
    let frame = protocol::encode(message)?;
    writer.write_all(&frame).await?;
    Ok(())
}

async fn serve(stream: Stream, shared: &Shared, mut stop: watch::Receiver<bool>) {
    let peer_pid = stream.peer_creds().ok().and_then(|c| c.pid());
    if !shared.workdir.world_accessible() {
        // Owner-only mode: only processes of our own user may feed this leader.
        let uid = stream.peer_creds().ok().and_then(|c| c.euid());
        let ours = crate::workdir::current_euid();
        if uid != Some(ours) {
            tracing::warn!(
                "refused a connection from uid {uid:?} (pid {peer_pid:?}): owner-only mode accepts uid {ours} only"
            );
            return;
        }
    }
    // `&Stream` reads and writes; no split needed.
    let (mut reader, mut writer) = (&stream, &stream);
    let mut buf = Vec::new();
    let hello =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(&mut reader, &mut buf)).await {
            Ok(Ok(Some(ClientMessage::Hello(hello)))) => hello,
            Ok(Ok(None)) => return,
            Ok(Ok(Some(ClientMessage::Batch(_)))) => {
                reject(shared, peer_pid, "a batch before the handshake");
                return;
            }
            Ok(Err(e)) => {
                reject(shared, peer_pid, &e.to_string());
                return;
            }
            Err(_) => {
                tracing::debug!(
                "connection from pid {peer_pid:?} sent no handshake within {HANDSHAKE_TIMEOUT:?}"
            );
                return;
            }
        };
    if hello.protocol_version != PROTOCOL_VERSION {
        let reason = format!(
            "protocol {} is not supported by this leader (library {}, protocol {PROTOCOL_VERSION})",
            hello.protocol_version,
            crate::VERSION
        );
        tracing::warn!(
            "refused pid {} (library {}): {reason}",
            hello.pid,
            hello.library_version
        );
        let _ = write_message(&mut writer, &LeaderMessage::Refused { reason }).await;
        return;
    }
    let config_id = shared.counting().aggregator.register(&hello.config);
    if write_message(
        &mut writer,
        &LeaderMessage::Welcome {
            protocol_version: PROTOCOL_VERSION,
            library_version: crate::VERSION.to_owned(),
            leader_pid: std::process::id(),
        },
    )
    .await
    .is_err()
    {
        return;
    }
    tracing::debug!(
        "client pid {} (library {}) connected",
        hello.pid,
        hello.library_version
    );
    loop {
        if *stop.borrow() {
            break;
        }
        let message = tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = read_message(&mut reader, &mut buf) => message,
        };
        match message {
            Ok(Some(ClientMessage::Batch(batch))) => {
                let seq = batch.seq;
                if !shared.count(config_id, batch) {
                    break;
                }
                if write_message(&mut writer, &LeaderMessage::Ack { seq })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(Some(ClientMessage::Hello(_))) => {
                reject(shared, peer_pid, "a second handshake");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                reject(shared, peer_pid, &e.to_string());
                break;
            }
        }
    }
    tracing::debug!("client pid {} disconnected", hello.pid);
}

fn reject(shared: &Shared, peer_pid: Option<i32>, why: &str) {
    shared.rejected_frames.fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = BAD_FRAME_LOG.check() {
        tracing::warn!(
            "closed the connection of pid {peer_pid:?}: {why}{}",
            suppressed_note(suppressed)
        );
    }
}

/// How long after a window's end the leader waits for the last flushes before pushing it.
fn grace_ms(config: &Config) -> u64 {
    let interval = config.transmission_interval.as_millis() as u64;
    (config.flush_interval.as_millis() as u64 * 3 + 50).min(interval / 2)
}

async fn transmit_loop(shared: Arc<Shared>, pusher: Arc<Pusher>, mut stop: watch::Receiver<bool>) {
    let interval = shared.config.transmission_interval.as_millis() as u64;
    let grace = grace_ms(&shared.config);
    loop {
        let now = crate::now_ms();
        let next = (now.saturating_sub(grace) / interval + 1) * interval + grace;
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(next - now)) => {}
        }
        let windows = shared
            .counting()
            .aggregator
            .take_closed(crate::now_ms().saturating_sub(grace));
        transmit(&shared, &pusher, windows, None).await;
    }
}

async fn push_until(
    pusher: &Pusher,
    config: &crate::config::PushConfig,
    payload: &Outgoing,
    deadline: Option<Instant>,
) -> Result<(), PushError> {
    match deadline {
        None => pusher.push(config, payload).await,
        Some(deadline) => tokio::time::timeout_at(deadline.into(), pusher.push(config, payload))
            .await
            .unwrap_or_else(|_| Err(PushError::Retryable("stop deadline reached".into()))),
    }
}

/// Retries cached payloads oldest first, then pushes the new windows. An endpoint that fails once is
/// not tried again in this round: its payloads go straight to the cache.
async fn transmit(
    shared: &Shared,
    pusher: &Pusher,
    windows: Vec<Window>,
    deadline: Option<Instant>,
) {
    let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
    let mut down: HashSet<String> = HashSet::new();
    for entry in shared.cache.list() {
        if past_deadline() {
            break;
        }
        let Some(config) = shared
            .counting()
            .aggregator
            .config(entry.config_id)
            .cloned()
        else {
            continue; // a configuration no connected process has (yet): keep it for later
        };
        if down.contains(&config.endpoint) {
            continue;
        }
        let payload = match shared.cache.load(&entry) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("dropping unreadable cached payload: {e:#}");
                shared.cache.remove(&entry);
                continue;
            }
        };
        match push_until(pusher, &config, &payload, deadline).await {
            Ok(()) => {
                shared.cache.remove(&entry);
                tracing::info!(
                    "delivered cached payload {} (window of {})",
                    entry.id,
                    entry.created_ms
                );
            }
            Err(PushError::Retryable(why)) => {
                tracing::warn!("cached payload {} not delivered: {why}", entry.id);
                down.insert(config.endpoint);
            }
            Err(e @ PushError::Rejected(_)) => {
                tracing::error!("cached payload {} dropped: {e}", entry.id);
                shared.cache.remove(&entry);
            }
        }
    }
    if windows.is_empty() {
        // Keep the counts of dropped things for a round that has a payload to carry them.
        return;
    }
    let mut report = AgentReport {
        leader_pid: std::process::id(),
        payload_cache_evictions: shared.cache.take_evictions(),
        rejected_frames: shared.rejected_frames.swap(0, Ordering::Relaxed),
        ..AgentReport::default()
    };
    for window in windows {
        let payload = Payload::from_window(&window, new_payload_id(), report.clone());
        // Counts of dropped things go out once, in the first payload of the round.
        report.payload_cache_evictions = 0;
        report.rejected_frames = 0;
        let body_gz = match payload.to_gzip() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot encode payload {}: {e:#}", payload.payload_id);
                continue;
            }
        };
        let outgoing = Outgoing {
            id: payload.payload_id.clone(),
            config_id: window.config.id(),
            created_ms: window.start_ms,
            body_gz,
        };
        let summary = format!(
            "payload {} for {}/{} (window {}, {} counters, {} gauges, {} distributions)",
            outgoing.id,
            window.config.app_name,
            window.config.environment,
            window.start_ms,
            payload.counters.len(),
            payload.gauges.len(),
            payload.distributions.len()
        );
        let result = if down.contains(&window.config.endpoint) || past_deadline() {
            Err(PushError::Retryable(
                "endpoint down or stop deadline reached".into(),
            ))
        } else {
            push_until(pusher, &window.config, &outgoing, deadline).await
        };
        match result {
            Ok(()) => tracing::info!("pushed {summary}"),
            Err(PushError::Retryable(why)) => {
                down.insert(window.config.endpoint.clone());
                match shared.cache.store(&outgoing) {
                    Ok(()) => tracing::warn!(
                        "{summary} not pushed ({why}); cached for the next transmission"
                    ),
                    Err(e) => tracing::error!(
                        "{summary} not pushed ({why}) and could not be cached: {e:#}"
                    ),
                }
            }
            Err(e @ PushError::Rejected(_)) => tracing::error!("{summary} dropped: {e}"),
        }
    }
}
