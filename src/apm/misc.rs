//! Process-wide odds and ends of the APM interface: the server state table
//! (`appsignal_get_server_state`), container detection (`appsignal_running_in_container`), the
//! environment metadata added to every sample (`appsignal_set_environment_metadata`) and the
//! allocation counter (`appsignal_track_allocation`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use once_cell::sync::{Lazy, OnceCell};

use crate::apm::{bounded_insert, truncate, MAX_BODY, MAX_TEXT};

static SERVER_STATE: Lazy<Mutex<BTreeMap<String, String>>> =
    Lazy::new(|| Mutex::new(BTreeMap::new()));
static ENVIRONMENT_METADATA: Lazy<Mutex<BTreeMap<String, String>>> =
    Lazy::new(|| Mutex::new(BTreeMap::new()));
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static DETECTED_CONTAINER: OnceCell<bool> = OnceCell::new();

/// The server state and environment metadata locks, held across a `fork()` (see
/// `apm::hold_for_fork`); neither is ever taken while the other is held.
pub(crate) struct ForkGuard {
    _server_state: std::sync::MutexGuard<'static, BTreeMap<String, String>>,
    _environment_metadata: std::sync::MutexGuard<'static, BTreeMap<String, String>>,
}

pub(crate) fn hold_for_fork() -> ForkGuard {
    ForkGuard {
        _server_state: SERVER_STATE.lock().unwrap_or_else(|e| e.into_inner()),
        _environment_metadata: ENVIRONMENT_METADATA
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    }
}

/// The value the agent stored for `key` (see [`set_server_state`]); an empty string for a key
/// that is not set (the C interface's "none").
pub fn get_server_state(key: &str) -> String {
    SERVER_STATE
        .lock()
        .map(|s| s.get(key).cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// For the agent: records state the integration may ask for with `appsignal_get_server_state`
/// (e.g. what the Push API answered). No key is set by the APM code itself.
pub fn set_server_state(key: &str, value: &str) {
    if let Ok(mut state) = SERVER_STATE.lock() {
        bounded_insert(
            &mut state,
            truncate(key.to_string(), MAX_TEXT),
            truncate(value.to_string(), MAX_BODY),
        );
    }
}

/// Whether this process runs in a container: the configured `running_in_container` when set,
/// else detection on the real root (computed once per process).
pub fn running_in_container() -> bool {
    if let Some(configured) = crate::apm::config().running_in_container {
        return configured;
    }
    *DETECTED_CONTAINER.get_or_init(|| detect_container(Path::new("/")))
}

/// Container detection under `root` (a fake root directory in tests): `/.dockerenv` or
/// `/run/.containerenv` (podman) exists, or `/proc/1/cgroup` mentions docker, kubepods,
/// containerd or lxc, or `/proc/self/mountinfo` has `/` mounted from an overlay filesystem.
pub fn detect_container(root: &Path) -> bool {
    if root.join(".dockerenv").exists() || root.join("run/.containerenv").exists() {
        return true;
    }
    if let Ok(cgroup) = read_bounded(&root.join("proc/1/cgroup")) {
        if ["docker", "kubepods", "containerd", "lxc"]
            .iter()
            .any(|marker| cgroup.contains(marker))
        {
            return true;
        }
    }
    if let Ok(mountinfo) = read_bounded(&root.join("proc/self/mountinfo")) {
        return mountinfo.lines().any(root_is_overlay);
    }
    false
}

/// Reads at most 1 MiB of a text file (these files are small; a bound keeps a hostile fake small).
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(1024 * 1024).read_to_end(&mut bytes)?;
    text.push_str(&String::from_utf8_lossy(&bytes));
    Ok(text)
}

/// One mountinfo line: `id parent major:minor root mount_point options [optional…] - fstype source super`.
fn root_is_overlay(line: &str) -> bool {
    let Some((before, after)) = line.split_once(" - ") else {
        return false;
    };
    let mount_point = before.split_whitespace().nth(4);
    let fstype = after.split_whitespace().next();
    mount_point == Some("/") && fstype == Some("overlay")
}

/// Sets `key` to `value` in the environment metadata added to every sample from now on (both
/// copied; a later call with the same key replaces the value; at most 256 keys).
pub fn set_environment_metadata(key: &str, value: &str) {
    static WARNED: AtomicI64 = AtomicI64::new(0);
    if key.is_empty() {
        crate::apm::warn_limited(
            &WARNED,
            "appsignal_set_environment_metadata: empty key; ignored",
        );
        return;
    }
    if let Ok(mut metadata) = ENVIRONMENT_METADATA.lock() {
        if !bounded_insert(
            &mut metadata,
            truncate(key.to_string(), MAX_TEXT),
            truncate(value.to_string(), MAX_TEXT),
        ) {
            crate::apm::warn_limited(
                &WARNED,
                "appsignal_set_environment_metadata: too many keys; ignored",
            );
        }
    }
}

/// A copy of the environment metadata.
pub fn environment_metadata() -> BTreeMap<String, String> {
    ENVIRONMENT_METADATA
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default()
}

/// Counts one allocation (a relaxed atomic increment).
pub fn track_allocation() {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
}

/// Allocations counted so far in this process. A transaction reports the difference between its
/// start and its completion (allocations of other threads in between count too).
pub fn allocation_count() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeRoot(std::path::PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "apm-container-{name}-{}-{}",
                std::process::id(),
                crate::apm::random_hex(4)
            ));
            std::fs::create_dir_all(dir.join("proc/1")).unwrap();
            std::fs::create_dir_all(dir.join("proc/self")).unwrap();
            FakeRoot(dir)
        }

        fn write(&self, path: &str, text: &str) {
            std::fs::write(self.0.join(path), text).unwrap();
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const HOST_MOUNTINFO: &str = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                                  25 22 0:5 / /dev rw - devtmpfs udev rw\n";
    const OVERLAY_MOUNTINFO: &str =
        "500 400 0:50 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/a\n";

    #[test]
    fn a_plain_host_is_not_a_container() {
        let root = FakeRoot::new("host");
        root.write("proc/1/cgroup", "0::/init.scope\n");
        root.write("proc/self/mountinfo", HOST_MOUNTINFO);
        assert!(!detect_container(&root.0));
    }

    #[test]
    fn dockerenv_is_a_container() {
        let root = FakeRoot::new("dockerenv");
        root.write(".dockerenv", "");
        assert!(detect_container(&root.0));
    }

    #[test]
    fn cgroup_markers_are_containers() {
        for marker in [
            "12:memory:/docker/abc",
            "0::/kubepods/besteffort/pod1",
            "1:name=systemd:/system.slice/containerd.service",
            "2:cpu:/lxc/c1",
        ] {
            let root = FakeRoot::new("cgroup");
            root.write("proc/1/cgroup", marker);
            assert!(detect_container(&root.0), "{marker}");
        }
    }

    #[test]
    fn overlay_root_is_a_container() {
        let root = FakeRoot::new("overlay");
        root.write("proc/1/cgroup", "0::/\n");
        root.write("proc/self/mountinfo", OVERLAY_MOUNTINFO);
        assert!(detect_container(&root.0));
        // An overlay somewhere else is not enough.
        root.write(
            "proc/self/mountinfo",
            "600 22 0:51 / /var/lib/docker/x rw - overlay overlay rw\n",
        );
        assert!(!detect_container(&root.0));
    }

    #[test]
    fn missing_files_are_not_a_container() {
        let root = FakeRoot::new("empty");
        assert!(!detect_container(&root.0));
        assert!(!detect_container(Path::new("/nonexistent/apm/root")));
    }

    #[test]
    fn environment_metadata_and_server_state() {
        set_environment_metadata("misc_test_key", "v1");
        set_environment_metadata("misc_test_key", "v2");
        set_environment_metadata("", "ignored");
        assert_eq!(environment_metadata()["misc_test_key"], "v2");
        assert!(!environment_metadata().contains_key(""));
        assert_eq!(get_server_state("misc_unknown"), "");
        set_server_state("misc_known", "yes");
        assert_eq!(get_server_state("misc_known"), "yes");
    }

    #[test]
    fn allocations_count_up() {
        let before = allocation_count();
        track_allocation();
        track_allocation();
        assert!(allocation_count() >= before + 2);
    }
}
