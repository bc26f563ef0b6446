//! Surviving `fork()` (Unicorn/Puma preload, Resque fork-per-job, Passenger). Threads do not survive
//! a fork, but descriptors do: a child holding a copy of the leader's lock descriptor keeps the lock
//! alive after the leader exits (without ever serving), and a copy of a socket keeps it open after its
//! owner died (so nobody sees the hang-up that triggers takeover).
//!
//! So every descriptor whose copy must not outlive its owner is registered here, and a
//! `pthread_atfork` child handler closes the child's copies (closing a copy does not unlock or shut
//! down the parent's) and bumps the fork generation. The child's next call into the library sees the
//! new generation and starts afresh as a client (`Agent::after_fork`). The handler only calls
//! `close()` and atomic stores: it is async-signal-safe. That is why this state stays in statics of
//! atomics rather than in the agent's value: the handler must reach it without a lock and without
//! the agent (which a child may find held by a thread that no longer exists).
//!
//! Policy when full: at most [`SLOTS`] registered descriptors (the leader's connections are the
//! bulk); beyond that a descriptor is not registered, which is logged once.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Once;

pub const SLOTS: usize = 1024;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicI32 = AtomicI32::new(-1);
static FDS: [AtomicI32; SLOTS] = [EMPTY; SLOTS];
static GENERATION: AtomicU64 = AtomicU64::new(0);
static FULL_LOGGED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

extern "C" fn in_child() {
    for slot in &FDS {
        let fd = slot.swap(-1, Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: fd was registered as open and owned by the parent's library state; in the child
            // that state is dead, so closing our copy is what we want. close() is async-signal-safe.
            unsafe { libc::close(fd) };
        }
    }
    GENERATION.fetch_add(1, Ordering::Release);
}

/// Installs the child handler (once per process).
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: registering a handler with no preconditions; `in_child` is async-signal-safe.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        if rc != 0 {
            tracing::warn!(
                "pthread_atfork failed ({rc}): a forked child may keep the leader's lock"
            );
        }
    });
}

/// How many forks this process's memory has been through (0 in the original process).
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Registers a descriptor that a forked child must close.
pub fn register(fd: RawFd) {
    for slot in &FDS {
        if slot
            .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
    if !FULL_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "more than {SLOTS} descriptors to close on fork; a forked child keeps the rest"
        );
    }
}

/// Unregisters a descriptor; call before closing it (so that a reused number is never closed).
pub fn unregister(fd: RawFd) {
    for slot in &FDS {
        if slot
            .compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// A registered descriptor, unregistered when dropped (before the owner closes it).
pub struct Registered(RawFd);

impl Registered {
    pub fn new(fd: RawFd) -> Registered {
        register(fd);
        Registered(fd)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        unregister(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_and_unregister_reuse_slots() {
        register(10_001);
        register(10_002);
        assert!(FDS.iter().any(|s| s.load(Ordering::Relaxed) == 10_001));
        unregister(10_001);
        unregister(10_002);
        assert!(!FDS.iter().any(|s| {
            let v = s.load(Ordering::Relaxed);
            v == 10_001 || v == 10_002
        }));
        {
            let _guard = Registered::new(10_003);
            assert!(FDS.iter().any(|s| s.load(Ordering::Relaxed) == 10_003));
        }
        assert!(!FDS.iter().any(|s| s.load(Ordering::Relaxed) == 10_003));
    }
}
