//! File system usage per mounted real file system (`/proc/self/mountinfo` + `statvfs`).
//!
//! Owns `disk_space{mountpoint,state}` (bytes) and `disk_usage{mountpoint}` (percent).
//! Pseudo file systems are skipped, and so are network file systems: `statvfs` on a hung NFS or
//! CIFS server blocks, which would stall the whole collection. `overlay` is kept: it is the root
//! file system in containers. A file system mounted several times (bind mounts) is reported once.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::Path;

use anyhow::bail;
use procfs::process::MountInfo;

use super::source::{read_text, Failure, FailureKind, Warner};
use super::Emitter;

/// File system types that hold no user data (or whose usage is not disk usage).
const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.gvfsd-fuse",
    "fuse.lxcfs",
    "fuse.portal",
    "fuse.snapfuse",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Network file systems: `statvfs` may block for minutes when the server is unreachable.
const REMOTE_FS: &[&str] = &[
    "afs",
    "ceph",
    "cifs",
    "fuse.glusterfs",
    "fuse.sshfs",
    "glusterfs",
    "lustre",
    "ncpfs",
    "nfs",
    "nfs4",
    "smb3",
    "smbfs",
];

/// A mount worth measuring.
#[derive(Debug, PartialEq)]
pub(crate) struct Mount {
    pub mountpoint: String,
    /// `major:minor` of the file system, used to report bind mounts once.
    pub majmin: String,
    /// Whether the mount shows the file system's root (not a bind mount of a subtree).
    pub is_fs_root: bool,
}

/// Emits usage gauges for each real mounted file system.
pub(crate) fn collect(mountinfo: &Path, warner: &mut Warner, out: &mut Emitter<'_>) {
    let mounts = match read_text(mountinfo).and_then(|t| parse(&t).map_err(Failure::parse)) {
        Ok((mounts, bad_lines)) => {
            if bad_lines > 0 {
                let failure = Failure::parse(format!("{bad_lines} unparsable line(s) skipped"));
                warner.report_path(mountinfo, &failure);
            }
            mounts
        }
        Err(failure) => {
            warner.report_path(mountinfo, &failure);
            return;
        }
    };
    for mount in mounts {
        match statvfs(&mount.mountpoint) {
            Ok(usage) => usage.emit(&mount.mountpoint, out),
            Err(failure) => {
                warner.report(&format!("statvfs({})", mount.mountpoint), &failure);
            }
        }
    }
}

/// Parses mountinfo, keeping real file systems, one mount per file system (`major:minor`):
/// the one showing the file system root, then the shortest mount point. A later mount on the
/// same mount point hides the earlier one. Returns the mounts and the number of bad lines;
/// fails when no line parses.
pub(crate) fn parse(text: &str) -> anyhow::Result<(Vec<Mount>, usize)> {
    let mut bad_lines = 0;
    let mut parsed_lines = 0;
    let mut by_mountpoint: Vec<Mount> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(info) = MountInfo::from_line(line) else {
            bad_lines += 1;
            continue;
        };
        parsed_lines += 1;
        let fs_type = info.fs_type.as_str();
        if PSEUDO_FS.contains(&fs_type) || REMOTE_FS.contains(&fs_type) {
            continue;
        }
        let mountpoint = unescape(&info.mount_point.to_string_lossy());
        by_mountpoint.retain(|m| m.mountpoint != mountpoint);
        by_mountpoint.push(Mount {
            mountpoint,
            majmin: info.majmin,
            is_fs_root: info.root == "/",
        });
    }
    if parsed_lines == 0 {
        bail!("no parsable mountinfo line");
    }
    let mut best: HashMap<&str, usize> = HashMap::new();
    for (i, mount) in by_mountpoint.iter().enumerate() {
        let slot = best.entry(mount.majmin.as_str()).or_insert(i);
        let current = &by_mountpoint[*slot];
        let rank = |m: &Mount| (!m.is_fs_root, m.mountpoint.len());
        if rank(mount) < rank(current) {
            *slot = i;
        }
    }
    let mut keep = vec![false; by_mountpoint.len()];
    for i in best.into_values() {
        keep[i] = true;
    }
    let mut keep = keep.into_iter();
    by_mountpoint.retain(|_| keep.next().unwrap_or(false));
    Ok((by_mountpoint, bad_lines))
}

/// Decodes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape(raw: &str) -> String {
    if !raw.contains('\\') {
        return raw.to_owned();
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            if bytes[i] != b'\\' || !d.iter().all(|b| (b'0'..=b'7').contains(b)) {
                return None;
            }
            let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            u8::try_from(value).ok()
        });
        match octal {
            Some(byte) => {
                decoded.push(byte);
                i += 4;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Sizes of one file system, in bytes.
#[derive(Debug, PartialEq)]
struct Usage {
    total: u64,
    used: u64,
    /// Available to unprivileged users (`f_bavail`), as `df` reports "Avail".
    available: u64,
}

impl Usage {
    fn emit(&self, mountpoint: &str, out: &mut Emitter<'_>) {
        for (state, bytes) in [
            ("total", self.total),
            ("used", self.used),
            ("free", self.available),
        ] {
            out.push(
                "disk_space",
                &[("mountpoint", mountpoint), ("state", state)],
                bytes as f64,
            );
        }
        // Like `df`: reserved blocks count neither as used nor as available.
        let usable = self.used.saturating_add(self.available);
        if usable > 0 {
            out.push(
                "disk_usage",
                &[("mountpoint", mountpoint)],
                self.used as f64 * 100.0 / usable as f64,
            );
        }
    }
}

fn statvfs(mountpoint: &str) -> Result<Usage, Failure> {
    let path = CString::new(mountpoint).map_err(|_| Failure {
        kind: FailureKind::Io,
        detail: "mount point contains a NUL byte".to_owned(),
    })?;
    // SAFETY: `statvfs` is plain old data; all-zero is a valid value that the call overwrites.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a valid, writable `statvfs`.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    #[allow(clippy::useless_conversion)] // the field types are 32-bit on some targets
    let (frsize, bsize, blocks, bfree, bavail) = (
        u64::from(stat.f_frsize),
        u64::from(stat.f_bsize),
        u64::from(stat.f_blocks),
        u64::from(stat.f_bfree),
        u64::from(stat.f_bavail),
    );
    let unit = if frsize > 0 { frsize } else { bsize };
    if blocks == 0 || unit == 0 {
        return Err(Failure::parse("file system reports a size of 0"));
    }
    Ok(Usage {
        total: blocks.saturating_mul(unit),
        used: blocks.saturating_sub(bfree).saturating_mul(unit),
        available: bavail.saturating_mul(unit),
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
28 27 254:0 /var/lib/docker/containers/x/hosts /etc/hosts rw - ext4 /dev/vda rw
29 27 0:50 / /mnt/my\\040disk rw - xfs /dev/sdb1 rw
30 27 0:51 / /mnt/nfs rw - nfs4 server:/export rw
31 27 0:52 / /var/lib/docker rw - overlay overlay rw
this is not a mountinfo line
";

    #[test]
    fn filters_dedupes_and_unescapes() {
        let (mounts, bad) = parse(SAMPLE).unwrap();
        assert_eq!(bad, 1);
        let points: Vec<&str> = mounts.iter().map(|m| m.mountpoint.as_str()).collect();
        assert_eq!(points, ["/", "/mnt/my disk", "/var/lib/docker"]);
    }

    #[test]
    fn garbage_only_fails() {
        assert!(parse("garbage\n\u{fffd}\u{fffd}\n").is_err());
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
        assert_eq!(unescape("/big\\777"), "/big\\777");
    }

    #[test]
    fn statvfs_root_and_missing() {
        let root = statvfs("/").unwrap();
        assert!(root.total > 0 && root.used <= root.total);
        let missing = statvfs("/definitely/not/here/host-metrics").unwrap_err();
        assert_eq!(missing.kind, FailureKind::Missing);
    }
}
