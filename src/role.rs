//! What this process is to the agent (stopped, starting, client, leader, disabled), in a cell
//! made per `start()` and written by one owner: the sender thread of that start (the agent writes
//! it only before the sender exists, and when it stops). Readers (diagnose, the log's line prefix)
//! hold the cell of the current start, so that a sender or leader thread left behind by an earlier
//! `stop()` can never overwrite the role of the next start.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// What this process is to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    Stopped = 0,
    Starting = 1,
    Client = 2,
    Leader = 3,
    Disabled = 4,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Stopped => "stopped",
            Role::Starting => "starting",
            Role::Client => "client",
            Role::Leader => "leader",
            Role::Disabled => "disabled",
        }
    }

    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Starting,
            2 => Role::Client,
            3 => Role::Leader,
            4 => Role::Disabled,
            _ => Role::Stopped,
        }
    }
}

/// One start's role, and why it was disabled if it was.
#[derive(Debug)]
pub struct RoleCell {
    role: AtomicU8,
    disabled_reason: Mutex<Option<String>>,
}

impl RoleCell {
    /// A cell for a new start. Leaked on purpose (a few bytes per `start()`): readers keep a
    /// `&'static` to it without a lock, which a fork cannot leave held.
    pub fn leak_new(role: Role) -> &'static RoleCell {
        Box::leak(Box::new(RoleCell {
            role: AtomicU8::new(role as u8),
            disabled_reason: Mutex::new(None),
        }))
    }

    pub fn get(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    pub fn set(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
    }

    /// Disabled, with a reason for diagnose.
    pub fn disable(&self, reason: String) {
        self.set(Role::Disabled);
        *self
            .disabled_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    pub fn disabled_reason(&self) -> Option<String> {
        self.disabled_reason.try_lock().ok().and_then(|r| r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_keeps_its_role_and_reason() {
        let cell = RoleCell::leak_new(Role::Starting);
        assert_eq!(cell.get(), Role::Starting);
        cell.set(Role::Leader);
        assert_eq!(cell.get().as_str(), "leader");
        cell.disable("refused".into());
        assert_eq!(cell.get(), Role::Disabled);
        assert_eq!(cell.disabled_reason().as_deref(), Some("refused"));
        let other = RoleCell::leak_new(Role::Starting);
        assert_eq!(other.get(), Role::Starting, "cells are independent");
    }
}
