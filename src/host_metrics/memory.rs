//! Host memory and swap from `/proc/meminfo`.
//!
//! Owns the `memory{state}` and `swap{state}` metrics, in bytes. Each field is optional: a
//! missing field leaves out only the gauges computed from it.
//!
//! Parsed here rather than with `procfs::Meminfo`, which requires ~20 fields we don't use
//! (`Dirty`, `VmallocChunk`, `Committed_AS`, ...) and fails the whole file on one odd line;
//! kernels in gVisor, WSL1 or old distributions leave some of them out.

use std::path::Path;

use anyhow::bail;

use super::source::{read_text, Failure, Warner};
use super::Emitter;

/// The `/proc/meminfo` fields we use, in bytes.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct MemInfo {
    pub total: Option<u64>,
    pub free: Option<u64>,
    pub available: Option<u64>,
    pub buffers: Option<u64>,
    pub cached: Option<u64>,
    pub swap_total: Option<u64>,
    pub swap_free: Option<u64>,
}

/// Emits `memory{state}` and `swap{state}` gauges.
pub(crate) fn collect(path: &Path, warner: &mut Warner, out: &mut Emitter<'_>) {
    let info = match read_text(path).and_then(|t| parse(&t).map_err(Failure::parse)) {
        Ok(info) => info,
        Err(failure) => {
            warner.report_path(path, &failure);
            return;
        }
    };
    let mut put = |name: &str, state: &str, value: Option<u64>| {
        if let Some(v) = value {
            out.push(name, &[("state", state)], v as f64);
        }
    };
    put("memory", "total", info.total);
    put("memory", "used", info.used());
    put("memory", "free", info.free);
    put("memory", "available", info.available);
    put("memory", "buffers", info.buffers);
    put("memory", "cached", info.cached);
    put("swap", "total", info.swap_total);
    put(
        "swap",
        "used",
        info.swap_total
            .zip(info.swap_free)
            .map(|(t, f)| t.saturating_sub(f)),
    );
}

impl MemInfo {
    /// `total - available` (as `free(1)` does); on kernels without `MemAvailable` (< 3.14)
    /// `total - free - buffers - cached`.
    fn used(&self) -> Option<u64> {
        let total = self.total?;
        match self.available {
            Some(available) => Some(total.saturating_sub(available)),
            None => Some(
                total
                    .saturating_sub(self.free?)
                    .saturating_sub(self.buffers?)
                    .saturating_sub(self.cached?),
            ),
        }
    }
}

/// Parses `Key:   123 kB` lines; unknown keys and malformed lines are skipped.
/// Fails only when none of the fields we use is present.
pub(crate) fn parse(text: &str) -> anyhow::Result<MemInfo> {
    let mut info = MemInfo::default();
    let mut found = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key.trim() {
            "MemTotal" => &mut info.total,
            "MemFree" => &mut info.free,
            "MemAvailable" => &mut info.available,
            "Buffers" => &mut info.buffers,
            "Cached" => &mut info.cached,
            "SwapTotal" => &mut info.swap_total,
            "SwapFree" => &mut info.swap_free,
            _ => continue,
        };
        let mut parts = rest.split_ascii_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            None => value,
            Some(_) => continue,
        };
        *slot = Some(bytes);
        found = true;
    }
    if !found {
        bail!(
            "none of MemTotal, MemFree, MemAvailable, Buffers, Cached, SwapTotal, SwapFree found"
        );
    }
    Ok(info)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_and_skips_bad_lines() {
        let m =
            parse("MemTotal: 100 kB\nMemFree: x kB\ngarbage\nCached:  7 kB\nBuffers: 3\n").unwrap();
        assert_eq!(m.total, Some(102_400));
        assert_eq!(m.free, None);
        assert_eq!(m.cached, Some(7 * 1024));
        assert_eq!(m.buffers, Some(3));
        assert_eq!(m.used(), None);
        assert!(parse("Foo: 1 kB\n").is_err());
    }

    #[test]
    fn used_prefers_available() {
        let m = MemInfo {
            total: Some(100),
            free: Some(10),
            available: Some(60),
            buffers: Some(5),
            cached: Some(20),
            ..MemInfo::default()
        };
        assert_eq!(m.used(), Some(40));
        let old = MemInfo {
            available: None,
            ..m
        };
        assert_eq!(old.used(), Some(65));
    }
}
