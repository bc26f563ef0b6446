//! The leader's connections: accepting on `agent.socket` (at most [`super::MAX_CONNECTIONS`], a
//! permit taken before `accept`), one task per connection ([`super::connection`]), and what the
//! connections share: the processes' connection slots, the client ids bound to processes, the
//! budget for incomplete frames. On stop it closes the socket, lets connections finish the frame
//! they are in, and tells how many processes were still there.
//!
//! [`Connections`] is owned by the leader's serving loop; what the connection tasks and the leader's
//! own process ([`super::Leader::deliver_local`]) share is in [`super::peers`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::connection::{self, Peer};
use super::peers::Context;
use super::MAX_CONNECTIONS;
use crate::election::LeaderLock;
use crate::workdir::WorkDir;

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
