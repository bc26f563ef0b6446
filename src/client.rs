//! The per-process sender thread: every flush period it takes the app threads' pre-aggregate,
//! turns it into numbered batches, and hands them to the leader: over `agent.socket` when another
//! process leads, or directly when this process won the election. A batch leaves the pending queue
//! only when the leader acknowledged it (it is then counted), so a lost leader costs nothing: the
//! pending batches go to the next one.
//!
//! Connecting or leading: when there is no link, the thread first tries the lock (winning makes this
//! process the leader), else connects to the socket. Failures back off exponentially from 5 ms to
//! 1 s with jitter: no busy loop, no thundering herd.
//!
//! Between flushes the thread sleeps in `poll()` on its connection and a wake-up pipe, so that a
//! leader's death (its socket closes) wakes it at once: it re-runs the election within
//! milliseconds instead of at its next flush. When everything is handed over and the app records
//! nothing, it sleeps without a timeout until the first record (which writes to the pipe, once per
//! flush period) or its connection's hang-up: an idle client does not wake at all. A leader
//! process's sender checks its leader every [`LEADER_IDLE_CHECK`] instead.
//!
//! Bounds: at most [`MAX_PENDING_BATCHES`] unacknowledged batches; beyond that the oldest is dropped,
//! logged and counted (in diagnose, and in the next batch: the dropped batch and the drop counts it
//! carried, so that the payload reports them). Each batch stays under [`BATCH_BUDGET_BYTES`]
//! (estimated), far below the protocol's frame limit; a single metric key over [`MAX_ENTRY_BYTES`]
//! is dropped and counted. Connecting to the leader, each write and each read wait at most
//! [`IO_TIMEOUT`] (a wedged leader whose backlog is full does not hold the thread).
//!
//! Stopping: the thread keeps handing batches over until the stop deadline. What it still holds
//! then (its leader is frozen, or stuck) is written to a spool file in `journal/`, where the next
//! leader (or the current one, at its next transmission) counts it.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::net::UnixStream;

use serde::Serialize;

use crate::agent::{set_role, Role};
use crate::config::Config;
use crate::election;
use crate::journal::Journal;
use crate::leader::Leader;
use crate::log::{suppressed_note, RateLimit};
use crate::metrics::{LocalMetrics, Taken, Wake};
use crate::protocol::{self, Batch, GaugeValue, Hello, LeaderMessage, MetricKey, PROTOCOL_VERSION};
use crate::workdir::WorkDir;

pub const MAX_PENDING_BATCHES: usize = 1_000;
pub const BATCH_BUDGET_BYTES: usize = 1024 * 1024;
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Longest wait for the leader's answer to one frame.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle leader process's sender checks that its leader still serves.
pub const LEADER_IDLE_CHECK: Duration = Duration::from_secs(1);
/// Serialised size we assume for one distribution sketch (an upper bound for typical data).
const SKETCH_ESTIMATE_BYTES: usize = 16 * 1024;

static PENDING_DROP_LOG: RateLimit = RateLimit::new(10_000);

/// Borrowed twin of [`protocol::ClientMessage`]: same variant names, same CBOR, no clone to send.
#[derive(Serialize)]
enum ClientMessageRef<'a> {
    Hello(&'a Hello),
    Batch(&'a Batch),
}

/// A connection to the leader of another process.
struct Connection {
    /// Declared first so that it is dropped (unregistered) before `stream` closes.
    _fork_guard: Option<crate::fork::Registered>,
    stream: UnixStream,
    buf: Vec<u8>,
    leader_pid: u32,
}

/// Why connecting failed.
enum ConnectError {
    /// The leader refused us (protocol): retrying will not help.
    Refused(String),
    /// The leader steps down for us (we run a newer library): take the lock.
    HandingOver(String),
    Other(anyhow::Error),
}

impl Connection {
    fn open(
        workdir: &WorkDir,
        hello: &Hello,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        let path = workdir.socket_path();
        let stream = connect(&path, timeout)
            .with_context(|| format!("cannot connect to {}", path.display()))
            .map_err(ConnectError::Other)?;
        let mut conn = Connection {
            _fork_guard: None,
            stream,
            buf: Vec::new(),
            leader_pid: 0,
        };
        conn._fork_guard = conn.raw_fd().map(crate::fork::Registered::new);
        conn.write(&ClientMessageRef::Hello(hello))
            .map_err(ConnectError::Other)?;
        match conn.read().map_err(ConnectError::Other)? {
            LeaderMessage::Welcome { leader_pid, .. } => {
                conn.leader_pid = leader_pid;
                Ok(conn)
            }
            LeaderMessage::Refused { reason } => Err(ConnectError::Refused(reason)),
            LeaderMessage::HandingOver { reason } => Err(ConnectError::HandingOver(reason)),
            other => Err(ConnectError::Other(anyhow!(
                "unexpected answer to the handshake: {other:?}"
            ))),
        }
    }

    fn write(&mut self, message: &ClientMessageRef<'_>) -> Result<()> {
        let frame = protocol::encode(message)?;
        self.stream
            .write_all(&frame)
            .context("cannot write to the leader")
    }

    fn read(&mut self) -> Result<LeaderMessage> {
        loop {
            if let Some((message, used)) = protocol::decode::<LeaderMessage>(&self.buf)? {
                self.buf.drain(..used);
                return Ok(message);
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .context("cannot read from the leader")?;
            if n == 0 {
                bail!("the leader closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.stream.as_fd().as_raw_fd())
    }

    /// Whether the leader closed the connection (checked without blocking or consuming data).
    fn is_closed(&self) -> bool {
        let Some(fd) = self.raw_fd() else {
            return false;
        };
        let mut byte = 0u8;
        // SAFETY: fd is our open socket; the buffer is one valid byte; MSG_PEEK consumes nothing.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return true;
        }
        n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
    }

    /// Sends a batch and waits for its acknowledgement.
    fn send(&mut self, batch: &Batch) -> Result<()> {
        self.write(&ClientMessageRef::Batch(batch))?;
        loop {
            match self.read()? {
                LeaderMessage::Ack { seq } if seq == batch.seq => return Ok(()),
                LeaderMessage::Ack { .. } => continue,
                LeaderMessage::Refused { reason } => bail!("the leader refused a batch: {reason}"),
                LeaderMessage::Welcome { .. } => bail!("unexpected second welcome"),
                LeaderMessage::HandingOver { reason } => bail!("the leader hands over: {reason}"),
            }
        }
    }
}

/// Connects to the Unix socket at `path`, waiting at most `timeout` (also for room in a full
/// backlog: a Unix socket's `connect` waits for the send timeout), which then also bounds every
/// read and write.
fn connect(path: &std::path::Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: creating a socket has no preconditions.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that we alone own; the stream closes it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un of which `len` bytes are used; fd is our socket.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

enum Link {
    None,
    Remote(Connection),
    Local(Leader),
}

/// Exponential backoff with jitter.
struct Backoff {
    delay: Duration,
    rng: u64,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    fn new(seed: u64) -> Self {
        Backoff {
            delay: Self::MIN,
            rng: seed | 1,
        }
    }

    fn reset(&mut self) {
        self.delay = Self::MIN;
    }

    /// The next wait: the current delay ±25 %, then the delay doubles.
    fn next(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.delay.as_micros() as u64;
        let jitter = self.rng % (base / 2 + 1);
        self.delay = (self.delay * 2).min(Self::MAX);
        Duration::from_micros(base - base / 4 + jitter)
    }
}

/// What the app side asks of the sender thread.
#[derive(Default)]
struct Signal {
    stop_deadline: Option<Instant>,
}

/// How far the sender got; read by diagnose. Updated under the same lock as the take of the
/// pre-aggregate, so "idle" cannot miss data that was taken but not yet queued.
#[derive(Default, Clone, Copy)]
pub struct Progress {
    pub assigned_seq: u64,
    pub acked_seq: u64,
    pub pending_batches: usize,
    pub dropped_batches: u64,
}

/// A pipe whose only job is to wake the sender's `poll()`.
struct WakePipe {
    _fork_guards: [crate::fork::Registered; 2],
    read: OwnedFd,
    write: OwnedFd,
}

impl WakePipe {
    fn new() -> Result<WakePipe> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot create the sender's wake-up pipe");
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors that we alone own.
        Ok(unsafe {
            WakePipe {
                _fork_guards: [
                    crate::fork::Registered::new(fds[0]),
                    crate::fork::Registered::new(fds[1]),
                ],
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }

    fn wake(&self) {
        // SAFETY: writing one byte from a valid buffer to our pipe; a full pipe (EAGAIN) is fine.
        unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        // SAFETY: reading into a valid buffer from our non-blocking pipe until it is empty.
        while unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {
        }
    }
}

impl Wake for WakePipe {
    fn wake(&self) {
        WakePipe::wake(self);
    }
}

/// Sleeps until `timeout` (none: no timeout), a wake-up, or activity (data or hang-up) on `conn`.
/// Returns whether `conn` showed activity.
fn sleep_on(pipe: &WakePipe, conn: Option<RawFd>, timeout: Option<Duration>) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: pipe.read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: conn.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: fds is a valid array of 2 pollfd; a negative fd is ignored by poll.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if n > 0 && fds[0].revents != 0 {
        pipe.drain();
    }
    n > 0 && conn.is_some() && fds[1].revents != 0
}

struct Shared {
    config: Config,
    workdir: Mutex<WorkDir>,
    metrics: &'static LocalMetrics,
    client_id: u64,
    signal: Mutex<Signal>,
    pipe: Arc<WakePipe>,
    progress: Mutex<Progress>,
}

/// Handle of the sender thread, owned by the agent.
pub struct Sender {
    shared: Arc<Shared>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Sender {
    /// Where the sender is, and whether everything recorded so far is acknowledged.
    pub fn progress(&self) -> (Progress, bool) {
        let progress = *self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let idle = progress.pending_batches == 0
            && progress.assigned_seq == progress.acked_seq
            && self.shared.metrics.is_empty();
        (progress, idle)
    }

    pub fn start(
        config: Config,
        workdir: WorkDir,
        metrics: &'static LocalMetrics,
        client_id: u64,
    ) -> Result<Sender> {
        let shared = Arc::new(Shared {
            config,
            workdir: Mutex::new(workdir),
            metrics,
            client_id,
            signal: Mutex::new(Signal::default()),
            pipe: Arc::new(WakePipe::new()?),
            progress: Mutex::new(Progress::default()),
        });
        let (done_tx, done) = std::sync::mpsc::channel();
        metrics.set_waker(Some(Arc::clone(&shared.pipe) as Arc<dyn Wake>));
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("appsignal-sender".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    State::new(&thread_shared).run(&thread_shared)
                }));
                if result.is_err() {
                    tracing::error!("the sender thread panicked; this process stops reporting");
                }
                thread_shared.metrics.set_waker(None);
                let _ = done_tx.send(());
            })
            .context("cannot spawn the sender thread")?;
        Ok(Sender { shared, done })
    }

    /// Flushes what the app recorded to the leader (or, as leader, pushes it) and stops, waiting
    /// until shortly after `deadline` at most.
    pub fn stop(self, deadline: Instant) {
        {
            let mut signal = self.shared.signal.lock().unwrap_or_else(|e| e.into_inner());
            signal.stop_deadline = Some(deadline);
        }
        self.shared.pipe.wake();
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1500);
        if self.done.recv_timeout(wait).is_err() {
            tracing::warn!(
                "the sender thread did not finish within the stop timeout; leaving it behind"
            );
        }
    }
}

struct State {
    pending: VecDeque<Batch>,
    next_seq: u64,
    link: Link,
    backoff: Backoff,
    next_attempt: Instant,
    disabled: bool,
    /// Until then, do not try the lock (this process just handed over to a newer library).
    yield_until: Option<Instant>,
    /// Bound of each connect, read and write: [`IO_TIMEOUT`], less when stopping.
    io_timeout: Duration,
}

/// Time a stopping sender keeps for writing a spool file after its last handover attempt.
const SPOOL_RESERVE: Duration = Duration::from_millis(300);

/// How long a process that handed over leaves the lock to the newer library.
const YIELD_AFTER_HANDOVER: Duration = Duration::from_secs(3);

impl State {
    fn new(shared: &Shared) -> Self {
        State {
            pending: VecDeque::new(),
            next_seq: 1,
            link: Link::None,
            backoff: Backoff::new(shared.client_id),
            next_attempt: Instant::now(),
            disabled: false,
            yield_until: None,
            io_timeout: IO_TIMEOUT,
        }
    }

    fn run(&mut self, shared: &Shared) {
        loop {
            let conn = match &self.link {
                Link::Remote(conn) => conn.raw_fd(),
                _ => None,
            };
            let stop_deadline = shared
                .signal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stop_deadline;
            // Without a link, wake for the next connection attempt rather than the next flush.
            let mut nap = Some(shared.config.flush_interval);
            if matches!(self.link, Link::None) && !self.disabled {
                nap =
                    nap.map(|n| n.min(self.next_attempt.saturating_duration_since(Instant::now())));
            }
            // Nothing to hand over and nothing recorded: sleep until the first record. Once it
            // wakes us, the next turn waits a flush period for more before collecting.
            let idle = stop_deadline.is_none()
                && self.pending.is_empty()
                && !matches!(self.link, Link::None)
                && shared.metrics.sleep_if_empty();
            if idle {
                nap = match self.link {
                    Link::Local(_) => Some(LEADER_IDLE_CHECK),
                    _ => None,
                };
            }
            if stop_deadline.is_none() && sleep_on(&shared.pipe, conn, nap) {
                self.check_connection();
            }
            if idle && !shared.metrics.is_empty() {
                continue;
            }
            let stop_deadline = shared
                .signal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stop_deadline;
            self.collect(shared);
            self.check_local_leader();
            if matches!(self.link, Link::None) && Instant::now() >= self.next_attempt {
                self.establish(shared);
            }
            self.deliver(shared);
            if let Some(deadline) = stop_deadline {
                self.finish(shared, deadline);
                return;
            }
        }
    }

    /// Keeps trying to hand over pending batches until the deadline, then shuts down a local leader.
    fn finish(&mut self, shared: &Shared, deadline: Instant) {
        // Every attempt ends in time to leave what is left in a spool file before the deadline.
        let handover_until = deadline
            .checked_sub(SPOOL_RESERVE)
            .unwrap_or(deadline)
            .max(Instant::now());
        while !self.pending.is_empty() && !self.disabled && Instant::now() < handover_until {
            self.io_timeout = handover_until
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(10), IO_TIMEOUT);
            if let Link::Remote(conn) = &self.link {
                let _ = conn.stream.set_read_timeout(Some(self.io_timeout));
                let _ = conn.stream.set_write_timeout(Some(self.io_timeout));
            }
            self.check_local_leader();
            if matches!(self.link, Link::None) {
                let now = Instant::now();
                if now >= self.next_attempt {
                    self.establish(shared);
                } else {
                    std::thread::sleep((self.next_attempt - now).min(handover_until - now));
                    continue;
                }
            }
            self.deliver(shared);
        }
        if !self.pending.is_empty() && !self.disabled {
            self.spool(shared);
        }
        if matches!(self.link, Link::None) && !self.disabled && Instant::now() < deadline {
            // Our leader went away while we were stopping (it may have handed over to us). If
            // nobody leads now, what it left in the journal would wait for the next start: lead
            // just long enough to replay and push it.
            let workdir = shared
                .workdir
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Ok(Some(lock)) = election::try_lead(&workdir) {
                match Leader::start(&shared.config, &workdir, lock) {
                    Ok(leader) => self.link = Link::Local(leader),
                    Err(e) => tracing::warn!("stop: cannot lead to push what is left: {e:#}"),
                }
            }
        }
        if let Link::Local(leader) = std::mem::replace(&mut self.link, Link::None) {
            leader.shutdown(deadline);
        }
        set_role(Role::Stopped);
    }

    /// Leaves the batches no leader took before the stop deadline in a spool file for the next one.
    fn spool(&mut self, shared: &Shared) {
        let entries: usize = self.pending.iter().map(Batch::entries).sum();
        let count = self.pending.len();
        let workdir = shared
            .workdir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let batches: Vec<Batch> = self
            .pending
            .iter()
            .map(|b| Batch {
                client_id: protocol::journal_id(b.client_id),
                ..b.clone()
            })
            .collect();
        let push = &shared.config.push;
        match Journal::write_spool(&workdir, push.id(), push, &batches) {
            Ok(_) => {
                tracing::warn!(
                    "stop: {count} batches ({entries} metric entries) could not be handed to a leader before the stop deadline; left in {} for the next leader",
                    workdir.journal_dir().display()
                );
                self.pending.clear();
                let mut progress = shared.progress.lock().unwrap_or_else(|e| e.into_inner());
                progress.pending_batches = 0;
            }
            Err(e) => tracing::error!(
                "stop: {count} batches ({entries} metric entries) could not be handed to a leader before the stop deadline, nor written to a spool file: {e:#}"
            ),
        }
    }

    /// Moves the app's pre-aggregate into pending batches.
    fn collect(&mut self, shared: &Shared) {
        // Finished transactions and spans become metrics and samples here, off the app threads.
        shared.metrics.process_records();
        let mut progress = shared.progress.lock().unwrap_or_else(|e| e.into_inner());
        let taken = shared.metrics.take();
        if taken.is_empty() {
            return;
        }
        let mut lost = Batch::default();
        for batch in split(taken, shared.client_id, &mut self.next_seq, crate::now_ms()) {
            if self.pending.len() >= MAX_PENDING_BATCHES {
                if let Some(dropped) = self.pending.pop_front() {
                    progress.dropped_batches += 1;
                    add_drops(&mut lost, &dropped);
                    if let Some(n) = PENDING_DROP_LOG.check() {
                        tracing::warn!(
                            "no leader took data for a long time: dropped the oldest unacknowledged batch ({} entries){}",
                            dropped.entries(),
                            suppressed_note(n)
                        );
                    }
                }
            }
            self.pending.push_back(batch);
        }
        // The newest batch reports what was dropped (it is the last to be dropped in turn).
        if let Some(newest) = self.pending.back_mut() {
            newest.dropped_batches = newest.dropped_batches.saturating_add(lost.dropped_batches);
            newest.dropped_updates = newest.dropped_updates.saturating_add(lost.dropped_updates);
            newest.dropped_samples = newest.dropped_samples.saturating_add(lost.dropped_samples);
            newest.dropped_logs = newest.dropped_logs.saturating_add(lost.dropped_logs);
        }
        progress.assigned_seq = self.next_seq - 1;
        progress.pending_batches = self.pending.len();
    }

    /// The connection showed activity while idle: the leader closed it (it died or stopped).
    fn check_connection(&mut self) {
        if let Link::Remote(conn) = &self.link {
            if conn.is_closed() {
                tracing::info!("the leader (pid {}) went away; electing", conn.leader_pid);
                set_role(Role::Starting);
                self.link = Link::None;
                self.backoff.reset();
                self.next_attempt = Instant::now();
            }
        }
    }

    fn check_local_leader(&mut self) {
        if let Link::Local(leader) = &self.link {
            if !leader.is_serving() {
                if leader.handed_over() {
                    // Leave the lock to the newer library for a while: connect to it instead.
                    self.yield_until = Some(Instant::now() + YIELD_AFTER_HANDOVER);
                }
                set_role(Role::Starting);
                if let Link::Local(leader) = std::mem::replace(&mut self.link, Link::None) {
                    leader.shutdown(Instant::now());
                }
                self.next_attempt = Instant::now();
            }
        }
    }

    fn schedule_retry(&mut self) {
        self.next_attempt = Instant::now() + self.backoff.next();
    }

    fn establish(&mut self, shared: &Shared) {
        if self.disabled {
            return;
        }
        let workdir = shared
            .workdir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let yielding = self.yield_until.is_some_and(|until| Instant::now() < until);
        let lock = match if yielding {
            Ok(None)
        } else {
            election::try_lead(&workdir)
        } {
            Ok(lock) => lock,
            Err(first) => {
                // The directory may have been deleted (tmp cleaner): prepare it again, once.
                match WorkDir::prepare(workdir.path(), workdir.world_accessible())
                    .and_then(|_| election::try_lead(&workdir))
                {
                    Ok(lock) => lock,
                    Err(e) => {
                        tracing::warn!("cannot take part in the election: {first:#}; after recreating the directory: {e:#}");
                        self.schedule_retry();
                        return;
                    }
                }
            }
        };
        if let Some(lock) = lock {
            // Leader::start sets the role once it listens.
            match Leader::start(&shared.config, &workdir, lock) {
                Ok(leader) => {
                    self.link = Link::Local(leader);
                    self.backoff.reset();
                }
                Err(e) => {
                    tracing::error!("won the election but cannot lead: {e:#}");
                    self.schedule_retry();
                }
            }
            return;
        }
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            library_version: shared.config.library_version.clone(),
            client_id: shared.client_id,
            pid: std::process::id(),
            config: shared.config.push.clone(),
        };
        match Connection::open(&workdir, &hello, self.io_timeout) {
            Ok(conn) => {
                set_role(Role::Client);
                tracing::info!("connected to the leader (pid {})", conn.leader_pid);
                self.link = Link::Remote(conn);
                self.backoff.reset();
            }
            Err(ConnectError::Refused(reason)) => {
                tracing::error!(
                    "the leader refused this process: {reason}; this process stops reporting"
                );
                crate::agent::set_disabled(format!("refused by the leader: {reason}"));
                self.disabled = true;
                if !self.pending.is_empty() {
                    let entries: usize = self.pending.iter().map(Batch::entries).sum();
                    tracing::warn!(
                        "dropped {} unacknowledged batches ({entries} entries): no leader takes them",
                        self.pending.len()
                    );
                    let mut progress = shared.progress.lock().unwrap_or_else(|e| e.into_inner());
                    progress.dropped_batches += self.pending.len() as u64;
                    progress.pending_batches = 0;
                }
                self.pending.clear();
            }
            Err(ConnectError::HandingOver(reason)) => {
                tracing::info!("{reason}; taking the lock next");
                self.backoff.reset();
                self.schedule_retry();
            }
            Err(ConnectError::Other(e)) => {
                tracing::debug!("no leader reachable yet: {e:#}");
                self.schedule_retry();
            }
        }
    }

    /// Hands pending batches over in order until one fails.
    fn deliver(&mut self, shared: &Shared) {
        while let Some(batch) = self.pending.front() {
            let result = match &mut self.link {
                Link::None => return,
                Link::Local(leader) => leader.deliver_local(batch.clone()),
                Link::Remote(conn) => conn.send(batch),
            };
            match result {
                Ok(()) => {
                    if let Some(done) = self.pending.pop_front() {
                        let mut progress =
                            shared.progress.lock().unwrap_or_else(|e| e.into_inner());
                        progress.acked_seq = done.seq;
                        progress.pending_batches = self.pending.len();
                    }
                }
                Err(e) => {
                    tracing::info!(
                        "lost the leader ({e:#}); {} batches wait for the next one",
                        self.pending.len()
                    );
                    set_role(Role::Starting);
                    if let Link::Local(leader) = std::mem::replace(&mut self.link, Link::None) {
                        leader.shutdown(Instant::now());
                    }
                    self.backoff.reset();
                    self.schedule_retry();
                    return;
                }
            }
        }
    }
}

/// Adds what `dropped` held (and the drops it reported) to the drop counts of `lost`.
fn add_drops(lost: &mut Batch, dropped: &Batch) {
    let entries = dropped.counters.len() + dropped.gauges.len() + dropped.distributions.len();
    lost.dropped_batches = lost
        .dropped_batches
        .saturating_add(1)
        .saturating_add(dropped.dropped_batches);
    lost.dropped_updates = lost
        .dropped_updates
        .saturating_add(dropped.dropped_updates)
        .saturating_add(entries as u64);
    lost.dropped_samples = lost
        .dropped_samples
        .saturating_add(dropped.dropped_samples)
        .saturating_add(dropped.samples.len() as u64);
    lost.dropped_logs = lost
        .dropped_logs
        .saturating_add(dropped.dropped_logs)
        .saturating_add(dropped.logs.len() as u64);
}

fn key_bytes(key: &MetricKey) -> usize {
    key.name.len()
        + key
            .tags
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
        + 32
}

/// Splits one flush period's data into batches under [`BATCH_BUDGET_BYTES`] each.
fn split(taken: Taken, client_id: u64, next_seq: &mut u64, created_ms: u64) -> Vec<Batch> {
    let mut splitter = Splitter {
        batches: Vec::new(),
        current: Batch::default(),
        used: 0,
        client_id,
        created_ms,
        next_seq,
    };
    splitter.start_batch();
    let mut dropped = taken.dropped_updates;
    for (key, value) in taken.counters {
        match splitter.room(key_bytes(&key), MAX_ENTRY_BYTES) {
            Some(batch) => batch.counters.push((key, value)),
            None => dropped += 1,
        }
    }
    for (key, value) in taken.gauges {
        match splitter.room(key_bytes(&key), MAX_ENTRY_BYTES) {
            Some(batch) => batch.gauges.push((
                key,
                GaugeValue {
                    value,
                    at_ms: created_ms,
                },
            )),
            None => dropped += 1,
        }
    }
    for (key, sketch) in taken.distributions {
        match splitter.room(
            key_bytes(&key) + SKETCH_ESTIMATE_BYTES,
            MAX_ENTRY_BYTES + SKETCH_ESTIMATE_BYTES,
        ) {
            Some(batch) => batch.distributions.push((key, sketch)),
            None => dropped += 1,
        }
    }
    // Samples and logs were size-checked when submitted (metrics::MAX_RECORD_BYTES).
    for sample in taken.samples {
        if let Some(batch) = splitter.room(sample.len(), crate::metrics::MAX_RECORD_BYTES) {
            batch.samples.push(sample);
        }
    }
    for line in taken.logs {
        if let Some(batch) = splitter.room(line.len(), crate::metrics::MAX_RECORD_BYTES) {
            batch.logs.push(line);
        }
    }
    let mut batches = splitter.finish();
    if let Some(first) = batches.first_mut() {
        first.dropped_updates = dropped;
        first.dropped_samples = taken.dropped_samples;
        first.dropped_logs = taken.dropped_logs;
    }
    batches
}

/// Fills numbered batches up to the budget.
struct Splitter<'a> {
    batches: Vec<Batch>,
    current: Batch,
    used: usize,
    client_id: u64,
    created_ms: u64,
    next_seq: &'a mut u64,
}

impl Splitter<'_> {
    fn start_batch(&mut self) {
        self.current = Batch {
            client_id: self.client_id,
            seq: *self.next_seq,
            created_ms: self.created_ms,
            ..Batch::default()
        };
        *self.next_seq += 1;
        self.used = 0;
    }

    /// The batch to put an entry of `cost` bytes in; `None` when the entry is over `limit`.
    fn room(&mut self, cost: usize, limit: usize) -> Option<&mut Batch> {
        if cost > limit {
            return None;
        }
        if self.used + cost > BATCH_BUDGET_BYTES && self.current.entries() > 0 {
            let full = std::mem::take(&mut self.current);
            self.batches.push(full);
            self.start_batch();
        }
        self.used += cost;
        Some(&mut self.current)
    }

    fn finish(mut self) -> Vec<Batch> {
        let last = std::mem::take(&mut self.current);
        self.batches.push(last);
        self.batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(42);
        let waits: Vec<Duration> = (0..20).map(|_| b.next()).collect();
        assert!(
            waits[0] >= Duration::from_micros(3_750) && waits[0] <= Duration::from_micros(6_250)
        );
        assert!(waits.iter().all(|w| *w <= Backoff::MAX + Backoff::MAX / 4));
        assert!(waits[19] >= Backoff::MAX - Backoff::MAX / 4);
        b.reset();
        assert!(b.next() <= Duration::from_micros(6_250));
    }

    #[test]
    fn large_flushes_split_into_numbered_batches_that_fit_a_frame() {
        let mut taken = Taken::default();
        for i in 0..20_000 {
            taken.counters.push((
                MetricKey {
                    name: format!("counter-with-a-long-name-{i:05}"),
                    tags: vec![("tag".into(), "v".repeat(40))],
                },
                1.0,
            ));
        }
        taken.counters.push((
            MetricKey {
                name: "x".repeat(MAX_ENTRY_BYTES + 1),
                tags: vec![],
            },
            1.0,
        ));
        let mut seq = 5;
        let batches = split(taken, 9, &mut seq, 1000);
        assert!(batches.len() > 1);
        assert_eq!(batches.iter().map(Batch::entries).sum::<usize>(), 20_000);
        assert_eq!(batches.iter().map(|b| b.dropped_updates).sum::<u64>(), 1);
        let seqs: Vec<u64> = batches.iter().map(|b| b.seq).collect();
        assert_eq!(seqs, (5..5 + batches.len() as u64).collect::<Vec<_>>());
        for b in &batches {
            let frame = protocol::encode(&ClientMessageRef::Batch(b)).unwrap();
            assert!(frame.len() < protocol::MAX_FRAME_BYTES);
        }
    }

    #[test]
    fn connecting_to_a_full_backlog_gives_up_in_time() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        // A listener that never accepts (a wedged leader): fill its backlog.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut held = Vec::new();
        let refused = (0..10_000).find_map(|_| match connect(&path, Duration::from_millis(50)) {
            Ok(s) => {
                held.push(s);
                None
            }
            Err(e) => Some(e),
        });
        assert!(
            refused.is_some(),
            "connect kept succeeding into a full backlog"
        );
    }
}
