//! The working directory: where it is (configured path, Capistrano `shared/`, Heroku `/app/tmp`,
//! `/tmp/appsignal`), creating it with the right permissions, and refusing a directory that could
//! be a trap (a symlink planted in a shared `/tmp`, or a directory owned by another user in
//! owner-only mode). It holds `agent.lock`, `agent.socket`, `appsignal.log`, `payloads/` and the
//! leader's `journal/`.
//!
//! Files are opened with `O_NOFOLLOW | O_CLOEXEC`, and modes are set through the open descriptor
//! (`fchmod`), so a link swapped in between a check and a use is never followed.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Longest path a Unix socket address can hold (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

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

    fn prepare_dir(&self, path: &Path) -> Result<()> {
        for _ in 0..3 {
            match fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => bail!(
                    "{} is a symbolic link; refusing to use it (a link planted in a shared directory could redirect the agent's files)",
                    path.display()
                ),
                Ok(meta) if !meta.is_dir() => {
                    bail!("{} exists and is not a directory", path.display())
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
            bail!(
                "{} is owned by uid {}, not by this process (uid {euid}); refusing it in owner-only mode (files_world_accessible=false)",
                path.display(),
                meta.uid()
            );
        }
        if !is_writable(path) {
            bail!(
                "{} is not writable for this process (uid {euid}; directory owner uid {}, mode {:o})",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            );
        }
        Ok(())
    }

    /// Opens (creating if needed) a file in the working directory without following links, with
    /// the configured permissions.
    pub fn open_file(&self, path: &Path, options: &mut OpenOptions) -> Result<File> {
        let file = options
            .mode(self.file_mode())
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        if meta.uid() == current_euid() && meta.mode() & 0o777 != self.file_mode() {
            file.set_permissions(fs::Permissions::from_mode(self.file_mode()))
                .with_context(|| format!("cannot chmod {}", path.display()))?;
        }
        Ok(file)
    }
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
        let tmp = tempfile::tempdir().unwrap();
        let long = tmp.path().join("x".repeat(120));
        let err = WorkDir::prepare(&long, true).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
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
