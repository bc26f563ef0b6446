//! The process-wide agent: `start()` reads the configuration, prepares the working directory,
//! opens the log and starts the sender thread (which connects to the leader or becomes it);
//! `stop()` flushes with a bounded wait. The app-thread calls ([`increment_counter`] and friends)
//! only touch the in-process pre-aggregate. Nothing here can make the host app fail: every problem
//! becomes a log line, a diagnose entry and a disabled agent.
//!
//! After a `fork()`, the child's first call notices the new fork generation ([`crate::fork`]) and
//! starts afresh: a new, empty pre-aggregate (the parent's belongs to the parent, which sends it),
//! the parent's sender forgotten (its thread does not exist here), and a new start as a client.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use once_cell::sync::Lazy;

use crate::client::Sender;
use crate::config::Config;
use crate::data::DataBuf;
use crate::log;
use crate::metrics::LocalMetrics;
use crate::workdir::{self, Probe, WorkDir};

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
}

static ROLE: AtomicU8 = AtomicU8::new(Role::Stopped as u8);
/// Whether app-thread calls record anything.
static RECORDING: AtomicBool = AtomicBool::new(false);
/// The pre-aggregate app threads write into. A pointer, so that a forked child can switch to a
/// fresh one even if a thread of the parent held the old one's lock at the fork; old ones are
/// leaked (once per fork), never freed, so a reference to one stays valid.
static METRICS: AtomicPtr<LocalMetrics> = AtomicPtr::new(std::ptr::null_mut());
/// The fork generation this process's state belongs to.
static SEEN_GENERATION: AtomicU64 = AtomicU64::new(0);

#[inline]
fn metrics() -> &'static LocalMetrics {
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

/// Notices a fork (one relaxed load and a compare on the hot path).
#[inline]
fn check_fork() {
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
    let was_running = match RUNNING.try_lock() {
        Ok(mut running) => running.take().map(std::mem::forget).is_some(),
        Err(std::sync::TryLockError::Poisoned(e)) => {
            e.into_inner().take().map(std::mem::forget).is_some()
        }
        Err(std::sync::TryLockError::WouldBlock) => {
            // Another thread of the parent was starting or stopping at the fork: its lock stays
            // held forever here. Stay disabled rather than wait on it.
            set_disabled("forked while another thread was starting or stopping the agent".into());
            return;
        }
    };
    set_role(Role::Stopped);
    if was_running {
        tracing::info!(
            "forked: starting afresh in the child (pid {})",
            std::process::id()
        );
        start();
    }
}

pub fn role() -> Role {
    match ROLE.load(Ordering::Relaxed) {
        1 => Role::Starting,
        2 => Role::Client,
        3 => Role::Leader,
        4 => Role::Disabled,
        _ => Role::Stopped,
    }
}

pub fn set_role(role: Role) {
    ROLE.store(role as u8, Ordering::Relaxed);
}

/// What diagnose reports about the last start.
#[derive(Default, Clone)]
pub struct Status {
    pub config: Option<Config>,
    pub config_warnings: Vec<String>,
    pub workdir: Option<WorkDir>,
    pub workdir_path: Option<std::path::PathBuf>,
    pub workdir_source: Option<&'static str>,
    pub log_destination: Option<log::Destination>,
    pub disabled_reason: Option<String>,
}

static STATUS: Lazy<Mutex<Status>> = Lazy::new(|| Mutex::new(Status::default()));
static RUNNING: Lazy<Mutex<Option<Sender>>> = Lazy::new(|| Mutex::new(None));

fn status() -> std::sync::MutexGuard<'static, Status> {
    STATUS.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn status_snapshot() -> Status {
    status().clone()
}

/// Marks the agent disabled with a reason (for diagnose) and stops recording.
pub fn set_disabled(reason: String) {
    RECORDING.store(false, Ordering::Relaxed);
    set_role(Role::Disabled);
    status().disabled_reason = Some(reason);
}

fn disable(reason: String, config: &Config) {
    // No working directory means no appsignal.log: use the configured log file if there is one,
    // and say it once on stderr so that the operator sees it either way.
    let logged_to = log::open_without_workdir(config);
    tracing::error!("appsignal-agent disabled: {reason}");
    if logged_to.is_none() {
        eprintln!("appsignal: agent disabled: {reason}");
    }
    set_disabled(reason);
}

/// The process's real user id (what the start-up warning and diagnose's `agent.host` show).
pub fn real_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The process's real group id.
pub fn real_gid() -> u32 {
    // SAFETY: getgid has no preconditions and cannot fail.
    unsafe { libc::getgid() }
}

/// The line the language packages' users know (and their tests look for) when an active
/// configuration cannot be used: it goes to stderr, the details to the log and to diagnose.
pub fn config_warning_line() -> String {
    format!(
        "WARNING: Error when reading appsignal config, appsignal (as {}/{}) not starting",
        real_uid(),
        real_gid()
    )
}

/// An active configuration that cannot be used: the warning line on stderr, the reason in the log
/// (the configured log file; there is no working directory yet) and in diagnose; disabled.
fn refuse_config(reason: &str, config: &Config) {
    log::open_without_workdir(config);
    tracing::error!("appsignal-agent disabled: invalid configuration: {reason}");
    eprintln!("{}", config_warning_line());
    set_disabled(format!("invalid configuration: {reason}"));
}

/// Starts the agent in this process. Returns within milliseconds; never fails the caller.
pub fn start() {
    crate::fork::install();
    log::install_panic_hook();
    check_fork();
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    if running.is_some() {
        tracing::info!("start() called while running; ignored");
        return;
    }
    set_role(Role::Starting);
    let loaded = Config::load();
    let config = loaded.config;
    *status() = Status {
        config: Some(config.clone()),
        config_warnings: loaded.warnings.clone(),
        ..Status::default()
    };
    if let Some(reason) = config.invalid_reason() {
        if config.active {
            refuse_config(&reason, &config);
        } else {
            set_disabled(format!("not active: {reason}"));
        }
        return;
    }
    let (path, source) =
        Probe::system(|probe| workdir::locate(config.working_directory_path.as_deref(), probe));
    {
        let mut s = status();
        s.workdir_path = Some(path.clone());
        s.workdir_source = Some(source.as_str());
    }
    let workdir = match WorkDir::prepare(&path, config.files_world_accessible) {
        Ok(w) => w,
        Err(e) => {
            disable(format!("working directory unusable: {e:#}"), &config);
            return;
        }
    };
    let (destination, log_fallback) = log::open(&config, &workdir);
    for warning in &loaded.warnings {
        tracing::warn!("configuration: {warning}");
    }
    if let Some(why) = log_fallback {
        tracing::warn!("{why}");
    }
    tracing::info!(
        "starting appsignal-agent {} for {}/{} (working directory {} [{}], files world-accessible: {})",
        crate::VERSION,
        config.push.app_name,
        config.push.environment,
        workdir.path().display(),
        source.as_str(),
        config.files_world_accessible
    );
    {
        let mut s = status();
        s.workdir = Some(workdir.clone());
        s.log_destination = Some(destination);
    }
    // The APM code reads ignore and filter rules from this start's configuration.
    crate::apm::start();
    crate::apm::set_sample_rate(config.sample_rate);
    let client_id = random_u64();
    match Sender::start(config, workdir, metrics(), client_id) {
        Ok(sender) => {
            RECORDING.store(true, Ordering::Relaxed);
            *running = Some(sender);
        }
        Err(e) => {
            tracing::error!("appsignal-agent disabled: {e:#}");
            set_disabled(format!("{e:#}"));
        }
    }
}

/// Flushes this process's data and stops (bounded by `_APPSIGNAL_STOP_TIMEOUT_MS`).
pub fn stop() {
    check_fork();
    let sender = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
    RECORDING.store(false, Ordering::Relaxed);
    let Some(sender) = sender else {
        return;
    };
    let timeout = status()
        .config
        .as_ref()
        .map_or(std::time::Duration::from_secs(5), |c| c.stop_timeout);
    sender.stop(Instant::now() + timeout);
    set_role(Role::Stopped);
    tracing::info!("stopped");
}

/// The sender's progress and whether everything recorded so far is acknowledged by a leader.
pub fn sender_progress() -> Option<(crate::client::Progress, bool)> {
    check_fork();
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(Sender::progress)
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
pub fn submit_sample(sample: serde_json::Value) {
    check_fork();
    #[cfg(test)]
    test_recorder::record(test_recorder::Recorded::Sample(sample.clone()));
    if recording() {
        metrics().submit_sample(sample.to_string());
    }
}

/// Hands a finished transaction or span to the agent: the sender thread turns it into metrics
/// and a sample (see [`crate::metrics::Record`]). In the unit tests it is processed at once.
pub fn submit_record(record: Box<dyn crate::metrics::Record>) {
    check_fork();
    #[cfg(test)]
    return record.process();
    #[cfg(not(test))]
    if RECORDING.load(Ordering::Relaxed) {
        metrics().submit_record(record);
    }
}

/// Hands a log line (from `appsignal_log`) to the agent, like [`submit_sample`].
pub fn submit_log(line: serde_json::Value) {
    check_fork();
    #[cfg(test)]
    test_recorder::record(test_recorder::Recorded::Log(line.clone()));
    if RECORDING.load(Ordering::Relaxed) {
        metrics().submit_log(line.to_string());
    }
}

/// The configuration values the APM code needs, from the configuration of the last `start()`.
pub fn apm_config() -> crate::apm::ApmConfig {
    #[cfg(test)]
    return test_recorder::config();
    #[cfg(not(test))]
    {
        let status = status();
        let Some(c) = status.config.as_ref() else {
            return crate::apm::ApmConfig::default();
        };
        crate::apm::ApmConfig {
            ignore_actions: c.ignore_actions.clone(),
            ignore_errors: c.ignore_errors.clone(),
            ignore_namespaces: c.ignore_namespaces.clone(),
            filter_parameters: c.filter_parameters.clone(),
            filter_session_data: c.filter_session_data.clone(),
            running_in_container: c.running_in_container,
            revision: c.push.revision.clone(),
            hostname: c.push.hostname.clone(),
        }
    }
}

/// A random id (client ids, the leader's host-metrics source id).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Without OS randomness, time and pid still make ids distinct between processes.
        return crate::now_ms() ^ (u64::from(std::process::id()) << 40);
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
pub use test_recorder::{recorded, set_apm_config, Recorded};

/// For the APM unit tests: records what is handed to the agent, whether or not it is started.
#[cfg(test)]
mod test_recorder {
    use std::sync::Mutex;

    use once_cell::sync::Lazy;

    use crate::apm::ApmConfig;
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
    static CONFIG: Lazy<Mutex<ApmConfig>> = Lazy::new(|| Mutex::new(ApmConfig::default()));

    pub fn record(call: Recorded) {
        RECORDED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }

    pub fn recorded() -> Vec<Recorded> {
        RECORDED.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_apm_config(config: ApmConfig) {
        *CONFIG.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    pub fn config() -> ApmConfig {
        CONFIG.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
