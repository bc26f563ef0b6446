//! Network interface traffic from `/proc/net/dev`.
//!
//! Owns `network_rx{interface}` and `network_tx{interface}`: bytes received and transmitted
//! during the interval since the previous call. The loopback interface `lo` is never reported.
//! Parsed with `procfs::net::InterfaceDeviceStatus`, which rejects the whole file on one odd line
//! (the source is then left out).

use std::collections::HashMap;
use std::path::Path;

use procfs::net::InterfaceDeviceStatus;
use procfs::FromRead;

use super::source::{counter_deltas, read_text, Failure, Warner};
use super::Emitter;

/// Byte counters of the previous reading, per interface.
#[derive(Debug, Default)]
pub(crate) struct NetworkState {
    prev: Option<HashMap<String, Bytes>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bytes {
    rx: u64,
    tx: u64,
}

impl NetworkState {
    /// Emits bytes received and transmitted per interface since the previous call.
    pub(crate) fn collect(&mut self, path: &Path, warner: &mut Warner, out: &mut Emitter<'_>) {
        let current = match read_text(path).and_then(|t| parse(&t)) {
            Ok(current) => current,
            Err(failure) => {
                warner.report_path(path, &failure);
                self.prev = None;
                return;
            }
        };
        if let Some(prev) = &self.prev {
            for (interface, rx, tx) in counter_deltas(prev, &current, |b| (b.rx, b.tx)) {
                let tags = [("interface", interface)];
                out.push("network_rx", &tags, rx as f64);
                out.push("network_tx", &tags, tx as f64);
            }
        }
        self.prev = Some(current);
    }
}

/// Parses `/proc/net/dev` (two header lines, then one line per interface), dropping `lo`.
pub(crate) fn parse(text: &str) -> Result<HashMap<String, Bytes>, Failure> {
    let status =
        InterfaceDeviceStatus::from_read(text.as_bytes()).map_err(|e| Failure::parse(&e))?;
    if status.0.is_empty() {
        return Err(Failure::parse("no interface lines"));
    }
    Ok(status
        .0
        .into_iter()
        .filter(|(name, _)| name != "lo")
        .map(|(name, dev)| {
            let bytes = Bytes {
                rx: dev.recv_bytes,
                tx: dev.sent_bytes,
            };
            (name, bytes)
        })
        .collect())
}

#[cfg(test)]
mod unit {
    use super::*;

    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0: 100975582    4800    0    0    0     0          0         0   273360    2794    0    0    0     0       0          0
";

    #[test]
    fn parses_and_drops_lo() {
        let map = parse(SAMPLE).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(
            map["eth0"],
            Bytes {
                rx: 100_975_582,
                tx: 273_360
            }
        );
        assert!(parse("header\nheader\n").is_err());
        assert!(parse("header\nheader\neth0: 1 2\n").is_err());
    }
}
