//! What app threads call: custom metrics, finished samples and log lines go into this process's
//! pre-aggregate ([`crate::metrics::LocalMetrics`]) when recording is on, and nowhere else. No
//! I/O, no waiting on the leader, no lock but the pre-aggregate's short one.
//!
//! The recorder's state is one [`Recorder`] value: whether it records, its pre-aggregate, the fork
//! generation it belongs to. The process's agent owns and drives the process's recorder
//! ([`process`]); the app-thread calls below go to that one. The agent's unit tests drive their own.
//!
//! Fork: the first call in a forked child notices the new fork generation ([`crate::fork`]) and
//! runs the handler the agent registered ([`Recorder::on_fork`]): the agent empties the
//! pre-aggregate (what it holds is the parent's, which sends it) and stops recording
//! ([`Recorder::reset_after_fork`]), then starts the child afresh. With no handler registered (no
//! start yet) the recorder resets itself. This module knows nothing of the agent beyond that
//! function.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};

use crate::data::DataBuf;
use crate::metrics::LocalMetrics;

/// One recorder: the process's is [`process`].
pub struct Recorder {
    /// Whether app-thread calls record anything.
    recording: AtomicBool,
    /// Set for good when a forked child found the pre-aggregate locked (see
    /// [`Recorder::reset_after_fork`]): nothing may record or start in that child.
    unusable: AtomicBool,
    /// The pre-aggregate app threads write into. One for the life of the process: a fork child
    /// empties it in place, which is sound because the agent's fork prepare handler holds its lock
    /// across `fork()` (no thread of the parent can hold it in the child).
    metrics: LazyLock<LocalMetrics>,
    /// The fork generation this recorder's state belongs to.
    seen_generation: AtomicU64,
    /// What to run (once) in a forked child: the agent's fork sequence.
    fork_handler: OnceLock<fn()>,
}

static PROCESS: Recorder = Recorder::new();

/// The process's recorder: the one app-thread calls go to.
#[inline]
pub const fn process() -> &'static Recorder {
    &PROCESS
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub const fn new() -> Recorder {
        Recorder {
            recording: AtomicBool::new(false),
            unusable: AtomicBool::new(false),
            metrics: LazyLock::new(LocalMetrics::default),
            seen_generation: AtomicU64::new(0),
            fork_handler: OnceLock::new(),
        }
    }

    /// The pre-aggregate.
    #[inline]
    pub fn metrics(&self) -> &LocalMetrics {
        &self.metrics
    }

    /// Turns recording on (a start succeeded) or off (stop, disabled). Stays off in a recorder
    /// that a fork made unusable.
    pub fn set_recording(&self, on: bool) {
        self.recording
            .store(on && !self.is_unusable(), Ordering::Relaxed);
    }

    pub fn is_recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// A forked child found the pre-aggregate locked: the agent must not start.
    pub fn is_unusable(&self) -> bool {
        self.unusable.load(Ordering::Relaxed)
    }

    /// Registers what a forked child runs when it notices the fork (the agent's fork sequence,
    /// which calls [`Recorder::reset_after_fork`] first). The first registration stays.
    pub fn on_fork(&self, handler: fn()) {
        let _ = self.fork_handler.set(handler);
    }

    /// Notices a fork (one relaxed load and a compare on the hot path).
    #[inline]
    pub fn check_fork(&self) {
        if crate::fork::generation() != self.seen_generation.load(Ordering::Relaxed) {
            self.forked();
        }
    }

    #[cold]
    fn forked(&self) {
        let generation = crate::fork::generation();
        let seen = self.seen_generation.load(Ordering::Acquire);
        if seen == generation
            || self
                .seen_generation
                .compare_exchange(seen, generation, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return; // another thread of this child got here first
        }
        match self.fork_handler.get() {
            Some(handler) => handler(),
            None => self.reset_after_fork(),
        }
    }

    /// In a forked child: stops recording and empties the pre-aggregate, whose content (the
    /// parent's, which sends it) is forgotten, not dropped: it may hold the parent's wake-up pipe,
    /// whose descriptors the fork handler closed and whose numbers the child may reuse. If the
    /// pre-aggregate is locked (a parent thread held it at the fork: possible only when the fork
    /// prepare handler could not be registered), the recorder stays off for good instead of
    /// waiting on a lock nobody in this child releases.
    pub fn reset_after_fork(&self) {
        self.recording.store(false, Ordering::Relaxed);
        if !self.metrics.forget_after_fork() {
            self.unusable.store(true, Ordering::Relaxed);
        }
    }

    /// Whether app-thread calls record, or this is the sender thread processing what was
    /// finished before the app stopped recording.
    #[inline]
    fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed) || crate::metrics::processing_records()
    }
}

/// The process recorder's pre-aggregate.
#[inline]
pub fn metrics() -> &'static LocalMetrics {
    PROCESS.metrics()
}

/// Notices a fork in the process recorder.
#[inline]
pub fn check_fork() {
    PROCESS.check_fork();
}

/// Whether app-thread calls record, or this is the sender thread processing what was finished
/// before the app stopped recording.
#[inline]
fn recording() -> bool {
    PROCESS.recording()
}

pub fn increment_counter(name: &[u8], value: f64, tags: Option<&DataBuf>) {
    check_fork();
    #[cfg(test)]
    test_recorder::record(test_recorder::Recorded::Counter {
        name: String::from_utf8_lossy(name).into_owned(),
        value,
        tags: tags.map(DataBuf::to_data),
    });
    if recording() {
        metrics().increment_counter(name, value, tags);
    }
}

pub fn set_gauge(name: &[u8], value: f64, tags: Option<&DataBuf>) {
    check_fork();
    if recording() {
        metrics().set_gauge(name, value, tags);
    }
}

pub fn add_distribution_value(name: &[u8], value: f64, tags: Option<&DataBuf>) {
    check_fork();
    #[cfg(test)]
    test_recorder::record(test_recorder::Recorded::Distribution {
        name: String::from_utf8_lossy(name).into_owned(),
        value,
        tags: tags.map(DataBuf::to_data),
    });
    if recording() {
        metrics().add_distribution_value(name, value, tags);
    }
}

/// Hands a finished sample (a transaction's or root span's) to the agent: kept with this
/// process's pre-aggregate and flushed to the leader, within the per-flush and per-window caps.
pub fn submit_sample(sample: crate::sample::Sample) {
    check_fork();
    #[cfg(test)]
    test_recorder::record(test_recorder::Recorded::Sample(
        serde_json::to_value(&sample).unwrap_or_default(),
    ));
    if recording() {
        metrics().submit_sample(sample);
    }
}

/// Hands a finished transaction or span to the agent: the sender thread turns it into metrics
/// and a sample (see [`crate::metrics::Record`]). In the unit tests it is processed at once.
pub fn submit_record(record: std::sync::Arc<dyn crate::metrics::Record>) {
    check_fork();
    #[cfg(test)]
    return record.process();
    #[cfg(not(test))]
    if PROCESS.is_recording() {
        metrics().submit_record(record);
    }
}

/// Hands a log line (from `appsignal_log`) to the agent, like [`submit_sample`].
pub fn submit_log(line: crate::sample::LogLine) {
    check_fork();
    #[cfg(test)]
    test_recorder::record(test_recorder::Recorded::Log(
        serde_json::to_value(&line).unwrap_or_default(),
    ));
    if PROCESS.is_recording() {
        metrics().submit_log(line);
    }
}

#[cfg(test)]
pub use test_recorder::{recorded, Recorded};

/// For the APM unit tests: records what is handed to the recorder, whether or not it records.
#[cfg(test)]
mod test_recorder {
    use std::sync::Mutex;

    use once_cell::sync::Lazy;

    use crate::data::Data;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Recorded {
        Counter {
            name: String,
            value: f64,
            tags: Option<Data>,
        },
        Distribution {
            name: String,
            value: f64,
            tags: Option<Data>,
        },
        Sample(serde_json::Value),
        Log(serde_json::Value),
    }

    static RECORDED: Lazy<Mutex<Vec<Recorded>>> = Lazy::new(|| Mutex::new(Vec::new()));

    pub fn record(call: Recorded) {
        RECORDED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }

    pub fn recorded() -> Vec<Recorded> {
        RECORDED.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> &'static Recorder {
        Box::leak(Box::new(Recorder::new()))
    }

    #[test]
    fn a_fork_child_starts_with_an_empty_pre_aggregate_and_recording_off() {
        let r = recorder();
        r.set_recording(true);
        r.metrics().increment_counter(b"parent", 1.0, None);
        assert!(!r.metrics().is_empty());
        r.reset_after_fork();
        assert!(!r.is_recording());
        assert!(r.metrics().is_empty());
        assert!(!r.is_unusable());
        r.set_recording(true);
        assert!(r.is_recording(), "a start turns it on again");
    }

    #[test]
    fn a_pre_aggregate_inherited_locked_keeps_the_recorder_off_for_good() {
        let r = recorder();
        r.set_recording(true);
        {
            let _held = r.metrics().hold_for_fork();
            r.reset_after_fork();
        }
        assert!(r.is_unusable());
        r.set_recording(true);
        assert!(!r.is_recording());
    }
}
