//! The leader: on a background thread with its own single-threaded tokio runtime, it serves
//! `agent.socket`, counts batches into windows ([`crate::aggregate`]), and every transmission
//! interval pushes the closed windows ([`crate::transmit`]). The leader process's own app data
//! arrives through [`Leader::deliver_local`], not through the socket.
//!
//! Policies:
//! - At most [`MAX_CONNECTIONS`] connections; a permit is taken before `accept`.
//! - Every frame is untrusted: size-checked before allocation, decoded without panics. A bad frame
//!   closes that connection with a rate-limited log line and is counted; the leader keeps serving.
//!   The rules a connection follows are in [`connection`]'s documentation.
//! - Panic boundaries: counting a batch catches a panic (the batch is counted as poisoned and
//!   acknowledged, so that its process does not resend it forever; on replay it is quarantined);
//!   connection tasks and the transmission task are tokio tasks (a panic ends that task only; the
//!   end of the transmission task ends leadership); a panic of the leader thread itself is caught
//!   and, before the lock is released, the leader stops counting, so that `deliver_local` never
//!   journals beside the next leader.
//! - A batch is acknowledged only after it is in the journal ([`crate::journal`]) and counted;
//!   counting stops (under the same lock) before the last windows are taken. A new leader replays
//!   the journal before it serves. So an acknowledged batch is always in the journal, the payload
//!   cache, or a pushed payload, whenever the leader is killed.
//! - The leader watches `agent.lock` and the working directory ([`watchdog`]: inotify where there is
//!   one, so that an idle leader sleeps): if either is gone it stops serving (pushing what it
//!   counted), so a new election can run.
//! - With `enable_host_metrics`, the leader (and only the leader: one collection per host and working
//!   directory) collects host metrics every `host_metrics_interval` on a blocking-pool thread and
//!   counts them as gauges of its own configuration.
//! - With `_APPSIGNAL_ENABLE_STATSD` or `_APPSIGNAL_OTLP_HTTP_PORT`, the leader (and only the
//!   leader) runs the listeners of [`crate::intake`]; their data counts as its own configuration's.
//! - Shutdown (`stop()`) pushes what was counted within the deadline while it keeps accepting and
//!   counting the last batches of its clients, which may be stopping at the same moment; then it
//!   stops accepting, lets connections finish the frame they are in, and turns what arrived
//!   meanwhile into payloads in the cache (pushed by the next leader). A lost lock or directory
//!   stops accepting at once. Only for a newer library (or after a failure of its own) does it
//!   leave its journal to the next leader instead (a hand-over).
//! - Spool files that stopping processes left in `journal/` (see [`crate::journal`]) are counted
//!   when the leader starts and at every transmission.
//! - Push faults: a failed push leaves the payload in the cache (retried, `Retry-After` honoured);
//!   refused credentials (401/403) stop a configuration's exports but for one probe an hour
//!   ([`exports`]); a full disk leaves batches unacknowledged (their processes keep them; the
//!   leader process's own batches too, via [`Leader::deliver_local`]) and closed windows held with
//!   their segments until they can be cached or sent ([`transmission`]).

mod connection;
mod counting;
mod exports;
mod host;
mod replay;
mod transmission;
mod watchdog;

use counting::{Counting, StopCounting};
pub use exports::{ExportState, ExportsReport};
use replay::replay;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::aggregate::Aggregator;
use crate::config::Config;
use crate::election::LeaderLock;
use crate::journal::Journal;
use crate::log::RateLimit;
use crate::protocol::{self, Batch};
use crate::transmit::{PayloadCache, Pusher};
use crate::workdir::WorkDir;

pub const MAX_CONNECTIONS: usize = 512;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Client ids bound to processes at once; dead processes' bindings are forgotten beyond that.
pub const MAX_BINDINGS: usize = 4096;
/// Threads that journal and count batches (off the runtime thread, so a slow disk stalls no read).
const COUNTING_THREADS: usize = 2;

use connection::MAX_CONNECTIONS_PER_PROCESS;

static JOURNAL_ERROR_LOG: RateLimit = RateLimit::new(10_000);
static POISON_LOG: RateLimit = RateLimit::new(10_000);

struct Shared {
    config: Config,
    own_config_id: u64,
    workdir: WorkDir,
    counting: Mutex<Counting>,
    cache: PayloadCache,
    rejected_frames: AtomicU64,
    /// Throttled endpoints, refused credentials and rejections of the exporters (also read by
    /// diagnose, through [`Leader::exports`]).
    exports: Arc<ExportState>,
    /// Connections closed for breaking the rules (reported in the next payload).
    refused_connections: AtomicU64,
    /// Batches whose counting panicked (reported in the next payload).
    poisoned_batches: AtomicU64,
    /// Bytes of incomplete large frames buffered across all connections.
    frame_bytes: AtomicUsize,
    /// Client (journal id) -> the pid of the process that handshook with it.
    bindings: Mutex<HashMap<u64, i32>>,
    /// pid -> connections it holds.
    processes: Mutex<HashMap<i32, usize>>,
    /// Test knob: the leader thread panics at its next watchdog check.
    panic_requested: AtomicBool,
    /// Makes the watchdog check at once (the test knob above).
    check_now: tokio::sync::Notify,
    /// Set once the leader stopped serving (shutdown or lost lock).
    stopped: AtomicBool,
    /// Set when it stepped down for a newer library: its process should not retake the lock at once.
    handed_over: AtomicBool,
    /// Notified by a connection from a newer library.
    handover: tokio::sync::Notify,
    /// Woken when this leader stops serving, so that its owner (the sender) notices at once.
    on_stop: Option<std::sync::Arc<dyn crate::metrics::Wake>>,
    /// Input the StatsD and OTLP listeners rejected (reported in the next payload).
    intake: Arc<crate::intake::IntakeStats>,
    /// Closed windows whose payloads could be neither cached nor sent (a full disk and a failing
    /// endpoint): tried again at the next transmission; their journal segments stay until then.
    held_windows: Mutex<Vec<crate::aggregate::Window>>,
}

/// Whether version `a` is newer than `b` (dotted numbers; anything else compares as equal).
pub(crate) fn is_newer(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Option<Vec<u64>> {
        v.split(['.', '-', '+'])
            .take(3)
            .map(|p| p.parse().ok())
            .collect()
    };
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// Where a configuration's data goes, for the log (no secrets: endpoints only).
fn export_targets(config: &crate::config::PushConfig) -> String {
    let mut targets = Vec::new();
    if config.exporters.push {
        targets.push(format!("the Push API at {}", config.endpoint));
    }
    if let Some(otlp) = config.otlp.as_ref().filter(|_| config.exporters.otlp) {
        targets.push(format!("OTLP at {}", otlp.metrics_endpoint));
    }
    targets.join(" and ")
}

/// Why the serving loop ended.
enum Exit {
    /// `stop()`: push what was counted, within the deadline.
    Shutdown(Instant),
    /// The lock file or the directory is gone: push what was counted.
    LostLock(Instant),
    /// A newer library connected: leave everything in the journal for it.
    HandOver(Instant),
    /// The transmission task ended (it panicked): leave everything in the journal to the next leader.
    Failed(Instant),
}

/// Whether process `pid` exists (a zombie counts: its pid is not reused yet).
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let alive = unsafe { libc::kill(pid, 0) == 0 };
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl Shared {
    fn held_windows(&self) -> std::sync::MutexGuard<'_, Vec<crate::aggregate::Window>> {
        self.held_windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds a client (its journal id) to the process of the connection that handshook with it.
    /// `Err(pid)`: the id is bound to another live process. A connection without a pid (another
    /// pid namespace) binds nothing.
    fn bind(&self, client: u64, pid: Option<i32>) -> Result<(), i32> {
        let Some(pid) = pid else {
            return Ok(());
        };
        let mut bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&holder) = bindings.get(&client) {
            if holder != pid && process_alive(holder) {
                return Err(holder);
            }
        }
        if bindings.len() >= MAX_BINDINGS && !bindings.contains_key(&client) {
            bindings.retain(|_, p| process_alive(*p));
            if bindings.len() >= MAX_BINDINGS {
                return Err(0);
            }
        }
        bindings.insert(client, pid);
        Ok(())
    }

    /// Takes a connection slot of process `pid`; `false` when it holds too many.
    fn enter_process(&self, pid: i32) -> bool {
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        let held = processes.entry(pid).or_insert(0);
        if *held >= MAX_CONNECTIONS_PER_PROCESS {
            return false;
        }
        *held += 1;
        true
    }

    fn leave_process(&self, pid: i32) {
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = processes.get_mut(&pid) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                processes.remove(&pid);
            }
        }
    }
}

/// Handle of a running leader, owned by the process's sender thread.
pub struct Leader {
    shared: Arc<Shared>,
    shutdown: watch::Sender<Option<Instant>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Leader {
    /// What this leader does, for the log line its owner writes once it has taken the role.
    pub fn description(&self) -> String {
        let config = &self.shared.config;
        format!(
            "listening on {}, exporting every {} ms to {}",
            self.shared.workdir.socket_path().display(),
            config.transmission_interval.as_millis(),
            export_targets(&config.push)
        )
    }

    /// Replays the journal left by the previous leader, binds `agent.socket` (removing a stale
    /// one: we hold the lock) and starts serving.
    /// `on_stop` is woken when the leader stops serving (lost lock, panic, hand-over).
    pub fn start(
        config: &Config,
        workdir: &WorkDir,
        lock: LeaderLock,
        on_stop: Option<std::sync::Arc<dyn crate::metrics::Wake>>,
    ) -> Result<Leader> {
        let pusher = Pusher::new(config)?;
        let mut aggregator = Aggregator::new(config.transmission_interval);
        // The first configuration always fits.
        let own_config_id = aggregator
            .register(&config.push)
            .unwrap_or_else(|| config.push.id());
        let mut journal = Journal::new(workdir.clone());
        let cache = PayloadCache::new(
            workdir.clone(),
            config.payload_cache_max_files,
            config.payload_cache_max_bytes,
        );
        let (segments, batches, poisoned) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                replay(config, &mut aggregator, &mut journal, &cache)
            }))
            .map_err(|_| anyhow!("replaying the journal panicked (a bug in libappsignal)"))?;
        if segments > 0 {
            tracing::info!("replayed {segments} journal segments ({batches} batches) left by the previous leader");
        }
        let shared = Arc::new(Shared {
            config: config.clone(),
            own_config_id,
            workdir: workdir.clone(),
            counting: Mutex::new(Counting {
                aggregator,
                journal,
                open: true,
            }),
            cache,
            rejected_frames: AtomicU64::new(0),
            exports: Arc::new(ExportState::new(config.refused_key_retry_interval)),
            refused_connections: AtomicU64::new(0),
            poisoned_batches: AtomicU64::new(poisoned),
            frame_bytes: AtomicUsize::new(0),
            bindings: Mutex::new(HashMap::new()),
            processes: Mutex::new(HashMap::new()),
            panic_requested: AtomicBool::new(false),
            check_now: tokio::sync::Notify::new(),
            stopped: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            handover: tokio::sync::Notify::new(),
            on_stop,
            intake: Arc::default(),
            held_windows: Mutex::new(Vec::new()),
        });
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.ingest_spools()))
            .map_err(|_| anyhow!("counting spool files panicked (a bug in libappsignal)"))?;
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
                    .max_blocking_threads(COUNTING_THREADS)
                    .thread_name("appsignal-leader-io")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = bound_tx.send(Err(anyhow!("cannot build the leader runtime: {e}")));
                        return;
                    }
                };
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
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
                    })
                }));
                if served.is_err() {
                    tracing::error!(
                        "the leader thread panicked (a bug in libappsignal): stopped leading; what it counted stays in the journal for the next leader"
                    );
                }
                // Dropping the runtime ends the connection tasks (off the unwinding path).
                drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                    move || drop(runtime),
                )));
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
        Ok(Leader {
            shared,
            shutdown,
            done,
        })
    }

    /// Counts a batch of this process's own data. `Ok(true)`: counted. `Ok(false)`: not now (the
    /// journal cannot be written: a full disk); the process keeps the batch and tries again later,
    /// as a client whose batch was not acknowledged does. `Err` when this leader no longer counts.
    pub fn deliver_local(&self, mut batch: Batch) -> Result<bool> {
        batch.client_id = protocol::journal_id(batch.client_id);
        // This process's id is taken: nobody else may handshake with it.
        let _ = self
            .shared
            .bind(batch.client_id, Some(std::process::id() as i32));
        if self.shared.count(self.shared.own_config_id, batch) {
            Ok(true)
        } else if self.shared.counting().open && self.is_serving() {
            Ok(false)
        } else {
            Err(anyhow!("the leader has stopped counting"))
        }
    }

    /// Whether the leader still serves (false after it lost its lock or directory, or handed over).
    pub fn is_serving(&self) -> bool {
        !self.shared.stopped.load(Ordering::Acquire)
    }

    /// What its exporters remember (refused credentials, rejected payloads), for diagnose.
    pub fn exports(&self) -> Arc<ExportState> {
        Arc::clone(&self.shared.exports)
    }

    /// Whether it stepped down for a newer library.
    pub fn handed_over(&self) -> bool {
        self.shared.handed_over.load(Ordering::Acquire)
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
    #[cfg(target_os = "linux")]
    {
        let listener = listen(&path)?;
        // Not by path: a link swapped in since the bind is never followed (workdir::chmod_socket).
        crate::workdir::chmod_socket(&path, workdir.file_mode())?;
        Ok(listener)
    }
    #[cfg(not(target_os = "linux"))]
    {
        // No O_PATH: bound in a directory of ours, its mode set there, then renamed into place.
        let stage = crate::workdir::SocketStage::new(workdir)?;
        let listener = listen(&stage.bind_path())?;
        stage.publish(&path, workdir.file_mode())?;
        Ok(listener)
    }
}

fn listen(path: &std::path::Path) -> Result<interprocess::local_socket::tokio::Listener> {
    let name = path
        .to_fs_name::<GenericFilePath>()
        .with_context(|| format!("invalid socket path {}", path.display()))?;
    ListenerOptions::new()
        .name(name)
        .reclaim_name(false)
        .create_tokio()
        .with_context(|| format!("cannot listen on {}", path.display()))
}

fn listener_fd(
    listener: &interprocess::local_socket::tokio::Listener,
) -> Option<std::os::fd::RawFd> {
    use std::os::fd::{AsFd, AsRawFd};
    #[allow(unreachable_patterns)]
    match listener {
        interprocess::local_socket::tokio::Listener::UdSocket(l) => Some(l.as_fd().as_raw_fd()),
        _ => None,
    }
}

/// Waits for a connection slot, then for a connection. Cancel-safe.
async fn accept_one(
    listener: &interprocess::local_socket::tokio::Listener,
    permits: &Arc<Semaphore>,
) -> (
    Option<tokio::sync::OwnedSemaphorePermit>,
    std::io::Result<interprocess::local_socket::tokio::Stream>,
) {
    let permit = Arc::clone(permits).acquire_owned().await.ok();
    (permit, listener.accept().await)
}

/// Starts the StatsD and OTLP/HTTP listeners that are configured ([`crate::intake`]); their data
/// counts as the leader's own configuration's. They end when `background` fires.
fn spawn_listeners(
    shared: &Arc<Shared>,
    background: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let listeners = &shared.config.listeners;
    let counting = Arc::clone(shared);
    let sink: crate::intake::Sink =
        Arc::new(move |batch| counting.count(counting.own_config_id, batch));
    let mut tasks = Vec::new();
    if let Some(addr) = listeners.statsd {
        tasks.push(tokio::spawn(crate::intake::udp::run(
            addr,
            Arc::clone(&sink),
            Arc::clone(&shared.intake),
            background.clone(),
        )));
    }
    if let Some(addr) = listeners.otlp_http {
        tasks.push(tokio::spawn(crate::intake::otlp_http::run(
            addr,
            Arc::clone(&sink),
            Arc::clone(&shared.intake),
            background.clone(),
        )));
    }
    tasks
}

async fn run(
    shared: Arc<Shared>,
    listener: interprocess::local_socket::tokio::Listener,
    lock: LeaderLock,
    pusher: Pusher,
    mut shutdown: watch::Receiver<Option<Instant>>,
) {
    // Declared after `lock` (a parameter, dropped last): counting stops before the lock is released,
    // on every way out of here, a panic included.
    let _stop_counting = StopCounting(Arc::clone(&shared));
    let pusher = Arc::new(pusher);
    // A forked child closes its copy of the listener, so that nobody but us can accept on it.
    let listener_guard = listener_fd(&listener).map(crate::fork::Registered::new);
    // `stop` ends the connections; `background` the transmission and host-metrics tasks.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (background_tx, background_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut transmitter = Some(tokio::spawn(transmission::transmit_loop(
        Arc::clone(&shared),
        Arc::clone(&pusher),
        background_rx.clone(),
    )));
    let host_metrics = shared.config.enable_host_metrics.then(|| {
        tokio::spawn(host::host_metrics_loop(
            Arc::clone(&shared),
            background_rx.clone(),
        ))
    });
    let listeners = spawn_listeners(&shared, &background_rx);
    let spawn_connection = |connections: &mut JoinSet<connection::Peer>,
                            permit: Option<tokio::sync::OwnedSemaphorePermit>,
                            accepted: std::io::Result<
        interprocess::local_socket::tokio::Stream,
    >| match accepted {
        Ok(stream) => {
            let (shared, stop) = (Arc::clone(&shared), stop_rx.clone());
            connections.spawn(async move {
                let peer = connection::serve(stream, &shared, stop).await;
                drop(permit);
                peer
            });
            false
        }
        Err(e) => {
            tracing::warn!(
                "accept on {} failed: {e}",
                shared.workdir.socket_path().display()
            );
            true
        }
    };
    let mut watchdog = watchdog::Watchdog::new(lock.path(), shared.workdir.path());
    let exit = loop {
        while connections.try_join_next().is_some() {}
        let Some(running) = transmitter.as_mut() else {
            break Exit::Failed(Instant::now() + shared.config.stop_timeout);
        };
        tokio::select! {
            biased;
            _ = shutdown.changed() => break Exit::Shutdown((*shutdown.borrow()).unwrap_or_else(Instant::now)),
            _ = shared.handover.notified() => break Exit::HandOver(Instant::now() + shared.config.stop_timeout),
            ended = running => {
                transmitter = None;
                tracing::error!(
                    "the transmission task ended ({}); stopping as leader, the journal stays for the next leader",
                    ended.err().map_or_else(|| "without an error".to_owned(), |e| e.to_string())
                );
                break Exit::Failed(Instant::now() + shared.config.stop_timeout);
            }
            () = watchdog.wait(&shared.check_now) => {
                if shared.panic_requested.load(Ordering::Acquire) {
                    #[allow(clippy::panic)]
                    {
                        panic!("test knob: the leader thread panics");
                    }
                }
                if !lock.still_at_path() || !shared.workdir.still_exists() {
                    tracing::warn!(
                        "{} or its directory was deleted or replaced: stopping as leader so that a new election runs",
                        lock.path().display()
                    );
                    break Exit::LostLock(Instant::now() + shared.config.stop_timeout);
                }
            }
            (permit, accepted) = accept_one(&listener, &permits) => {
                if spawn_connection(&mut connections, permit, accepted) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    let deadline = match exit {
        Exit::Shutdown(d) | Exit::LostLock(d) | Exit::HandOver(d) | Exit::Failed(d) => d,
    };
    let _ = background_tx.send(true);
    if matches!(exit, Exit::Shutdown(_)) {
        // Push what was counted while still accepting and counting: the clients may be stopping
        // too (a deploy stops every process at once), and their last batches must find a leader
        // even when the push waits for a slow or hung endpoint until the deadline.
        let background = transmitter.take();
        let push = async {
            if let Some(task) = background {
                let _ = tokio::time::timeout_at(deadline.into(), task).await;
            }
            let windows = shared.take_windows(None);
            transmission::transmit(&shared, &pusher, windows, Some(deadline)).await;
        };
        tokio::pin!(push);
        loop {
            while connections.try_join_next().is_some() {}
            tokio::select! {
                biased;
                () = &mut push => break,
                () = watchdog.wait(&shared.check_now) => {
                    if !lock.still_at_path() || !shared.workdir.still_exists() {
                        break;
                    }
                }
                (permit, accepted) = accept_one(&listener, &permits) => {
                    if spawn_connection(&mut connections, permit, accepted) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
    // From here on this process is no longer the leader, even while it finishes its last push.
    shared.stopped.store(true, Ordering::Release);
    // Stop accepting and remove our socket (only if the lock file is still ours: otherwise the
    // socket at that path may already belong to the next leader).
    drop(listener_guard);
    drop(listener);
    if lock.still_at_path() {
        let _ = std::fs::remove_file(shared.workdir.socket_path());
    }
    let _ = stop_tx.send(true);
    // Processes still there when we stopped (not those that had just left): one of them takes
    // over. A connection that does not finish in time counts as still there.
    let mut connected = 0usize;
    // Connections stop between frames, so this is quick; a deadline of "now" (a shutdown that
    // must not wait) must not make every process count as still there.
    let join_deadline = deadline.max(Instant::now() + Duration::from_millis(200));
    let joined = tokio::time::timeout_at(join_deadline.into(), async {
        while let Some(peer) = connections.join_next().await {
            match peer {
                Ok(connection::Peer::Left) => {}
                Ok(connection::Peer::StillThere) => connected += 1,
                Err(e) => {
                    tracing::warn!("a connection task failed: {e}");
                    connected += 1;
                }
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!(
            "{} connections did not finish in time; counting them as still connected",
            connections.len()
        );
        connected += connections.len();
    }
    connections.abort_all();
    if let Some(task) = transmitter {
        let _ = tokio::time::timeout_at(deadline.into(), task).await;
    }
    if let Some(task) = host_metrics {
        let _ = tokio::time::timeout_at(deadline.into(), task).await;
    }
    for task in listeners {
        let _ = tokio::time::timeout_at(deadline.into(), task).await;
    }
    shared.counting().open = false;
    // Handing over means leaving the journal to the next leader: only when it is still there.
    let journal_intact = lock.still_at_path() && shared.workdir.journal_dir().is_dir();
    // On stop() the leader pushes even when other processes are connected: leaving the journal to
    // them raced with processes that were stopping at the same moment (a SIGTERM to a whole
    // server), which then left it unpushed until the next start. Pushing costs stop time, bounded
    // by the stop timeout; the `counted` record makes resends to the next leader count once.
    let hand_over = journal_intact && matches!(exit, Exit::HandOver(_) | Exit::Failed(_));
    if hand_over {
        // Everything counted is in the journal: the next leader replays and pushes it.
        shared
            .handed_over
            .store(matches!(exit, Exit::HandOver(_)), Ordering::Release);
        shared.stopped.store(true, Ordering::Release);
        drop(lock);
        tracing::info!("stopped leading: the next leader takes over the journal");
        return;
    }
    // After a stop: what arrived while the push waited (cached now, pushed if time is left).
    let windows = shared.take_windows(None);
    transmission::transmit(&shared, &pusher, windows, Some(deadline)).await;
    drop(lock);
    tracing::info!("stopped leading ({connected} processes were still connected)");
}

/// The leader's counting ([`Shared::count`]) and replay ([`replay`]) in-process, on a real journal
/// and payload cache in a temporary directory; the socket side is covered by `tests/end_to_end.rs`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Window;
    use crate::protocol::MetricKey;
    use crate::transmit::{ExportKind, Outgoing};

    const INTERVAL_MS: u64 = 1000;

    fn config(dir: &std::path::Path) -> Config {
        let dir = dir.display().to_string();
        Config::load_from(&move |key| {
            match key {
                "_APPSIGNAL_ACTIVE" => Some("true"),
                "_APPSIGNAL_PUSH_API_KEY" => Some("leader-test-key"),
                "_APPSIGNAL_HOSTNAME" => Some("h"),
                "_APPSIGNAL_TRANSMISSION_INTERVAL_MS" => Some("1000"),
                "_APPSIGNAL_WORKING_DIRECTORY_PATH" => Some(dir.as_str()),
                _ => None,
            }
            .map(str::to_owned)
        })
        .config
    }

    /// What `Leader::start` builds, without the thread and the socket.
    fn shared(dir: &std::path::Path) -> Shared {
        let config = config(dir);
        let workdir = WorkDir::prepare(dir, false).unwrap();
        let mut aggregator = Aggregator::new(config.transmission_interval);
        let own_config_id = aggregator.register(&config.push).unwrap();
        let retry_interval = config.refused_key_retry_interval;
        Shared {
            own_config_id,
            counting: Mutex::new(Counting {
                aggregator,
                journal: Journal::new(workdir.clone()),
                open: true,
            }),
            cache: PayloadCache::new(workdir.clone(), 100, 1 << 20),
            workdir,
            config,
            rejected_frames: AtomicU64::new(0),
            exports: Arc::new(ExportState::new(retry_interval)),
            refused_connections: AtomicU64::new(0),
            poisoned_batches: AtomicU64::new(0),
            frame_bytes: AtomicUsize::new(0),
            bindings: Mutex::new(HashMap::new()),
            processes: Mutex::new(HashMap::new()),
            panic_requested: AtomicBool::new(false),
            check_now: tokio::sync::Notify::new(),
            intake: Arc::default(),
            stopped: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            handover: tokio::sync::Notify::new(),
            on_stop: None,
            held_windows: Mutex::new(Vec::new()),
        }
    }

    /// A new leader on the same directory: replays what is there. Returns it and what replay said.
    fn next_leader(dir: &std::path::Path) -> (Aggregator, Journal, (usize, usize, u64)) {
        let config = config(dir);
        let workdir = WorkDir::prepare(dir, false).unwrap();
        let mut aggregator = Aggregator::new(config.transmission_interval);
        aggregator.register(&config.push);
        let mut journal = Journal::new(workdir.clone());
        let cache = PayloadCache::new(workdir, 100, 1 << 20);
        let replayed = replay(&config, &mut aggregator, &mut journal, &cache);
        (aggregator, journal, replayed)
    }

    fn batch(client_id: u64, seq: u64, created_ms: u64, value: f64) -> Batch {
        Batch {
            client_id,
            seq,
            created_ms,
            counters: vec![(
                MetricKey {
                    name: "requests".into(),
                    tags: vec![],
                },
                value,
            )],
            ..Batch::default()
        }
    }

    /// The `requests` total of every window, by window start.
    fn totals(windows: &[Window]) -> std::collections::BTreeMap<u64, f64> {
        let mut out = std::collections::BTreeMap::new();
        for w in windows {
            for (key, value) in &w.metrics.counters {
                assert_eq!(key.name, "requests");
                *out.entry(w.start_ms).or_insert(0.0) += value;
            }
        }
        out
    }

    /// Two windows' worth: (client 1, seq 1..=2) in the first, (client 2, seq 1) in the second.
    fn count_two_windows(s: &Shared, base: u64) {
        assert!(s.count(s.own_config_id, batch(1, 1, base + 10, 2.0)));
        assert!(s.count(s.own_config_id, batch(1, 2, base + 20, 3.0)));
        assert!(s.count(s.own_config_id, batch(2, 1, base + INTERVAL_MS + 5, 7.0)));
    }

    fn base() -> u64 {
        // A window boundary in the past, so that both windows are closed (and recent enough to be
        // counted in their own windows).
        (crate::now_ms() / INTERVAL_MS - 3) * INTERVAL_MS
    }

    #[test]
    fn a_batch_counts_once_and_is_acknowledged_again_when_resent() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shared(tmp.path());
        let base = base();
        count_two_windows(&s, base);
        // A resend (its Ack was lost) is acknowledged again, and not counted again.
        assert!(s.count(s.own_config_id, batch(1, 2, base + 20, 3.0)));
        let windows = s.take_windows(None);
        assert_eq!(
            totals(&windows),
            [(base, 5.0), (base + INTERVAL_MS, 7.0)].into()
        );
        assert_eq!(windows.iter().map(|w| w.batches).sum::<u64>(), 3);
    }

    #[test]
    fn a_batch_of_an_unknown_configuration_or_after_counting_stopped_is_not_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shared(tmp.path());
        let base = base();
        assert!(!s.count(s.own_config_id ^ 1, batch(1, 1, base, 1.0)));
        s.counting().open = false;
        assert!(!s.count(s.own_config_id, batch(1, 1, base, 1.0)));
        // Neither is counted nor journaled: the client keeps both.
        assert!(s.take_windows(None).is_empty());
        assert!(s.counting().journal.replay().is_empty());
    }

    #[test]
    fn the_next_leader_counts_what_a_killed_leader_acknowledged_exactly_once() {
        let tmp = tempfile::tempdir().unwrap();
        let base = base();
        {
            let killed = shared(tmp.path());
            count_two_windows(&killed, base);
            // Killed here: windows in memory are gone, the journal stays.
        }
        let (mut aggregator, _journal, (segments, batches, _)) = next_leader(tmp.path());
        assert_eq!((segments, batches), (2, 3));
        // Clients resend what they had not seen acknowledged: each counts once.
        assert!(aggregator.is_counted(1, 2) && aggregator.is_counted(2, 1));
        assert!(!aggregator.is_counted(1, 3) && !aggregator.is_counted(3, 1));
        assert_eq!(
            totals(&aggregator.take_all()),
            [(base, 5.0), (base + INTERVAL_MS, 7.0)].into()
        );
    }

    #[test]
    fn the_next_leader_continues_a_replayed_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let base = base();
        {
            let killed = shared(tmp.path());
            assert!(killed.count(killed.own_config_id, batch(1, 1, base + 10, 2.0)));
        }
        // Replayed into a serving leader, then a new batch of the same window, then killed again.
        {
            let s = shared(tmp.path());
            let mut counting = s.counting();
            let Counting {
                aggregator,
                journal,
                ..
            } = &mut *counting;
            assert_eq!(replay(&s.config, aggregator, journal, &s.cache), (1, 1, 0));
            drop(counting);
            assert!(s.count(s.own_config_id, batch(1, 2, base + 30, 4.0)));
        }
        let (mut aggregator, _journal, replayed) = next_leader(tmp.path());
        assert_eq!(replayed, (1, 2, 0), "one segment, continued");
        assert_eq!(totals(&aggregator.take_all()), [(base, 6.0)].into());
    }

    #[test]
    fn a_clients_batches_in_two_segments_of_one_window_count_whatever_order_they_are_listed_in() {
        let tmp = tempfile::tempdir().unwrap();
        let base = base();
        let config_id = {
            // This protocol's segment holds seq 1 (the leader was killed).
            let killed = shared(tmp.path());
            assert!(killed.count(killed.own_config_id, batch(1, 1, base + 10, 2.0)));
            killed.own_config_id
        };
        // A leader of protocol 2 came next (it does not list `.seg3`) and journaled seq 2 in
        // its own segment of the same window, under an id that is listed first.
        let header = crate::journal::SegmentHeader {
            window_start: base,
            config_id,
            config: config(tmp.path()).push.without_secrets(),
        };
        let mut bytes = crate::protocol::encode(&header).unwrap();
        bytes.extend_from_slice(&crate::protocol::encode_batch_v2_bare(&batch(
            1,
            2,
            base + 20,
            4.0,
        )));
        let name = format!("{base:013}-{config_id:016x}-{}.seg", "0".repeat(32));
        std::fs::write(tmp.path().join("journal").join(name), bytes).unwrap();
        let (mut aggregator, _journal, replayed) = next_leader(tmp.path());
        assert_eq!(replayed, (2, 2, 0));
        assert_eq!(totals(&aggregator.take_all()), [(base, 6.0)].into());
    }

    #[test]
    fn a_segment_whose_payload_is_cached_is_not_counted_again_but_its_batches_are_known() {
        let tmp = tempfile::tempdir().unwrap();
        let base = base();
        {
            // Killed after caching the first window's payload, before deleting its segment.
            let killed = shared(tmp.path());
            count_two_windows(&killed, base);
            let windows = killed.take_windows(None);
            let first = windows.iter().find(|w| w.start_ms == base).unwrap();
            killed
                .cache
                .store(&Outgoing {
                    id: first.segment.clone(),
                    config_id: first.config_id,
                    created_ms: first.start_ms,
                    kind: ExportKind::Push,
                    body_gz: vec![0x1f, 0x8b],
                })
                .unwrap();
        }
        let (mut aggregator, journal, (segments, batches, _)) = next_leader(tmp.path());
        assert_eq!((segments, batches), (1, 1), "only the uncached window");
        assert!(
            aggregator.is_counted(1, 1) && aggregator.is_counted(1, 2),
            "a resend of a cached window's batch is dropped"
        );
        assert_eq!(
            totals(&aggregator.take_all()),
            [(base + INTERVAL_MS, 7.0)].into()
        );
        assert_eq!(
            journal.replay().len(),
            1,
            "the cached window's segment is gone"
        );
    }

    #[test]
    fn the_counted_record_outlives_the_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let base = base();
        {
            // A window pushed and its segment deleted: only the counted record remembers it.
            let killed = shared(tmp.path());
            count_two_windows(&killed, base);
            let counted = killed.counting().aggregator.counted_snapshot();
            Journal::write_counted(&killed.workdir, &counted).unwrap();
            for w in killed.take_windows(None) {
                killed
                    .counting()
                    .journal
                    .remove(w.start_ms, w.config_id, &w.segment);
            }
        }
        let (mut aggregator, _journal, replayed) = next_leader(tmp.path());
        assert_eq!(replayed, (0, 0, 0));
        assert!(aggregator.is_counted(1, 2) && aggregator.is_counted(2, 1));
        assert!(!aggregator.is_counted(1, 3));
        assert!(aggregator.take_all().is_empty());
    }
}
