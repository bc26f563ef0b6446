//! The cumulative state on disk: one file per (app name, environment) in the working directory,
//! `cumulative-{16 hex digits}.state` (the digits: a hash of app and environment), written
//! atomically (a temporary file in the same directory, `fsync`, `rename`) with the configured file
//! permissions, through [`WorkDir::open_file`] (no link followed, regular files only).
//!
//! Layout: [`MAGIC`] (8 bytes), [`FORMAT_VERSION`] (u32, little-endian), the body's length (u64,
//! little-endian), the SHA-256 of the body (32 bytes), the body. The body is CBOR (written by a
//! small writer here, as `serde_cbor` would write it but with every float in 64 bits; read by
//! [`crate::cbor`]'s reader, so the sketches and metric keys are read and
//! validated by the same code as on the socket and in the journal, and no generic deserializer is
//! instantiated): `{app, env, saved_ms, segments: [id], series: [{key, start, updated, and one of
//! total + monotonic | gauge | sketch}]}`.
//!
//! Reading validates everything: a file shorter than its header or its announced length (torn),
//! another magic (foreign), another version, a length over [`MAX_FILE_BYTES`], a checksum
//! mismatch, a body that is not a valid state, or one whose app and environment do not hash to
//! its name, is an error naming the file; the caller logs it and starts that state empty (the
//! journal rebuilds what it still holds). Why a checksum when the write is atomic: the directory
//! may be shared with other users and other versions; a file changed behind our back must not be
//! trusted.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{
    Cumulative, Kind, Series, SeriesMap, State, Value, MAX_REMEMBERED_SEGMENTS, MAX_SERIES,
    MAX_STATES,
};
use crate::cbor::{self, required, FromCbor, Reader};
use crate::protocol::{GaugeValue, MetricKey};
use crate::sketch::Sketch;
use crate::workdir::WorkDir;

pub const MAGIC: [u8; 8] = *b"ASCUMUL\n";
pub const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 8 + 32;
/// A state file larger than this is not read (a state is bounded well below it).
pub const MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;

/// The name of the file of (app, env).
pub fn file_name(app: &str, env: &str) -> String {
    let text = format!("{}:{app}{env}", app.len());
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    format!("cumulative-{:016x}.state", u64::from_be_bytes(id))
}

/// The few CBOR items the body is made of, written as `serde_cbor` would read them: integers
/// in their shortest head, floats always in 64 bits, definite lengths, text keys. (Not
/// `serde_cbor`'s derived encoder: that was another copy of its writer in the library.)
/// Its items are not inlined: each inlined copy would grow the `Vec` on its own.
struct Writer(Vec<u8>);

impl Writer {
    #[inline(never)]
    fn head(&mut self, major: u8, n: u64) {
        let major = major << 5;
        if n < 24 {
            self.0.push(major | n as u8);
        } else if n <= 0xff {
            self.0.extend_from_slice(&[major | 24, n as u8]);
        } else if n <= 0xffff {
            self.0.push(major | 25);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= 0xffff_ffff {
            self.0.push(major | 26);
            self.0.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            self.0.push(major | 27);
            self.0.extend_from_slice(&n.to_be_bytes());
        }
    }

    fn uint(&mut self, n: u64) {
        self.head(0, n);
    }

    fn int(&mut self, n: i64) {
        if n >= 0 {
            self.head(0, n as u64);
        } else {
            // CBOR's negative integers hold -1 - n, which is !n in two's complement.
            self.head(1, !(n as u64));
        }
    }

    #[inline(never)]
    fn text(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    #[inline(never)]
    fn float(&mut self, v: f64) {
        self.0.push(0xfb);
        self.0.extend_from_slice(&v.to_bits().to_be_bytes());
    }

    fn array(&mut self, len: usize) {
        self.head(4, len as u64);
    }

    /// A map of `len` fields; each field is then its name (see [`Writer::field`]) and its value.
    fn map(&mut self, len: usize) {
        self.head(5, len as u64);
    }

    fn field(&mut self, name: &str) {
        self.text(name);
    }

    #[inline(never)]
    fn key(&mut self, key: &MetricKey) {
        self.map(2);
        self.field("name");
        self.text(&key.name);
        self.field("tags");
        self.array(key.tags.len());
        for (name, value) in &key.tags {
            self.array(2);
            self.text(name);
            self.text(value);
        }
    }

    #[inline(never)]
    fn sketch(&mut self, sketch: &Sketch) {
        // The fields of `SketchWire`, from the sketch itself (no copy of its buckets).
        let (min, max) = sketch.min_max_held();
        let (positive, negative) = (sketch.positive(), sketch.negative());
        self.map(10);
        let ints = [
            ("scale", sketch.scale()),
            ("positive_offset", positive.offset()),
            ("negative_offset", negative.offset()),
        ];
        for (name, n) in ints {
            self.field(name);
            self.int(i64::from(n));
        }
        for (name, counts) in [("positive", positive), ("negative", negative)] {
            self.field(name);
            self.array(counts.counts().len());
            for n in counts.counts() {
                self.uint(*n);
            }
        }
        for (name, n) in [
            ("zero_count", sketch.zero_count()),
            ("count", sketch.count()),
        ] {
            self.field(name);
            self.uint(n);
        }
        for (name, v) in [("sum", sketch.sum()), ("min", min), ("max", max)] {
            self.field(name);
            self.float(v);
        }
    }

    #[inline(never)]
    fn series(&mut self, key: &MetricKey, s: &Series) {
        self.map(if matches!(s.value, Value::Counter { .. }) {
            5
        } else {
            4
        });
        self.field("key");
        self.key(key);
        self.field("start");
        self.uint(s.start_ms);
        self.field("updated");
        self.uint(s.updated_ms);
        match &s.value {
            Value::Counter { total, monotonic } => {
                self.field("total");
                self.float(*total);
                self.field("monotonic");
                self.0.push(if *monotonic { 0xf5 } else { 0xf4 });
            }
            Value::Gauge(g) => {
                self.field("gauge");
                self.map(2);
                self.field("value");
                self.float(g.value);
                self.field("at_ms");
                self.uint(g.at_ms);
            }
            Value::Distribution(d) => {
                self.field("sketch");
                self.sketch(d);
            }
        }
    }
}

/// The whole file of `state`: header and body.
pub fn encode(state: &State, saved_ms: u64) -> Result<Vec<u8>> {
    let mut w = Writer(Vec::new());
    w.map(5);
    w.field("app");
    w.text(&state.app);
    w.field("env");
    w.text(&state.env);
    w.field("saved_ms");
    w.uint(saved_ms);
    w.field("segments");
    w.array(state.segments.len());
    for id in &state.segments {
        w.text(id);
    }
    w.field("series");
    w.array(state.series.len());
    for ((_, key), s) in state.series.iter() {
        w.series(key, s);
    }
    let body = w.0;
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &body).as_ref());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A state file's bytes back into a state, validated (see the module doc).
pub fn decode(bytes: &[u8]) -> Result<State> {
    if bytes.len() < HEADER_BYTES {
        if !MAGIC.starts_with(&bytes[..bytes.len().min(8)]) {
            bail!("not a cumulative state file");
        }
        bail!("torn: {} bytes, shorter than the header", bytes.len());
    }
    if bytes[..8] != MAGIC {
        bail!("not a cumulative state file");
    }
    let word = |at: usize, n: usize| {
        bytes[at..at + n]
            .iter()
            .rev()
            .fold(0u64, |a, b| a << 8 | u64::from(*b))
    };
    let version = word(8, 4);
    if version != u64::from(FORMAT_VERSION) {
        bail!("format version {version}; this library reads version {FORMAT_VERSION}");
    }
    let len = word(12, 8);
    if len > MAX_FILE_BYTES {
        bail!("announces {len} bytes, more than the {MAX_FILE_BYTES} allowed");
    }
    let body = &bytes[HEADER_BYTES..];
    if (body.len() as u64) < len {
        bail!("torn: {} of {len} bytes", body.len());
    }
    if body.len() as u64 > len {
        bail!(
            "{} bytes after the {len} announced",
            body.len() as u64 - len
        );
    }
    if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != &bytes[20..52] {
        bail!("checksum mismatch");
    }
    let mut state = cbor::from_slice::<StateBody>(body)
        .map_err(|e| anyhow!("invalid body: {e}"))?
        .0;
    state.recount();
    Ok(state)
}

/// The body read back.
struct StateBody(State);

fn read_record(r: &mut Reader<'_>) -> cbor::Result<((Kind, MetricKey), Series)> {
    let (mut key, mut start, mut updated) = (None, None, None);
    let (mut total, mut monotonic, mut gauge, mut sketch) = (None, None, None, None);
    r.fields(|r, name| match name {
        "key" => r.field(&mut key, name, MetricKey::read),
        "start" => r.field(&mut start, name, Reader::u64),
        "updated" => r.field(&mut updated, name, Reader::u64),
        "total" => r.field(&mut total, name, Reader::f64),
        "monotonic" => r.field(&mut monotonic, name, Reader::bool),
        "gauge" => r.field(&mut gauge, name, GaugeValue::read),
        "sketch" => r.field(&mut sketch, name, Sketch::read),
        _ => Ok(false),
    })?;
    let value = match (total, monotonic, gauge, sketch) {
        (Some(total), Some(monotonic), None, None) => Value::Counter { total, monotonic },
        (None, None, Some(g), None) => Value::Gauge(g),
        (None, None, None, Some(s)) => Value::Distribution(s),
        _ => return Err(r.error("a series needs exactly one value")),
    };
    let key = required(r, key, "Series", "key")?;
    let series = Series {
        start_ms: required(r, start, "Series", "start")?,
        updated_ms: required(r, updated, "Series", "updated")?,
        value,
    };
    Ok(((series.value.kind(), key), series))
}

impl FromCbor for StateBody {
    fn read(r: &mut Reader<'_>) -> cbor::Result<Self> {
        let (mut app, mut env, mut segments, mut series) = (None, None, None, None);
        r.fields(|r, name| match name {
            "app" => r.field(&mut app, name, Reader::string),
            "env" => r.field(&mut env, name, Reader::string),
            "segments" => r.field(&mut segments, name, |r| {
                r.vec_at_most(MAX_REMEMBERED_SEGMENTS, Reader::string)
            }),
            "series" => r.field(&mut series, name, |r| {
                r.vec_at_most(MAX_SERIES, read_record)
            }),
            _ => Ok(false),
        })?;
        let mut state = State::new(
            &required(r, app, "State", "app")?,
            &required(r, env, "State", "env")?,
        );
        state.segments = required(r, segments, "State", "segments")?;
        state.series = SeriesMap::from_unsorted(required(r, series, "State", "series")?)
            .ok_or_else(|| r.error("a series appears twice"))?;
        Ok(StateBody(state))
    }
}

/// Writes `bytes` and flushes them to the disk (a full disk fails here).
fn write_synced(file: &mut fs::File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes)?;
    crate::test_knobs::kill_at("temp-written");
    file.sync_data()
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed.
fn write_atomically(workdir: &WorkDir, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".cumulative-{}-{}.tmp",
        std::process::id(),
        crate::ids::random_hex(8)
    ));
    let mut file = workdir.open_file(&tmp, OpenOptions::new().write(true).create_new(true))?;
    if let Err(e) = write_synced(&mut file, bytes) {
        drop(file);
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    crate::test_knobs::kill_at("temp-synced");
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow!("cannot rename {} to {}: {e}", tmp.display(), path.display())
    })?;
    crate::test_knobs::kill_at("renamed");
    Ok(())
}

fn read_bounded(workdir: &WorkDir, path: &Path) -> Result<Vec<u8>> {
    let file = workdir.open_file(path, OpenOptions::new().read(true))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + HEADER_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES + HEADER_BYTES as u64 {
        bail!("larger than {MAX_FILE_BYTES} bytes");
    }
    Ok(bytes)
}

fn state_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(name, _)| {
            (name.starts_with("cumulative-") && name.ends_with(".state"))
                || (name.starts_with(".cumulative-") && name.ends_with(".tmp"))
        })
        .collect();
    crate::sort::sort_by(&mut out, |a, b| a.0.cmp(&b.0));
    out
}

impl Cumulative {
    /// Reads every state file in the working directory (a new leader, before it serves). Returns
    /// the states and, for each file that could not be used, why (to log; that state starts
    /// empty, and its file is replaced at the next save). Leftover temporary files of a leader
    /// killed mid-write are removed.
    pub fn load(
        workdir: &WorkDir,
        expiry: std::time::Duration,
    ) -> (Cumulative, Vec<anyhow::Error>) {
        let mut out = Cumulative::new(expiry);
        let mut errors = Vec::new();
        for (name, path) in state_files(workdir.path()) {
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let loaded = read_bounded(workdir, &path)
                .and_then(|bytes| decode(&bytes))
                .and_then(|state| {
                    if file_name(&state.app, &state.env) != name {
                        bail!("holds the state of another app or environment");
                    }
                    if out.states.len() >= MAX_STATES {
                        bail!("more than {MAX_STATES} state files");
                    }
                    Ok(state)
                });
            match loaded {
                Ok(state) => out.insert(state),
                Err(e) => errors.push(e.context(format!(
                    "cumulative state {} unusable; rebuilt from the journal",
                    path.display()
                ))),
            }
        }
        (out, errors)
    }

    /// Writes every changed state to its file (the commit point, see the module doc); a state left
    /// with no series and no segment is forgotten and its file removed. On an error the states
    /// not written stay changed, and the next call tries again.
    pub fn save(&mut self, workdir: &WorkDir, now_ms: u64) -> Result<()> {
        let mut first_error = None;
        for state in self.states.iter_mut().filter(|s| s.dirty) {
            let path = workdir.path().join(file_name(&state.app, &state.env));
            if state.series.is_empty() && state.segments.is_empty() {
                match fs::remove_file(&path) {
                    Ok(()) => state.dirty = false,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => state.dirty = false,
                    Err(e) => {
                        first_error.get_or_insert(anyhow!("cannot remove {}: {e}", path.display()));
                    }
                }
                continue;
            }
            match encode(state, now_ms).and_then(|bytes| write_atomically(workdir, &path, &bytes)) {
                Ok(()) => state.dirty = false,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Forgotten: the states left empty whose file is gone.
        self.states
            .retain(|s| s.dirty || !s.series.is_empty() || !s.segments.is_empty());
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Added, WindowRef};
    use super::*;
    use crate::aggregate::MetricSet;
    use std::time::Duration;

    fn key(name: &str) -> MetricKey {
        MetricKey {
            name: name.into(),
            tags: vec![("region".into(), "eu".into())],
        }
    }

    fn sample() -> Cumulative {
        let mut m = MetricSet::default();
        m.counters.insert(key("c"), 3.0);
        m.gauges.insert(
            key("g"),
            GaugeValue {
                value: 1.5,
                at_ms: 7,
            },
        );
        let mut s = Sketch::new();
        s.add(1.0);
        s.add(300.0);
        m.distributions.insert(key("d"), s);
        let mut c = Cumulative::new(Duration::from_secs(3600));
        let w = WindowRef {
            app: "app",
            env: "prod",
            start_ms: 1000,
            metrics: &m,
        };
        assert_eq!(c.add_window(w, &"a".repeat(32), 2000), Added::Counted);
        c
    }

    fn same(a: &State, b: &State) {
        assert_eq!(
            (&a.app, &a.env, &a.series, &a.segments),
            (&b.app, &b.env, &b.series, &b.segments)
        );
        assert_eq!(a.bytes(), b.bytes());
    }

    /// The body as `serde_cbor`'s derive wrote it before the writer here.
    #[derive(serde::Serialize)]
    struct Body<'a> {
        app: &'a str,
        env: &'a str,
        saved_ms: u64,
        segments: &'a [String],
        series: Vec<Record<'a>>,
    }

    #[derive(serde::Serialize)]
    struct Record<'a> {
        key: &'a MetricKey,
        start: u64,
        updated: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        total: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        monotonic: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        gauge: Option<&'a GaugeValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sketch: Option<&'a Sketch>,
    }

    #[test]
    fn the_writer_writes_what_serde_cbor_wrote() {
        let mut c = sample();
        let mut m = MetricSet::default();
        m.counters.insert(key("negative"), -2.5e300);
        let mut s = Sketch::new();
        for v in [-3.0, 0.0, 1e-9, 70_000.0, 5e9] {
            s.add(v);
        }
        m.distributions.insert(key("wide"), s);
        let w = WindowRef {
            app: "app",
            env: "prod",
            start_ms: u64::from(u32::MAX) + 7,
            metrics: &m,
        };
        c.add_window(w, &"b".repeat(32), 300);
        let state = c.state("app", "prod").unwrap();
        let series = state
            .series
            .iter()
            .map(|((_, key), s)| {
                let (mut total, mut monotonic, mut gauge, mut sketch) = (None, None, None, None);
                match &s.value {
                    Value::Counter {
                        total: t,
                        monotonic: m,
                    } => {
                        (total, monotonic) = (Some(*t), Some(*m));
                    }
                    Value::Gauge(g) => gauge = Some(g),
                    Value::Distribution(d) => sketch = Some(d),
                }
                Record {
                    key,
                    start: s.start_ms,
                    updated: s.updated_ms,
                    total,
                    monotonic,
                    gauge,
                    sketch,
                }
            })
            .collect();
        let theirs = serde_cbor::value::to_value(Body {
            app: &state.app,
            env: &state.env,
            saved_ms: 70_000,
            segments: &state.segments,
            series,
        })
        .unwrap();
        let bytes = encode(state, 70_000).unwrap();
        let ours: serde_cbor::Value = serde_cbor::from_slice(&bytes[HEADER_BYTES..]).unwrap();
        assert_eq!(ours, theirs);
        same(&decode(&bytes).unwrap(), state);
    }

    fn workdir() -> (tempfile::TempDir, WorkDir) {
        let tmp = tempfile::tempdir().unwrap();
        let wd = WorkDir::prepare(&tmp.path().join("wd"), false).unwrap();
        (tmp, wd)
    }

    #[test]
    fn a_state_round_trips_through_its_file() {
        let c = sample();
        let state = c.state("app", "prod").unwrap();
        let bytes = encode(state, 5).unwrap();
        same(&decode(&bytes).unwrap(), state);

        let (_tmp, wd) = workdir();
        let mut c = c;
        c.save(&wd, 5).unwrap();
        let path = wd.path().join(file_name("app", "prod"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (back, errors) = Cumulative::load(&wd, Duration::from_secs(3600));
        assert!(errors.is_empty(), "{errors:?}");
        same(
            back.state("app", "prod").unwrap(),
            c.state("app", "prod").unwrap(),
        );
        assert!(back.includes(&"a".repeat(32)));
    }

    #[test]
    fn torn_flipped_foreign_and_oversized_files_are_refused() {
        let state = sample().state("app", "prod").unwrap().clone();
        let bytes = encode(&state, 5).unwrap();
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).unwrap_err().to_string();
            assert!(
                err.contains("torn") || err.contains("not a cumulative"),
                "{len}: {err}"
            );
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode(&flipped).is_err(), "flipped byte {at} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).unwrap_err().to_string().contains("after"));
        assert!(decode(b"#!/bin/sh\necho hello, this is not ours at all\n")
            .unwrap_err()
            .to_string()
            .contains("not a cumulative"));
        let mut version = bytes.clone();
        version[8] = 2;
        assert!(decode(&version)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        let mut huge = bytes.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge).unwrap_err().to_string().contains("more than"));
        // A body with a valid checksum but no valid state (another writer, another version).
        let body = serde_cbor::to_vec(&("app", 1)).unwrap();
        let mut forged = bytes[..12].to_vec();
        forged.extend_from_slice(&(body.len() as u64).to_le_bytes());
        forged.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &body).as_ref());
        forged.extend_from_slice(&body);
        assert!(decode(&forged)
            .unwrap_err()
            .to_string()
            .contains("invalid body"));
    }

    #[test]
    fn unusable_files_are_reported_and_that_state_starts_empty() {
        let (_tmp, wd) = workdir();
        sample().save(&wd, 5).unwrap();
        let good = wd.path().join(file_name("app", "prod"));
        let bytes = fs::read(&good).unwrap();
        // Torn (a kill cannot do this with the rename, a foreign writer can), under another name
        // (copied from another app), and a leftover temporary file.
        fs::write(&good, &bytes[..bytes.len() / 2]).unwrap();
        fs::write(wd.path().join(file_name("other", "prod")), &bytes).unwrap();
        fs::write(wd.path().join(".cumulative-1-x.tmp"), b"partial").unwrap();
        let (back, errors) = Cumulative::load(&wd, Duration::from_secs(3600));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(back.states().next().is_none());
        assert!(!wd.path().join(".cumulative-1-x.tmp").exists());
        // The next save replaces the torn file.
        let mut again = sample();
        again.save(&wd, 6).unwrap();
        assert_eq!(Cumulative::load(&wd, Duration::from_secs(3600)).1.len(), 1);
        // A link planted at the name is not followed.
        fs::remove_file(&good).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &good).unwrap();
        let (_, errors) = Cumulative::load(&wd, Duration::from_secs(3600));
        assert!(
            errors
                .iter()
                .any(|e| format!("{e:#}").contains("symbolic link")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_failed_write_keeps_the_state_changed_and_leaves_no_file() {
        // A full disk: the write through the same path as `save` fails.
        let mut full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        assert!(write_synced(&mut full, &[0u8; 65536]).is_err());
        // A working directory deleted under the leader: save fails, retries later.
        let (tmp, wd) = workdir();
        let mut c = sample();
        fs::remove_dir_all(tmp.path().join("wd")).unwrap();
        assert!(c.save(&wd, 5).is_err());
        assert!(c.state("app", "prod").unwrap().dirty);
        fs::create_dir(tmp.path().join("wd")).unwrap();
        c.save(&wd, 6).unwrap();
        assert!(!c.state("app", "prod").unwrap().dirty);
        let names: Vec<String> = fs::read_dir(wd.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![file_name("app", "prod")]);
    }

    #[test]
    fn an_emptied_state_removes_its_file() {
        let (_tmp, wd) = workdir();
        let mut c = sample();
        c.save(&wd, 5).unwrap();
        c.segment_done(&"a".repeat(32));
        c.expire(2000 + 3_600_000);
        c.save(&wd, 6).unwrap();
        assert!(c.states().next().is_none());
        assert!(!wd.path().join(file_name("app", "prod")).exists());
    }

    /// The leader's order (module doc of `cumulative`), cut at every step of one window's commit,
    /// with its payload still cached or already sent: the next leader's replay ends with every
    /// window counted exactly once.
    #[test]
    fn a_leader_killed_at_any_step_of_the_commit_counts_every_window_once() {
        use std::collections::{BTreeMap, BTreeSet};
        let window = |n: f64| {
            let mut m = MetricSet::default();
            m.counters.insert(key("c"), n);
            m
        };
        let add = |c: &mut Cumulative, id: &str, m: &MetricSet| {
            c.add_window(
                WindowRef {
                    app: "app",
                    env: "prod",
                    start_ms: 0,
                    metrics: m,
                },
                id,
                1,
            )
        };
        for crash_after in 0..4 {
            for sent in [false, true] {
                let (_tmp, wd) = workdir();
                let mut c = Cumulative::new(Duration::from_secs(3600));
                let mut segments: BTreeMap<String, MetricSet> = BTreeMap::new();
                let mut payloads: BTreeSet<String> = BTreeSet::new();
                for i in 0..3u8 {
                    let id = format!("{i:032x}");
                    let m = window(f64::from(i) + 1.0);
                    segments.insert(id.clone(), m.clone());
                    // The last window's commit is cut after `crash_after` steps.
                    let steps = if i == 2 { crash_after } else { 4 };
                    if steps > 0 {
                        payloads.insert(id.clone());
                        if sent {
                            payloads.remove(&id);
                        }
                    }
                    if steps > 1 {
                        add(&mut c, &id, &m);
                    }
                    if steps > 2 {
                        c.save(&wd, 1).unwrap();
                    }
                    if steps > 3 {
                        segments.remove(&id);
                        c.segment_done(&id);
                    }
                }
                drop(c);
                // The next leader.
                let (mut c, errors) = Cumulative::load(&wd, Duration::from_secs(3600));
                assert!(errors.is_empty());
                let mut adopted = Vec::new();
                for (id, m) in std::mem::take(&mut segments) {
                    if c.includes(&id) {
                        c.segment_done(&id);
                    } else if payloads.contains(&id) {
                        assert_eq!(add(&mut c, &id, &m), Added::Counted);
                        c.save(&wd, 2).unwrap();
                        c.segment_done(&id);
                    } else {
                        adopted.push((id, m));
                    }
                }
                // Adopted segments are counted when their windows close.
                for (id, m) in adopted {
                    assert_eq!(add(&mut c, &id, &m), Added::Counted);
                    c.save(&wd, 3).unwrap();
                    c.segment_done(&id);
                }
                let state = c.state("app", "prod").unwrap();
                assert_eq!(
                    state.series[&(Kind::Counter, key("c"))].value,
                    Value::Counter {
                        total: 6.0,
                        monotonic: true
                    },
                    "killed after step {crash_after}, payload sent: {sent}"
                );
            }
        }
    }
}
