//! The leader's test knobs, compiled in only for tests (the `test-knobs` feature, which `testkit/`
//! enables, and unit tests); in the shipped build [`Knobs`] is empty and does nothing.
//!
//! A batch with the counter `aggregate::TEST_PANIC_LEADER` makes the leader thread panic
//! at its next check, which it makes at once: the way a test shows that a panic of the leader
//! thread stops counting before the lock is released.

#[cfg(any(test, feature = "test-knobs"))]
mod enabled {
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::protocol::Batch;

    #[derive(Default)]
    pub(in crate::leader) struct Knobs {
        /// The leader thread panics at its next check.
        panic_requested: AtomicBool,
        /// Makes that check at once.
        check_now: tokio::sync::Notify,
    }

    impl Knobs {
        /// Looks at a batch about to be counted for a knob.
        pub(in crate::leader) fn see(&self, batch: &Batch) {
            if batch
                .counters
                .iter()
                .any(|(k, _)| k.name == crate::aggregate::TEST_PANIC_LEADER)
            {
                self.panic_requested.store(true, Ordering::Release);
                self.check_now.notify_one();
            }
        }

        /// Completes when a knob wants the leader to check at once.
        pub(in crate::leader) async fn check_now(&self) {
            self.check_now.notified().await;
        }

        /// Panics when a batch asked for it.
        pub(in crate::leader) fn panic_if_requested(&self) {
            if self.panic_requested.load(Ordering::Acquire) {
                #[allow(clippy::panic)]
                {
                    panic!("test knob: the leader thread panics");
                }
            }
        }
    }
}

#[cfg(any(test, feature = "test-knobs"))]
pub(super) use enabled::Knobs;

/// Nothing in the shipped build.
#[cfg(not(any(test, feature = "test-knobs")))]
#[derive(Default)]
pub(super) struct Knobs;

#[cfg(not(any(test, feature = "test-knobs")))]
impl Knobs {
    #[inline(always)]
    pub(super) fn see(&self, _batch: &crate::protocol::Batch) {}

    /// Never completes.
    pub(super) async fn check_now(&self) {
        std::future::pending::<()>().await;
    }

    #[inline(always)]
    pub(super) fn panic_if_requested(&self) {}
}
