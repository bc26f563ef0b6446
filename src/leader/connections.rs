//! The leader's connections: accepting on `agent.socket` (at most [`super::MAX_CONNECTIONS`], a
//! permit taken before `accept`), one task per connection ([`super::connection`]), and what the
//! connections share: the processes' connection slots, the client ids bound to processes, the
//! budget for incomplete frames. On stop it closes the socket, lets connections finish the frame
//! they are in, and tells how many processes were still there.
//!
//! [`Connections`] is owned by the leader's serving loop; [`Peers`] is what the connection tasks
//! and the leader's own process ([`super::Leader::deliver_local`]) reach.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::connection::{self, Peer, MAX_CONNECTIONS_PER_PROCESS};
use super::counting::Counting;
use super::tally::Tally;
use super::{Status, MAX_BINDINGS, MAX_CONNECTIONS};
use crate::election::LeaderLock;
use crate::workdir::WorkDir;

/// Whether process `pid` exists (a zombie counts: its pid is not reused yet).
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let alive = unsafe { libc::kill(pid, 0) == 0 };
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the connections of all processes share.
#[derive(Default)]
pub(super) struct Peers {
    /// Client (journal id) -> the pid of the process that handshook with it.
    bindings: Mutex<HashMap<u64, i32>>,
    /// pid -> connections it holds.
    processes: Mutex<HashMap<i32, usize>>,
    /// Bytes of incomplete large frames buffered across all connections.
    frame_bytes: AtomicUsize,
}

impl Peers {
    /// Binds a client (its journal id) to the process of the connection that handshook with it.
    /// `Err(pid)`: the id is bound to another live process. A connection without a pid (another
    /// pid namespace) binds nothing.
    pub(super) fn bind(&self, client: u64, pid: Option<i32>) -> Result<(), i32> {
        let Some(pid) = pid else {
            return Ok(());
        };
        let mut bindings = lock(&self.bindings);
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

    /// Takes a connection slot of process `pid`; `None` when it holds too many.
    pub(super) fn enter(&self, pid: i32) -> Option<ProcessSlot<'_>> {
        let mut processes = lock(&self.processes);
        let held = processes.entry(pid).or_insert(0);
        if *held >= MAX_CONNECTIONS_PER_PROCESS {
            return None;
        }
        *held += 1;
        Some(ProcessSlot { peers: self, pid })
    }

    fn leave(&self, pid: i32) {
        let mut processes = lock(&self.processes);
        if let Some(held) = processes.get_mut(&pid) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                processes.remove(&pid);
            }
        }
    }

    /// The leader-wide budget for incomplete large frames.
    pub(super) fn frame_budget(&self) -> &AtomicUsize {
        &self.frame_bytes
    }
}

/// One connection slot of a process; given back on drop.
pub(super) struct ProcessSlot<'a> {
    peers: &'a Peers,
    pid: i32,
}

impl Drop for ProcessSlot<'_> {
    fn drop(&mut self) {
        self.peers.leave(self.pid);
    }
}

/// What a connection task works with.
pub(super) struct Context {
    pub(super) peers: Arc<Peers>,
    /// Where batches are journaled and counted, and configurations registered.
    pub(super) counting: Arc<Counting>,
    /// Where refused connections and rejected frames are counted.
    pub(super) tally: Arc<Tally>,
    /// Where a newer library asks for a hand-over.
    pub(super) status: Arc<Status>,
    /// This leader's library version, compared with a client's.
    pub(super) library_version: String,
    /// Owner-only mode (the working directory is not world-accessible): only our uid may connect.
    pub(super) owner_only: bool,
}

/// The accepting side of `agent.socket` and the running connection tasks.
pub(super) struct Connections {
    /// A forked child closes its copy of the listener, so that nobody but us can accept on it.
    /// Declared before the listener: unregistered before it closes.
    fork_guard: Option<crate::fork::Registered>,
    listener: Listener,
    permits: Arc<Semaphore>,
    tasks: JoinSet<Peer>,
    /// `true` ends the connections (between frames).
    stop: watch::Sender<bool>,
    context: Arc<Context>,
    workdir: WorkDir,
}

impl Connections {
    pub(super) fn new(listener: Listener, context: Arc<Context>, workdir: &WorkDir) -> Self {
        Connections {
            fork_guard: listener_fd(&listener).map(crate::fork::Registered::new),
            listener,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            tasks: JoinSet::new(),
            stop: watch::channel(false).0,
            context,
            workdir: workdir.clone(),
        }
    }

    /// Forgets the connections that ended.
    pub(super) fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }

    /// Waits for a connection slot, then for a connection. Cancel-safe.
    pub(super) async fn accept(&self) -> (Option<OwnedSemaphorePermit>, std::io::Result<Stream>) {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        (permit, self.listener.accept().await)
    }

    /// Serves an accepted connection on its own task (the permit is given back when it ends);
    /// after a failed accept, waits a little so that a lasting failure does not spin.
    pub(super) async fn serve(
        &mut self,
        permit: Option<OwnedSemaphorePermit>,
        accepted: std::io::Result<Stream>,
    ) {
        match accepted {
            Ok(stream) => {
                let (context, stop) = (Arc::clone(&self.context), self.stop.subscribe());
                self.tasks.spawn(async move {
                    let peer = connection::serve(stream, &context, stop).await;
                    drop(permit);
                    peer
                });
            }
            Err(e) => {
                tracing::warn!(
                    "accept on {} failed: {e}",
                    self.workdir.socket_path().display()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Stops accepting and removes our socket (only if the lock file is still ours: otherwise the
    /// socket at that path may already belong to the next leader), ends the connections between
    /// frames, and returns how many processes were still there when we stopped (not those that
    /// had just left): one of them takes over. A connection that does not finish in time counts
    /// as still there.
    pub(super) async fn close(self, lock: &LeaderLock, deadline: Instant) -> usize {
        let Connections {
            fork_guard,
            listener,
            mut tasks,
            stop,
            workdir,
            ..
        } = self;
        drop(fork_guard);
        drop(listener);
        if lock.still_at_path() {
            let _ = std::fs::remove_file(workdir.socket_path());
        }
        let _ = stop.send(true);
        let mut connected = 0usize;
        // Connections stop between frames, so this is quick; a deadline of "now" (a shutdown that
        // must not wait) must not make every process count as still there.
        let join_deadline = deadline.max(Instant::now() + Duration::from_millis(200));
        let joined = tokio::time::timeout_at(join_deadline.into(), async {
            while let Some(peer) = tasks.join_next().await {
                match peer {
                    Ok(Peer::Left) => {}
                    Ok(Peer::StillThere) => connected += 1,
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
                tasks.len()
            );
            connected += tasks.len();
        }
        tasks.abort_all();
        connected
    }
}

fn listener_fd(listener: &Listener) -> Option<std::os::fd::RawFd> {
    use std::os::fd::{AsFd, AsRawFd};
    #[allow(unreachable_patterns)]
    match listener {
        Listener::UdSocket(l) => Some(l.as_fd().as_raw_fd()),
        _ => None,
    }
}
