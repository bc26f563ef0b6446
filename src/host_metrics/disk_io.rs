//! Block device I/O from `/proc/diskstats`.
//!
//! Owns `disk_io_read{device}` and `disk_io_written{device}`: bytes transferred during the
//! interval since the previous call (sectors × 512; the kernel always counts 512-byte sectors
//! here). `loop`, `ram` and `zram` devices are skipped. Lines are parsed one by one with
//! `procfs::DiskStat::from_line`, so one odd line only drops its device.

use std::collections::HashMap;
use std::path::Path;

use procfs::DiskStat;

use super::source::{counter_deltas, read_text, Failure, Warner};
use super::Emitter;

const SECTOR_BYTES: u64 = 512;

/// Device name prefixes that are not real block devices.
const SKIPPED_PREFIXES: &[&str] = &["loop", "ram", "zram"];

/// Sector counters of the previous reading, per device.
#[derive(Debug, Default)]
pub(crate) struct DiskIoState {
    /// `None` before the first successful reading.
    prev: Option<HashMap<String, Sectors>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sectors {
    read: u64,
    written: u64,
}

impl DiskIoState {
    /// Emits bytes read and written per device since the previous call.
    pub(crate) fn collect(&mut self, path: &Path, warner: &mut Warner, out: &mut Emitter<'_>) {
        let current = match read_text(path).and_then(|t| parse(&t)) {
            Ok((current, bad_lines)) => {
                if bad_lines > 0 {
                    let detail = format!("{bad_lines} unparsable line(s) skipped");
                    warner.report_path(path, &Failure::parse(detail));
                }
                current
            }
            Err(failure) => {
                warner.report_path(path, &failure);
                self.prev = None;
                return;
            }
        };
        if let Some(prev) = &self.prev {
            for (device, read, written) in counter_deltas(prev, &current, |s| (s.read, s.written)) {
                let tags = [("device", device)];
                out.push(
                    "disk_io_read",
                    &tags,
                    read.saturating_mul(SECTOR_BYTES) as f64,
                );
                out.push(
                    "disk_io_written",
                    &tags,
                    written.saturating_mul(SECTOR_BYTES) as f64,
                );
            }
        }
        self.prev = Some(current);
    }
}

/// Parses `/proc/diskstats`, skipping pseudo devices. Returns the counters and the number of
/// unparsable lines; fails when no line parses.
pub(crate) fn parse(text: &str) -> Result<(HashMap<String, Sectors>, usize), Failure> {
    let mut devices = HashMap::new();
    let mut bad_lines = 0;
    let mut parsed_lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(stat) = DiskStat::from_line(line) else {
            bad_lines += 1;
            continue;
        };
        parsed_lines += 1;
        if SKIPPED_PREFIXES.iter().any(|p| stat.name.starts_with(p)) {
            continue;
        }
        devices.insert(
            stat.name,
            Sectors {
                read: stat.sectors_read,
                written: stat.sectors_written,
            },
        );
    }
    if parsed_lines == 0 {
        return Err(Failure::parse("no parsable diskstats line"));
    }
    Ok((devices, bad_lines))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_and_skips() {
        let text = "   7 0 loop0 1 0 8 0 0 0 0 0 0 0 0\n\
                    254 0 vda 5940 3434 2088818 7563 1792 23340 1703568 10598 0 3160 18630 3635 63 129624 468 27 1\n\
                    1 0 ram0 1 1 1 1 1 1 1 1 1 1 1\n\
                    8 1 sda1 1 2 3\n";
        let (devices, bad) = parse(text).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(devices.len(), 1);
        assert_eq!(
            devices["vda"],
            Sectors {
                read: 2_088_818,
                written: 1_703_568
            }
        );
        assert!(parse("nonsense\n").is_err());
    }
}
