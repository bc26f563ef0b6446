//! Host metrics for the leader process: CPU, load, memory, cgroup limits, disk and network.
//!
//! Owns the public interface ([`HostGauge`], [`HostMetricsCollector`]), the source paths and
//! the order in which the per-area collectors run. Metric names, tags and units are listed in
//! `docs/host-metrics.md`. Every source fails on its own: a missing or odd file leaves out only
//! the metrics read from it and is logged once (see `source::Warner`).
//!
//! Everything but the load average is read from `/proc` and `/sys/fs/cgroup`, so only Linux has
//! it. Elsewhere (macOS) the collector has the same interface and reports the load average alone,
//! from `getloadavg(3)` (`load_average.rs`).

#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(target_os = "linux")]
mod cpu;
#[cfg(target_os = "linux")]
mod disk_io;
#[cfg(target_os = "linux")]
mod disk_usage;
#[cfg(not(target_os = "linux"))]
mod load_average;
#[cfg(target_os = "linux")]
mod memory;
#[cfg(target_os = "linux")]
mod network;
#[cfg(target_os = "linux")]
mod source;

#[cfg(all(test, target_os = "linux"))]
mod tests;

#[cfg(not(target_os = "linux"))]
pub use load_average::HostMetricsCollector;

#[cfg(target_os = "linux")]
use std::path::PathBuf;

/// One host metric reading: a gauge.
#[derive(Debug, Clone, PartialEq)]
pub struct HostGauge {
    pub name: String,
    pub tags: Vec<(String, String)>,
    pub value: f64,
}

/// Collects host metrics from `/proc` and the cgroup file system.
///
/// Keeps the previous CPU, disk I/O and network counters so that the second and later calls to
/// [`collect`](Self::collect) can report values over the interval between calls.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct HostMetricsCollector {
    hostname: String,
    paths: Paths,
    cpu: cpu::CpuState,
    disk_io: disk_io::DiskIoState,
    network: network::NetworkState,
    warner: source::Warner,
}

/// Every file or directory read, resolved once at construction.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Paths {
    stat: PathBuf,
    loadavg: PathBuf,
    meminfo: PathBuf,
    diskstats: PathBuf,
    net_dev: PathBuf,
    mountinfo: PathBuf,
    cgroup_root: PathBuf,
}

#[cfg(target_os = "linux")]
impl HostMetricsCollector {
    /// Real system: procfs root "/proc", cgroup root "/sys/fs/cgroup".
    pub fn new(hostname: String) -> Self {
        Self::with_roots(
            hostname,
            PathBuf::from("/proc"),
            PathBuf::from("/sys/fs/cgroup"),
        )
    }

    /// For tests: custom roots (fixture directories).
    pub fn with_roots(hostname: String, proc_root: PathBuf, cgroup_root: PathBuf) -> Self {
        let paths = Paths {
            stat: proc_root.join("stat"),
            loadavg: proc_root.join("loadavg"),
            meminfo: proc_root.join("meminfo"),
            diskstats: proc_root.join("diskstats"),
            net_dev: proc_root.join("net").join("dev"),
            mountinfo: proc_root.join("self").join("mountinfo"),
            cgroup_root,
        };
        HostMetricsCollector {
            hostname,
            paths,
            cpu: cpu::CpuState::default(),
            disk_io: disk_io::DiskIoState::default(),
            network: network::NetworkState::default(),
            warner: source::Warner::default(),
        }
    }

    /// Reads every source once. Metrics needing two readings (CPU %, disk/net bytes per interval)
    /// are left out on the first call and emitted from the second call on, as deltas over the
    /// interval between calls.
    ///
    /// Never panics; a failing source (missing file, permission denied, odd content) leaves only
    /// its metrics out and logs one `tracing::warn!` line per source per failure kind.
    pub fn collect(&mut self) -> Vec<HostGauge> {
        let mut out = Emitter {
            hostname: &self.hostname,
            gauges: Vec::with_capacity(64),
        };
        let w = &mut self.warner;
        let p = &self.paths;
        self.cpu.collect(&p.stat, w, &mut out);
        cpu::collect_load(&p.loadavg, w, &mut out);
        memory::collect(&p.meminfo, w, &mut out);
        cgroup::collect(&p.cgroup_root, w, &mut out);
        disk_usage::collect(&p.mountinfo, w, &mut out);
        self.disk_io.collect(&p.diskstats, w, &mut out);
        self.network.collect(&p.net_dev, w, &mut out);
        out.gauges
    }

    /// Number of warnings logged so far (test hook for the "warn once" rule).
    #[cfg(test)]
    fn warnings_emitted(&self) -> usize {
        self.warner.emitted()
    }

    /// Sources warned about, as `(source, kind)` (test hook).
    #[cfg(test)]
    fn warned(&self) -> Vec<(String, source::FailureKind)> {
        self.warner.warned()
    }
}

/// Builds gauges carrying the hostname tag.
pub(crate) struct Emitter<'a> {
    hostname: &'a str,
    gauges: Vec<HostGauge>,
}

impl Emitter<'_> {
    /// Adds a gauge with `("hostname", ..)` followed by `tags`. Non-finite values are dropped.
    pub(crate) fn push(&mut self, name: &str, tags: &[(&str, &str)], value: f64) {
        if !value.is_finite() {
            return;
        }
        let mut all = Vec::with_capacity(tags.len() + 1);
        all.push(("hostname".to_owned(), self.hostname.to_owned()));
        all.extend(tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self.gauges.push(HostGauge {
            name: name.to_owned(),
            tags: all,
            value,
        });
    }
}
