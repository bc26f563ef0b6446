//! CPU usage per state (from `/proc/stat`) and load average (from `/proc/loadavg`).
//!
//! Owns the `cpu` and `load_average` metrics. CPU usage needs two readings: the first call only
//! stores the aggregate `cpu ` line's tick counters.
//!
//! `/proc/stat` is parsed here rather than with `procfs::KernelStats`: that type requires lines we
//! don't use (`ctxt`, `btime`, `processes`) and parses every per-CPU line, so one odd line elsewhere
//! in the file would drop CPU usage; the aggregate line is all we need. `/proc/loadavg` uses
//! `procfs::LoadAverage`.

use std::path::Path;

use anyhow::{bail, Context};
use procfs::FromRead;

use super::source::{read_text, Failure, Warner};
use super::Emitter;

/// The states of the aggregate `cpu` line, in kernel order. `guest` and `guest_nice` follow in
/// the file but are already included in `user` and `nice`, so they are not read.
const STATES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// Tick counters of the aggregate `cpu` line; older kernels lack the later states.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CpuTimes([Option<u64>; 8]);

/// Previous CPU reading.
#[derive(Debug, Default)]
pub(crate) struct CpuState {
    prev: Option<CpuTimes>,
}

impl CpuState {
    /// Emits `cpu{state}` percentages of the interval since the previous call.
    pub(crate) fn collect(&mut self, path: &Path, warner: &mut Warner, out: &mut Emitter<'_>) {
        let current = match read_text(path).and_then(|t| parse_stat(&t).map_err(Failure::parse)) {
            Ok(current) => current,
            Err(failure) => {
                warner.report_path(path, &failure);
                self.prev = None;
                return;
            }
        };
        let Some(prev) = self.prev.take() else {
            self.prev = Some(current);
            return;
        };
        match percentages(&prev, &current) {
            Some(shares) => {
                for (state, pct) in shares {
                    out.push("cpu", &[("state", state)], pct);
                }
                self.prev = Some(current);
            }
            // No tick elapsed (calls too close together): keep the older reading so the next
            // call covers a measurable interval.
            None => self.prev = Some(prev),
        }
    }
}

/// Parses the aggregate `cpu ` line of `/proc/stat`.
pub(crate) fn parse_stat(text: &str) -> anyhow::Result<CpuTimes> {
    let line = text
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("no aggregate `cpu ` line")?;
    let mut values = [None; 8];
    let mut found = 0;
    for (slot, field) in values.iter_mut().zip(line.split_ascii_whitespace().skip(1)) {
        let ticks = field
            .parse::<u64>()
            .with_context(|| format!("cpu field {field:?} is not a tick count"))?;
        *slot = Some(ticks);
        found += 1;
    }
    if found < 4 {
        bail!("aggregate cpu line has {found} fields, need at least 4");
    }
    Ok(CpuTimes(values))
}

/// Share of each state in the ticks elapsed between `prev` and `cur`, in percent (sums to 100).
/// `None` when no tick elapsed. A counter that went backwards (seen for `iowait`) counts as 0.
fn percentages(prev: &CpuTimes, cur: &CpuTimes) -> Option<Vec<(&'static str, f64)>> {
    let deltas: Vec<(&'static str, u64)> = STATES
        .iter()
        .zip(prev.0.iter().zip(cur.0.iter()))
        .filter_map(|(state, pair)| match pair {
            (Some(p), Some(c)) => Some((*state, c.saturating_sub(*p))),
            _ => None,
        })
        .collect();
    let total = deltas
        .iter()
        .fold(0u64, |acc, (_, d)| acc.saturating_add(*d));
    if total == 0 {
        return None;
    }
    let total = total as f64;
    Some(
        deltas
            .into_iter()
            .map(|(state, d)| (state, d as f64 * 100.0 / total))
            .collect(),
    )
}

/// Emits `load_average{window="1"|"5"|"15"}`.
pub(crate) fn collect_load(path: &Path, warner: &mut Warner, out: &mut Emitter<'_>) {
    let parsed = read_text(path).and_then(|text| {
        procfs::LoadAverage::from_read(text.as_bytes()).map_err(|e| Failure::parse(&e))
    });
    match parsed {
        Ok(load) => {
            for (window, value) in [("1", load.one), ("5", load.five), ("15", load.fifteen)] {
                // procfs parses into f32; the kernel prints two decimals, so round back to them.
                let value = (f64::from(value) * 100.0).round() / 100.0;
                if value >= 0.0 {
                    out.push("load_average", &[("window", window)], value);
                }
            }
        }
        Err(failure) => warner.report_path(path, &failure),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_old_kernel_line_with_four_fields() {
        let t = parse_stat("cpu  1 2 3 4\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(t.0[..4], [Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!(t.0[4..], [None; 4]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_stat("cpu  a b c d").is_err());
        assert!(parse_stat("cpu  1 2 3").is_err());
        assert!(parse_stat("intr 1 2 3").is_err());
        assert!(parse_stat("").is_err());
    }

    #[test]
    fn percentages_sum_to_100_and_tolerate_backwards_counters() {
        let a = CpuTimes([
            Some(100),
            Some(0),
            Some(50),
            Some(1000),
            Some(10),
            Some(0),
            Some(0),
            Some(0),
        ]);
        let b = CpuTimes([
            Some(150),
            Some(0),
            Some(75),
            Some(1100),
            Some(5),
            Some(0),
            Some(0),
            Some(0),
        ]);
        let p = percentages(&a, &b).unwrap();
        let sum: f64 = p.iter().map(|(_, v)| v).sum();
        assert!((sum - 100.0).abs() < 1e-9);
        assert_eq!(p[0], ("user", 50.0 * 100.0 / 175.0));
        assert_eq!(p[4], ("iowait", 0.0));
        assert!(percentages(&a, &a).is_none());
    }
}
