//! The payload cache in `payloads/`: every payload goes through it before it is sent.
//!
//! Policy: a payload is written atomically (temporary file + rename) as
//! `{created_ms}-{config_id}-{payload_id}{suffix}`, the suffix naming its exporter
//! ([`ExportKind::suffix`]: one file per exporter and OTLP signal, so that one exporter being down
//! never holds back another); the push key and OTLP header values are not written to disk: they
//! are put in at send time (see [`super::otlp`] for the OTLP requests' key attribute). The config
//! id says which configuration a payload belongs to, and the leader knows that configuration's
//! secrets once a process with it is connected. Cached payloads are retried oldest first at the next
//! transmission. The cache holds at most `max_files` files and `max_bytes` bytes: beyond that the
//! oldest are evicted, logged and counted (the count goes out in the next payload). Files in
//! `payloads/` that do not have our name pattern, are not regular files, or are larger than
//! [`MAX_CACHED_FILE_BYTES`] are ignored.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

use super::{ExportKind, Outgoing};
use crate::workdir::WorkDir;

/// A file in `payloads/` larger than this is not ours and is not read.
pub const MAX_CACHED_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// A payload file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEntry {
    pub path: PathBuf,
    pub created_ms: u64,
    pub config_id: u64,
    pub id: String,
    pub kind: ExportKind,
    pub size: u64,
}

pub struct PayloadCache {
    workdir: WorkDir,
    max_files: usize,
    max_bytes: u64,
    evictions: AtomicU64,
}

impl PayloadCache {
    pub fn new(workdir: WorkDir, max_files: usize, max_bytes: u64) -> Self {
        PayloadCache {
            workdir,
            max_files: max_files.max(1),
            max_bytes,
            evictions: AtomicU64::new(0),
        }
    }

    /// Writes a payload to the cache, then evicts the oldest entries beyond the bounds.
    pub fn store(&self, payload: &Outgoing) -> Result<()> {
        let dir = self.workdir.payloads_dir();
        let name = format!(
            "{:013}-{:016x}-{}{}",
            payload.created_ms,
            payload.config_id,
            payload.id,
            payload.kind.suffix()
        );
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{}",
            std::process::id(),
            payload.id,
            payload.kind.name()
        ));
        let mut file = self
            .workdir
            .open_file(&tmp, OpenOptions::new().write(true).create_new(true))?;
        if let Err(e) = file
            .write_all(&payload.body_gz)
            .and_then(|()| file.sync_data())
        {
            // A full disk: no half-written temporary file stays behind.
            drop(file);
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
        }
        fs::rename(&tmp, dir.join(&name))
            .with_context(|| format!("cannot rename {} to {name}", tmp.display()))?;
        self.enforce_bounds();
        Ok(())
    }

    /// Cached payloads, oldest first.
    pub fn list(&self) -> Vec<CachedEntry> {
        let dir = self.workdir.payloads_dir();
        let Ok(read_dir) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut entries: Vec<CachedEntry> = read_dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let meta = fs::symlink_metadata(e.path()).ok()?;
                if !meta.is_file() || meta.len() > MAX_CACHED_FILE_BYTES {
                    return None;
                }
                let (stem, kind) = ExportKind::ALL
                    .iter()
                    .find_map(|k| Some((name.strip_suffix(k.suffix())?, *k)))?;
                let mut parts = stem.splitn(3, '-');
                let created_ms = parts.next()?.parse().ok()?;
                let config_id = u64::from_str_radix(parts.next()?, 16).ok()?;
                let id = parts.next()?;
                if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                Some(CachedEntry {
                    path: e.path(),
                    created_ms,
                    config_id,
                    id: id.to_owned(),
                    kind,
                    size: meta.len(),
                })
            })
            .collect();
        crate::sort::sort_by(&mut entries, |a, b| {
            (a.created_ms, &a.id, a.kind).cmp(&(b.created_ms, &b.id, b.kind))
        });
        entries
    }

    pub fn load(&self, entry: &CachedEntry) -> Result<Outgoing> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&entry.path)
            .with_context(|| format!("cannot open {}", entry.path.display()))?;
        let mut body_gz = Vec::new();
        Read::by_ref(&mut file)
            .take(MAX_CACHED_FILE_BYTES)
            .read_to_end(&mut body_gz)
            .with_context(|| format!("cannot read {}", entry.path.display()))?;
        Ok(Outgoing {
            id: entry.id.clone(),
            config_id: entry.config_id,
            created_ms: entry.created_ms,
            kind: entry.kind,
            body_gz,
        })
    }

    pub fn remove(&self, entry: &CachedEntry) {
        if let Err(e) = fs::remove_file(&entry.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove cached payload {}: {e}", entry.path.display());
            }
        }
    }

    fn enforce_bounds(&self) {
        let entries = self.list();
        let mut files = entries.len();
        let mut bytes: u64 = entries.iter().map(|e| e.size).sum();
        for entry in &entries {
            if files <= self.max_files && bytes <= self.max_bytes {
                break;
            }
            self.remove(entry);
            files -= 1;
            bytes -= entry.size;
            self.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "payload cache full ({} files / {} bytes allowed): evicted the oldest payload {} of window time {}",
                self.max_files,
                self.max_bytes,
                entry.id,
                entry.created_ms
            );
        }
    }

    /// Evictions since the last call (reported in the next payload).
    pub fn take_evictions(&self) -> u64 {
        self.evictions.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(created_ms: u64, size: usize) -> Outgoing {
        Outgoing {
            id: crate::ids::new_payload_id(),
            config_id: 0xabc,
            created_ms,
            kind: ExportKind::Push,
            body_gz: vec![7u8; size],
        }
    }

    #[test]
    fn stored_payloads_come_back_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let cache = PayloadCache::new(wd, 10, 1 << 20);
        let (a, b) = (outgoing(2000, 10), outgoing(1000, 20));
        cache.store(&a).unwrap();
        cache.store(&b).unwrap();
        let list = cache.list();
        assert_eq!(
            list.iter().map(|e| e.created_ms).collect::<Vec<_>>(),
            vec![1000, 2000]
        );
        let loaded = cache.load(&list[0]).unwrap();
        assert_eq!(
            (loaded.id, loaded.config_id, loaded.body_gz),
            (b.id, 0xabc, b.body_gz)
        );
        cache.remove(&list[0]);
        assert_eq!(cache.list().len(), 1);
    }

    #[test]
    fn the_cache_never_exceeds_its_bounds_and_counts_evictions() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let cache = PayloadCache::new(wd.clone(), 3, 250);
        for i in 0..10 {
            cache.store(&outgoing(1000 + i, 100)).unwrap();
            let list = cache.list();
            assert!(list.len() <= 3);
            assert!(list.iter().map(|e| e.size).sum::<u64>() <= 250);
        }
        // 100-byte files under a 250-byte bound: two remain, the newest.
        let list = cache.list();
        assert_eq!(
            list.iter().map(|e| e.created_ms).collect::<Vec<_>>(),
            vec![1008, 1009]
        );
        assert_eq!(cache.take_evictions(), 8);
        assert_eq!(cache.take_evictions(), 0);
    }

    #[test]
    fn foreign_and_hostile_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let dir = wd.payloads_dir();
        fs::write(dir.join("notes.txt"), b"hello").unwrap();
        fs::write(dir.join("1-zz-nothex.json.gz"), b"x").unwrap();
        std::os::unix::fs::symlink(
            "/etc/passwd",
            dir.join(format!(
                "0000000000001-0000000000000abc-{}.json.gz",
                "a".repeat(32)
            )),
        )
        .unwrap();
        let cache = PayloadCache::new(wd, 10, 1 << 20);
        assert!(cache.list().is_empty());
    }
}
