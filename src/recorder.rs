//! What app threads call: custom metrics, finished samples and log lines go into this process's
//! pre-aggregate ([`crate::metrics::LocalMetrics`]) when recording is on, and nowhere else. No
//! I/O, no waiting on the leader, no lock but the pre-aggregate's short one.
//!
//! Fork: the first call in a forked child notices the new fork generation ([`crate::fork`]),
//! switches to a fresh, empty pre-aggregate (the parent's belongs to the parent, which sends it),
//! stops recording, and runs the handler the agent registered ([`set_fork_handler`]), which starts
//! the child afresh. This module knows nothing of the agent beyond that function pointer.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use crate::data::DataBuf;
use crate::metrics::LocalMetrics;

/// Whether app-thread calls record anything.
static RECORDING: AtomicBool = AtomicBool::new(false);
/// The pre-aggregate app threads write into. A pointer, so that a forked child can switch to a
/// fresh one even if a thread of the parent held the old one's lock at the fork; old ones are
/// leaked (once per fork), never freed, so a reference to one stays valid.
static METRICS: AtomicPtr<LocalMetrics> = AtomicPtr::new(std::ptr::null_mut());
/// The fork generation this process's state belongs to.
static SEEN_GENERATION: AtomicU64 = AtomicU64::new(0);
/// What to run (once) in a forked child after the recorder reset itself: the agent's restart.
static FORK_HANDLER: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// The pre-aggregate of this process (of this fork generation).
#[inline]
pub fn metrics() -> &'static LocalMetrics {
    let current = METRICS.load(Ordering::Acquire);
    if !current.is_null() {
        // SAFETY: pointers stored in METRICS come from Box::into_raw and are never freed.
        return unsafe { &*current };
    }
    first_metrics()
}

#[cold]
fn first_metrics() -> &'static LocalMetrics {
    let fresh = Box::into_raw(Box::default());
    match METRICS.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: as above; `fresh` is now the stored pointer.
        Ok(_) => unsafe { &*fresh },
        Err(existing) => {
            // SAFETY: `fresh` lost the race and was never shared; `existing` is never freed.
            drop(unsafe { Box::from_raw(fresh) });
            unsafe { &*existing }
        }
    }
}

/// Turns recording on (a start succeeded) or off (stop, disabled).
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

pub fn is_recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Registers what a forked child runs after the recorder reset itself (the agent's restart).
pub fn set_fork_handler(handler: fn()) {
    FORK_HANDLER.store(handler as *mut (), Ordering::Release);
}

/// Notices a fork (one relaxed load and a compare on the hot path).
#[inline]
pub fn check_fork() {
    if crate::fork::generation() != SEEN_GENERATION.load(Ordering::Relaxed) {
        after_fork();
    }
}

#[cold]
fn after_fork() {
    let generation = crate::fork::generation();
    let seen = SEEN_GENERATION.load(Ordering::Acquire);
    if seen == generation
        || SEEN_GENERATION
            .compare_exchange(seen, generation, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return; // another thread of this child got here first
    }
    RECORDING.store(false, Ordering::Relaxed);
    METRICS.store(Box::into_raw(Box::default()), Ordering::Release);
    let handler = FORK_HANDLER.load(Ordering::Acquire);
    if !handler.is_null() {
        // SAFETY: the only value stored is a `fn()` cast to a pointer in `set_fork_handler`.
        let handler: fn() = unsafe { std::mem::transmute::<*mut (), fn()>(handler) };
        handler();
    }
}

/// Whether app-thread calls record, or this is the sender thread processing what was finished
/// before the app stopped recording.
#[inline]
fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed) || crate::metrics::processing_records()
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
    if RECORDING.load(Ordering::Relaxed) {
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
    if RECORDING.load(Ordering::Relaxed) {
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
