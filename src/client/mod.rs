//! The per-process sender thread: every flush period it takes the app threads' pre-aggregate,
//! turns it into numbered batches, and hands them to the leader: over `agent.socket` when another
//! process leads, or directly when this process won the election. A batch leaves the pending queue
//! only when the leader acknowledged it (it is then counted), so a lost leader costs nothing: the
//! pending batches go to the next one.
//!
//! Before anything else the thread runs the owner's [`Prepare`] (the working directory and the log,
//! kept off the app's thread in `start()`); if that fails the agent is disabled and the thread ends.
//!
//! Connecting or leading: when there is no link, the thread first tries the lock (winning makes this
//! process the leader), else connects to the socket. Failures back off exponentially from 5 ms to
//! 1 s with jitter: no busy loop, no thundering herd.
//!
//! Between flushes the thread sleeps in `poll()` on its connection and a wake-up pipe, so that a
//! leader's death (its socket closes) wakes it at once: it re-runs the election within
//! milliseconds instead of at its next flush. When everything is handed over and the app records
//! nothing, it sleeps without a timeout until the first record (which writes to the pipe, once per
//! flush period) or its connection's hang-up: an idle client does not wake at all. Nor does an idle
//! leader process's sender: its leader wakes it through the same pipe when it stops serving (on
//! every way out, a panic of the leader thread included).
//!
//! Bounds: at most [`MAX_PENDING_BATCHES`] unacknowledged batches; beyond that the oldest is dropped,
//! logged and counted (in diagnose, and in the next batch: the dropped batch and the drop counts it
//! carried, so that the payload reports them). Each batch stays under [`BATCH_BUDGET_BYTES`]
//! (estimated), far below the protocol's frame limit; a single metric key over [`MAX_ENTRY_BYTES`]
//! is dropped and counted. Connecting to the leader, each write and each read wait at most
//! [`IO_TIMEOUT`] (a wedged leader whose backlog is full does not hold the thread).
//!
//! A leader that cannot journal (a full disk) does not acknowledge: a client keeps its batches and
//! reconnects with a backoff that grows while the leader keeps closing without an acknowledgement;
//! the leader process's own batches wait in the same way.
//!
//! Stopping: the thread keeps handing batches over until the stop deadline. What it still holds
//! then (its leader is frozen, or stuck) is written to a spool file in `journal/`, where the next
//! leader (or the current one, at its next transmission) counts it. A stopping leader process that
//! cannot journal its own last batches steps down first and hands them to the next leader.
//!
//! Layout: [`link`] (connection to another process's leader, backoff, wake-up pipe),
//! [`batching`] (flushes into numbered batches), and here the sender thread's state machine.

mod batching;
mod link;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::Config;
use crate::election;
use crate::journal::Journal;
use crate::leader::{ExportState, ExportsReport, Leader};
use crate::log::{suppressed_note, RateLimit};
use crate::metrics::{LocalMetrics, Wake};
use crate::protocol::{self, Batch, Hello};
use crate::role::{Role, StartRole};
use crate::workdir::WorkDir;

use batching::{add_drops, split};
use link::{sleep_on, Backoff, ConnectError, Connection, WakePipe};

pub const MAX_PENDING_BATCHES: usize = 1_000;
/// Longest wait for the leader's answer to one frame.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

// A pure rate limiter of this one log line (not lifecycle state: nothing starts, stops or forks
// it), so it stays a static next to the line it limits.
static PENDING_DROP_LOG: RateLimit = RateLimit::new(10_000);

/// What the sender tells its owner (the agent) about its start.
pub trait Owner: Send + Sync {
    /// The working directory moved to the per-user fallback: (the directory in use, the fresh
    /// one, why).
    fn fell_back(&self, current: &WorkDir, fresh: &WorkDir, fallback: &crate::workdir::Fallback);
    /// A leader refused this process: the start is disabled (with `reason`, for diagnose) and
    /// recording stops.
    fn refused(&self, reason: String);
}

/// Run first on the sender thread (so that `start()` does no file-system work on the app's
/// thread): prepares the working directory and opens the log. `None`: the agent is disabled (the
/// owner logged why and set the role); the thread then ends.
pub type Prepare = Box<dyn FnOnce() -> Option<WorkDir> + Send>;

/// The working directory again (deleted by a tmp cleaner, or something planted in it since): the
/// same one, or the per-user fallback, which `owner` is told about.
fn prepare_again(current: &WorkDir, owner: &dyn Owner) -> Result<WorkDir> {
    let (fresh, fallback) =
        crate::workdir::prepare_or_fallback(current.path(), current.world_accessible())?;
    if let Some(fallback) = &fallback {
        owner.fell_back(current, &fresh, fallback);
    }
    Ok(fresh)
}

enum Link {
    None,
    Remote(Connection),
    Local(Leader),
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

struct Shared {
    config: Config,
    metrics: &'static LocalMetrics,
    client_id: u64,
    /// This start's role: the sender is its only writer.
    role: StartRole,
    /// Told about the per-user fallback and a refusal.
    owner: Box<dyn Owner>,
    signal: Mutex<Signal>,
    pipe: Arc<WakePipe>,
    progress: Mutex<Progress>,
    /// The exporters' state of the leader this process runs, when it leads (diagnose).
    leader_exports: Mutex<Option<Arc<ExportState>>>,
}

/// Handle of the sender thread, owned by the agent.
pub struct Sender {
    shared: Arc<Shared>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Sender {
    /// Where the sender is, and whether everything recorded so far is acknowledged.
    pub fn progress(&self) -> (Progress, bool) {
        let guard = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The pre-aggregate is checked under the same lock that `collect` holds while it moves it
        // into batches: otherwise data taken but not yet numbered reads as idle.
        let idle = guard.pending_batches == 0
            && guard.assigned_seq == guard.acked_seq
            && self.shared.metrics.is_empty();
        (*guard, idle)
    }

    /// What the exporters of this process's leader remember, while this process leads.
    pub fn leader_exports(&self) -> Option<ExportsReport> {
        if self.shared.role.get() != Role::Leader {
            return None;
        }
        let exports = self
            .shared
            .leader_exports
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        exports.as_ref().map(|e| e.report())
    }

    pub fn start(
        config: Config,
        prepare: Prepare,
        metrics: &'static LocalMetrics,
        client_id: u64,
        role: StartRole,
        owner: Box<dyn Owner>,
    ) -> Result<Sender> {
        let shared = Arc::new(Shared {
            config,
            metrics,
            client_id,
            role,
            owner,
            signal: Mutex::new(Signal::default()),
            pipe: Arc::new(WakePipe::new()?),
            progress: Mutex::new(Progress::default()),
            leader_exports: Mutex::new(None),
        });
        let (done_tx, done) = std::sync::mpsc::channel();
        metrics.set_waker(Some(Arc::clone(&shared.pipe) as Arc<dyn Wake>));
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("appsignal-sender".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if let Some(workdir) = prepare() {
                        State::new(&thread_shared, workdir).run(&thread_shared);
                    }
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
    /// The working directory (it changes when it had to be prepared again).
    workdir: WorkDir,
    pending: VecDeque<Batch>,
    next_seq: u64,
    link: Link,
    backoff: Backoff,
    next_attempt: Instant,
    disabled: bool,
    /// Until then, do not try the lock (this process's leader just stopped serving).
    yield_until: Option<Instant>,
    /// Bound of each connect, read and write: [`IO_TIMEOUT`], less when stopping.
    io_timeout: Duration,
    /// Whether the leader acknowledged a batch since this link was made.
    acked_on_link: bool,
    /// Delay before reconnecting to a leader that closed the link without acknowledging anything
    /// (it cannot journal: a full disk): grows while that repeats, reset by an acknowledgement.
    barren: Backoff,
}

/// How far [`State::deliver`] got.
#[derive(Debug, PartialEq, Eq)]
enum Handed {
    /// Everything pending was acknowledged.
    All,
    /// This process's own leader cannot journal now (a full disk): the batches wait.
    NotNow,
    /// No link, or it was lost.
    NoLink,
}

static BARREN_LOG: RateLimit = RateLimit::new(10_000);

/// Time a stopping sender keeps for writing a spool file after its last handover attempt.
const SPOOL_RESERVE: Duration = Duration::from_millis(300);

/// How long a process whose leader stopped serving (hand-over, panic, step-down) leaves the lock to
/// the other processes.
const YIELD_AFTER_HANDOVER: Duration = Duration::from_secs(3);

impl State {
    fn new(shared: &Shared, workdir: WorkDir) -> Self {
        State {
            workdir,
            pending: VecDeque::new(),
            next_seq: 1,
            link: Link::None,
            backoff: Backoff::new(shared.client_id),
            next_attempt: Instant::now(),
            disabled: false,
            yield_until: None,
            io_timeout: IO_TIMEOUT,
            acked_on_link: false,
            barren: Backoff::new(shared.client_id.rotate_left(17)),
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
            // Nothing to hand over and nothing recorded: sleep until the first record, a leader
            // that hangs up (a client) or stops serving (a leader process). Once a record wakes
            // us, the next turn waits a flush period for more before collecting.
            let idle = stop_deadline.is_none()
                && self.pending.is_empty()
                && !matches!(self.link, Link::None)
                && shared.metrics.sleep_if_empty();
            if idle {
                nap = None;
            }
            if stop_deadline.is_none() && sleep_on(&shared.pipe, conn, nap) {
                self.check_connection(shared);
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
            self.check_local_leader(shared);
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
                conn.set_io_timeout(self.io_timeout);
            }
            self.check_local_leader(shared);
            if matches!(self.link, Link::None) {
                let now = Instant::now();
                if now >= self.next_attempt {
                    self.establish(shared);
                } else {
                    std::thread::sleep((self.next_attempt - now).min(handover_until - now));
                    continue;
                }
            }
            if self.deliver(shared) == Handed::NotNow {
                self.step_down(shared, handover_until);
            }
        }
        if !self.pending.is_empty() && !self.disabled {
            self.spool(shared, "stop: the stop deadline came first");
        }
        if matches!(self.link, Link::None) && !self.disabled && Instant::now() < deadline {
            // Our leader went away while we were stopping (it may have handed over to us). If
            // nobody leads now, what it left in the journal would wait for the next start: lead
            // just long enough to replay and push it.
            let workdir = self.workdir.clone();
            if let Ok(Some(lock)) = election::try_lead(&workdir) {
                if let Err(e) = self.lead(shared, &workdir, lock) {
                    tracing::warn!("stop: cannot lead to push what is left: {e:#}");
                }
            }
        }
        if let Link::Local(leader) = std::mem::replace(&mut self.link, Link::None) {
            leader.shutdown(deadline);
        }
        shared.role.set(Role::Stopped);
    }

    /// Stopping, this process leads but cannot journal its own last batches (a full disk, or a
    /// file size limit of this process): it stops leading, pushing what it counted within half
    /// the time left, so that another process takes the lock, and hands the batches to that one.
    fn step_down(&mut self, shared: &Shared, until: Instant) {
        let Link::Local(leader) = std::mem::replace(&mut self.link, Link::None) else {
            return;
        };
        tracing::warn!(
            "stop: this process leads but cannot journal its last {} batches; stepping down so that another process leads and takes them",
            self.pending.len()
        );
        let now = Instant::now();
        leader.shutdown(now + until.saturating_duration_since(now) / 2);
        shared.role.set(Role::Starting);
        // Connect to the next leader rather than take the lock again.
        self.yield_until = Some(until);
        self.backoff.reset();
        self.next_attempt = Instant::now();
    }

    /// Leaves the batches no leader took in a spool file for the next one (at the stop deadline,
    /// or when a leader refuses this process); `why` starts the log line.
    fn spool(&mut self, shared: &Shared, why: &str) {
        let entries: usize = self.pending.iter().map(Batch::entries).sum();
        let count = self.pending.len();
        let workdir = &self.workdir;
        let batches: Vec<Batch> = self
            .pending
            .iter()
            .map(|b| Batch {
                client_id: protocol::journal_id(b.client_id),
                ..b.clone()
            })
            .collect();
        let own_config = shared.config.export_config();
        match Journal::write_spool(workdir, own_config.id(), &own_config, &batches) {
            Ok(_) => {
                tracing::warn!(
                    "{why}: {count} batches ({entries} metric entries) could not be handed to a leader; left in {} for the next leader",
                    workdir.journal_dir().display()
                );
                self.pending.clear();
                let mut progress = shared.progress.lock().unwrap_or_else(|e| e.into_inner());
                progress.pending_batches = 0;
            }
            Err(e) => tracing::error!(
                "{why}: {count} batches ({entries} metric entries) could not be handed to a leader, nor written to a spool file: {e:#}"
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

    /// Starts leading with the lock this process won; the role is the leader's from then on.
    fn lead(
        &mut self,
        shared: &Shared,
        workdir: &WorkDir,
        lock: election::LeaderLock,
    ) -> Result<()> {
        let leader = Leader::start(
            &shared.config,
            workdir,
            lock,
            Some(Arc::clone(&shared.pipe) as Arc<dyn Wake>),
        )?;
        *shared
            .leader_exports
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(leader.exports());
        shared.role.set(Role::Leader);
        tracing::info!("leading: {}", leader.description());
        self.link = Link::Local(leader);
        Ok(())
    }

    /// The connection showed activity while idle: the leader closed it (it died or stopped).
    fn check_connection(&mut self, shared: &Shared) {
        if let Link::Remote(conn) = &self.link {
            if conn.is_closed() {
                tracing::info!("the leader (pid {}) went away; electing", conn.leader_pid);
                shared.role.set(Role::Starting);
                self.link = Link::None;
                self.backoff.reset();
                self.next_attempt = Instant::now();
            }
        }
    }

    fn check_local_leader(&mut self, shared: &Shared) {
        if let Link::Local(leader) = &self.link {
            if !leader.is_serving() {
                // Leave the lock to the others for a while: after a hand-over to the newer
                // library, and equally after a leader thread that panicked or stepped down, whose
                // cause may well be in this process. Alone, this process leads again afterwards.
                if !leader.handed_over() {
                    tracing::info!(
                        "this process stopped leading; leaving the lock to the other processes for {} s",
                        YIELD_AFTER_HANDOVER.as_secs()
                    );
                }
                self.yield_until = Some(Instant::now() + YIELD_AFTER_HANDOVER);
                shared.role.set(Role::Starting);
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
        let mut workdir = self.workdir.clone();
        let yielding = self.yield_until.is_some_and(|until| Instant::now() < until);
        let lock = match if yielding {
            Ok(None)
        } else {
            election::try_lead(&workdir)
        } {
            Ok(lock) => lock,
            Err(first) => {
                // The directory may have been deleted (tmp cleaner): prepare it again, once. If
                // something was planted in it meanwhile, move to the per-user fallback directory.
                match prepare_again(&workdir, &*shared.owner).and_then(|fresh| {
                    let lock = election::try_lead(&fresh);
                    self.workdir = fresh.clone();
                    lock.map(|lock| (lock, fresh))
                }) {
                    Ok((lock, fresh)) => {
                        workdir = fresh;
                        lock
                    }
                    Err(e) => {
                        tracing::warn!("cannot take part in the election: {first:#}; after recreating the directory: {e:#}");
                        self.schedule_retry();
                        return;
                    }
                }
            }
        };
        if let Some(lock) = lock {
            match self.lead(shared, &workdir, lock) {
                Ok(()) => self.backoff.reset(),
                Err(e) => {
                    tracing::error!("won the election but cannot lead: {e:#}");
                    self.schedule_retry();
                }
            }
            return;
        }
        let hello = Hello {
            protocol_version: shared.config.protocols.0,
            // Protocol 2 had no such field.
            protocol: (shared.config.protocols.1 > 2).then_some(shared.config.protocols.1),
            library_version: shared.config.library_version.clone(),
            client_id: shared.client_id,
            pid: std::process::id(),
            config: shared.config.export_config(),
        };
        match Connection::open(&workdir, &hello, self.io_timeout) {
            Ok(conn) => {
                shared.role.set(Role::Client);
                if self.barren.is_reset() {
                    tracing::info!("connected to the leader (pid {})", conn.leader_pid);
                } else {
                    tracing::debug!("connected to the leader (pid {}) again", conn.leader_pid);
                }
                self.link = Link::Remote(conn);
                self.acked_on_link = false;
                self.backoff.reset();
            }
            Err(ConnectError::Refused(reason)) => {
                tracing::error!(
                    "the leader refused this process: {reason}; this process stops reporting"
                );
                shared
                    .owner
                    .refused(format!("refused by the leader: {reason}"));
                self.disabled = true;
                // What this process recorded goes to a spool file that a leader (of a newer
                // protocol, the one that refused it) counts; only if that fails is it dropped.
                self.collect(shared);
                if !self.pending.is_empty() {
                    self.spool(shared, "refused by the leader");
                }
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
    fn deliver(&mut self, shared: &Shared) -> Handed {
        while let Some(batch) = self.pending.front() {
            let result = match &mut self.link {
                Link::None => return Handed::NoLink,
                Link::Local(leader) => leader.deliver_local(batch.clone()),
                Link::Remote(conn) => conn.send(batch).map(|()| true),
            };
            match result {
                Ok(true) => {
                    self.acked_on_link = true;
                    self.barren.reset();
                    if let Some(done) = self.pending.pop_front() {
                        let mut progress =
                            shared.progress.lock().unwrap_or_else(|e| e.into_inner());
                        progress.acked_seq = done.seq;
                        progress.pending_batches = self.pending.len();
                    }
                }
                // Our own leader could not journal it (its log line says why): next flush.
                Ok(false) => return Handed::NotNow,
                Err(e) => {
                    shared.role.set(Role::Starting);
                    if let Link::Local(leader) = std::mem::replace(&mut self.link, Link::None) {
                        leader.shutdown(Instant::now());
                    }
                    if self.acked_on_link {
                        tracing::info!(
                            "lost the leader ({e:#}); {} batches wait for the next one",
                            self.pending.len()
                        );
                        self.backoff.reset();
                        self.schedule_retry();
                    } else {
                        // Closed again before acknowledging anything (a leader that cannot
                        // journal): reconnect later and later, and say so now and then.
                        if let Some(n) = BARREN_LOG.check() {
                            tracing::warn!(
                                "the leader closed the connection without acknowledging a batch ({e:#}); {} batches wait; retrying with backoff{}",
                                self.pending.len(),
                                suppressed_note(n)
                            );
                        }
                        self.next_attempt = Instant::now() + self.barren.next();
                    }
                    return Handed::NoLink;
                }
            }
        }
        Handed::All
    }
}

#[cfg(test)]
mod tests {
    use super::batching::MAX_ENTRY_BYTES;
    use super::link::connect;
    use super::*;
    use crate::metrics::Taken;
    use crate::protocol::MetricKey;

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
            let frame = protocol::encode_batch(b, protocol::PROTOCOL_VERSION).unwrap();
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
