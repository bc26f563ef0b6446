//! The process-wide agent: one [`Agent`] value ([`AGENT`]) holds the lifecycle of this process —
//! the running start's sender, the role of the current start, what diagnose reports — and drives
//! the parts below it that app threads reach without it: the [`Recorder`] (recording on or off,
//! the pre-aggregate) and the log. Its methods are the lifecycle, in one place:
//!
//! - [`Agent::start`] reads the configuration, hands the APM code its configuration and starts
//!   the sender thread, which prepares the working directory and opens the log
//!   ([`Agent::prepare_workdir`]) before it connects to the leader or becomes it, so that the
//!   app's thread does no file-system work. Nothing here can make the host app fail: every problem
//!   becomes a log line, a diagnose entry and a disabled agent.
//! - [`Agent::stop`] flushes with a bounded wait.
//! - [`Agent::after_fork`] runs in a forked child, on its first call into the library (the
//!   recorder notices the new fork generation and calls it): the pre-aggregate is emptied and
//!   recording stops, the parent's sender is forgotten (its thread does not exist here) and, if
//!   the parent was running, the child starts afresh as a client.
//!
//! Around a `fork()`, [`install_fork_handlers`]' prepare handler holds the library's locks (the
//! agent's, the environment table, the APM code's, the log's process name, the pre-aggregate),
//! so that a child never inherits one held. What the child handler touches
//! ([`crate::fork`]) has no lock at all.
//!
//! The environment table ([`crate::config`]) is not part of the agent: the app fills it before
//! `start()`. The app-thread calls are in [`crate::recorder`].

use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Instant;

use crate::client::{Owner, Sender};
use crate::config::{Config, Loaded};
use crate::log;
use crate::recorder::{self, Recorder};
pub use crate::role::Role;
use crate::role::{Roles, StartRole};
use crate::workdir::{self, Probe, WorkDir};

/// This process's agent: the one the C interface starts and stops.
pub(crate) static AGENT: Agent = Agent::new(recorder::process(), Config::load, configure_apm);

/// One agent's lifecycle state. The process has one ([`AGENT`]); the unit tests make their own.
pub(crate) struct Agent {
    /// The recorder this agent turns on and off and resets after a fork.
    recorder: &'static Recorder,
    /// Reads the configuration at each start (the environment table and the process
    /// environment; a map in the unit tests).
    load: fn() -> Loaded,
    /// Hands a start's configuration to the APM code (process-wide; left alone by the unit
    /// tests' agents, since the crate's tests share one APM configuration).
    configure_apm: fn(&Config),
    /// The role of the current start, readable without a lock (the log's line prefix, diagnose).
    roles: Roles,
    /// Taken by start, stop and the fork restart, each from beginning to end, except that `stop()`
    /// waits for the sender outside it; and by the fork prepare handler across `fork()`.
    lifecycle: Mutex<Lifecycle>,
}

/// What the lock of an [`Agent`] protects.
struct Lifecycle {
    /// The running start: its role handle and its sender thread.
    running: Option<(StartRole, Sender)>,
    /// What diagnose reports about the last start.
    status: Status,
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

impl Status {
    const EMPTY: Status = Status {
        config: None,
        config_warnings: Vec::new(),
        workdir: None,
        workdir_path: None,
        workdir_source: None,
        log_destination: None,
        disabled_reason: None,
        workdir_fallback: None,
    };
}

impl Agent {
    pub const fn new(
        recorder: &'static Recorder,
        load: fn() -> Loaded,
        configure_apm: fn(&Config),
    ) -> Agent {
        Agent {
            recorder,
            load,
            configure_apm,
            roles: Roles::new(),
            lifecycle: Mutex::new(Lifecycle {
                running: None,
                status: Status::EMPTY,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lifecycle> {
        // Nothing between lock and unlock leaves the state half-written on a panic that matters
        // more than losing the agent: keep going with what is there.
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this process is to the agent.
    pub fn role(&self) -> Role {
        self.roles.get()
    }

    /// Starts the agent. Returns within milliseconds; never fails the caller.
    pub fn start(&'static self) {
        self.recorder.check_fork();
        let mut life = self.lock();
        crate::test_knobs::hold("start");
        if life.running.is_some() {
            tracing::info!("start() called while running; ignored");
            return;
        }
        let role = self.roles.begin(Role::Starting);
        let loaded = (self.load)();
        let config = loaded.config;
        life.status = Status {
            config: Some(config.clone()),
            config_warnings: loaded.warnings.clone(),
            ..Status::EMPTY
        };
        if self.recorder.is_unusable() {
            self.set_disabled(
                &mut life,
                role,
                "forked while another thread of the parent held the pre-aggregate (the fork handlers could not be registered)".into(),
            );
            return;
        }
        if let Some(reason) = config.invalid_reason() {
            // An explicit `_APPSIGNAL_ACTIVE=false` (or a configuration left inactive) is quiet;
            // nothing configured at all is most likely a mistake, and warned about like an active
            // configuration it cannot use.
            if config.active || config.nothing_configured {
                // No working directory yet: the configured log file, the warning line on stderr.
                log::open_without_workdir(&config);
                tracing::error!("appsignal-agent disabled: invalid configuration: {reason}");
                eprintln!("{}", config_warning_line());
                self.set_disabled(&mut life, role, format!("invalid configuration: {reason}"));
            } else {
                self.set_disabled(&mut life, role, format!("not active: {reason}"));
            }
            return;
        }
        let (path, source) =
            Probe::system(|probe| workdir::locate(config.working_directory_path.as_deref(), probe));
        life.status.workdir_path = Some(path.clone());
        life.status.workdir_source = Some(source.as_str());
        (self.configure_apm)(&config);
        let client_id = crate::ids::random_u64();
        // Creating and checking the directory and opening the log file cost file-system work (a
        // fresh directory: three mkdirs): the sender thread does it before it runs the election,
        // so that the app's thread returns at once. What the app records meanwhile waits in the
        // pre-aggregate, as it does during the election.
        let prepare_config = config.clone();
        let prepare: crate::client::Prepare = Box::new(move || {
            self.prepare_workdir(&prepare_config, &loaded.warnings, &path, source, role)
        });
        let owner = Box::new(StartOwner { agent: self, role });
        match Sender::start(
            config,
            prepare,
            self.recorder.metrics(),
            client_id,
            role,
            owner,
        ) {
            Ok(sender) => {
                self.recorder.set_recording(true);
                life.running = Some((role, sender));
            }
            Err(e) => {
                tracing::error!("appsignal-agent disabled: {e:#}");
                self.set_disabled(&mut life, role, format!("{e:#}"));
            }
        }
    }

    /// Flushes this process's data and stops (bounded by `_APPSIGNAL_STOP_TIMEOUT_MS`).
    pub fn stop(&self) {
        self.recorder.check_fork();
        let (running, timeout) = {
            let mut life = self.lock();
            crate::test_knobs::hold("stop");
            let timeout = life
                .status
                .config
                .as_ref()
                .map_or(std::time::Duration::from_secs(5), |c| c.stop_timeout);
            (life.running.take(), timeout)
        };
        self.recorder.set_recording(false);
        let Some((role, sender)) = running else {
            return;
        };
        // Outside the lock: the sender thread takes it when it prepares the working directory,
        // falls back to the per-user one or is refused.
        sender.stop(Instant::now() + timeout);
        role.set(Role::Stopped);
        tracing::info!("stopped");
    }

    /// In a forked child, on its first call into the library (see the module doc).
    pub fn after_fork(&'static self) {
        self.recorder.reset_after_fork();
        let was_running = match self.lifecycle.try_lock() {
            Ok(mut life) => life.running.take().map(std::mem::forget).is_some(),
            Err(std::sync::TryLockError::Poisoned(e)) => e
                .into_inner()
                .running
                .take()
                .map(std::mem::forget)
                .is_some(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Another thread of the parent was starting or stopping at the fork and the
                // prepare handler could not hold the lock for it: it stays held forever here.
                // Stay disabled rather than wait on it.
                self.roles.begin(Role::Disabled);
                tracing::warn!(
                    "forked while another thread was starting or stopping the agent: disabled in this child"
                );
                return;
            }
        };
        self.roles.begin(Role::Stopped);
        if was_running {
            tracing::info!(
                "forked: starting afresh in the child (pid {})",
                std::process::id()
            );
            self.start();
        }
    }

    /// Marks the start disabled with a reason (for diagnose) and stops recording.
    fn set_disabled(&self, life: &mut Lifecycle, role: StartRole, reason: String) {
        self.recorder.set_recording(false);
        role.set(Role::Disabled);
        life.status.disabled_reason = Some(reason);
    }

    /// On the sender thread, before the election: prepares the working directory (or the
    /// per-user fallback) and opens the log. `None`: the agent is disabled (logged, in diagnose).
    fn prepare_workdir(
        &self,
        config: &Config,
        warnings: &[String],
        path: &std::path::Path,
        source: workdir::Source,
        role: StartRole,
    ) -> Option<WorkDir> {
        // A start that was stopped (and maybe followed by another) while this ran changes nothing.
        let (workdir, fallback) =
            match workdir::prepare_or_fallback(path, config.files_world_accessible) {
                Ok(prepared) => prepared,
                Err(e) => {
                    if role.is_current() {
                        self.disable_unprepared(
                            format!("working directory unusable: {e:#}"),
                            config,
                            role,
                        );
                    }
                    return None;
                }
            };
        if !role.is_current() {
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
        let mut life = self.lock();
        let s = &mut life.status;
        s.workdir_fallback = fallback;
        // The directory in use (the per-user one after a fallback).
        s.workdir_path = Some(workdir.path().to_path_buf());
        s.workdir = Some(workdir.clone());
        s.log_destination = Some(destination);
        Some(workdir)
    }

    /// The working directory cannot be used: disabled.
    fn disable_unprepared(&self, reason: String, config: &Config, role: StartRole) {
        // No working directory means no appsignal.log: use the configured log file if there is
        // one, and say it once on stderr so that the operator sees it either way.
        let logged_to = log::open_without_workdir(config);
        tracing::error!("appsignal-agent disabled: {reason}");
        if logged_to.is_none() {
            eprintln!("appsignal: agent disabled: {reason}");
        }
        let mut life = self.lock();
        if role.is_current() {
            self.set_disabled(&mut life, role, reason);
            // Recording stopped: what the app recorded since start() goes nowhere.
            drop(self.recorder.metrics().take());
        }
    }

    /// The sender prepared the working directory again (it was deleted, or something was planted
    /// in it since the start) and had to use the per-user fallback, which is then logged, shown in
    /// diagnose and gets the log file.
    fn workdir_fell_back(&self, current: &WorkDir, fresh: &WorkDir, fallback: &workdir::Fallback) {
        log_fallback_line(fallback, fresh);
        let mut life = self.lock();
        let s = &mut life.status;
        if let Some(config) = &s.config {
            if s.log_destination == Some(log::Destination::File(current.log_path())) {
                s.log_destination = Some(log::open(config, fresh).0);
                log_fallback_line(fallback, fresh);
            }
        }
        s.workdir = Some(fresh.clone());
        s.workdir_path = Some(fresh.path().to_path_buf());
        s.workdir_fallback = Some(fallback.clone());
    }

    /// What diagnose shows about the last start.
    pub fn status_snapshot(&self) -> Status {
        self.lock().status.clone()
    }

    /// The sender's progress and whether everything recorded so far is acknowledged by a leader.
    pub fn sender_progress(&self) -> Option<(crate::client::Progress, bool)> {
        self.recorder.check_fork();
        self.lock().running.as_ref().map(|(_, s)| s.progress())
    }

    /// What the exporters of this process's leader remember, when this process leads.
    pub fn leader_exports(&self) -> Option<crate::leader::ExportsReport> {
        self.recorder.check_fork();
        self.lock()
            .running
            .as_ref()
            .and_then(|(_, s)| s.leader_exports())
    }
}

/// What a start's sender tells its agent: only while that start is the current one.
struct StartOwner {
    agent: &'static Agent,
    role: StartRole,
}

impl Owner for StartOwner {
    fn fell_back(&self, current: &WorkDir, fresh: &WorkDir, fallback: &workdir::Fallback) {
        if self.role.is_current() {
            self.agent.workdir_fell_back(current, fresh, fallback);
        }
    }

    fn refused(&self, reason: String) {
        let mut life = self.agent.lock();
        if self.role.is_current() {
            self.agent.set_disabled(&mut life, self.role, reason);
        }
    }
}

fn log_fallback_line(fallback: &workdir::Fallback, workdir: &WorkDir) {
    tracing::warn!(
        "working directory {} refused: {}; using the per-user directory {} instead (owner-only)",
        fallback.from.display(),
        fallback.reason,
        workdir.path().display()
    );
}

/// Starts the agent in this process. Returns within milliseconds; never fails the caller.
pub fn start() {
    install_fork_handlers();
    log::install_panic_hook();
    log::use_roles(&AGENT.roles);
    AGENT.start();
}

/// Flushes this process's data and stops (bounded by `_APPSIGNAL_STOP_TIMEOUT_MS`).
pub fn stop() {
    install_fork_handlers();
    AGENT.stop();
}

/// What this process is to the agent.
pub fn role() -> Role {
    AGENT.role()
}

/// What diagnose shows about the last start.
pub fn status_snapshot() -> Status {
    AGENT.status_snapshot()
}

/// The sender's progress and whether everything recorded so far is acknowledged by a leader.
pub fn sender_progress() -> Option<(crate::client::Progress, bool)> {
    AGENT.sender_progress()
}

/// What the exporters of this process's leader remember, when this process leads (diagnose).
pub fn leader_exports() -> Option<crate::leader::ExportsReport> {
    AGENT.leader_exports()
}

/// The library's own locks, held by the thread that calls `fork()` from just before the fork until
/// just after it, in parent and child: another thread of the parent inside `start()`, `stop()`,
/// `env_put`, an APM call, a log line or a record when the fork happens makes the fork wait until
/// it left, instead of leaving the child a lock that no thread of the child will ever release.
/// Taken in the order the locks nest (`start()` holds the agent's lock while it reads the
/// environment table, configures APM, opens the log and hands the sender the pre-aggregate;
/// nothing takes them the other way round, and the pre-aggregate's lock is innermost), so the
/// prepare handler cannot deadlock with them. A fork waits at most as long as the longest of those
/// sections (`start()`: reading the configuration and spawning the sender thread; `stop()`: taking
/// the sender out).
struct ForkLocks {
    _lifecycle: MutexGuard<'static, Lifecycle>,
    _env_table: MutexGuard<'static, std::collections::HashMap<String, String>>,
    _apm: crate::apm::ForkGuard,
    _log: std::sync::RwLockReadGuard<'static, String>,
    _metrics: crate::metrics::ForkHold<'static>,
}

thread_local! {
    /// The locks the forking thread took in `fork_prepare` (the handlers run on that thread, and in
    /// the child on its only thread).
    static FORK_LOCKS: RefCell<Option<ForkLocks>> = const { RefCell::new(None) };
}

extern "C" fn fork_prepare() {
    let locks = ForkLocks {
        _lifecycle: AGENT.lock(),
        _env_table: crate::config::table(),
        _apm: crate::apm::hold_for_fork(),
        _log: log::hold_for_fork(),
        _metrics: AGENT.recorder.metrics().hold_for_fork(),
    };
    FORK_LOCKS.with(|held| *held.borrow_mut() = Some(locks));
}

/// Runs in the parent and in the child: releases what `fork_prepare` took.
extern "C" fn fork_release() {
    drop(FORK_LOCKS.with(|held| held.borrow_mut().take()));
}

/// Registers the fork handlers: [`crate::fork`]'s (descriptors, fork generation), the lock
/// handlers above, and [`Agent::after_fork`] with the recorder. Called by every entry point of
/// the C interface (one atomic load once done), so that they are in place before any call can
/// take one of these locks.
pub fn install_fork_handlers() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        crate::fork::install();
        AGENT.recorder.on_fork(|| AGENT.after_fork());
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

/// The APM code uses this start's ignore and filter rules and sample rate.
fn configure_apm(config: &Config) {
    crate::apm::configure(apm_config(config));
    crate::apm::set_sample_rate(config.sample_rate);
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

#[cfg(test)]
mod tests {
    //! Lifecycles driven in this process: each test has its own agent, recorder and working
    //! directory; only the APM configuration (shared by every test of the crate) is left alone.
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    thread_local! {
        /// What the test agent on this thread reads at each start (a fork restart included).
        static ENV: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
    }

    fn load_thread_env() -> Loaded {
        ENV.with(|env| {
            let env = env.borrow();
            Config::load_from(&|key| env.get(key).cloned())
        })
    }

    fn agent(vars: &[(&str, String)]) -> &'static Agent {
        ENV.with(|env| {
            *env.borrow_mut() = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
        });
        let recorder = Box::leak(Box::new(Recorder::new()));
        Box::leak(Box::new(Agent::new(recorder, load_thread_env, |_| {})))
    }

    /// A configuration that starts: its own working directory, a push endpoint nothing listens
    /// on, no host metrics, a short stop.
    fn runnable(dir: &std::path::Path) -> Vec<(&'static str, String)> {
        vec![
            ("_APPSIGNAL_ACTIVE", "true".into()),
            ("_APPSIGNAL_PUSH_API_KEY", "test-key".into()),
            ("_APPSIGNAL_APP_NAME", "lifecycle".into()),
            ("_APPSIGNAL_APP_ENV", "test".into()),
            (
                "_APPSIGNAL_WORKING_DIRECTORY_PATH",
                dir.display().to_string(),
            ),
            ("_APPSIGNAL_PUSH_API_ENDPOINT", "http://127.0.0.1:9".into()),
            ("_APPSIGNAL_ENABLE_HOST_METRICS", "false".into()),
            ("_APPSIGNAL_STOP_TIMEOUT_MS", "300".into()),
        ]
    }

    fn wait_for_role(agent: &Agent, wanted: &[Role]) -> Role {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let role = agent.role();
            if wanted.contains(&role) || Instant::now() > deadline {
                return role;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn stop_without_start_changes_nothing() {
        let agent = agent(&[]);
        agent.stop();
        assert_eq!(agent.role(), Role::Stopped);
        assert!(!agent.recorder.is_recording());
        assert!(agent.sender_progress().is_none());
        assert!(agent.status_snapshot().config.is_none());
    }

    #[test]
    fn an_inactive_configuration_disables_quietly() {
        let agent = agent(&[
            ("_APPSIGNAL_ACTIVE", "false".into()),
            ("_APPSIGNAL_PUSH_API_KEY", "test-key".into()),
        ]);
        agent.start();
        assert_eq!(agent.role(), Role::Disabled);
        assert!(!agent.recorder.is_recording());
        assert!(agent.sender_progress().is_none());
        let status = agent.status_snapshot();
        assert!(status.config.is_some());
        assert!(
            status
                .disabled_reason
                .as_deref()
                .is_some_and(|r| r.starts_with("not active")),
            "{:?}",
            status.disabled_reason
        );
        // Stopping a disabled agent leaves its reason for diagnose.
        agent.stop();
        assert_eq!(agent.role(), Role::Disabled);
    }

    #[test]
    fn start_stop_start() {
        let tmp = tempfile::tempdir().unwrap();
        let agent = agent(&runnable(tmp.path()));
        agent.start();
        assert!(
            agent.recorder.is_recording(),
            "{:?}",
            agent.status_snapshot().disabled_reason
        );
        assert!(agent.sender_progress().is_some());
        assert_eq!(wait_for_role(agent, &[Role::Leader]), Role::Leader);
        let status = agent.status_snapshot();
        assert_eq!(status.workdir_path.as_deref(), Some(tmp.path()));
        assert!(status.disabled_reason.is_none());
        // A second start while running is ignored.
        agent.start();
        assert_eq!(agent.role(), Role::Leader);

        agent.stop();
        assert_eq!(agent.role(), Role::Stopped);
        assert!(!agent.recorder.is_recording());
        assert!(agent.sender_progress().is_none());

        agent.start();
        assert!(agent.recorder.is_recording());
        assert_eq!(wait_for_role(agent, &[Role::Leader]), Role::Leader);
        agent.stop();
        assert_eq!(agent.role(), Role::Stopped);
    }

    #[test]
    fn a_fork_child_of_a_running_agent_forgets_the_parents_sender_and_starts_afresh() {
        let tmp = tempfile::tempdir().unwrap();
        let agent = agent(&runnable(tmp.path()));
        agent.start();
        assert_eq!(wait_for_role(agent, &[Role::Leader]), Role::Leader);
        agent
            .recorder
            .metrics()
            .increment_counter(b"before_fork", 1.0, None);
        // What the child runs on its first call. The parent's sender thread, forgotten, lives on
        // here (in a real child it does not exist): it keeps leading, so the fresh start is its
        // client, as a child is its parent's.
        agent.after_fork();
        assert!(agent.recorder.is_recording());
        assert!(agent.sender_progress().is_some(), "started afresh");
        assert_eq!(wait_for_role(agent, &[Role::Client]), Role::Client);
        agent.stop();
        assert_eq!(agent.role(), Role::Stopped);
    }

    #[test]
    fn a_fork_child_of_a_stopped_agent_stays_stopped() {
        let agent = agent(&[("_APPSIGNAL_ACTIVE", "false".into())]);
        agent.start();
        assert_eq!(agent.role(), Role::Disabled);
        agent.recorder.set_recording(true);
        agent.after_fork();
        assert_eq!(agent.role(), Role::Stopped);
        assert!(!agent.recorder.is_recording());
        assert!(agent.sender_progress().is_none());
    }

    #[test]
    fn a_child_that_inherited_the_pre_aggregate_locked_stays_disabled() {
        let tmp = tempfile::tempdir().unwrap();
        let agent = agent(&runnable(tmp.path()));
        {
            // As if a thread of the parent held it at the fork (no prepare handler).
            let _held = agent.recorder.metrics().hold_for_fork();
            agent.after_fork();
        }
        agent.start();
        assert_eq!(agent.role(), Role::Disabled);
        assert!(!agent.recorder.is_recording());
        assert!(agent.sender_progress().is_none());
        assert!(agent
            .status_snapshot()
            .disabled_reason
            .is_some_and(|r| r.contains("pre-aggregate")));
    }
}
