//! The process-wide agent: `start()` reads the configuration, hands the APM code its configuration
//! and starts the sender thread, which prepares the working directory and opens the log
//! ([`prepare_workdir`]) before it connects to the leader or becomes it, so that the app's thread
//! does no file-system work; `stop()` flushes with a bounded wait. Nothing here can make the host
//! app fail: every problem becomes a log line, a diagnose entry and a disabled agent.
//! The app-thread calls are in [`crate::recorder`].
//!
//! After a `fork()`, the child's first call notices it ([`crate::recorder::check_fork`]); the
//! recorder resets itself and runs [`after_fork`], registered here: the parent's sender is
//! forgotten (its thread does not exist here) and, if the parent was running, the child starts
//! afresh as a client.

use std::cell::RefCell;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Instant;

use once_cell::sync::Lazy;

use crate::client::Sender;
use crate::config::Config;
use crate::log;
use crate::recorder;
pub use crate::role::Role;
use crate::role::RoleCell;
use crate::workdir::{self, Probe, WorkDir};

/// The role cell of the current start (null before the first).
static CURRENT_ROLE: AtomicPtr<RoleCell> = AtomicPtr::new(std::ptr::null_mut());

fn current_role() -> Option<&'static RoleCell> {
    let cell = CURRENT_ROLE.load(Ordering::Acquire);
    // SAFETY: only `&'static RoleCell`s (leaked on purpose) are stored.
    (!cell.is_null()).then(|| unsafe { &*cell })
}

/// A new role cell for this start (or this stop), made current.
fn new_role(role: Role) -> &'static RoleCell {
    let cell = RoleCell::leak_new(role);
    CURRENT_ROLE.store((cell as *const RoleCell).cast_mut(), Ordering::Release);
    cell
}

/// The fork handler (see the module doc).
fn after_fork() {
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
    new_role(Role::Stopped);
    if was_running {
        tracing::info!(
            "forked: starting afresh in the child (pid {})",
            std::process::id()
        );
        start();
    }
}

pub fn role() -> Role {
    current_role().map_or(Role::Stopped, RoleCell::get)
}

/// The library's own locks, held by the thread that calls `fork()` from just before the fork until
/// just after it, in parent and child: another thread of the parent inside `start()`, `stop()`,
/// `env_put` or an APM call when the fork happens makes the fork wait until it left, instead of
/// leaving the child a lock that no thread of the child will ever release. Taken in the order the
/// locks nest (`start()` holds RUNNING while it takes STATUS, reads the environment table and
/// configures APM; nothing takes them the other way round), so the prepare handler cannot deadlock
/// with them. A fork waits at most as long as the longest of those sections (`start()`: reading
/// the configuration and spawning the sender thread; `stop()`: taking the sender out).
struct ForkLocks {
    _running: MutexGuard<'static, Option<Sender>>,
    _status: MutexGuard<'static, Status>,
    _env_table: MutexGuard<'static, std::collections::HashMap<String, String>>,
    _apm: crate::apm::ForkGuard,
}

thread_local! {
    /// The locks the forking thread took in `fork_prepare` (the handlers run on that thread, and in
    /// the child on its only thread).
    static FORK_LOCKS: RefCell<Option<ForkLocks>> = const { RefCell::new(None) };
}

extern "C" fn fork_prepare() {
    let locks = ForkLocks {
        _running: RUNNING.lock().unwrap_or_else(|e| e.into_inner()),
        _status: status(),
        _env_table: crate::config::table(),
        _apm: crate::apm::hold_for_fork(),
    };
    FORK_LOCKS.with(|held| *held.borrow_mut() = Some(locks));
}

/// Runs in the parent and in the child: releases what `fork_prepare` took.
extern "C" fn fork_release() {
    drop(FORK_LOCKS.with(|held| held.borrow_mut().take()));
}

/// Registers the fork handlers: [`crate::fork`]'s (descriptors, fork generation) and the lock
/// handlers above. Called by every entry point of the C interface (one atomic load once done), so
/// that they are in place before any call can take one of these locks.
pub fn install_fork_handlers() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        crate::fork::install();
        // SAFETY: registering handlers with no preconditions. They only lock and unlock this
        // library's locks on the forking thread (std's futex locks can be unlocked in the child,
        // whose only thread is the one that locked them).
        let rc = unsafe {
            libc::pthread_atfork(Some(fork_prepare), Some(fork_release), Some(fork_release))
        };
        if rc != 0 {
            tracing::warn!(
                "pthread_atfork failed ({rc}): a fork while another thread starts or stops the agent may disable it in the child"
            );
        }
    });
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
    /// Set when the located working directory was refused and the per-user one is used.
    pub workdir_fallback: Option<workdir::Fallback>,
}

static STATUS: Lazy<Mutex<Status>> = Lazy::new(|| Mutex::new(Status::default()));
static RUNNING: Lazy<Mutex<Option<Sender>>> = Lazy::new(|| Mutex::new(None));

fn status() -> std::sync::MutexGuard<'static, Status> {
    STATUS.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn status_snapshot() -> Status {
    let mut snapshot = status().clone();
    // The sender disables its start itself (a leader refused it): the reason is in the cell.
    if snapshot.disabled_reason.is_none() {
        snapshot.disabled_reason = current_role().and_then(RoleCell::disabled_reason);
    }
    snapshot
}

/// Marks the agent disabled with a reason (for diagnose) and stops recording.
fn set_disabled(reason: String) {
    recorder::set_recording(false);
    match current_role() {
        Some(cell) => cell.disable(reason.clone()),
        None => new_role(Role::Stopped).disable(reason.clone()),
    }
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
/// configuration cannot be used, or nothing is configured: it goes to stderr, the details to the
/// log and to diagnose.
pub fn config_warning_line() -> String {
    format!(
        "WARNING: Error when reading appsignal config, appsignal (as {}/{}) not starting",
        real_uid(),
        real_gid()
    )
}

/// An active configuration that cannot be used, or none at all: the warning line on stderr, the
/// reason in the log (the configured log file; there is no working directory yet) and in
/// diagnose; disabled.
fn refuse_config(reason: &str, config: &Config) {
    log::open_without_workdir(config);
    tracing::error!("appsignal-agent disabled: invalid configuration: {reason}");
    eprintln!("{}", config_warning_line());
    set_disabled(format!("invalid configuration: {reason}"));
}

/// Starts the agent in this process. Returns within milliseconds; never fails the caller.
pub fn start() {
    install_fork_handlers();
    log::install_panic_hook();
    recorder::set_fork_handler(after_fork);
    recorder::check_fork();
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    crate::test_knobs::hold("start");
    if running.is_some() {
        tracing::info!("start() called while running; ignored");
        return;
    }
    let role = new_role(Role::Starting);
    log::set_role_source(role);
    let loaded = Config::load();
    let config = loaded.config;
    *status() = Status {
        config: Some(config.clone()),
        config_warnings: loaded.warnings.clone(),
        ..Status::default()
    };
    if let Some(reason) = config.invalid_reason() {
        // An explicit `_APPSIGNAL_ACTIVE=false` (or a configuration left inactive) is quiet;
        // nothing configured at all is most likely a mistake, and warned about like an active
        // configuration it cannot use.
        if config.active || config.nothing_configured {
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
    // The APM code uses this start's ignore and filter rules.
    crate::apm::configure(apm_config(&config));
    crate::apm::set_sample_rate(config.sample_rate);
    let client_id = crate::ids::random_u64();
    // Creating and checking the directory and opening the log file cost file-system work (a
    // fresh directory: three mkdirs): the sender thread does it before it runs the election, so
    // that the app's thread returns at once. What the app records meanwhile waits in the
    // pre-aggregate, as it does during the election.
    let prepare_config = config.clone();
    let prepare: crate::client::Prepare =
        Box::new(move || prepare_workdir(&prepare_config, &loaded.warnings, &path, source, role));
    match Sender::start(
        config,
        prepare,
        recorder::metrics(),
        client_id,
        role,
        workdir_fell_back,
    ) {
        Ok(sender) => {
            recorder::set_recording(true);
            *running = Some(sender);
        }
        Err(e) => {
            tracing::error!("appsignal-agent disabled: {e:#}");
            set_disabled(format!("{e:#}"));
        }
    }
}

/// On the sender thread, before the election: prepares the working directory (or the per-user
/// fallback) and opens the log. `None`: the agent is disabled (logged, in diagnose).
fn prepare_workdir(
    config: &Config,
    warnings: &[String],
    path: &std::path::Path,
    source: workdir::Source,
    role: &'static RoleCell,
) -> Option<WorkDir> {
    // A start that was stopped (and maybe followed by another) while this ran changes nothing.
    let current = || current_role().is_some_and(|cell| std::ptr::eq(cell, role));
    let (workdir, fallback) =
        match workdir::prepare_or_fallback(path, config.files_world_accessible) {
            Ok(prepared) => prepared,
            Err(e) => {
                if current() {
                    disable(format!("working directory unusable: {e:#}"), config);
                    // Recording stopped: what the app recorded since start() goes nowhere.
                    drop(recorder::metrics().take());
                }
                return None;
            }
        };
    if !current() {
        return None;
    }
    let (destination, log_fallback) = log::open(config, &workdir);
    for warning in warnings {
        tracing::warn!("configuration: {warning}");
    }
    if let Some(why) = log_fallback {
        tracing::warn!("{why}");
    }
    if let Some(fallback) = &fallback {
        log_fallback_line(fallback, &workdir);
    }
    tracing::info!(
        "starting appsignal-agent {} for {}/{} (working directory {} [{}], files world-accessible: {})",
        crate::VERSION,
        config.app_name,
        config.environment,
        workdir.path().display(),
        source.as_str(),
        config.files_world_accessible
    );
    let mut s = status();
    s.workdir_fallback = fallback;
    // The directory in use (the per-user one after a fallback).
    s.workdir_path = Some(workdir.path().to_path_buf());
    s.workdir = Some(workdir.clone());
    s.log_destination = Some(destination);
    Some(workdir)
}

fn log_fallback_line(fallback: &workdir::Fallback, workdir: &WorkDir) {
    tracing::warn!(
        "working directory {} refused: {}; using the per-user directory {} instead (owner-only)",
        fallback.from.display(),
        fallback.reason,
        workdir.path().display()
    );
}

/// Handed to the sender: it prepared the working directory again (it was deleted, or something
/// was planted in it since the start) and had to use the per-user fallback, which is then logged,
/// shown in diagnose and gets the log file.
fn workdir_fell_back(current: &WorkDir, fresh: &WorkDir, fallback: &workdir::Fallback) {
    log_fallback_line(fallback, fresh);
    let config = status().config.clone();
    let mut s = status();
    if let Some(config) = config {
        if s.log_destination == Some(log::Destination::File(current.log_path())) {
            s.log_destination = Some(log::open(&config, fresh).0);
            log_fallback_line(fallback, fresh);
        }
    }
    s.workdir = Some(fresh.clone());
    s.workdir_path = Some(fresh.path().to_path_buf());
    s.workdir_fallback = Some(fallback.clone());
}

/// Flushes this process's data and stops (bounded by `_APPSIGNAL_STOP_TIMEOUT_MS`).
pub fn stop() {
    install_fork_handlers();
    recorder::check_fork();
    let sender = {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        crate::test_knobs::hold("stop");
        running.take()
    };
    recorder::set_recording(false);
    let Some(sender) = sender else {
        return;
    };
    let timeout = status()
        .config
        .as_ref()
        .map_or(std::time::Duration::from_secs(5), |c| c.stop_timeout);
    sender.stop(Instant::now() + timeout);
    if let Some(cell) = current_role() {
        cell.set(Role::Stopped);
    }
    tracing::info!("stopped");
}

/// The sender's progress and whether everything recorded so far is acknowledged by a leader.
pub fn sender_progress() -> Option<(crate::client::Progress, bool)> {
    recorder::check_fork();
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(Sender::progress)
}

/// What the exporters of this process's leader remember, when this process leads (diagnose).
pub fn leader_exports() -> Option<crate::leader::ExportsReport> {
    recorder::check_fork();
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(Sender::leader_exports)
}

/// The configuration values the APM code needs, from this start's configuration.
fn apm_config(c: &Config) -> crate::apm::ApmConfig {
    {
        crate::apm::ApmConfig {
            ignore_actions: c.ignore_actions.clone(),
            ignore_errors: c.ignore_errors.clone(),
            ignore_namespaces: c.ignore_namespaces.clone(),
            filter_parameters: c.filter_parameters.clone(),
            filter_session_data: c.filter_session_data.clone(),
            running_in_container: c.running_in_container,
            revision: c.revision.clone(),
            hostname: c.hostname.clone(),
        }
    }
}
