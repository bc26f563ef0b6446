//! The working directory: where it is (configured path, Capistrano `shared/`, Heroku `/app/tmp`,
//! `/tmp/appsignal`), creating it with the right permissions, and refusing a directory that could
//! be a trap (a symlink planted in a shared `/tmp`, or a directory owned by another user in
//! owner-only mode). It holds `agent.lock`, `agent.socket`, `appsignal.log`, `payloads/` and the
//! leader's `journal/`.
//!
//! Files are opened with `O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK` (a FIFO planted at `appsignal.log`
//! cannot block `start()`), and modes are set through the open descriptor (`fchmod`, or `O_PATH`
//! for the socket), so a link swapped in between a check and a use is never followed or chmodded.
//!
//! **Fallback.** When the located directory is refused because of something another user could have
//! put there (a symbolic link at the directory, `agent.lock`, `agent.socket`, `appsignal.log`,
//! `journal/` or `payloads/`; a file of the wrong type there; a directory of another owner in
//! owner-only mode or one we cannot write), [`prepare_or_fallback`] uses the per-user directory
//! `$TMPDIR/appsignal-<euid>` (`/tmp/appsignal-<euid>`), owner-only, instead: one file planted in a
//! shared `/tmp` must not silence monitoring for every app on the host. Processes of one user still
//! meet there; the reason is logged and shown in diagnose.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A refusal because of something another user could have planted (see the module doc): the
/// per-user fallback directory avoids it. Found with `anyhow::Error::downcast_ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planted(pub String);

impl std::fmt::Display for Planted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Planted {}

/// Whether `error` (or anything in its chain) is a [`Planted`] refusal.
pub fn is_planted(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.downcast_ref::<Planted>().is_some())
}

/// Why the located directory was not used, when [`prepare_or_fallback`] fell back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The directory that was refused.
    pub from: PathBuf,
    pub reason: String,
}

/// The per-user fallback directory: `<temp dir>/appsignal-<euid>` (`$TMPDIR`, else `/tmp`).
pub fn fallback_path() -> PathBuf {
    std::env::temp_dir().join(format!("appsignal-{}", current_euid()))
}

/// Prepares `path`; when it is refused because of something planted ([`Planted`]), prepares the
/// per-user [`fallback_path`] instead, owner-only. `Some(Fallback)` says that it fell back and why.
pub fn prepare_or_fallback(
    path: &Path,
    world_accessible: bool,
) -> Result<(WorkDir, Option<Fallback>)> {
    prepare_or_fallback_to(path, world_accessible, &fallback_path())
}

/// [`prepare_or_fallback`] with the fallback directory given (tests).
pub fn prepare_or_fallback_to(
    path: &Path,
    world_accessible: bool,
    fallback: &Path,
) -> Result<(WorkDir, Option<Fallback>)> {
    let refused = match WorkDir::prepare(path, world_accessible) {
        Ok(workdir) => return Ok((workdir, None)),
        Err(e) if is_planted(&e) && path != fallback => e,
        Err(e) => return Err(e),
    };
    let reason = format!("{refused:#}");
    // Owner-only whatever the configuration says: nobody else has a reason to be in it.
    let workdir = WorkDir::prepare(fallback, false).with_context(|| {
        format!(
            "{} was refused ({reason}), and so was the per-user fallback {}",
            path.display(),
            fallback.display()
        )
    })?;
    Ok((
        workdir,
        Some(Fallback {
            from: path.to_path_buf(),
            reason,
        }),
    ))
}

/// Longest path a Unix socket address can hold (`sun_path` is 108 bytes including the NUL).
#[cfg(target_os = "linux")]
pub const MAX_SOCKET_PATH: usize = 107;
/// Longest path a Unix socket address can hold (`sun_path` is 104 bytes on macOS and the BSDs,
/// including the NUL).
#[cfg(not(target_os = "linux"))]
pub const MAX_SOCKET_PATH: usize = 103;

/// Why a location was chosen, for the log and diagnose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Configured,
    Capistrano,
    Heroku,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Configured => "configured",
            Source::Capistrano => "capistrano",
            Source::Heroku => "heroku",
            Source::Default => "default",
        }
    }
}

/// The places the location rules look at; `System` gives the real ones, tests give temporary ones.
pub struct Probe<'a> {
    pub cwd: Option<&'a Path>,
    pub heroku_tmp: &'a Path,
    pub default: &'a Path,
}

impl Probe<'_> {
    pub fn system<R>(f: impl FnOnce(&Probe<'_>) -> R) -> R {
        let cwd = std::env::current_dir().ok();
        f(&Probe {
            cwd: cwd.as_deref(),
            heroku_tmp: Path::new("/app/tmp"),
            default: Path::new("/tmp/appsignal"),
        })
    }
}

/// Applies the location rules in order: configured path, Capistrano, Heroku, default.
pub fn locate(configured: Option<&Path>, probe: &Probe<'_>) -> (PathBuf, Source) {
    if let Some(path) = configured {
        return (path.to_path_buf(), Source::Configured);
    }
    if let Some(cwd) = probe.cwd {
        // Capistrano runs the app from `<app>/releases/<stamp>` (or `<app>/current`), with `<app>/shared`.
        for base in cwd.ancestors().skip(1).take(2) {
            if base.join("shared").is_dir() && base.join("releases").is_dir() {
                return (base.join("shared").join("appsignal"), Source::Capistrano);
            }
        }
    }
    if probe.heroku_tmp.is_dir() {
        return (probe.heroku_tmp.join("appsignal"), Source::Heroku);
    }
    (probe.default.to_path_buf(), Source::Default)
}

/// A prepared working directory.
#[derive(Debug, Clone)]
pub struct WorkDir {
    path: PathBuf,
    world_accessible: bool,
}

impl WorkDir {
    /// Creates (if needed) and checks the directory and its `payloads/`. Errors name the path and
    /// say why it was refused.
    pub fn prepare(path: &Path, world_accessible: bool) -> Result<WorkDir> {
        let workdir = WorkDir {
            path: path.to_path_buf(),
            world_accessible,
        };
        workdir.prepare_dir(path)?;
        workdir.prepare_dir(&workdir.payloads_dir())?;
        workdir.prepare_dir(&workdir.journal_dir())?;
        workdir.check_entries()?;
        let socket = workdir.socket_path();
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "socket path {} is {} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket address holds; configure a shorter working_directory_path",
                socket.display(),
                socket.as_os_str().len()
            );
        }
        Ok(workdir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn world_accessible(&self) -> bool {
        self.world_accessible
    }

    pub fn lock_path(&self) -> PathBuf {
        self.path.join("agent.lock")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.path.join("agent.socket")
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join("appsignal.log")
    }

    pub fn payloads_dir(&self) -> PathBuf {
        self.path.join("payloads")
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.path.join("journal")
    }

    pub fn dir_mode(&self) -> u32 {
        if self.world_accessible {
            0o777
        } else {
            0o700
        }
    }

    pub fn file_mode(&self) -> u32 {
        if self.world_accessible {
            0o666
        } else {
            0o600
        }
    }

    /// Whether the directory still exists as the directory we prepared (not deleted, not replaced by a link).
    pub fn still_exists(&self) -> bool {
        fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_dir())
    }

    /// Refuses `agent.lock`, `appsignal.log` and `agent.socket` when something other than what we
    /// would put there is at their path (a link, a FIFO, a directory): looked at, never followed.
    fn check_entries(&self) -> Result<()> {
        use std::os::unix::fs::FileTypeExt;
        for (path, socket) in [
            (self.lock_path(), false),
            (self.log_path(), false),
            (self.socket_path(), true),
        ] {
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot inspect {}", path.display()))
                }
            };
            let kind = meta.file_type();
            if kind.is_symlink() {
                bail!(Planted(format!(
                    "{} is a symbolic link; refusing to follow it (a link planted in a shared directory could redirect the agent's files)",
                    path.display()
                )));
            }
            let expected = if socket {
                kind.is_socket() || kind.is_file()
            } else {
                kind.is_file()
            };
            if !expected {
                bail!(Planted(format!(
                    "{} is not a {}; refusing to use it",
                    path.display(),
                    if socket { "socket" } else { "regular file" }
                )));
            }
        }
        Ok(())
    }

    fn prepare_dir(&self, path: &Path) -> Result<()> {
        for _ in 0..3 {
            match fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => bail!(Planted(format!(
                    "{} is a symbolic link; refusing to use it (a link planted in a shared directory could redirect the agent's files)",
                    path.display()
                ))),
                Ok(meta) if !meta.is_dir() => {
                    bail!(Planted(format!(
                        "{} exists and is not a directory",
                        path.display()
                    )))
                }
                Ok(_) => return self.check_dir(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match fs::create_dir_all(path) {
                        Ok(()) => {}
                        // Another process created it between our look and our mkdir: look again.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!("cannot create working directory {}", path.display())
                            })
                        }
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot inspect {}", path.display()))
                }
            }
        }
        bail!("{} keeps changing while being created", path.display())
    }

    fn check_dir(&self, path: &Path) -> Result<()> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("cannot open directory {}", path.display()))?;
        let meta = dir
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let euid = current_euid();
        if meta.uid() == euid {
            if meta.mode() & 0o7777 != self.dir_mode() {
                dir.set_permissions(fs::Permissions::from_mode(self.dir_mode()))
                    .with_context(|| format!("cannot chmod {}", path.display()))?;
            }
        } else if !self.world_accessible {
            bail!(Planted(format!(
                "{} is owned by uid {}, not by this process (uid {euid}); refusing it in owner-only mode (files_world_accessible=false)",
                path.display(),
                meta.uid()
            )));
        }
        if !is_writable(path) {
            let why = format!(
                "{} is not writable for this process (uid {euid}; directory owner uid {}, mode {:o})",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            );
            // Another user's directory we cannot write to (it made it first): go elsewhere. Our own
            // that we cannot write to (a read-only filesystem) is a plain error.
            if meta.uid() != euid {
                bail!(Planted(why));
            }
            bail!(why);
        }
        Ok(())
    }

    /// Opens (creating if needed) a file in the working directory without following links, with
    /// the configured permissions.
    /// `O_NONBLOCK` makes opening a planted FIFO fail or return at once instead of blocking the
    /// caller (the sender thread, or an app thread); it is cleared again once the file is known to be regular.
    pub fn open_file(&self, path: &Path, options: &mut OpenOptions) -> Result<File> {
        let file = match options
            .mode(self.file_mode())
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                bail!(Planted(format!(
                    "{} is a symbolic link; refusing to follow it",
                    path.display()
                )))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        let meta = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if !meta.is_file() {
            bail!(Planted(format!("{} is not a regular file", path.display())));
        }
        set_blocking(&file).with_context(|| format!("cannot use {}", path.display()))?;
        if meta.uid() == current_euid() && meta.mode() & 0o777 != self.file_mode() {
            file.set_permissions(fs::Permissions::from_mode(self.file_mode()))
                .with_context(|| format!("cannot chmod {}", path.display()))?;
        }
        Ok(file)
    }
}

fn set_blocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take and return plain flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the mode of the socket the leader just bound at `path` without following a link swapped in
/// since: the path is opened `O_PATH | O_NOFOLLOW`, must be a socket, and its mode is changed
/// through `/proc/self/fd` (the inode opened, whatever is at the path by then).
///
/// The descriptor is opened with `open(2)` itself, not `OpenOptions::custom_flags`: std clears the
/// `O_ACCMODE` bits of custom flags, and musl's `O_ACCMODE` includes `O_PATH` (`O_SEARCH`), so there
/// the socket would be opened `O_RDONLY`, which fails with ENXIO.
///
/// Linux only: elsewhere there is neither `O_PATH` nor `/proc`, and [`SocketStage`] is used.
#[cfg(target_os = "linux")]
pub fn chmod_socket(path: &Path, mode: u32) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileTypeExt;
    let handle = open_path_only(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = handle
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.file_type().is_socket() {
        bail!(Planted(format!(
            "{} is not a socket (replaced after bind?); not changing its mode",
            path.display()
        )));
    }
    let proc_path = format!("/proc/self/fd/{}", handle.as_raw_fd());
    fs::set_permissions(&proc_path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// `open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC)`: a descriptor naming the inode at `path` (a link
/// itself, not its target), usable for `fstat` and `/proc/self/fd`, never for reading.
#[cfg(target_os = "linux")]
fn open_path_only(path: &Path) -> io::Result<File> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call; open has no other
    // preconditions.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open succeeded, so `fd` is a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Where the leader binds its socket on systems without `O_PATH` (macOS), so that its mode is set
/// race-free there too: a directory `<working dir>/.s<8 hex digits>` that this process makes, mode
/// 0700, so nothing in it can be swapped by anyone else. The socket is bound in it
/// ([`bind_path`](Self::bind_path)), its mode set through the directory's descriptor, and it is then
/// renamed to `agent.socket` ([`publish`](Self::publish)), replacing whatever is there (the socket
/// of a previous leader, or a link planted since, itself: a rename never follows a link). A mode
/// set by path in the working directory itself could hit a hard link swapped in between a check and
/// the `chmod`, in a world-writable directory. The staged path is exactly as long as
/// `agent.socket`'s, so [`MAX_SOCKET_PATH`] covers it. The directory is removed on drop.
#[cfg(any(test, not(target_os = "linux")))]
pub struct SocketStage {
    path: PathBuf,
    /// The directory as made: what is done inside it goes through this descriptor, so renaming the
    /// directory away (the working directory may be world-writable) redirects nothing.
    dir: File,
}

#[cfg(any(test, not(target_os = "linux")))]
impl SocketStage {
    /// The socket's name inside the stage.
    const NAME: &'static std::ffi::CStr = c"s";

    /// Makes the stage directory in `workdir`.
    pub fn new(workdir: &WorkDir) -> Result<SocketStage> {
        use std::os::unix::fs::DirBuilderExt;
        let path = workdir
            .path()
            .join(format!(".s{:08x}", crate::ids::random_u64() as u32));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let stage = SocketStage {
            dir: match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(dir) => dir,
                Err(e) => {
                    let _ = fs::remove_dir(&path);
                    return Err(e).with_context(|| format!("cannot open {}", path.display()));
                }
            },
            path,
        };
        let meta = stage
            .dir
            .metadata()
            .with_context(|| format!("cannot stat {}", stage.path.display()))?;
        if meta.uid() != current_euid() {
            bail!(Planted(format!(
                "{} was replaced by a directory of uid {} right after it was made",
                stage.path.display(),
                meta.uid()
            )));
        }
        // mkdir never grants more than 0700 here, but a umask may have taken some of it away.
        if meta.mode() & 0o777 != 0o700 {
            stage
                .dir
                .set_permissions(fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot chmod {}", stage.path.display()))?;
        }
        Ok(stage)
    }

    /// Where to bind the socket.
    pub fn bind_path(&self) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        self.path
            .join(std::ffi::OsStr::from_bytes(Self::NAME.to_bytes()))
    }

    /// Gives the socket bound at [`bind_path`](Self::bind_path) `mode` and renames it to `to`.
    pub fn publish(self, to: &Path, mode: u32) -> Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let dir = self.dir.as_raw_fd();
        // SAFETY: stat is plain data; all zeroes is a valid value.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `dir` is our open directory, the name a NUL-terminated string, `stat` valid for writes.
        if unsafe {
            libc::fstatat(
                dir,
                Self::NAME.as_ptr(),
                &mut stat,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } != 0
        {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot stat {}", self.bind_path().display()));
        }
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            bail!("{} is not a socket", self.bind_path().display());
        }
        // `mode_t` is 16 bits on macOS; modes fit.
        #[allow(clippy::unnecessary_cast)]
        let mode = mode as libc::mode_t;
        // Nobody else can create or swap anything in the stage (0700, ours), so this is the socket.
        // SAFETY: as for fstatat; fchmodat takes no pointer to write.
        if unsafe { libc::fchmodat(dir, Self::NAME.as_ptr(), mode, 0) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot chmod {}", self.bind_path().display()));
        }
        let c_to = std::ffi::CString::new(to.as_os_str().as_bytes())
            .with_context(|| format!("{} contains a NUL byte", to.display()))?;
        // SAFETY: both names are NUL-terminated strings that outlive the call; `dir` is open.
        if unsafe { libc::renameat(dir, Self::NAME.as_ptr(), libc::AT_FDCWD, c_to.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot rename the socket to {}", to.display()));
        }
        Ok(())
    }
}

#[cfg(any(test, not(target_os = "linux")))]
impl Drop for SocketStage {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // Still there when publishing failed. Through the descriptor: only our own directory.
        // SAFETY: `dir` is our open directory and the name a NUL-terminated string.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), Self::NAME.as_ptr(), 0) };
        // By path (there is no rmdir through a descriptor): if someone renamed ours away and put an
        // empty directory in its place, that one goes instead, which harms nobody.
        let _ = fs::remove_dir(&self.path);
    }
}

/// Whether the thing at `path` is a socket (not a link to one): checked before connecting, so that a
/// client never follows a link planted at `agent.socket`.
pub fn is_socket_not_link(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Sets `SO_NOSIGPIPE` on the Unix socket `fd`: a write to a peer that has gone then fails with
/// EPIPE instead of raising SIGPIPE in the host app. macOS has no `MSG_NOSIGNAL` for `write(2)`;
/// std and mio set this on the sockets they create, but not on accepted ones or ours.
#[cfg(target_vendor = "apple")]
pub fn set_no_sigpipe(fd: std::os::fd::RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket of the caller; `on` is a valid c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn current_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn current_egid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// `access(W_OK|X_OK)`: whether this process may create files in `path` (also false on a read-only filesystem).
pub fn is_writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_rules_apply_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("app");
        let release = app.join("releases").join("20260101");
        fs::create_dir_all(&release).unwrap();
        fs::create_dir_all(app.join("shared")).unwrap();
        let heroku = tmp.path().join("heroku-tmp");
        let default = tmp.path().join("default");
        let configured = tmp.path().join("configured");

        let probe = Probe {
            cwd: Some(&release),
            heroku_tmp: &heroku,
            default: &default,
        };
        assert_eq!(
            locate(Some(&configured), &probe),
            (configured.clone(), Source::Configured)
        );
        assert_eq!(
            locate(None, &probe),
            (app.join("shared").join("appsignal"), Source::Capistrano)
        );

        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        let probe = Probe {
            cwd: Some(&elsewhere),
            heroku_tmp: &heroku,
            default: &default,
        };
        assert_eq!(locate(None, &probe), (default.clone(), Source::Default));
        fs::create_dir_all(&heroku).unwrap();
        assert_eq!(
            locate(None, &probe),
            (heroku.join("appsignal"), Source::Heroku)
        );
    }

    #[test]
    fn modes_follow_files_world_accessible() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = WorkDir::prepare(&tmp.path().join("shared"), true).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(shared.path()), 0o777);
        assert_eq!(mode(&shared.payloads_dir()), 0o777);
        let f = shared
            .open_file(
                &shared.lock_path(),
                OpenOptions::new().read(true).write(true).create(true),
            )
            .unwrap();
        drop(f);
        assert_eq!(mode(&shared.lock_path()), 0o666);

        let private = WorkDir::prepare(&tmp.path().join("private"), false).unwrap();
        assert_eq!(mode(private.path()), 0o700);
        assert_eq!(mode(&private.payloads_dir()), 0o700);
        private
            .open_file(
                &private.lock_path(),
                OpenOptions::new().read(true).write(true).create(true),
            )
            .unwrap();
        assert_eq!(mode(&private.lock_path()), 0o600);

        // A directory created world-accessible is tightened when the config says owner-only.
        let tightened = WorkDir::prepare(shared.path(), false).unwrap();
        assert_eq!(mode(tightened.path()), 0o700);
    }

    #[test]
    fn a_planted_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("attacker");
        fs::create_dir_all(&target).unwrap();
        let link = tmp.path().join("appsignal");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = WorkDir::prepare(&link, true).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // Nothing was created through the link.
        assert!(!target.join("payloads").exists());
    }

    #[test]
    fn a_symlinked_file_in_the_directory_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.lock_path()).unwrap();
        let opened = dir.open_file(
            &dir.lock_path(),
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true),
        );
        assert!(opened.is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn a_path_that_cannot_be_created_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let err = format!(
            "{:#}",
            WorkDir::prepare(&file.join("appsignal"), true).unwrap_err()
        );
        assert!(err.contains("a-file"), "{err}");
        let err = format!("{:#}", WorkDir::prepare(&file, true).unwrap_err());
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn a_socket_path_that_does_not_fit_sun_path_is_refused() {
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        assert_eq!(MAX_SOCKET_PATH, addr.sun_path.len() - 1, "room for the NUL");
        let tmp = tempfile::tempdir().unwrap();
        // `<tmp>/<name>/agent.socket` exactly `len` bytes long.
        let dir_for = |len: usize| {
            let base = tmp.path().as_os_str().len() + "/".len() + "/agent.socket".len();
            tmp.path().join("x".repeat(len - base))
        };
        let err = WorkDir::prepare(&dir_for(MAX_SOCKET_PATH + 1), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than"), "{err}");
        // The longest that is accepted can be bound.
        let wd = WorkDir::prepare(&dir_for(MAX_SOCKET_PATH), true).unwrap();
        assert_eq!(wd.socket_path().as_os_str().len(), MAX_SOCKET_PATH);
        let _listener = std::os::unix::net::UnixListener::bind(wd.socket_path()).unwrap();
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// A victim file and directory with modes we would never set, to see that nothing touched them.
    fn victims(tmp: &Path) -> (PathBuf, PathBuf) {
        let file = tmp.join("victim-file");
        fs::write(&file, b"keep").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let dir = tmp.join("victim-dir");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        (file, dir)
    }

    fn assert_untouched(file: &Path, dir: &Path) {
        assert_eq!(fs::read(file).unwrap(), b"keep");
        assert_eq!(mode(file), 0o640, "the victim file was chmodded");
        assert_eq!(mode(dir), 0o750, "the victim directory was chmodded");
        assert!(
            fs::read_dir(dir).unwrap().next().is_none(),
            "something was created through the link"
        );
    }

    #[test]
    fn symlinks_planted_at_every_entry_are_never_followed_nor_chmodded_and_fall_back() {
        for entry in [
            "",
            "agent.lock",
            "agent.socket",
            "appsignal.log",
            "journal",
            "payloads",
        ] {
            for world_accessible in [true, false] {
                let tmp = tempfile::tempdir().unwrap();
                let (file, dir) = victims(tmp.path());
                let wd = tmp.path().join("wd");
                if entry.is_empty() {
                    std::os::unix::fs::symlink(&dir, &wd).unwrap();
                } else {
                    WorkDir::prepare(&wd, world_accessible).unwrap();
                    let at = wd.join(entry);
                    let _ = fs::remove_dir(&at);
                    let target = if matches!(entry, "journal" | "payloads") {
                        &dir
                    } else {
                        &file
                    };
                    std::os::unix::fs::symlink(target, &at).unwrap();
                }
                let err = WorkDir::prepare(&wd, world_accessible).unwrap_err();
                assert!(is_planted(&err), "{entry}: {err:#}");
                assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
                assert_untouched(&file, &dir);

                let fallback = tmp.path().join("per-user");
                let (used, why) = prepare_or_fallback_to(&wd, world_accessible, &fallback).unwrap();
                assert_eq!(used.path(), fallback);
                let why = why.expect("fell back");
                assert_eq!(why.from, wd);
                assert!(why.reason.contains(entry), "{entry}: {}", why.reason);
                assert_eq!(mode(&fallback), 0o700, "the fallback is owner-only");
                assert_eq!(mode(&used.journal_dir()), 0o700);
                assert_eq!(mode(&used.payloads_dir()), 0o700);
                assert!(!used.world_accessible());
                // The election works there.
                assert!(crate::election::try_lead(&used).unwrap().is_some());
                assert_eq!(mode(&used.lock_path()), 0o600);
                assert_untouched(&file, &dir);
            }
        }
    }

    #[test]
    fn a_link_planted_after_prepare_is_not_followed_by_open_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, dir) = victims(tmp.path());
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        for path in [
            wd.lock_path(),
            wd.log_path(),
            wd.journal_dir().join("1-2-x.seg"),
        ] {
            std::os::unix::fs::symlink(&file, &path).unwrap();
            let err = wd
                .open_file(&path, OpenOptions::new().append(true).create(true))
                .unwrap_err();
            assert!(is_planted(&err), "{err:#}");
        }
        assert_untouched(&file, &dir);
    }

    #[test]
    fn a_fifo_planted_at_the_log_neither_blocks_nor_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let c_path = std::ffi::CString::new(wd.log_path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0);
        let err = WorkDir::prepare(wd.path(), true).unwrap_err();
        assert!(is_planted(&err), "{err:#}");
        // Without O_NONBLOCK this open (write-only, no reader) would block the caller for good.
        let (done, opened) = std::sync::mpsc::channel();
        let log = wd.log_path();
        let wd2 = wd.clone();
        std::thread::spawn(move || {
            let _ = done.send(
                wd2.open_file(&log, OpenOptions::new().append(true).create(true))
                    .map(|_| ())
                    .map_err(|e| format!("{e:#}")),
            );
        });
        let result = opened
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("open_file blocked on a FIFO");
        assert!(result.is_err(), "a FIFO was accepted as the log");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_socket_is_chmodded_only_through_what_was_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, dir) = victims(tmp.path());
        let wd = WorkDir::prepare(&tmp.path().join("wd"), false).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(wd.socket_path()).unwrap();
        chmod_socket(&wd.socket_path(), 0o600).unwrap();
        assert_eq!(mode(&wd.socket_path()), 0o600);
        chmod_socket(&wd.socket_path(), 0o666).unwrap();
        assert_eq!(mode(&wd.socket_path()), 0o666);
        assert!(is_socket_not_link(&wd.socket_path()));
        // Swapped for a link between bind and chmod: refused, the target keeps its mode.
        fs::remove_file(wd.socket_path()).unwrap();
        std::os::unix::fs::symlink(&file, wd.socket_path()).unwrap();
        let err = chmod_socket(&wd.socket_path(), 0o666).unwrap_err();
        assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
        assert!(!is_socket_not_link(&wd.socket_path()));
        // A link to a real socket is not a socket either: clients do not connect through it.
        let real = tmp.path().join("real.socket");
        let _other = std::os::unix::net::UnixListener::bind(&real).unwrap();
        fs::remove_file(wd.socket_path()).unwrap();
        std::os::unix::fs::symlink(&real, wd.socket_path()).unwrap();
        assert!(!is_socket_not_link(&wd.socket_path()));
        assert!(chmod_socket(&wd.socket_path(), 0o666).is_err());
        drop(listener);
        assert_untouched(&file, &dir);
    }

    /// The macOS way (tested here too): bound in the stage, chmodded there, renamed into place over
    /// whatever is at `agent.socket`, a planted link included, which is replaced, not followed.
    #[test]
    fn a_staged_socket_is_published_with_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, dir) = victims(tmp.path());
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        std::os::unix::fs::symlink(&file, wd.socket_path()).unwrap();
        let stage = SocketStage::new(&wd).unwrap();
        let staged = stage.bind_path();
        assert_eq!(staged.as_os_str().len(), wd.socket_path().as_os_str().len());
        assert_eq!(mode(staged.parent().unwrap()), 0o700);
        let listener = std::os::unix::net::UnixListener::bind(&staged).unwrap();
        stage.publish(&wd.socket_path(), 0o666).unwrap();
        assert_eq!(mode(&wd.socket_path()), 0o666);
        assert!(is_socket_not_link(&wd.socket_path()));
        assert!(!staged.parent().unwrap().exists(), "the stage is removed");
        // Clients reach the listener under its new name.
        let _client = std::os::unix::net::UnixStream::connect(wd.socket_path()).unwrap();
        listener.accept().unwrap();
        assert_untouched(&file, &dir);

        // Nothing bound (or something else there): not published, the stage removed all the same.
        let stage = SocketStage::new(&wd).unwrap();
        let staged = stage.bind_path();
        fs::write(&staged, b"x").unwrap();
        let err = stage.publish(&wd.socket_path(), 0o600).unwrap_err();
        assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
        assert!(!staged.parent().unwrap().exists());
        assert_eq!(
            mode(&wd.socket_path()),
            0o666,
            "the published socket is untouched"
        );
    }

    #[test]
    fn a_planted_fallback_directory_is_refused_too() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, dir) = victims(tmp.path());
        let wd = tmp.path().join("wd");
        std::os::unix::fs::symlink(&dir, &wd).unwrap();
        let fallback = tmp.path().join("per-user");
        std::os::unix::fs::symlink(&dir, &fallback).unwrap();
        let err = prepare_or_fallback_to(&wd, true, &fallback).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("wd") && text.contains("per-user"), "{text}");
        assert_untouched(&file, &dir);
        // A directory that is simply unusable (a file in the way) does not fall back.
        let blocked = tmp.path().join("victim-file").join("appsignal");
        let err = prepare_or_fallback_to(&blocked, true, &tmp.path().join("other")).unwrap_err();
        assert!(!is_planted(&err), "{err:#}");
        assert!(!tmp.path().join("other").exists());
    }

    #[test]
    fn a_directory_of_another_user_is_shared_in_world_accessible_mode_untouched() {
        if current_euid() != 0 {
            return; // needs root to make a directory of another user
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("theirs");
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o775)).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let shared = WorkDir::prepare(&path, true).unwrap();
        assert_eq!(
            mode(&path),
            0o775,
            "another user's directory is not chmodded"
        );
        assert_eq!(fs::metadata(&path).unwrap().uid(), 65534);
        shared
            .open_file(
                &shared.lock_path(),
                OpenOptions::new().read(true).write(true).create(true),
            )
            .unwrap();
        assert_eq!(mode(&shared.lock_path()), 0o666);
        // Owner-only: refused as planted, and the fallback is used.
        let fallback = tmp.path().join("per-user");
        let (used, why) = prepare_or_fallback_to(&path, false, &fallback).unwrap();
        assert_eq!(used.path(), fallback);
        assert!(why.unwrap().reason.contains("owned by uid 65534"));
        assert_eq!(mode(&path), 0o775);
    }

    #[test]
    fn a_directory_of_another_user_is_refused_in_owner_only_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("theirs");
        fs::create_dir_all(&path).unwrap();
        if current_euid() == 0 {
            // As root we can make the directory belong to someone else (nobody).
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        } else {
            // Not root: a directory that root owns is another user's.
            let err = WorkDir::prepare(Path::new("/"), false)
                .unwrap_err()
                .to_string();
            assert!(err.contains("owner-only"), "{err}");
            return;
        }
        let err = WorkDir::prepare(&path, false).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
        assert!(err.contains("owner-only"), "{err}");
    }
}
