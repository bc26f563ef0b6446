//! Tests of the collector against fixture trees (`tests/fixtures/host_metrics/`) and the real
//! machine this runs on.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::source::FailureKind;
use super::{HostGauge, HostMetricsCollector};

const HOST: &str = "test-host";
const MIB: f64 = 1024.0 * 1024.0;

const KNOWN_NAMES: &[&str] = &[
    "cpu",
    "load_average",
    "memory",
    "swap",
    "cgroup_memory_limit",
    "cgroup_memory_usage",
    "cgroup_cpu_limit",
    "disk_space",
    "disk_usage",
    "disk_io_read",
    "disk_io_written",
    "network_rx",
    "network_tx",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/host_metrics")
        .join(name)
}

fn collector(proc_dir: &str, cgroup_dir: &str) -> HostMetricsCollector {
    HostMetricsCollector::with_roots(HOST.to_owned(), fixture(proc_dir), fixture(cgroup_dir))
}

/// The value of the gauge `name` whose own tags (after hostname) are exactly `tags`.
fn find(gauges: &[HostGauge], name: &str, tags: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = gauges
        .iter()
        .filter(|g| {
            g.name == name
                && g.tags.len() == tags.len() + 1
                && g.tags[1..]
                    .iter()
                    .zip(tags)
                    .all(|((k, v), (ek, ev))| k == ek && v == ev)
        })
        .map(|g| g.value)
        .collect();
    assert!(found.len() <= 1, "duplicate gauge {name} {tags:?}");
    found.first().copied()
}

fn names(gauges: &[HostGauge]) -> BTreeSet<&str> {
    gauges.iter().map(|g| g.name.as_str()).collect()
}

/// Values of tag `key` over gauges named `name`.
fn tag_values<'a>(gauges: &'a [HostGauge], name: &str, key: &str) -> BTreeSet<&'a str> {
    gauges
        .iter()
        .filter(|g| g.name == name)
        .flat_map(|g| g.tags.iter().filter(|(k, _)| k == key))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn assert_well_formed(gauges: &[HostGauge], host: &str) {
    for g in gauges {
        assert!(KNOWN_NAMES.contains(&g.name.as_str()), "unknown {g:?}");
        assert_eq!(g.tags[0], ("hostname".to_owned(), host.to_owned()), "{g:?}");
        assert!(g.value.is_finite() && g.value >= 0.0, "{g:?}");
        if g.name == "cpu" || g.name == "disk_usage" {
            assert!(g.value <= 100.0, "{g:?}");
        }
        let expected_tags: &[&str] = match g.name.as_str() {
            "cpu" => &["state"],
            "load_average" => &["window"],
            "memory" | "swap" => &["state"],
            "disk_space" => &["mountpoint", "state"],
            "disk_usage" => &["mountpoint"],
            "disk_io_read" | "disk_io_written" => &["device"],
            "network_rx" | "network_tx" => &["interface"],
            _ => &[],
        };
        let keys: Vec<&str> = g.tags[1..].iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, expected_tags, "{g:?}");
    }
}

/// Sources warned about, file names relative to the fixture roots.
fn warned(c: &HostMetricsCollector) -> Vec<(String, FailureKind)> {
    let base = fixture("");
    c.warned()
        .into_iter()
        .map(|(source, kind)| (source.replace(&*base.to_string_lossy(), ""), kind))
        .collect()
}

/// A private copy of a fixture directory, removed on drop.
struct TempTree(PathBuf);

impl TempTree {
    fn copy_of(fixture_name: &str, test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("host-metrics-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        copy_dir(&fixture(fixture_name), &dir);
        TempTree(dir)
    }

    fn write(&self, file: &str, content: &str) {
        fs::write(self.0.join(file), content).unwrap();
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

#[test]
fn good_fixture_first_and_second_call() {
    let mut c = collector("proc_good", "cgroup_v2_limited");
    let first = c.collect();
    assert_well_formed(&first, HOST);
    let n = names(&first);
    for interval_metric in [
        "cpu",
        "disk_io_read",
        "disk_io_written",
        "network_rx",
        "network_tx",
    ] {
        assert!(
            !n.contains(interval_metric),
            "{interval_metric} on first call"
        );
    }
    assert_eq!(find(&first, "load_average", &[("window", "1")]), Some(0.52));
    assert_eq!(find(&first, "load_average", &[("window", "5")]), Some(0.58));
    assert_eq!(
        find(&first, "load_average", &[("window", "15")]),
        Some(0.59)
    );
    let kib = |k: f64| Some(k * 1024.0);
    let mem = |state| find(&first, "memory", &[("state", state)]);
    assert_eq!(mem("total"), kib(16_384_000.0));
    assert_eq!(mem("free"), kib(2_048_000.0));
    assert_eq!(mem("available"), kib(8_192_000.0));
    assert_eq!(mem("used"), kib(16_384_000.0 - 8_192_000.0));
    assert_eq!(mem("buffers"), kib(512_000.0));
    assert_eq!(mem("cached"), kib(4_096_000.0));
    assert_eq!(
        find(&first, "swap", &[("state", "total")]),
        kib(2_097_152.0)
    );
    assert_eq!(find(&first, "swap", &[("state", "used")]), kib(1_048_576.0));
    assert_eq!(
        find(&first, "cgroup_memory_limit", &[]),
        Some(1_073_741_824.0)
    );
    assert_eq!(find(&first, "cgroup_memory_usage", &[]), Some(52_428_800.0));
    assert_eq!(find(&first, "cgroup_cpu_limit", &[]), Some(0.5));
    // "/" is statvfs'ed for real; /etc/hosts is a bind mount of the same fs (254:0), NFS and
    // pseudo file systems are skipped, the nonexistent mount point fails statvfs.
    assert_eq!(
        tag_values(&first, "disk_usage", "mountpoint"),
        BTreeSet::from(["/"])
    );
    for state in ["total", "used", "free"] {
        assert!(find(
            &first,
            "disk_space",
            &[("mountpoint", "/"), ("state", state)]
        )
        .is_some());
    }
    assert_eq!(
        warned(&c),
        [(
            "statvfs(/nonexistent-host-metrics-fixture/data)".to_owned(),
            FailureKind::Missing
        )]
    );

    // Unchanged files: no CPU tick elapsed, so no CPU gauges; zero I/O and traffic.
    let second = c.collect();
    assert_well_formed(&second, HOST);
    assert!(!names(&second).contains("cpu"));
    assert_eq!(
        tag_values(&second, "disk_io_written", "device"),
        BTreeSet::from(["nvme0n1", "sda", "sda1"])
    );
    assert_eq!(
        find(&second, "disk_io_read", &[("device", "sda")]),
        Some(0.0)
    );
    assert_eq!(
        tag_values(&second, "network_rx", "interface"),
        BTreeSet::from(["docker0", "eth0"])
    );
    assert_eq!(
        find(&second, "network_tx", &[("interface", "eth0")]),
        Some(0.0)
    );
    assert_eq!(
        c.warnings_emitted(),
        1,
        "the statvfs warning is not repeated"
    );
}

#[test]
fn deltas_over_the_interval() {
    let tree = TempTree::copy_of("proc_good", "deltas");
    let mut c = HostMetricsCollector::with_roots(
        HOST.to_owned(),
        tree.0.clone(),
        fixture("no_cgroup_here"),
    );
    c.collect();
    // Elapsed ticks: user 100, nice 0, system 50, idle 800, iowait 25, irq 10, softirq 5,
    // steal 10 = 1000.
    tree.write("stat", "cpu  1100 20 350 8800 75 20 10 10 0 0\nbtime 1\n");
    tree.write(
        "diskstats",
        "   8 0 sda 5950 3434 2090866 7563 1800 23340 1711760 10598 0 3160 18630\n\
         8 1 sda1 5000 3000 1999999 7000 1700 23000 1700000 10000 0 3000 18000\n\
         8 16 sdb 1 0 8 0 1 0 8 0 0 0 0\n\
         7 0 loop0 99 0 99999 0 0 0 0 0 0 0 0\n",
    );
    tree.write(
        "net/dev",
        "h1\nh2\n    lo: 999999 29 0 0 0 0 0 0 999999 29 0 0 0 0 0 0\n  \
         eth0: 100976582 4810 0 0 0 0 0 0 273860 2800 0 0 0 0 0 0\n",
    );
    let g = c.collect();
    assert_well_formed(&g, HOST);
    let cpu = |state| find(&g, "cpu", &[("state", state)]).unwrap();
    let expected = [
        ("user", 10.0),
        ("nice", 0.0),
        ("system", 5.0),
        ("idle", 80.0),
        ("iowait", 2.5),
        ("irq", 1.0),
        ("softirq", 0.5),
        ("steal", 1.0),
    ];
    for (state, pct) in expected {
        assert!((cpu(state) - pct).abs() < 1e-9, "{state}: {}", cpu(state));
    }
    assert_eq!(tag_values(&g, "cpu", "state").len(), 8);
    // sda: +2048 sectors read (1 MiB), +8192 written (4 MiB). sda1 went backwards (reset):
    // skipped. sdb is new: no interval yet. nvme0n1 vanished. loop0 is never reported.
    assert_eq!(find(&g, "disk_io_read", &[("device", "sda")]), Some(MIB));
    assert_eq!(
        find(&g, "disk_io_written", &[("device", "sda")]),
        Some(4.0 * MIB)
    );
    assert_eq!(
        tag_values(&g, "disk_io_read", "device"),
        BTreeSet::from(["sda"])
    );
    assert_eq!(
        find(&g, "network_rx", &[("interface", "eth0")]),
        Some(1000.0)
    );
    assert_eq!(
        find(&g, "network_tx", &[("interface", "eth0")]),
        Some(500.0)
    );
    assert_eq!(
        tag_values(&g, "network_rx", "interface"),
        BTreeSet::from(["eth0"])
    );
    assert!(c.warned().iter().all(|(s, _)| s.starts_with("statvfs(")));
}

#[test]
fn old_kernel_stat_with_four_states() {
    let tree = TempTree::copy_of("proc_missing_fields", "old-kernel");
    let mut c = HostMetricsCollector::with_roots(
        HOST.to_owned(),
        tree.0.clone(),
        fixture("no_cgroup_here"),
    );
    c.collect();
    tree.write("stat", "cpu  1050 20 350 8900\n");
    let g = c.collect();
    assert_eq!(
        tag_values(&g, "cpu", "state"),
        BTreeSet::from(["idle", "nice", "system", "user"])
    );
    assert_eq!(find(&g, "cpu", &[("state", "user")]), Some(5.0));
    assert_eq!(find(&g, "cpu", &[("state", "idle")]), Some(90.0));
}

#[test]
fn missing_fields_leave_out_only_their_metrics() {
    let mut c = collector("proc_missing_fields", "cgroup_v1_limited");
    c.collect();
    let g = c.collect();
    assert_well_formed(&g, HOST);
    // meminfo has only MemTotal and MemFree.
    assert_eq!(
        tag_values(&g, "memory", "state"),
        BTreeSet::from(["free", "total"])
    );
    assert!(!names(&g).contains("swap"));
    // loadavg lacks fields; net/dev lines are truncated.
    assert!(!names(&g).contains("load_average"));
    assert!(!names(&g).contains("network_rx"));
    // One good diskstats line and one good mountinfo line survive their bad neighbours.
    assert_eq!(
        tag_values(&g, "disk_io_read", "device"),
        BTreeSet::from(["nvme0n1"])
    );
    assert_eq!(
        tag_values(&g, "disk_usage", "mountpoint"),
        BTreeSet::from(["/"])
    );
    // cgroup v1 with limits: 512 MiB, 1.5 cores.
    assert_eq!(find(&g, "cgroup_memory_limit", &[]), Some(536_870_912.0));
    assert_eq!(find(&g, "cgroup_memory_usage", &[]), Some(123_456_789.0));
    assert_eq!(find(&g, "cgroup_cpu_limit", &[]), Some(1.5));
    let w = warned(&c);
    let kinds: Vec<(&str, FailureKind)> = w.iter().map(|(s, k)| (s.as_str(), *k)).collect();
    assert_eq!(
        kinds,
        [
            ("proc_missing_fields/diskstats", FailureKind::Parse),
            ("proc_missing_fields/loadavg", FailureKind::Parse),
            ("proc_missing_fields/net/dev", FailureKind::Parse),
            ("proc_missing_fields/self/mountinfo", FailureKind::Parse),
        ]
    );
    assert_eq!(c.warnings_emitted(), 4);
}

#[test]
fn very_long_lines_are_fine() {
    let mut c = collector("proc_long_line", "cgroup_v1_unlimited");
    c.collect();
    let g = c.collect();
    assert_well_formed(&g, HOST);
    assert!(
        c.warned().iter().all(|(s, _)| s.starts_with("statvfs(")),
        "{:?}",
        c.warned()
    );
    assert!(find(&g, "memory", &[("state", "total")]).is_some());
    assert_eq!(
        tag_values(&g, "disk_usage", "mountpoint"),
        BTreeSet::from(["/"])
    );
    // v1 without limits: huge memory limit and quota -1 mean "no limit".
    assert!(!names(&g).contains("cgroup_memory_limit"));
    assert!(!names(&g).contains("cgroup_cpu_limit"));
    assert_eq!(find(&g, "cgroup_memory_usage", &[]), Some(2_000_000.0));
}

#[test]
fn empty_files_give_no_metrics_and_warn_once() {
    let mut c = collector("proc_empty", "cgroup_v2_max");
    let first = c.collect();
    // Only the cgroup usage survives: memory.max and cpu.max say "max" (no limit).
    assert_eq!(
        first,
        [HostGauge {
            name: "cgroup_memory_usage".to_owned(),
            tags: vec![("hostname".to_owned(), HOST.to_owned())],
            value: 1000.0,
        }]
    );
    assert_eq!(c.warnings_emitted(), 6);
    assert!(c.warned().iter().all(|(_, k)| *k == FailureKind::Parse));
    for _ in 0..3 {
        assert_eq!(c.collect(), first);
    }
    assert_eq!(c.warnings_emitted(), 6);
}

#[test]
fn garbage_bytes_give_no_metrics_and_warn_once() {
    let mut c = collector("proc_garbage", "cgroup_v2_garbage");
    for _ in 0..3 {
        assert_eq!(c.collect(), []);
    }
    let w = warned(&c);
    assert_eq!(w.len(), 9, "{w:?}");
    assert!(w.iter().all(|(_, k)| *k == FailureKind::Parse));
    assert!(w.contains(&("cgroup_v2_garbage/cpu.max".to_owned(), FailureKind::Parse)));
    assert_eq!(c.warnings_emitted(), 9);
}

#[test]
fn missing_roots_warn_once_per_proc_file() {
    let mut c = collector("no_proc_here", "no_cgroup_here");
    for _ in 0..2 {
        assert_eq!(c.collect(), []);
    }
    assert_eq!(c.warnings_emitted(), 6);
    assert!(c.warned().iter().all(|(_, k)| *k == FailureKind::Missing));
}

#[test]
fn cgroup_v2_max_means_no_limit() {
    let g = collector("proc_good", "cgroup_v2_max").collect();
    assert!(!names(&g).contains("cgroup_memory_limit"));
    assert!(!names(&g).contains("cgroup_cpu_limit"));
    assert_eq!(find(&g, "cgroup_memory_usage", &[]), Some(1000.0));
}

// ---------------------------------------------------------------------------------------------
// The real machine
// ---------------------------------------------------------------------------------------------

fn real() -> HostMetricsCollector {
    HostMetricsCollector::new("real-host".to_owned())
}

#[test]
fn real_memory_total_matches_meminfo() {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let g = real().collect();
    assert_well_formed(&g, "real-host");
    assert_eq!(find(&g, "memory", &[("state", "total")]), Some(kb * 1024.0));
}

#[test]
fn real_cpu_percentages_sum_to_100() {
    let mut c = real();
    assert!(!names(&c.collect()).contains("cpu"));
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(300) {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    let g = c.collect();
    assert_well_formed(&g, "real-host");
    let states = tag_values(&g, "cpu", "state");
    assert_eq!(states.len(), 8, "{states:?}");
    let sum: f64 = g.iter().filter(|g| g.name == "cpu").map(|g| g.value).sum();
    assert!((sum - 100.0).abs() <= 0.5, "sum {sum}");
    // The busy loop itself used CPU.
    let busy = 100.0 - find(&g, "cpu", &[("state", "idle")]).unwrap();
    assert!(busy > 0.0, "busy {busy}");
}

fn read_loadavg() -> [f64; 3] {
    let text = fs::read_to_string("/proc/loadavg").unwrap();
    let mut f = text.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    [f.next().unwrap(), f.next().unwrap(), f.next().unwrap()]
}

#[test]
fn real_load_average_matches_proc_loadavg() {
    let before = read_loadavg();
    let g = real().collect();
    let after = read_loadavg();
    for (i, window) in ["1", "5", "15"].into_iter().enumerate() {
        let v = find(&g, "load_average", &[("window", window)]).unwrap();
        let (lo, hi) = (before[i].min(after[i]), before[i].max(after[i]));
        assert!(
            v >= lo - 0.005 && v <= hi + 0.005,
            "window {window}: {v} not in [{lo}, {hi}]"
        );
    }
}

/// The `/proc/diskstats` name of the block device with this `st_dev`, if it is listed.
fn diskstats_name(dev: u64) -> Option<String> {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let text = fs::read_to_string("/proc/diskstats").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (ma, mi, name) = (f.next()?, f.next()?, f.next()?);
        (ma.parse::<u64>().ok()? == major && mi.parse::<u64>().ok()? == minor)
            .then(|| name.to_owned())
    })
}

#[test]
fn real_disk_write_is_measured() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    fs::create_dir_all(&dir).unwrap();
    let device = diskstats_name(fs::metadata(&dir).unwrap().dev())
        .filter(|name| !["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)));
    let mut c = real();
    c.collect();
    match device {
        Some(device) => {
            let path = dir.join(format!("host-metrics-io-{}.bin", std::process::id()));
            let mut file = fs::File::create(&path).unwrap();
            let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
            for _ in 0..4 {
                file.write_all(&chunk).unwrap();
            }
            file.sync_all().unwrap();
            drop(file);
            let g = c.collect();
            let _ = fs::remove_file(&path);
            assert_well_formed(&g, "real-host");
            let written = find(&g, "disk_io_written", &[("device", &device)])
                .unwrap_or_else(|| panic!("no disk_io_written for {device}"));
            assert!(written >= 4.0 * MIB, "{device}: wrote {written} bytes");
        }
        None => {
            // Backing device not measurable (overlay, tmpfs, btrfs subvolume ...): the I/O
            // metrics must still cover every real device listed in /proc/diskstats.
            eprintln!("backing device of {} not in /proc/diskstats", dir.display());
            let g = c.collect();
            assert_well_formed(&g, "real-host");
            let listed: BTreeSet<String> = fs::read_to_string("/proc/diskstats")
                .unwrap()
                .lines()
                .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
                .filter(|n| !["loop", "ram", "zram"].iter().any(|p| n.starts_with(p)))
                .collect();
            let reported: BTreeSet<String> = tag_values(&g, "disk_io_written", "device")
                .into_iter()
                .map(str::to_owned)
                .collect();
            assert_eq!(reported, listed);
        }
    }
}

#[test]
fn real_network_never_reports_lo() {
    // Interfaces come and go (other tests make network namespaces, containers add veths), so the
    // expectation is bracketed by reads of /proc/net/dev before and after the collector's two.
    let listed = || -> BTreeSet<String> {
        fs::read_to_string("/proc/net/dev")
            .unwrap()
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
            .collect()
    };
    let before = listed();
    let mut c = real();
    c.collect();
    let g = c.collect();
    let after = listed();
    assert!(
        before.contains("lo") && after.contains("lo"),
        "every network namespace has lo, so the filter is exercised: {before:?}"
    );
    assert_well_formed(&g, "real-host");
    let interfaces = tag_values(&g, "network_rx", "interface");
    assert_eq!(interfaces, tag_values(&g, "network_tx", "interface"));
    let reported: BTreeSet<String> = interfaces.into_iter().map(str::to_owned).collect();
    assert!(!reported.contains("lo"), "{reported:?}");
    // Present throughout: reported. Reported: present at some point, and not lo.
    let throughout: BTreeSet<String> = before
        .intersection(&after)
        .filter(|n| *n != "lo")
        .cloned()
        .collect();
    let ever: BTreeSet<String> = before.union(&after).cloned().collect();
    assert!(
        reported.is_superset(&throughout),
        "missing {:?}",
        throughout.difference(&reported).collect::<Vec<_>>()
    );
    assert!(
        reported.is_subset(&ever),
        "never listed: {:?}",
        reported.difference(&ever).collect::<Vec<_>>()
    );
}

#[test]
fn real_collect_is_well_formed_and_complete() {
    let mut c = real();
    c.collect();
    std::thread::sleep(Duration::from_millis(20));
    let g = c.collect();
    assert_well_formed(&g, "real-host");
    let n = names(&g);
    for expected in [
        "load_average",
        "memory",
        "swap",
        "disk_space",
        "disk_usage",
        "disk_io_read",
        "network_rx",
    ] {
        assert!(n.contains(expected), "{expected} missing from {n:?}");
    }
    let proc_warnings: Vec<_> = c
        .warned()
        .into_iter()
        .filter(|(s, _)| s.starts_with("/proc"))
        .collect();
    assert!(proc_warnings.is_empty(), "{proc_warnings:?}");
}
