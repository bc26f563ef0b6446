//! Container limits and usage from the cgroup file system (v1 and v2).
//!
//! Owns `cgroup_memory_limit`, `cgroup_memory_usage` (bytes) and `cgroup_cpu_limit` (cores).
//! v2 is detected by `cgroup.controllers` at the cgroup root; otherwise the v1 layout
//! (`memory/`, `cpu/` controller directories) is read. A missing root or missing file is normal
//! (no cgroup mounted, root cgroup without limits) and is silently left out; unreadable or
//! unparsable files are warned about once.

use std::path::Path;

use anyhow::{bail, Context};

use super::source::{read_optional, Failure, Warner};
use super::Emitter;

/// cgroup v1 reports "no memory limit" as a huge page-aligned number close to `i64::MAX`
/// (e.g. 9223372036854771712). Anything at or above 2^62 bytes (4 EiB) is treated as unlimited.
const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// Emits the cgroup gauges found under `root`.
pub(crate) fn collect(root: &Path, warner: &mut Warner, out: &mut Emitter<'_>) {
    if !root.is_dir() {
        return;
    }
    if root.join("cgroup.controllers").exists() {
        collect_v2(root, warner, out);
    } else {
        collect_v1(root, warner, out);
    }
}

fn collect_v2(root: &Path, warner: &mut Warner, out: &mut Emitter<'_>) {
    if let Some(limit) = read_value(&root.join("memory.max"), parse_v2_max, warner).flatten() {
        out.push("cgroup_memory_limit", &[], limit as f64);
    }
    if let Some(usage) = read_value(&root.join("memory.current"), parse_u64, warner) {
        out.push("cgroup_memory_usage", &[], usage as f64);
    }
    if let Some(cores) = read_value(&root.join("cpu.max"), parse_v2_cpu_max, warner).flatten() {
        out.push("cgroup_cpu_limit", &[], cores);
    }
}

fn collect_v1(root: &Path, warner: &mut Warner, out: &mut Emitter<'_>) {
    let memory = root.join("memory");
    let limit = read_value(&memory.join("memory.limit_in_bytes"), parse_u64, warner);
    if let Some(limit) = limit.filter(|l| *l < V1_UNLIMITED_THRESHOLD) {
        out.push("cgroup_memory_limit", &[], limit as f64);
    }
    if let Some(usage) = read_value(&memory.join("memory.usage_in_bytes"), parse_u64, warner) {
        out.push("cgroup_memory_usage", &[], usage as f64);
    }
    let cpu = root.join("cpu");
    let quota = read_value(&cpu.join("cpu.cfs_quota_us"), parse_i64, warner);
    // Only read the period when there is a quota: it is meaningless otherwise.
    if let Some(quota) = quota.filter(|q| *q > 0) {
        let period = read_value(&cpu.join("cpu.cfs_period_us"), parse_i64, warner);
        if let Some(period) = period.filter(|p| *p > 0) {
            out.push("cgroup_cpu_limit", &[], quota as f64 / period as f64);
        }
    }
}

/// Reads and parses one single-value file. `None` when the file is missing (silently) or
/// fails (warned once).
fn read_value<T>(
    path: &Path,
    parse: fn(&str) -> anyhow::Result<T>,
    warner: &mut Warner,
) -> Option<T> {
    match read_optional(path)
        .and_then(|text| text.map(|t| parse(&t)).transpose().map_err(Failure::parse))
    {
        Ok(value) => value,
        Err(failure) => {
            warner.report_path(path, &failure);
            None
        }
    }
}

fn parse_u64(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    text.parse()
        .with_context(|| format!("{text:?} is not an unsigned integer"))
}

fn parse_i64(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    text.parse()
        .with_context(|| format!("{text:?} is not an integer"))
}

/// v2 `memory.max`: a byte count, or `max` for no limit (`None`).
fn parse_v2_max(text: &str) -> anyhow::Result<Option<u64>> {
    match text.trim() {
        "max" => Ok(None),
        other => parse_u64(other).map(Some),
    }
}

/// v2 `cpu.max`: `"$QUOTA $PERIOD"` in µs, `$QUOTA` may be `max` (no limit: `None`).
/// The period may be omitted when writing the file but the kernel always prints it.
fn parse_v2_cpu_max(text: &str) -> anyhow::Result<Option<f64>> {
    let mut fields = text.split_ascii_whitespace();
    let quota = fields.next().context("cpu.max is empty")?;
    let period = fields.next().context("cpu.max has no period")?;
    if fields.next().is_some() {
        bail!("cpu.max has more than two fields");
    }
    let period = parse_u64(period)?;
    if quota == "max" {
        return Ok(None);
    }
    let quota = parse_u64(quota)?;
    if period == 0 {
        bail!("cpu.max period is 0");
    }
    Ok(Some(quota as f64 / period as f64))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn v2_values() {
        assert_eq!(parse_v2_max("max\n").unwrap(), None);
        assert_eq!(parse_v2_max("1048576\n").unwrap(), Some(1_048_576));
        assert!(parse_v2_max("lots").is_err());
        assert_eq!(parse_v2_cpu_max("max 100000\n").unwrap(), None);
        assert_eq!(parse_v2_cpu_max("50000 100000\n").unwrap(), Some(0.5));
        assert_eq!(parse_v2_cpu_max("250000 100000").unwrap(), Some(2.5));
        assert!(parse_v2_cpu_max("50000 0").is_err());
        assert!(parse_v2_cpu_max("50000").is_err());
        assert!(parse_v2_cpu_max("").is_err());
    }

    #[test]
    fn v1_values() {
        assert_eq!(parse_i64("-1\n").unwrap(), -1);
        assert_eq!(
            parse_u64("9223372036854771712\n").unwrap(),
            9_223_372_036_854_771_712
        );
        assert!(parse_u64("-1").is_err());
    }
}
