//! Logging: `tracing` events of this library go to `appsignal.log` (the configured
//! `_APPSIGNAL_LOG_FILE_PATH`, else the working directory) or to stdout, one line each with a UTC
//! timestamp, the pid, the process name (`_APPSIGNAL_PROCESS_NAME`, when set) and the process's
//! role (leader/client). The push key never appears: configs
//! print it redacted and push errors drop the URL.
//!
//! The subscriber is installed once as the global default of this library's own copy of `tracing`
//! (the shared library links its own), and its sink is swapped at every `start()`.
//!
//! What a start sets (sink, level, process name) is one value, [`LogState`]; the agent hands it its
//! [`Roles`] once. The sink is a raw descriptor in an atomic, written with one `write()` per line
//! (O_APPEND), and swapped with `dup2()`: no mutex, so a child forked while a parent thread was
//! logging can log.
//!
//! Rate limits ([`RateLimit`]) stay statics next to the line they limit: each is a pure counter of
//! one message's recent lines, not lifecycle state (nothing starts, stops or forks them).

use crate::role::{Role, Roles};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::{format::Writer, FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::{Config, LogTarget};
use crate::workdir::WorkDir;

/// Where this process's lines go and what they show; set by each start.
struct LogState {
    /// The log descriptor, -1 for none.
    sink_fd: AtomicI32,
    /// Most verbose level written: 1 error … 5 trace.
    level: AtomicU8,
    /// `" name"` from `_APPSIGNAL_PROCESS_NAME`, or empty. Lines read it with `try_read`, which
    /// fails only while a start writes another name (a line then goes out without it rather than
    /// wait); the fork prepare handler holds a read lock across `fork()` ([`hold_for_fork`]), so
    /// that a child never inherits it write-locked.
    process_name: RwLock<String>,
    /// The roles of this process's agent: the current one prefixes each line (none: "stopped").
    roles: OnceLock<&'static Roles>,
}

static STATE: LogState = LogState {
    sink_fd: AtomicI32::new(-1),
    level: AtomicU8::new(3),
    process_name: RwLock::new(String::new()),
    roles: OnceLock::new(),
};
static INSTALLED: once_cell::sync::OnceCell<()> = once_cell::sync::OnceCell::new();
/// The longest process name shown, in characters.
const MAX_PROCESS_NAME: usize = 64;

/// Makes `name` the process name of every line from now on.
fn set_process_name(name: Option<&str>) {
    let shown = name.map(|n| {
        // One line per event: no control characters, bounded length.
        let clean: String = n
            .chars()
            .take(MAX_PROCESS_NAME)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        format!(" {clean}")
    });
    let shown = shown.unwrap_or_default();
    // Written only when it changes: lines never miss a name that stays the same.
    if *hold_for_fork() != shown {
        *STATE
            .process_name
            .write()
            .unwrap_or_else(|e| e.into_inner()) = shown;
    }
}

/// A read lock on the process name, for the fork prepare handler (see
/// [`LogState::process_name`]).
pub(crate) fn hold_for_fork() -> RwLockReadGuard<'static, String> {
    STATE.process_name.read().unwrap_or_else(|e| e.into_inner())
}

fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Logging must never fail the caller: errors writing the log are swallowed.
        let fd = STATE.sink_fd.load(Ordering::Acquire);
        let mut rest = buf;
        while fd >= 0 && !rest.is_empty() {
            // SAFETY: fd is the open log descriptor (never closed, only replaced by dup2); rest is
            // a valid buffer of rest.len() bytes.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                break;
            }
            rest = &rest[n as usize..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct MakeSink;

impl<'a> MakeWriter<'a> for MakeSink {
    type Writer = SinkWriter;
    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter
    }
}

/// `2026-11-24T18:49:48.123Z (pid 4242) leader INFO message key=value`, or with
/// `_APPSIGNAL_PROCESS_NAME=sidekiq`: `… (pid 4242 sidekiq) leader INFO …`
struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut stamp = String::with_capacity(32);
        use tracing_subscriber::fmt::time::FormatTime;
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut stamp))?;
        let name = STATE.process_name.try_read();
        write!(
            writer,
            "{stamp} (pid {}{}) {} {} ",
            std::process::id(),
            name.as_deref().map_or("", String::as_str),
            role().as_str(),
            event.metadata().level()
        )?;
        drop(name);
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Lines name the current role in `roles`. The process's agent hands its roles here at its first
/// start; later calls change nothing (one agent per process; the unit tests' agents share the log).
pub fn use_roles(roles: &'static Roles) {
    let _ = STATE.roles.set(roles);
}

fn role() -> Role {
    STATE.roles.get().map_or(Role::Stopped, |roles| roles.get())
}

/// Makes `file` the log. The descriptor number stays the same once there is one (dup2 replaces
/// what it points to atomically), so a concurrent writer never sees a closed or reused number.
fn set_sink(file: Option<File>) {
    let Some(file) = file else {
        // Keep the old descriptor open (it may be in use) but stop writing to it.
        STATE.sink_fd.store(-1, Ordering::Release);
        return;
    };
    let new = file.into_raw_fd();
    let old = STATE.sink_fd.load(Ordering::Acquire);
    // SAFETY: `new` is a descriptor we own; `old` is ours (or -1). dup2 then close of `new`
    // leaves `old` pointing at the new file.
    unsafe {
        if old >= 0 && libc::dup2(new, old) >= 0 {
            libc::close(new);
        } else {
            STATE.sink_fd.store(new, Ordering::Release);
        }
    }
}

fn stdout_file() -> Option<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup of stdout gives a descriptor we own, or -1.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: a fresh descriptor from fcntl, owned by the File from here on.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

fn install() {
    INSTALLED.get_or_init(|| {
        let layer = tracing_subscriber::fmt::layer()
            .event_format(LineFormat)
            .with_writer(MakeSink)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                level_number(meta.level()) <= STATE.level.load(Ordering::Relaxed)
            }));
        // Fails only if this library's copy of tracing already has a global default: then keep it.
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
    });
}

fn open_append(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Where the log goes after [`open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    File(PathBuf),
    Stdout,
}

/// Opens the log for this start. Returns where it went and, when the configured file could not be
/// used, why (the caller logs it once the log is open).
pub fn open(config: &Config, workdir: &WorkDir) -> (Destination, Option<String>) {
    install();
    set_process_name(config.process_name.as_deref());
    STATE
        .level
        .store(level_number(&config.log_level), Ordering::Relaxed);
    if config.log == LogTarget::Stdout {
        set_sink(stdout_file());
        return (Destination::Stdout, None);
    }
    let mut fallback_reason = None;
    if let Some(path) = &config.log_file_path {
        match open_append(path, workdir.file_mode()) {
            Ok(file) => {
                set_sink(Some(file));
                return (Destination::File(path.clone()), None);
            }
            Err(e) => {
                fallback_reason = Some(format!(
                    "cannot open log file {}: {e}; logging to {} instead",
                    path.display(),
                    workdir.log_path().display()
                ))
            }
        }
    }
    let path = workdir.log_path();
    match workdir.open_file(&path, OpenOptions::new().append(true).create(true)) {
        Ok(file) => {
            set_sink(Some(file));
            (Destination::File(path), fallback_reason)
        }
        Err(e) => {
            // No log file at all: say it on stderr once, then stay quiet.
            eprintln!("appsignal: cannot open {}: {e:#}", path.display());
            set_sink(None);
            (Destination::Stdout, fallback_reason)
        }
    }
}

/// Opens a log for an agent that could not get a working directory: the configured file only.
pub fn open_without_workdir(config: &Config) -> Option<PathBuf> {
    install();
    set_process_name(config.process_name.as_deref());
    STATE
        .level
        .store(level_number(&config.log_level), Ordering::Relaxed);
    if config.log == LogTarget::Stdout {
        set_sink(stdout_file());
        return None;
    }
    let path = config.log_file_path.as_ref()?;
    let file = open_append(path, 0o666).ok()?;
    set_sink(Some(file));
    Some(path.clone())
}

/// Panics on this library's own threads (`appsignal-*`) go to the log, never to the host's
/// stderr: the panic hook is process-wide, so it passes every other thread's panic to the hook
/// that was there before. Installed once.
pub fn install_panic_hook() {
    static HOOKED: std::sync::Once = std::sync::Once::new();
    HOOKED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            match thread.name() {
                Some(name) if name.starts_with("appsignal-") => {
                    tracing::error!("panic on thread {name}: {info}");
                }
                _ => previous(info),
            }
        }));
    });
}

/// Lets one message through per interval and counts the others, so that a client sending garbage in
/// a loop cannot fill the disk with log lines.
pub struct RateLimit {
    interval_ms: u64,
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new(interval_ms: u64) -> Self {
        RateLimit {
            interval_ms,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now, `n` messages were suppressed since the last one. `None`: stay quiet.
    pub fn check(&self) -> Option<u64> {
        let now = crate::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.interval_ms
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `" (N similar messages suppressed)"` or nothing.
pub fn suppressed_note(n: u64) -> String {
    let mut s = String::new();
    if n > 0 {
        let _ = write!(s, " ({n} similar messages suppressed)");
    }
    s
}
