//! What the connections of all processes share, and what one connection task works with: the
//! client ids bound to processes, each process's connection slots (at most
//! [`MAX_CONNECTIONS_PER_PROCESS`]), the budget for incomplete frames, and the [`Context`] a
//! connection task is handed (where it counts, where it asks for a hand-over).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use super::counting::Counting;
use super::tally::Tally;
use super::{Status, MAX_BINDINGS};

/// Connections one process may hold at once.
pub const MAX_CONNECTIONS_PER_PROCESS: usize = 8;

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
    /// The protocols this leader speaks (oldest, newest), for the handshake.
    pub(super) protocols: (u32, u32),
    /// Owner-only mode (the working directory is not world-accessible): only our uid may connect.
    pub(super) owner_only: bool,
}
