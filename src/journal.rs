//! The leader's journal in `{working_dir}/journal/`: every batch is appended to the segment of its
//! window before the leader acknowledges it, so that a leader killed at any instant leaves behind
//! everything it acknowledged.
//!
//! One segment per (window, configuration) at a time: `{start}-{config_id}-{segment_id}.seg3`, a
//! header frame (the window and the configuration without its secrets) followed by batch frames
//! (the protocol's frames: length + CBOR). The segment id is also the id of the payload the window
//! becomes. The order that keeps "exactly once":
//!
//! 1. append the batch, then acknowledge it;
//! 2. when the window closes: write `counted` (the last counted seq of every client, atomically),
//!    write the payload into the payload cache (atomically), then delete the segment;
//! 3. a new leader loads `counted`, then for each segment: if the payload cache holds a payload with
//!    the segment's id, the window was already turned into a payload and the segment is only read
//!    for its (client, seq) pairs and deleted; otherwise its batches are counted again and the segment
//!    is adopted (appended to) by the new leader.
//!
//! A write that a kill cut short leaves a torn last frame: replay stops there and truncates it away
//! (the batch was not acknowledged, so its client sends it again). A write that fails (a full disk)
//! is cut back to the last whole frame at once, and the segment takes the next batch; a new
//! segment whose header cannot be written is removed (no file per failed try).
//!
//! Client ids appear here only as [`crate::protocol::journal_id`] hashes: the directory may be
//! readable by every local user, and nothing in it may serve to impersonate a process.
//!
//! Bounds: at most [`MAX_OPEN_FILES`] segment files are open at once; the least recently used one
//! is closed (and reopened when its window gets another batch), so windows never cost the host app
//! file descriptors beyond that.
//!
//! File names carry the format of their batches: `.seg3`/`.spool3` for this library's (samples
//! and log lines as structures), `.seg`/`.spool` for protocol 2's (as JSON text), which a leader of
//! protocol 2 also reads. Both are read here; a `.seg` segment is rewritten as `.seg3` when it is
//! replayed. A leader of protocol 2 lists neither `.seg3` nor `.spool3` files, so it leaves them
//! for the next leader of this protocol (it hands over to the first process of this library that
//! connects) instead of cutting or moving aside what it cannot read.
//!
//! Spool files (`spool-*.spool3`, same format as a segment): a stopping process that could not hand
//! its last batches to a leader before its deadline (a frozen leader, a leader stuck in its push)
//! leaves them here, written atomically. The leader picks spool files up when it starts and at every
//! transmission, journals their batches (skipping (client, seq) pairs already counted) and deletes
//! them. A batch whose counting panics on replay is quarantined: written aside as
//! `quarantine-*.bad` (at most [`MAX_QUARANTINE_FILES`]) and removed from its segment, logged once.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cbor::FromCbor;
use crate::export_config::ExportConfig;
use crate::protocol::{self, Batch};
use crate::workdir::WorkDir;

/// A segment larger than this is not read back (it cannot be ours: windows are bounded).
pub const MAX_SEGMENT_BYTES: u64 = 512 * 1024 * 1024;
/// Journal segment files open at once.
pub const MAX_OPEN_FILES: usize = 16;
/// One spool file holds at most this much; a process writes several if it must.
pub const MAX_SPOOL_BYTES: usize = 32 * 1024 * 1024;
/// Spool files a leader picks up per round (the rest wait for the next round).
pub const MAX_SPOOLS_PER_ROUND: usize = 64;
/// Quarantined batches kept on disk; beyond that they are only logged and counted.
pub const MAX_QUARANTINE_FILES: usize = 16;

/// First frame of a segment.
#[derive(Debug, Clone, Serialize, Deserialize, FromCbor)]
pub struct SegmentHeader {
    pub window_start: u64,
    pub config_id: u64,
    /// The configuration [`ExportConfig::without_secrets`] (secrets are never written to disk).
    pub config: ExportConfig,
}

/// A segment read back by a new leader.
pub struct Replayed {
    pub id: String,
    pub header: SegmentHeader,
    pub batches: Vec<Batch>,
    path: PathBuf,
    good_len: u64,
}

struct OpenSegment {
    id: String,
    /// `None` while closed to stay under [`MAX_OPEN_FILES`].
    file: Option<File>,
    last_used: u64,
    /// Bytes of whole frames in the file while it is open (a failed append is cut back to this).
    len: u64,
}

pub struct Journal {
    workdir: WorkDir,
    current: HashMap<(u64, u64), OpenSegment>,
    uses: u64,
}

/// A spool file read back by a leader.
pub struct Spooled {
    pub path: PathBuf,
    pub header: SegmentHeader,
    pub batches: Vec<Batch>,
}

/// Extension of the segments this library writes. Protocol 2 wrote `.seg` and reads only that:
/// a leader of protocol 2 would cut a segment back to its last batch it can read (and so lose the
/// rest), so segments whose batches it cannot read carry another name that it does not list.
const SEGMENT_EXTENSION: &str = ".seg3";
/// Extension of the segments protocol 2 wrote: read, and rewritten as [`SEGMENT_EXTENSION`].
const LEGACY_SEGMENT_EXTENSION: &str = ".seg";
/// Extension of the spool files this library writes; protocol 2 wrote (and reads) `.spool` and
/// moves a spool file it cannot read aside, so ours carry another name.
const SPOOL_EXTENSION: &str = ".spool3";
const LEGACY_SPOOL_EXTENSION: &str = ".spool";

fn segment_name(start: u64, config_id: u64, id: &str) -> String {
    format!("{start:013}-{config_id:016x}-{id}{SEGMENT_EXTENSION}")
}

/// (window start, config id, segment id, written by protocol 2) of a segment's file name.
fn parse_name(name: &str) -> Option<(u64, u64, String, bool)> {
    let (stem, legacy) = match name.strip_suffix(SEGMENT_EXTENSION) {
        Some(stem) => (stem, false),
        None => (name.strip_suffix(LEGACY_SEGMENT_EXTENSION)?, true),
    };
    let (start, config_id, id) = parse_stem(stem)?;
    Some((start, config_id, id, legacy))
}

fn parse_stem(stem: &str) -> Option<(u64, u64, String)> {
    let mut parts = stem.splitn(3, '-');
    let start = parts.next()?.parse().ok()?;
    let config_id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let id = parts.next()?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((start, config_id, id.to_owned()))
}

impl Journal {
    pub fn new(workdir: WorkDir) -> Journal {
        Journal {
            workdir,
            current: HashMap::new(),
            uses: 0,
        }
    }

    /// Segment files currently open (for tests and diagnose).
    pub fn open_files(&self) -> usize {
        self.current.values().filter(|s| s.file.is_some()).count()
    }

    /// Closes the least recently used open segment file while `MAX_OPEN_FILES` are open.
    fn make_room(&mut self) {
        while self.open_files() >= MAX_OPEN_FILES {
            let Some(lru) = self
                .current
                .values_mut()
                .filter(|s| s.file.is_some())
                .min_by_key(|s| s.last_used)
            else {
                return;
            };
            lru.file = None;
        }
    }

    fn dir(&self) -> PathBuf {
        self.workdir.journal_dir()
    }

    fn path(&self, start: u64, config_id: u64, id: &str) -> PathBuf {
        self.dir().join(segment_name(start, config_id, id))
    }

    /// Appends `batch` to the current segment of (`start`, `config_id`), opening a new segment if
    /// there is none. Returns the segment id. Once this returns, a kill of this process loses nothing.
    pub fn append(
        &mut self,
        start: u64,
        config_id: u64,
        config: &ExportConfig,
        batch: &Batch,
    ) -> Result<String> {
        let frame = protocol::encode(batch)?;
        self.uses += 1;
        let uses = self.uses;
        let reopen = match self.current.get(&(start, config_id)) {
            Some(segment) if segment.file.is_none() => Some(segment.id.clone()),
            _ => None,
        };
        if let Some(id) = reopen {
            self.make_room();
            let path = self.path(start, config_id, &id);
            match self
                .workdir
                .open_file(&path, OpenOptions::new().append(true))
                .and_then(|file| Ok((file.metadata()?.len(), file)))
            {
                Ok((len, file)) => {
                    if let Some(segment) = self.current.get_mut(&(start, config_id)) {
                        segment.file = Some(file);
                        segment.len = len;
                    }
                }
                // Gone (or unusable): this window continues in a new segment.
                Err(_) => {
                    self.current.remove(&(start, config_id));
                }
            }
        }
        if !self.current.contains_key(&(start, config_id)) {
            self.make_room();
            let id = crate::ids::new_payload_id();
            let path = self.path(start, config_id, &id);
            let mut file = self
                .workdir
                .open_file(&path, OpenOptions::new().append(true).create_new(true))?;
            let header = protocol::encode(&SegmentHeader {
                window_start: start,
                config_id,
                config: config.without_secrets(),
            })?;
            if let Err(e) = file.write_all(&header) {
                // A full disk: the segment holds nothing yet, so it goes (no empty file per try).
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(e).with_context(|| format!("cannot write {}", path.display()));
            }
            self.current.insert(
                (start, config_id),
                OpenSegment {
                    id,
                    file: Some(file),
                    last_used: uses,
                    len: header.len() as u64,
                },
            );
        }
        let Some(segment) = self.current.get_mut(&(start, config_id)) else {
            bail!("segment vanished");
        };
        segment.last_used = uses;
        let Some(file) = segment.file.as_mut() else {
            bail!("segment {} is not open", segment.id);
        };
        if let Err(e) = file.write_all(&frame) {
            // A partial frame may be on disk (a full disk): cut it off, so that the segment can
            // take the next batch. If even that fails, this segment is done (replay cuts the torn
            // tail) and later batches go to a new one.
            let id = segment.id.clone();
            if file.set_len(segment.len).is_err() {
                self.current.remove(&(start, config_id));
            }
            return Err(e).with_context(|| format!("cannot append to journal segment {id}"));
        }
        segment.len += frame.len() as u64;
        Ok(segment.id.clone())
    }

    /// The window (`start`, `config_id`, segment `id`) is closing: later batches for that window
    /// open a new segment.
    pub fn seal(&mut self, start: u64, config_id: u64, id: &str) {
        if self
            .current
            .get(&(start, config_id))
            .is_some_and(|s| s.id == id)
        {
            self.current.remove(&(start, config_id));
        }
    }

    /// Deletes a segment once its window is safely a payload in the cache.
    pub fn remove(&self, start: u64, config_id: u64, id: &str) {
        let path = self.path(start, config_id, id);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove journal segment {}: {e}", path.display());
            }
        }
    }

    /// Reads every segment left in the directory (by a leader that died or stopped), oldest first.
    pub fn replay(&self) -> Vec<Replayed> {
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Some((start, config_id, id, legacy)) = parse_name(&name) else {
                continue;
            };
            let path = entry.path();
            if legacy && self.path(start, config_id, &id).exists() {
                // Left by a rewrite that was cut short after its new file was complete.
                let _ = fs::remove_file(&path);
                continue;
            }
            match read_segment(&path, MAX_SEGMENT_BYTES) {
                Ok((header, batches, good_len))
                    if header.window_start == start && header.config_id == config_id =>
                {
                    let mut replayed = Replayed {
                        id,
                        header,
                        batches,
                        path,
                        good_len,
                    };
                    if legacy {
                        if let Err(e) = self.rewrite_legacy(&mut replayed) {
                            tracing::warn!(
                                "journal segment {} of protocol 2 cannot be rewritten: {e:#}; ignored for now",
                                replayed.path.display()
                            );
                            continue;
                        }
                    }
                    out.push(replayed)
                }
                Ok(_) => tracing::warn!(
                    "journal segment {} does not match its name; ignored",
                    path.display()
                ),
                Err(e) => tracing::warn!(
                    "journal segment {} unreadable: {e:#}; ignored",
                    path.display()
                ),
            }
        }
        crate::sort::sort_by(&mut out, |a, b| {
            (a.header.window_start, &a.id).cmp(&(b.header.window_start, &b.id))
        });
        out
    }

    /// Rewrites a segment of protocol 2 (`.seg`) in this library's format under its own name
    /// (atomically), then removes the old file, so that it is appended to in one format only and
    /// a leader of protocol 2 never cuts batches it cannot read out of it.
    fn rewrite_legacy(&self, replayed: &mut Replayed) -> Result<()> {
        let mut bytes = protocol::encode(&replayed.header)?;
        for batch in &replayed.batches {
            bytes.extend_from_slice(&protocol::encode(batch)?);
        }
        let (start, config_id) = (replayed.header.window_start, replayed.header.config_id);
        let path = self.path(start, config_id, &replayed.id);
        let tmp = self.dir().join(format!(".rewrite-{}", replayed.id));
        let mut file = self.workdir.open_file(
            &tmp,
            OpenOptions::new().write(true).create(true).truncate(true),
        )?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot rename to {}", path.display()))?;
        let _ = fs::remove_file(&replayed.path);
        replayed.path = path;
        replayed.good_len = bytes.len() as u64;
        Ok(())
    }

    /// Continues a replayed segment: cuts a torn tail and appends to it from now on.
    pub fn adopt(&mut self, replayed: &Replayed) -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags_nofollow()
            .open(&replayed.path)
            .with_context(|| format!("cannot reopen {}", replayed.path.display()))?;
        file.set_len(replayed.good_len)
            .with_context(|| format!("cannot truncate {}", replayed.path.display()))?;
        drop(file);
        let key = (replayed.header.window_start, replayed.header.config_id);
        // Two segments of one window (a late one): keep appending to one, the other is only replayed.
        if self.current.contains_key(&key) {
            return Ok(());
        }
        // Opened again on its next batch (see `append`), so that replay opens no file.
        self.current.insert(
            key,
            OpenSegment {
                id: replayed.id.clone(),
                file: None,
                last_used: 0,
                len: replayed.good_len,
            },
        );
        Ok(())
    }

    /// Takes the batch at `index` out of a replayed segment (its counting panicked): writes it
    /// aside as a `quarantine-*.bad` file and rewrites the segment without it (atomically).
    pub fn quarantine(&self, replayed: &mut Replayed, index: usize) -> Result<()> {
        if index >= replayed.batches.len() {
            return Ok(());
        }
        let bad = replayed.batches.remove(index);
        let kept = fs::read_dir(self.dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".bad"))
                    .count()
            })
            .unwrap_or(0);
        if kept < MAX_QUARANTINE_FILES {
            let path = self.dir().join(format!(
                "quarantine-{}-{:016x}-{}.bad",
                replayed.id, bad.client_id, bad.seq
            ));
            let mut file = self.workdir.open_file(
                &path,
                OpenOptions::new().write(true).create(true).truncate(true),
            )?;
            file.write_all(&protocol::encode(&bad)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let mut bytes = protocol::encode(&replayed.header)?;
        for batch in &replayed.batches {
            bytes.extend_from_slice(&protocol::encode(batch)?);
        }
        let tmp = self.dir().join(format!(".rewrite-{}", replayed.id));
        let mut file = self.workdir.open_file(
            &tmp,
            OpenOptions::new().write(true).create(true).truncate(true),
        )?;
        file.write_all(&bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &replayed.path)
            .with_context(|| format!("cannot rename to {}", replayed.path.display()))?;
        replayed.good_len = bytes.len() as u64;
        Ok(())
    }

    /// Writes `batches` (client ids already hashed) of configuration `config_id` as spool files
    /// for the next leader, atomically (temporary file, then rename). Returns how many files.
    pub fn write_spool(
        workdir: &WorkDir,
        config_id: u64,
        config: &ExportConfig,
        batches: &[Batch],
    ) -> Result<usize> {
        let dir = workdir.journal_dir();
        let header = protocol::encode(&SegmentHeader {
            window_start: 0,
            config_id,
            config: config.without_secrets(),
        })?;
        let mut files = 0;
        let mut rest = batches;
        while !rest.is_empty() {
            let mut bytes = header.clone();
            let mut taken = 0;
            for batch in rest {
                let frame = protocol::encode(batch)?;
                if taken > 0 && bytes.len() + frame.len() > MAX_SPOOL_BYTES {
                    break;
                }
                bytes.extend_from_slice(&frame);
                taken += 1;
            }
            rest = &rest[taken..];
            let id = crate::ids::new_payload_id();
            let tmp = dir.join(format!(".spool-tmp-{id}"));
            let path = dir.join(format!(
                "spool-{}-{id}{SPOOL_EXTENSION}",
                std::process::id()
            ));
            let mut file =
                workdir.open_file(&tmp, OpenOptions::new().write(true).create_new(true))?;
            if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
                drop(file);
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
            }
            fs::rename(&tmp, &path).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), path.display())
            })?;
            files += 1;
        }
        Ok(files)
    }

    /// Reads up to [`MAX_SPOOLS_PER_ROUND`] spool files. An unreadable one is moved aside.
    pub fn read_spools(workdir: &WorkDir) -> Vec<Spooled> {
        let Ok(entries) = fs::read_dir(workdir.journal_dir()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            if out.len() >= MAX_SPOOLS_PER_ROUND {
                break;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Ours and those of protocol 2 (the batch reader takes both formats).
            if !name.starts_with("spool-")
                || !(name.ends_with(SPOOL_EXTENSION) || name.ends_with(LEGACY_SPOOL_EXTENSION))
            {
                continue;
            }
            let path = entry.path();
            match read_segment(&path, MAX_SPOOL_BYTES as u64 + 1) {
                Ok((header, batches, _)) => out.push(Spooled {
                    path,
                    header,
                    batches,
                }),
                Err(e) => {
                    tracing::warn!(
                        "spool file {} unreadable: {e:#}; moved aside",
                        path.display()
                    );
                    let _ = fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        out
    }

    /// Deletes a replayed segment whose window is already a payload.
    pub fn discard(&self, replayed: &Replayed) {
        let _ = fs::remove_file(&replayed.path);
    }

    /// Writes the last counted seq of every client (atomically: temporary file, then rename).
    /// An associated function, so that the leader writes it without holding the counting lock.
    pub fn write_counted(workdir: &WorkDir, counted: &[(u64, u64)]) -> Result<()> {
        let dir = workdir.journal_dir();
        let path = dir.join("counted");
        let tmp = dir.join(format!(".counted-{}", std::process::id()));
        let mut file = workdir.open_file(
            &tmp,
            OpenOptions::new().write(true).create(true).truncate(true),
        )?;
        if let Err(e) = file.write_all(&protocol::encode(&counted.to_vec())?) {
            drop(file);
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
        }
        fs::rename(&tmp, &path).with_context(|| format!("cannot rename to {}", path.display()))?;
        Ok(())
    }

    /// The last counted seq of every client, as the previous leader left it.
    pub fn read_counted(&self) -> Vec<(u64, u64)> {
        let path = self.dir().join("counted");
        let Ok(bytes) = read_bounded(&path, protocol::MAX_FRAME_BYTES as u64 + 4) else {
            return Vec::new();
        };
        match protocol::decode::<Vec<(u64, u64)>>(&bytes) {
            Ok(Some((counted, _))) => counted,
            _ => {
                tracing::warn!("{} unreadable; ignored", path.display());
                Vec::new()
            }
        }
    }
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags_nofollow()
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    Read::by_ref(&mut file)
        .take(max)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

/// Header, batches, and the length of the readable part (a torn or garbled tail is left out).
fn read_segment(path: &Path, max: u64) -> Result<(SegmentHeader, Vec<Batch>, u64)> {
    let bytes = read_bounded(path, max)?;
    let Some((header, mut used)) = protocol::decode::<SegmentHeader>(&bytes)? else {
        bail!("no complete header");
    };
    let mut batches = Vec::new();
    while let Ok(Some((batch, n))) = protocol::decode::<Batch>(&bytes[used..]) {
        batches.push(batch);
        used += n;
    }
    Ok((header, batches, used as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MetricKey;

    fn config() -> ExportConfig {
        ExportConfig {
            push_api_key: "secret".into(),
            app_name: "a".into(),
            environment: "e".into(),
            endpoint: "http://x".into(),
            hostname: "h".into(),
            revision: String::new(),
            otlp: Some(crate::export_config::OtlpSettings {
                metrics_endpoint: "http://c/v1/metrics".into(),
                traces_endpoint: "http://c/v1/traces".into(),
                logs_endpoint: "http://c/v1/logs".into(),
                headers: vec![("x-api-key".into(), "secret-header".into())],
                timeout_ms: 1000,
                gzip: true,
                resource: vec![],
                temporality: "cumulative".into(),
            }),
            ..Default::default()
        }
    }

    fn batch(seq: u64) -> Batch {
        Batch {
            client_id: 9,
            seq,
            created_ms: 1000,
            counters: vec![(
                MetricKey {
                    name: "c".into(),
                    tags: vec![],
                },
                1.0,
            )],
            gauges: vec![],
            distributions: vec![],
            dropped_updates: 0,
            ..Batch::default()
        }
    }

    #[test]
    fn appended_batches_replay_and_a_torn_tail_is_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let mut journal = Journal::new(wd.clone());
        let id = journal.append(1000, 7, &config(), &batch(1)).unwrap();
        assert_eq!(journal.append(1000, 7, &config(), &batch(2)).unwrap(), id);
        // A kill in the middle of a write: half a frame at the end.
        let path = wd.journal_dir().join(segment_name(1000, 7, &id));
        let frame = protocol::encode(&batch(3)).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&frame[..frame.len() / 2])
            .unwrap();
        let text = fs::read(&path).unwrap();
        assert!(
            !String::from_utf8_lossy(&text).contains("secret"),
            "no secret on disk"
        );

        let mut next = Journal::new(wd.clone());
        let replayed = next.replay();
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].id, id);
        assert_eq!(
            replayed[0]
                .batches
                .iter()
                .map(|b| b.seq)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        next.adopt(&replayed[0]).unwrap();
        assert_eq!(next.append(1000, 7, &config(), &batch(4)).unwrap(), id);
        let again = Journal::new(wd).replay();
        assert_eq!(
            again[0].batches.iter().map(|b| b.seq).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
    }

    /// In a forked child (a file size limit is per process, and other tests write files): with
    /// `RLIMIT_FSIZE` a few bytes above the segment, appends fail and leave no torn frame; a new
    /// window whose first batch does not fit gets one segment, not a file per try; once the limit
    /// is lifted (disk space freed), the same segment goes on.
    #[test]
    fn a_failed_append_is_cut_back_and_the_segment_takes_the_next_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let mut journal = Journal::new(wd.clone());
        let id = journal.append(1000, 7, &config(), &batch(1)).unwrap();
        let path = wd.journal_dir().join(segment_name(1000, 7, &id));
        let len = fs::metadata(&path).unwrap().len();
        // SAFETY: the child only appends to the journal, changes its own limits and leaves with
        // _exit; the parent waits for it.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let limit = |bytes: libc::rlim_t| {
                let mut l = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: get/setrlimit of this process with a valid struct; ignoring SIGXFSZ so
                // that a write past the limit fails with EFBIG, as on a full disk with ENOSPC.
                unsafe {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    libc::getrlimit(libc::RLIMIT_FSIZE, &mut l);
                    l.rlim_cur = bytes.min(l.rlim_max);
                    libc::setrlimit(libc::RLIMIT_FSIZE, &l);
                }
            };
            limit(len as libc::rlim_t + 5);
            let full = (0..3).all(|i| journal.append(1000, 7, &config(), &batch(2 + i)).is_err());
            // A new window: its header fits, its first (larger) batch does not.
            let mut large = batch(9);
            large.counters[0].0.name = "c".repeat(100);
            let no_new = journal.append(5000, 7, &config(), &large).is_err();
            limit(libc::RLIM_INFINITY);
            let resumed = journal.append(1000, 7, &config(), &batch(5)).ok() == Some(id.clone());
            let code = u8::from(!full) | u8::from(!no_new) << 1 | u8::from(!resumed) << 2;
            // SAFETY: leaving the forked child without running the test harness's exit path.
            unsafe { libc::_exit(i32::from(code)) }
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "{status}");
        // Bit 0: an append succeeded; 1: a new segment was made; 2: no append after the limit.
        assert_eq!(libc::WEXITSTATUS(status), 0);
        let replayed = Journal::new(wd.clone()).replay();
        let seqs: Vec<(u64, Vec<u64>)> = replayed
            .iter()
            .map(|r| {
                (
                    r.header.window_start,
                    r.batches.iter().map(|b| b.seq).collect(),
                )
            })
            .collect();
        assert_eq!(seqs, vec![(1000, vec![1, 5]), (5000, vec![])]);
        assert_eq!(replayed[0].good_len, fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn sealed_windows_get_a_new_segment_and_counted_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let mut journal = Journal::new(wd);
        let first = journal.append(0, 1, &config(), &batch(1)).unwrap();
        journal.seal(0, 1, &first);
        let second = journal.append(0, 1, &config(), &batch(2)).unwrap();
        assert_ne!(first, second);
        journal.remove(0, 1, &first);
        assert_eq!(journal.replay().len(), 1);
        Journal::write_counted(&journal.workdir, &[(9, 2), (10, 5)]).unwrap();
        assert_eq!(journal.read_counted(), vec![(9, 2), (10, 5)]);
    }

    #[test]
    fn many_windows_keep_at_most_the_cap_of_files_open() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), true).unwrap();
        let mut journal = Journal::new(wd.clone());
        let mut ids = Vec::new();
        for start in 0..40u64 {
            ids.push(
                journal
                    .append(start * 1000, 1, &config(), &batch(start))
                    .unwrap(),
            );
            assert!(journal.open_files() <= MAX_OPEN_FILES);
        }
        // A closed segment is reopened for its next batch; nothing is lost.
        assert_eq!(
            journal.append(0, 1, &config(), &batch(100)).unwrap(),
            ids[0]
        );
        let replayed = journal.replay();
        assert_eq!(replayed.len(), 40);
        assert_eq!(replayed.iter().map(|r| r.batches.len()).sum::<usize>(), 41);
    }

    #[test]
    fn spool_files_round_trip_and_hold_no_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), false).unwrap();
        let batches: Vec<Batch> = (1..=3).map(batch).collect();
        assert_eq!(
            Journal::write_spool(&wd, 7, &config(), &batches).unwrap(),
            1
        );
        let spooled = Journal::read_spools(&wd);
        assert_eq!(spooled.len(), 1);
        assert_eq!(spooled[0].header.config_id, 7);
        // The same copy as in a segment: a process with the whole configuration replaces it.
        assert_eq!(spooled[0].header.config, config().without_secrets());
        assert_eq!(spooled[0].batches.len(), 3);
        let bytes = fs::read(&spooled[0].path).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("secret"));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&spooled[0].path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only");
    }

    #[test]
    fn a_segment_of_protocol_2_replays_and_is_rewritten_in_this_format() {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(tmp.path(), true).unwrap();
        let journal = Journal::new(wd.clone());
        let id = "ab".repeat(16);
        let mut b = batch(1);
        b.samples = vec![crate::sample::test_sample(2)];
        let header = SegmentHeader {
            window_start: 60_000,
            config_id: 7,
            config: config().without_secrets(),
        };
        let mut bytes = protocol::encode(&header).unwrap();
        bytes.extend_from_slice(&protocol::encode_batch_v2_bare(&b));
        let legacy = wd
            .journal_dir()
            .join(format!("{:013}-{:016x}-{id}.seg", 60_000, 7));
        fs::write(&legacy, &bytes).unwrap();
        let replayed = journal.replay();
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].batches[0].samples, b.samples);
        assert!(!legacy.exists());
        assert!(replayed[0].path.to_string_lossy().ends_with(".seg3"));
        // Read again from the rewritten file: the same.
        let again = journal.replay();
        assert_eq!(again[0].batches[0].samples, b.samples);
    }
}
