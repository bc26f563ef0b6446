//! The leader: on a background thread with its own single-threaded tokio runtime, it serves
//! `agent.socket`, counts batches into windows ([`crate::aggregate`]), and every transmission
//! interval pushes the closed windows ([`crate::transmit`]). The leader process's own app data
//! arrives through [`Leader::deliver_local`], not through the socket.
//!
//! Its parts each own their state and are reached through their methods only:
//! - [`connections`]: accepting, the connection tasks ([`connection`]: one each), per-process
//!   slots, client ids bound to processes, the frame budget;
//! - [`counting`]: the aggregator and the journal under one lock (counting, configurations
//!   registered, windows taken, segments dropped, closing);
//! - [`transmission`]: the payload cache, the exporters' memory ([`exports`]), windows held back;
//! - [`tally`]: the agent counts ([`crate::counts`]) gathered between two payloads;
//! - [`totals`]: the cumulative view ([`crate::cumulative`]), added to at each transmission's
//!   commit point, read by scrapes.
//!
//! This module builds them, runs the serving loop ([`serve`]) and the steps of a stop ([`run`]:
//! push while serving on `stop()`, close the socket, then [`hand_over`] or push the rest).
//! Test knobs live in [`knobs`], empty in the shipped build.
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
//! - When a configuration it knows asks for it (`_APPSIGNAL_PROMETHEUS_PORT`), the leader serves
//!   the Prometheus endpoint ([`scrape`]) over its cumulative view ([`totals`]).
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
mod connections;
mod counting;
mod exports;
mod host;
mod knobs;
mod peers;
mod replay;
mod scrape;
mod tally;
mod totals;
mod transmission;
mod watchdog;

use connections::Connections;
use counting::Counting;
pub use exports::{ExportState, ExportsReport};
use knobs::Knobs;
use peers::{Context, Peers};
use replay::replay;
use tally::Tally;
use totals::Totals;
use transmission::Transmission;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aggregate::Aggregator;
use crate::config::Config;
use crate::counts::AgentCounts;
use crate::election::LeaderLock;
use crate::export_config::ExportConfig;
use crate::journal::Journal;
use crate::protocol::{self, Batch};
use crate::transmit::{PayloadCache, Pusher};
use crate::workdir::WorkDir;

pub const MAX_CONNECTIONS: usize = 512;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Client ids bound to processes at once; dead processes' bindings are forgotten beyond that.
pub const MAX_BINDINGS: usize = 4096;
/// Threads that journal and count batches (off the runtime thread, so a slow disk stalls no read).
const COUNTING_THREADS: usize = 2;

/// Whether the leader serves, and how it stopped: read by its owner (the sender thread), set by the
/// serving loop, the connections (a newer library asks for a hand-over) and the panic guard.
pub(super) struct Status {
    /// Set once the leader stopped serving (shutdown or lost lock).
    stopped: AtomicBool,
    /// Set when it stepped down for a newer library: its process should not retake the lock at once.
    handed_over: AtomicBool,
    /// Notified by a connection from a newer library.
    handover: tokio::sync::Notify,
    /// Woken when this leader stops serving, so that its owner (the sender) notices at once.
    on_stop: Option<Arc<dyn crate::metrics::Wake>>,
}

impl Status {
    fn new(on_stop: Option<Arc<dyn crate::metrics::Wake>>) -> Status {
        Status {
            stopped: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            handover: tokio::sync::Notify::new(),
            on_stop,
        }
    }

    /// A client of a newer library connected: this leader should hand over.
    pub(super) fn request_handover(&self) {
        self.handover.notify_one();
    }

    /// From here on this process is no longer the leader, even while it finishes its last push.
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Stopped, and the owner told.
    fn stop_and_wake(&self) {
        self.stop();
        if let Some(waker) = &self.on_stop {
            waker.wake();
        }
    }
}

/// Ends leadership when dropped, also while unwinding from a panic: counting stops before the lock
/// (dropped after this guard) is released, so that this process never journals beside the next leader.
struct StopCounting {
    counting: Arc<Counting>,
    status: Arc<Status>,
}

impl Drop for StopCounting {
    fn drop(&mut self) {
        self.counting.close();
        self.status.stop_and_wake();
    }
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
fn export_targets(config: &ExportConfig) -> String {
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

impl Exit {
    /// Until when the leader may take to stop.
    fn deadline(&self) -> Instant {
        match self {
            Exit::Shutdown(d) | Exit::LostLock(d) | Exit::HandOver(d) | Exit::Failed(d) => *d,
        }
    }

    /// Whether this way out leaves the journal to the next leader instead of pushing. On stop()
    /// the leader pushes even when other processes are connected: leaving the journal to them
    /// raced with processes that were stopping at the same moment (a SIGTERM to a whole server),
    /// which then left it unpushed until the next start. Pushing costs stop time, bounded by the
    /// stop timeout; the `counted` record makes resends to the next leader count once.
    fn hands_over(&self) -> bool {
        matches!(self, Exit::HandOver(_) | Exit::Failed(_))
    }
}

/// The leader's parts, as its thread serves with them.
struct Parts {
    config: Config,
    workdir: WorkDir,
    status: Arc<Status>,
    counting: Arc<Counting>,
    transmission: Arc<Transmission>,
    totals: Arc<Totals>,
    /// What every connection task works with (the counting and the status above among it).
    connection: Arc<Context>,
    tally: Arc<Tally>,
    knobs: Arc<Knobs>,
}

/// Handle of a running leader, owned by the process's sender thread.
pub struct Leader {
    description: String,
    own_config_id: u64,
    status: Arc<Status>,
    counting: Arc<Counting>,
    peers: Arc<Peers>,
    exports: Arc<ExportState>,
    shutdown: watch::Sender<Option<Instant>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Leader {
    /// What this leader does, for the log line its owner writes once it has taken the role.
    pub fn description(&self) -> String {
        self.description.clone()
    }

    /// Replays the journal left by the previous leader, binds `agent.socket` (removing a stale
    /// one: we hold the lock) and starts serving.
    /// `on_stop` is woken when the leader stops serving (lost lock, panic, hand-over).
    pub fn start(
        config: &Config,
        workdir: &WorkDir,
        lock: LeaderLock,
        on_stop: Option<Arc<dyn crate::metrics::Wake>>,
    ) -> Result<Leader> {
        let pusher = Pusher::new(config)?;
        let mut aggregator = Aggregator::new(config.transmission_interval);
        // The first configuration always fits.
        let own_config = config.export_config();
        let own_config_id = aggregator
            .register(&own_config)
            .unwrap_or_else(|| own_config.id());
        let mut journal = Journal::new(workdir.clone());
        let cache = PayloadCache::new(
            workdir.clone(),
            config.payload_cache_max_files,
            config.payload_cache_max_bytes,
        );
        let mut cumulative = totals::load(workdir, config.cumulative_expiry);
        let (segments, batches, poisoned) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                replay(
                    config,
                    workdir,
                    &mut aggregator,
                    &mut journal,
                    &cache,
                    &mut cumulative,
                )
            }))
            .map_err(|_| anyhow!("replaying the journal panicked (a bug in libappsignal)"))?;
        if segments > 0 {
            tracing::info!("replayed {segments} journal segments ({batches} batches) left by the previous leader");
        }
        let parts = Parts::new(
            config,
            workdir,
            aggregator,
            journal,
            cumulative,
            own_config_id,
            pusher,
            cache,
            poisoned,
            on_stop,
        );
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parts.counting.ingest_spools()
        }))
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
        let description = format!(
            "listening on {}, exporting every {} ms to {}",
            socket_path.display(),
            config.transmission_interval.as_millis(),
            export_targets(&config.export_config())
        );
        let status = Arc::clone(&parts.status);
        let counting = Arc::clone(&parts.counting);
        let peers = Arc::clone(&parts.connection.peers);
        let exports = parts.transmission.exports();
        let (shutdown, done) = spawn_thread(parts, lock)?;
        Ok(Leader {
            description,
            own_config_id,
            status,
            counting,
            peers,
            exports,
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
            .peers
            .bind(batch.client_id, Some(std::process::id() as i32));
        if self.counting.count(self.own_config_id, batch) {
            Ok(true)
        } else if self.counting.is_open() && self.is_serving() {
            Ok(false)
        } else {
            Err(anyhow!("the leader has stopped counting"))
        }
    }

    /// Whether the leader still serves (false after it lost its lock or directory, or handed over).
    pub fn is_serving(&self) -> bool {
        !self.status.stopped.load(Ordering::Acquire)
    }

    /// What its exporters remember (refused credentials, rejected payloads), for diagnose.
    pub fn exports(&self) -> Arc<ExportState> {
        Arc::clone(&self.exports)
    }

    /// Whether it stepped down for a newer library.
    pub fn handed_over(&self) -> bool {
        self.status.handed_over.load(Ordering::Acquire)
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

impl Parts {
    /// The owners, over the replayed `aggregator` and `journal`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: &Config,
        workdir: &WorkDir,
        aggregator: Aggregator,
        journal: Journal,
        cumulative: crate::cumulative::Cumulative,
        own_config_id: u64,
        pusher: Pusher,
        cache: PayloadCache,
        poisoned: u64,
        on_stop: Option<Arc<dyn crate::metrics::Wake>>,
    ) -> Parts {
        let status = Arc::new(Status::new(on_stop));
        let knobs: Arc<Knobs> = Arc::default();
        let tally = Arc::new(Tally::new(AgentCounts {
            poisoned_batches: poisoned,
            ..AgentCounts::default()
        }));
        let counting = Arc::new(Counting::new(
            aggregator,
            journal,
            &config.export_config(),
            own_config_id,
            workdir,
            Arc::clone(&tally),
            Arc::clone(&knobs),
        ));
        let totals = Arc::new(Totals::new(
            cumulative,
            workdir,
            Arc::clone(&counting),
            Arc::clone(&tally),
        ));
        let transmission = Arc::new(Transmission::new(
            config,
            workdir,
            pusher,
            cache,
            Arc::clone(&counting),
            Arc::clone(&tally),
            Arc::clone(&totals),
        ));
        let connection = Arc::new(Context {
            peers: Arc::default(),
            counting: Arc::clone(&counting),
            tally: Arc::clone(&tally),
            status: Arc::clone(&status),
            library_version: config.library_version.clone(),
            protocols: config.protocols,
            owner_only: !workdir.world_accessible(),
        });
        Parts {
            config: config.clone(),
            workdir: workdir.clone(),
            status,
            counting,
            transmission,
            totals,
            connection,
            tally,
            knobs,
        }
    }
}

/// Starts the leader thread: its runtime binds `agent.socket` (waited for here) and serves until
/// the returned sender says stop; the receiver hears when the thread is done.
fn spawn_thread(
    parts: Parts,
    lock: LeaderLock,
) -> Result<(
    watch::Sender<Option<Instant>>,
    std::sync::mpsc::Receiver<()>,
)> {
    let socket_path = parts.workdir.socket_path();
    let (shutdown, shutdown_rx) = watch::channel(None);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<()>>();
    let (done_tx, done) = std::sync::mpsc::channel();
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
                    let listener = match bind(&parts.workdir) {
                        Ok(listener) => {
                            let _ = bound_tx.send(Ok(()));
                            listener
                        }
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    };
                    run(parts, listener, lock, shutdown_rx).await;
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
    Ok((shutdown, done))
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

/// The leader's tasks beside the connections: the transmission loop, host metrics, the intake
/// listeners. They end when told to stop.
struct Background {
    /// `None` once it ended (or was taken to be awaited by the last push).
    transmitter: Option<JoinHandle<()>>,
    host_metrics: Option<JoinHandle<()>>,
    listeners: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Background {
    fn start(parts: &Parts) -> Background {
        let (stop, stopped) = watch::channel(false);
        // Every task here is spawned boxed, as the listeners' connection tasks are: one type of
        // task, so the runtime's code around a task is in the library once, not once per loop.
        let transmitter = spawn(Arc::clone(&parts.transmission).run(stopped.clone()));
        let host_metrics = parts.config.enable_host_metrics.then(|| {
            spawn(host::host_metrics_loop(
                Arc::clone(&parts.counting),
                parts.config.hostname.clone(),
                parts.config.host_metrics_interval,
                stopped.clone(),
            ))
        });
        let mut listeners = spawn_listeners(parts, &stopped);
        listeners.push(spawn(scrape::run(
            Arc::clone(&parts.totals),
            Arc::clone(&parts.counting),
            stopped.clone(),
        )));
        Background {
            transmitter: Some(transmitter),
            host_metrics,
            listeners,
            stop,
        }
    }

    /// Tells every task to stop (the transmission loop after the round it is in).
    fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the tasks to end, until `deadline`.
    async fn join(self, deadline: Instant) {
        let tasks = self.transmitter.into_iter().chain(self.host_metrics);
        for task in tasks.chain(self.listeners) {
            let _ = tokio::time::timeout_at(deadline.into(), task).await;
        }
    }
}

/// Spawns `task` boxed (see [`Background::start`]).
fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(crate::intake::boxed(task))
}

/// Starts the StatsD and OTLP/HTTP listeners that are configured ([`crate::intake`]); their data
/// counts as the leader's own configuration's. They end when `background` fires.
fn spawn_listeners(parts: &Parts, background: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let listeners = &parts.config.listeners;
    let counting = Arc::clone(&parts.counting);
    let sink: crate::intake::Sink = Arc::new(move |batch| counting.count_own(batch));
    let mut tasks = Vec::new();
    if let Some(addr) = listeners.statsd {
        tasks.push(spawn(crate::intake::udp::run(
            addr,
            Arc::clone(&sink),
            parts.tally.intake(),
            background.clone(),
        )));
    }
    if let Some(addr) = listeners.otlp_http {
        tasks.push(spawn(crate::intake::otlp_http::run(
            addr,
            Arc::clone(&sink),
            parts.tally.intake(),
            background.clone(),
        )));
    }
    tasks
}

/// The leader thread: serves until a reason to stop, then stops by the policy of that reason
/// (see the module documentation): a shutdown pushes while still serving, every stop closes the
/// socket and lets the connections finish, then either hands the journal over or pushes the rest.
async fn run(
    parts: Parts,
    listener: interprocess::local_socket::tokio::Listener,
    lock: LeaderLock,
    mut shutdown: watch::Receiver<Option<Instant>>,
) {
    // Declared after `lock` (a parameter, dropped last): counting stops before the lock is released,
    // on every way out of here, a panic included.
    let _stop_counting = StopCounting {
        counting: Arc::clone(&parts.counting),
        status: Arc::clone(&parts.status),
    };
    let mut background = Background::start(&parts);
    let mut connections = Connections::new(listener, Arc::clone(&parts.connection), &parts.workdir);
    let mut watchdog = watchdog::Watchdog::new(lock.path(), parts.workdir.path());
    let exit = serve(
        &parts,
        &lock,
        &mut connections,
        &mut background,
        &mut watchdog,
        &mut shutdown,
    )
    .await;
    let deadline = exit.deadline();
    background.stop();
    if matches!(exit, Exit::Shutdown(_)) {
        push_while_serving(
            &parts,
            &lock,
            &mut connections,
            &mut background,
            &mut watchdog,
            deadline,
        )
        .await;
    }
    parts.status.stop();
    let connected = connections.close(&lock, deadline).await;
    background.join(deadline).await;
    parts.counting.close();
    // Handing over means leaving the journal to the next leader: only when it is still there.
    let journal_intact = lock.still_at_path() && parts.workdir.journal_dir().is_dir();
    if journal_intact && exit.hands_over() {
        hand_over(&parts.status, &exit, lock);
        return;
    }
    // After a stop: what arrived while the push waited (cached now, pushed if time is left).
    parts.transmission.transmit_all(deadline).await;
    drop(lock);
    tracing::info!("stopped leading ({connected} processes were still connected)");
}

/// Accepts connections until a reason to stop: `stop()`, a newer library, the transmission task
/// ended, or the lock file or directory gone (what the watchdog looks at).
async fn serve(
    parts: &Parts,
    lock: &LeaderLock,
    connections: &mut Connections,
    background: &mut Background,
    watchdog: &mut watchdog::Watchdog,
    shutdown: &mut watch::Receiver<Option<Instant>>,
) -> Exit {
    let stop_timeout = parts.config.stop_timeout;
    loop {
        connections.reap();
        let Some(running) = background.transmitter.as_mut() else {
            return Exit::Failed(Instant::now() + stop_timeout);
        };
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Exit::Shutdown((*shutdown.borrow()).unwrap_or_else(Instant::now)),
            _ = parts.status.handover.notified() => return Exit::HandOver(Instant::now() + stop_timeout),
            ended = running => {
                background.transmitter = None;
                tracing::error!(
                    "the transmission task ended ({}); stopping as leader, the journal stays for the next leader",
                    ended.err().map_or_else(|| "without an error".to_owned(), |e| e.to_string())
                );
                return Exit::Failed(Instant::now() + stop_timeout);
            }
            () = watchdog.wait(parts.knobs.check_now()) => {
                parts.knobs.panic_if_requested();
                if !lock.still_at_path() || !parts.workdir.still_exists() {
                    tracing::warn!(
                        "{} or its directory was deleted or replaced: stopping as leader so that a new election runs",
                        lock.path().display()
                    );
                    return Exit::LostLock(Instant::now() + stop_timeout);
                }
            }
            (permit, accepted) = connections.accept() => connections.serve(permit, accepted).await,
        }
    }
}

/// After `stop()`: pushes what was counted while still accepting and counting. The clients may be
/// stopping too (a deploy stops every process at once), and their last batches must find a leader
/// even when the push waits for a slow or hung endpoint until the deadline. A lost lock or
/// directory stops accepting at once.
async fn push_while_serving(
    parts: &Parts,
    lock: &LeaderLock,
    connections: &mut Connections,
    background: &mut Background,
    watchdog: &mut watchdog::Watchdog,
    deadline: Instant,
) {
    let transmitter = background.transmitter.take();
    let push = async {
        if let Some(task) = transmitter {
            let _ = tokio::time::timeout_at(deadline.into(), task).await;
        }
        parts.transmission.transmit_all(deadline).await;
    };
    tokio::pin!(push);
    loop {
        connections.reap();
        tokio::select! {
            biased;
            () = &mut push => break,
            () = watchdog.wait(parts.knobs.check_now()) => {
                if !lock.still_at_path() || !parts.workdir.still_exists() {
                    break;
                }
            }
            (permit, accepted) = connections.accept() => connections.serve(permit, accepted).await,
        }
    }
}

/// Leaves everything counted in the journal to the next leader, which replays and pushes it.
fn hand_over(status: &Status, exit: &Exit, lock: LeaderLock) {
    status
        .handed_over
        .store(matches!(exit, Exit::HandOver(_)), Ordering::Release);
    status.stop();
    drop(lock);
    tracing::info!("stopped leading: the next leader takes over the journal");
}

/// The leader's counting ([`Counting::count`]) and replay ([`replay`]) in-process, on a real journal
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

    /// What `Leader::start` builds for counting, without the thread and the socket.
    struct Fixture {
        config: Config,
        workdir: WorkDir,
        counting: Counting,
        cache: PayloadCache,
    }

    fn shared(dir: &std::path::Path) -> Fixture {
        let config = config(dir);
        let workdir = WorkDir::prepare(dir, false).unwrap();
        let mut aggregator = Aggregator::new(config.transmission_interval);
        let own_config_id = aggregator.register(&config.export_config()).unwrap();
        let counting = Counting::new(
            aggregator,
            Journal::new(workdir.clone()),
            &config.export_config(),
            own_config_id,
            &workdir,
            Arc::default(),
            Arc::default(),
        );
        Fixture {
            cache: PayloadCache::new(workdir.clone(), 100, 1 << 20),
            counting,
            workdir,
            config,
        }
    }

    /// A new leader on the same directory: replays what is there. Returns it and what replay said.
    fn next_leader(dir: &std::path::Path) -> (Aggregator, Journal, (usize, usize, u64)) {
        let (aggregator, journal, _, replayed) = next_leader_with_totals(dir);
        (aggregator, journal, replayed)
    }

    /// [`next_leader`], with its cumulative state.
    fn next_leader_with_totals(
        dir: &std::path::Path,
    ) -> (
        Aggregator,
        Journal,
        crate::cumulative::Cumulative,
        (usize, usize, u64),
    ) {
        let config = config(dir);
        let workdir = WorkDir::prepare(dir, false).unwrap();
        let mut aggregator = Aggregator::new(config.transmission_interval);
        aggregator.register(&config.export_config());
        let mut journal = Journal::new(workdir.clone());
        let cache = PayloadCache::new(workdir.clone(), 100, 1 << 20);
        let mut cumulative = totals::load(&workdir, config.cumulative_expiry);
        let replayed = replay(
            &config,
            &workdir,
            &mut aggregator,
            &mut journal,
            &cache,
            &mut cumulative,
        );
        (aggregator, journal, cumulative, replayed)
    }

    /// The `requests` total in the cumulative state.
    fn cumulative_requests(cumulative: &crate::cumulative::Cumulative) -> Option<f64> {
        let live = cumulative.live(&[]);
        let series = live.first()?.series.first()?;
        assert_eq!(series.key.name, "requests");
        match *series.value {
            crate::cumulative::Value::Counter { total, .. } => Some(total),
            _ => None,
        }
    }

    /// The transmission's commit point without the transmission: every window is out.
    fn commit_all(workdir: &WorkDir, config: &Config, counting: &Arc<Counting>) {
        let totals = Totals::new(
            totals::load(workdir, config.cumulative_expiry),
            workdir,
            Arc::clone(counting),
            Arc::default(),
        );
        let windows = counting.take_windows(None);
        Journal::write_counted(workdir, &counting.counted_snapshot()).unwrap();
        for window in windows {
            for segment in totals.commit(&window) {
                counting.drop_segment_of(&segment);
                totals.segment_gone(&segment.id);
            }
        }
        assert_eq!(totals.with_state(cumulative_requests), Some(12.0));
    }

    #[test]
    fn the_live_view_shows_a_new_series_from_the_start_the_state_will_keep() {
        let tmp = tempfile::tempdir().unwrap();
        let s = shared(tmp.path());
        let base = base();
        let counting = Arc::new(s.counting);
        // A series new in a taken window (being turned into payloads) and in the open one after it.
        assert!(counting.count_own(batch(1, 1, base + 10, 2.0)));
        let taken = counting.take_windows(Some(base + INTERVAL_MS));
        assert_eq!(taken.len(), 1);
        assert!(counting.count_own(batch(1, 2, base + INTERVAL_MS + 5, 7.0)));
        let totals = Totals::new(
            totals::load(&s.workdir, s.config.cumulative_expiry),
            &s.workdir,
            Arc::clone(&counting),
            Arc::default(),
        );
        let own = s.config.export_config();
        let live = |totals: &Totals| {
            totals.with_live_of(&own.app_name, &own.environment, true, |series| {
                series
                    .iter()
                    .map(|l| (l.start_ms, (*l.value).clone()))
                    .collect::<Vec<_>>()
            })
        };
        let counter = |total| crate::cumulative::Value::Counter {
            total,
            monotonic: true,
        };
        // The taken window is added first: its start is the series' start, before and after.
        assert_eq!(live(&totals), vec![(base, counter(9.0))]);
        totals.commit(&taken[0]);
        assert_eq!(live(&totals), vec![(base, counter(9.0))]);
        assert_eq!(
            totals.with_live_of("another app", &own.environment, true, |series| series.len()),
            0
        );
        // Without the open windows: the committed totals only.
        assert!(counting.count_own(batch(1, 3, base + INTERVAL_MS + 6, 1.0)));
        let committed = totals.with_live_of(&own.app_name, &own.environment, false, |series| {
            series
                .iter()
                .map(|l| (l.start_ms, (*l.value).clone()))
                .collect::<Vec<_>>()
        });
        assert_eq!(committed, vec![(base, counter(2.0))]);
    }

    #[test]
    fn the_cumulative_state_continues_across_leaders_and_counts_each_window_once() {
        let tmp = tempfile::tempdir().unwrap();
        let base = base();
        {
            let s = shared(tmp.path());
            count_two_windows(&s, base);
            let counting = Arc::new(s.counting);
            commit_all(&s.workdir, &s.config, &counting);
            // Killed after the commit: the segments are gone, the state holds both windows.
        }
        let (mut aggregator, journal, cumulative, (segments, ..)) =
            next_leader_with_totals(tmp.path());
        assert_eq!(segments, 0);
        assert!(journal.replay().is_empty());
        assert!(aggregator.take_all().is_empty());
        assert_eq!(cumulative_requests(&cumulative), Some(12.0));
        // Resends of those batches are recognised (the counted record), so nothing counts twice.
        assert!(aggregator.is_counted(1, 2) && aggregator.is_counted(2, 1));
    }

    #[test]
    fn a_cached_window_not_yet_in_the_cumulative_state_is_added_by_the_next_leader_once() {
        let tmp = tempfile::tempdir().unwrap();
        let base = base();
        {
            // Killed after caching the first window's payload, before adding it to the state.
            let killed = shared(tmp.path());
            count_two_windows(&killed, base);
            let windows = killed.counting.take_windows(None);
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
        let (mut aggregator, journal, cumulative, (segments, ..)) =
            next_leader_with_totals(tmp.path());
        assert_eq!(segments, 1, "the uncached window is adopted");
        assert_eq!(cumulative_requests(&cumulative), Some(5.0));
        assert_eq!(
            journal.replay().len(),
            1,
            "the added window's segment is gone"
        );
        assert_eq!(
            totals(&aggregator.take_all()),
            [(base + INTERVAL_MS, 7.0)].into()
        );
        // Killed again before transmitting: the next leader has the same state, adopts the same.
        let (mut aggregator, _, cumulative, (segments, ..)) = next_leader_with_totals(tmp.path());
        assert_eq!(segments, 1);
        assert_eq!(cumulative_requests(&cumulative), Some(5.0));
        assert_eq!(
            totals(&aggregator.take_all()),
            [(base + INTERVAL_MS, 7.0)].into()
        );
    }

    #[test]
    fn a_window_added_but_whose_segment_was_not_deleted_is_not_added_again() {
        let tmp = tempfile::tempdir().unwrap();
        let base = base();
        {
            let s = shared(tmp.path());
            count_two_windows(&s, base);
            // Added and saved, killed before the segments were deleted.
            let mut cumulative = totals::load(&s.workdir, s.config.cumulative_expiry);
            for w in s.counting.take_windows(None) {
                let added = crate::cumulative::WindowRef {
                    app: &w.config.app_name,
                    env: &w.config.environment,
                    start_ms: w.start_ms,
                    metrics: &w.metrics,
                };
                cumulative.add_window(added, &w.segment, crate::now_ms());
            }
            cumulative.save(&s.workdir, crate::now_ms()).unwrap();
        }
        let (mut aggregator, journal, cumulative, (segments, ..)) =
            next_leader_with_totals(tmp.path());
        assert_eq!(segments, 0, "both windows are in the state: done");
        assert!(journal.replay().is_empty());
        assert!(aggregator.take_all().is_empty());
        assert!(aggregator.is_counted(1, 2) && aggregator.is_counted(2, 1));
        assert_eq!(cumulative_requests(&cumulative), Some(12.0));
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
    fn count_two_windows(s: &Fixture, base: u64) {
        assert!(s.counting.count_own(batch(1, 1, base + 10, 2.0)));
        assert!(s.counting.count_own(batch(1, 2, base + 20, 3.0)));
        assert!(s
            .counting
            .count_own(batch(2, 1, base + INTERVAL_MS + 5, 7.0)));
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
        assert!(s.counting.count_own(batch(1, 2, base + 20, 3.0)));
        let windows = s.counting.take_windows(None);
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
        assert!(!s
            .counting
            .count(s.counting.own_config_id() ^ 1, batch(1, 1, base, 1.0)));
        s.counting.close();
        assert!(!s.counting.count_own(batch(1, 1, base, 1.0)));
        // Neither is counted nor journaled: the client keeps both.
        assert!(s.counting.take_windows(None).is_empty());
        assert!(s.counting.state_in_test().journal.replay().is_empty());
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
            assert!(killed.counting.count_own(batch(1, 1, base + 10, 2.0)));
        }
        // Replayed into a serving leader, then a new batch of the same window, then killed again.
        {
            let s = shared(tmp.path());
            let mut state = s.counting.state_in_test();
            let counting::State {
                aggregator,
                journal,
                ..
            } = &mut *state;
            let mut cumulative = totals::load(&s.workdir, s.config.cumulative_expiry);
            let replayed = replay(
                &s.config,
                &s.workdir,
                aggregator,
                journal,
                &s.cache,
                &mut cumulative,
            );
            assert_eq!(replayed, (1, 1, 0));
            drop(state);
            assert!(s.counting.count_own(batch(1, 2, base + 30, 4.0)));
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
            assert!(killed.counting.count_own(batch(1, 1, base + 10, 2.0)));
            killed.counting.own_config_id()
        };
        // A leader of protocol 2 came next (it does not list `.seg3`) and journaled seq 2 in
        // its own segment of the same window, under an id that is listed first.
        let header = crate::journal::SegmentHeader {
            window_start: base,
            config_id,
            config: config(tmp.path()).export_config().without_secrets(),
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
            let windows = killed.counting.take_windows(None);
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
            let counted = killed.counting.counted_snapshot();
            Journal::write_counted(&killed.workdir, &counted).unwrap();
            for w in killed.counting.take_windows(None) {
                killed.counting.drop_segment(&w);
            }
        }
        let (mut aggregator, _journal, replayed) = next_leader(tmp.path());
        assert_eq!(replayed, (0, 0, 0));
        assert!(aggregator.is_counted(1, 2) && aggregator.is_counted(2, 1));
        assert!(!aggregator.is_counted(1, 3));
        assert!(aggregator.take_all().is_empty());
    }
}
