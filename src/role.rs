//! What this process is to the agent (stopped, starting, client, leader, disabled). One [`Roles`]
//! value per agent holds the role and the number of the start it belongs to, in one atomic word:
//! each `start()` begins a new start and hands its sender a [`StartRole`], the only writer of that
//! start's role. A `StartRole` of an earlier start writes nothing once a later one began (the word
//! is compared and swapped as a whole), so that a sender or leader thread left behind by an
//! earlier `stop()` can never overwrite the role of the next start. Readers (diagnose, the log's
//! line prefix, a fork child) take no lock.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// The role of the current start: `start << 8 | role`.
#[derive(Debug)]
pub struct Roles(AtomicU64);

fn pack(start: u64, role: Role) -> u64 {
    start << 8 | role as u64
}

impl Roles {
    /// Stopped, before the first start.
    pub const fn new() -> Roles {
        Roles(AtomicU64::new(0))
    }

    pub fn get(&self) -> Role {
        Role::from_u8(self.0.load(Ordering::Relaxed) as u8)
    }

    fn start(&self) -> u64 {
        self.0.load(Ordering::Relaxed) >> 8
    }

    /// Begins a new start (or a stop, or a fork child's fresh state) in `role`: from now on only
    /// the returned handle writes the role.
    pub fn begin(&'static self, role: Role) -> StartRole {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            // 2^56 starts: it does not wrap in the life of a process.
            let start = (current >> 8).wrapping_add(1);
            match self.0.compare_exchange_weak(
                current,
                pack(start, role),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return StartRole { roles: self, start },
                Err(now) => current = now,
            }
        }
    }
}

impl Default for Roles {
    fn default() -> Self {
        Roles::new()
    }
}

/// One start's handle on the role: it writes only while its start is the current one.
#[derive(Debug, Clone, Copy)]
pub struct StartRole {
    roles: &'static Roles,
    start: u64,
}

impl StartRole {
    /// Whether no later start began since this one.
    pub fn is_current(self) -> bool {
        self.roles.start() == self.start
    }

    /// This start's role (`Stopped` once a later start began).
    pub fn get(self) -> Role {
        let word = self.roles.0.load(Ordering::Relaxed);
        if word >> 8 == self.start {
            Role::from_u8(word as u8)
        } else {
            Role::Stopped
        }
    }

    /// Sets this start's role; does nothing (false) once a later start began.
    pub fn set(self, role: Role) -> bool {
        let mut current = self.roles.0.load(Ordering::Relaxed);
        while current >> 8 == self.start {
            match self.roles.0.compare_exchange_weak(
                current,
                pack(self.start, role),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_writes_its_role_until_a_later_start_begins() {
        let roles: &'static Roles = Box::leak(Box::new(Roles::new()));
        assert_eq!(roles.get(), Role::Stopped);
        let first = roles.begin(Role::Starting);
        assert_eq!(roles.get(), Role::Starting);
        assert!(first.set(Role::Leader));
        assert_eq!(roles.get().as_str(), "leader");
        assert_eq!(first.get(), Role::Leader);
        let second = roles.begin(Role::Starting);
        assert!(!first.is_current() && second.is_current());
        assert!(
            !first.set(Role::Disabled),
            "a left-behind start writes nothing"
        );
        assert_eq!(first.get(), Role::Stopped);
        assert_eq!(roles.get(), Role::Starting);
        assert!(second.set(Role::Client));
        assert_eq!(roles.get(), Role::Client);
    }
}
