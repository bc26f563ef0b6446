//! Host metrics where there is no `/proc` (macOS): the load average from `getloadavg(3)`, which
//! libSystem has, and nothing else. CPU and memory would need the Mach host statistics, network
//! `sysctl` routing tables and disk I/O IOKit (a framework, which `libappsignal` does not link):
//! they are left out.
//!
//! Same interface as the Linux collector, so the leader runs with host metrics enabled either way.

use super::{Emitter, HostGauge};

/// Collects `load_average{window="1"|"5"|"15"}` on each call.
#[derive(Debug)]
pub struct HostMetricsCollector {
    hostname: String,
    /// Whether a failing `getloadavg` was logged already: it is logged once per collector, like a
    /// failing source on Linux.
    warned: bool,
}

impl HostMetricsCollector {
    pub fn new(hostname: String) -> Self {
        HostMetricsCollector {
            hostname,
            warned: false,
        }
    }

    /// Reads the load averages. Never panics; when `getloadavg` fails the result is empty and one
    /// `tracing::warn!` line is logged (once).
    pub fn collect(&mut self) -> Vec<HostGauge> {
        let mut out = Emitter {
            hostname: &self.hostname,
            gauges: Vec::with_capacity(3),
        };
        let mut loads = [0f64; 3];
        // SAFETY: `loads` is valid for writes of the 3 values asked for.
        let n = unsafe { libc::getloadavg(loads.as_mut_ptr(), 3) };
        if n == 3 {
            for (window, value) in ["1", "5", "15"].into_iter().zip(loads) {
                // Two decimals, as Linux's /proc/loadavg has them (the kernel's value is fixed point).
                let value = (value * 100.0).round() / 100.0;
                if value >= 0.0 {
                    out.push("load_average", &[("window", window)], value);
                }
            }
        } else if !self.warned {
            self.warned = true;
            tracing::warn!(
                source = "getloadavg",
                "host metrics: source unavailable, its metrics are left out (not repeated)"
            );
        }
        out.gauges
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn reports_the_three_load_averages() {
        let gauges = HostMetricsCollector::new("host".to_owned()).collect();
        let windows: Vec<&str> = gauges
            .iter()
            .map(|g| {
                assert_eq!(g.name, "load_average");
                assert!(g.value >= 0.0);
                g.tags[1].1.as_str()
            })
            .collect();
        assert_eq!(windows, ["1", "5", "15"]);
        assert_eq!(
            gauges[0].tags[0],
            ("hostname".to_owned(), "host".to_owned())
        );
    }
}
