//! Reading source files panic-free and warning about failing sources once.
//!
//! Owns: the capped, lossy file reader every collector uses, the [`Failure`] classification
//! (missing / permission denied / other I/O / unparsable) and the [`Warner`] that logs one
//! `tracing::warn!` line per source and failure kind for the lifetime of a collector.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

/// Files bigger than this are truncated while reading. Real `/proc` files stay far below it
/// (`/proc/stat` on a 1000-CPU machine is a few hundred KiB); it bounds memory use on odd input.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Why a source could not be used. Part of the "warn once" key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FailureKind {
    /// The file does not exist.
    Missing,
    /// The file exists but may not be read.
    PermissionDenied,
    /// Any other I/O error (including errors returned by `statvfs`).
    Io,
    /// The content is empty, garbage, or lacks the fields we need.
    Parse,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Missing => "missing",
            FailureKind::PermissionDenied => "permission denied",
            FailureKind::Io => "I/O error",
            FailureKind::Parse => "unparsable content",
        })
    }
}

/// A failed source read or parse.
#[derive(Debug)]
pub(crate) struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl Failure {
    pub(crate) fn parse(detail: impl fmt::Display) -> Self {
        Failure {
            kind: FailureKind::Parse,
            detail: format!("{detail:#}"),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::NotFound => FailureKind::Missing,
            io::ErrorKind::PermissionDenied => FailureKind::PermissionDenied,
            _ => FailureKind::Io,
        };
        Failure {
            kind,
            detail: err.to_string(),
        }
    }
}

/// Reads a whole text file (at most [`MAX_FILE_BYTES`]), replacing invalid UTF-8.
/// An empty file is a [`FailureKind::Parse`] failure: no source we read is legitimately empty.
/// Increases of two counters per key since the previous reading, sorted by key (a stable output
/// order). Keys that are new since the previous reading have no interval yet, and a counter that
/// went backwards (device or interface re-created, 32-bit wrap) is skipped once: both are left out.
pub(crate) fn counter_deltas<'a, V>(
    previous: &HashMap<String, V>,
    current: &'a HashMap<String, V>,
    counters: impl Fn(&V) -> (u64, u64),
) -> Vec<(&'a str, u64, u64)> {
    let mut deltas: Vec<(&str, u64, u64)> = current
        .iter()
        .filter_map(|(key, now)| {
            let (now_a, now_b) = counters(now);
            let (before_a, before_b) = counters(previous.get(key)?);
            Some((
                key.as_str(),
                now_a.checked_sub(before_a)?,
                now_b.checked_sub(before_b)?,
            ))
        })
        .collect();
    crate::sort::sort_by(&mut deltas, |x, y| x.0.cmp(y.0));
    deltas
}

pub(crate) fn read_text(path: &Path) -> Result<String, Failure> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES).read_to_end(&mut bytes)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::parse("file is empty"));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

/// Like [`read_text`] but a missing file is not a failure (`Ok(None)`): used for optional
/// sources such as cgroup files that only exist inside a limited cgroup.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, Failure> {
    match read_text(path) {
        Ok(text) => Ok(Some(text)),
        Err(Failure {
            kind: FailureKind::Missing,
            ..
        }) => Ok(None),
        Err(failure) => Err(failure),
    }
}

/// Logs one warning per (source, failure kind) and stays quiet on repeats.
#[derive(Debug, Default)]
pub(crate) struct Warner {
    seen: HashSet<(String, FailureKind)>,
    #[cfg(test)]
    emitted: usize,
}

impl Warner {
    /// Reports a failing source; only the first failure of each kind per source is logged.
    pub(crate) fn report(&mut self, source: &str, failure: &Failure) {
        if self.seen.contains(&(source.to_owned(), failure.kind)) {
            return;
        }
        self.seen.insert((source.to_owned(), failure.kind));
        #[cfg(test)]
        {
            self.emitted += 1;
        }
        tracing::warn!(
            source,
            kind = %failure.kind,
            error = %failure.detail,
            "host metrics: source unavailable, its metrics are left out (not repeated)"
        );
    }

    /// Convenience for path-named sources.
    pub(crate) fn report_path(&mut self, path: &Path, failure: &Failure) {
        self.report(&path.to_string_lossy(), failure);
    }

    /// Sources that were warned about, with the failure kind, sorted.
    #[cfg(test)]
    pub(crate) fn warned(&self) -> Vec<(String, FailureKind)> {
        let mut all: Vec<_> = self.seen.iter().cloned().collect();
        crate::sort::sort_by(&mut all, |a, b| (&a.0, a.1 as u8).cmp(&(&b.0, b.1 as u8)));
        all
    }

    /// Number of warnings logged so far.
    #[cfg(test)]
    pub(crate) fn emitted(&self) -> usize {
        self.emitted
    }
}
