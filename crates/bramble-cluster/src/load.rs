//! The small load summary every node gossips: load average, memory in use, core count and
//! the agent's own resident memory. Read straight from /proc (Linux); a missing file gives
//! zeros rather than an error, since this is informational.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// One-minute load average.
    pub load1: f32,
    /// Memory in use (total minus available), percent.
    pub memory_used_percent: f32,
    pub cpus: u32,
    /// Resident memory of the agent process, KiB.
    pub agent_rss_kib: u64,
}

fn read_proc(path: &str) -> String {
    bramble_util::files::read_bounded(std::path::Path::new(path), 64 * 1024)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_default()
}

fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Resident memory of this process in KiB.
pub fn own_rss_kib() -> u64 {
    read_proc("/proc/self/status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl LoadSummary {
    pub fn sample() -> LoadSummary {
        let load1 = read_proc("/proc/loadavg")
            .split_whitespace()
            .next()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0);
        let meminfo = read_proc("/proc/meminfo");
        let memory_used_percent = match (
            meminfo_kib(&meminfo, "MemTotal"),
            meminfo_kib(&meminfo, "MemAvailable"),
        ) {
            (Some(total), Some(available)) if total > 0 => {
                (total.saturating_sub(available)) as f32 * 100.0 / total as f32
            }
            _ => 0.0,
        };
        LoadSummary {
            load1,
            memory_used_percent,
            cpus: std::thread::available_parallelism()
                .map(|count| count.get() as u32)
                .unwrap_or(1),
            agent_rss_kib: own_rss_kib(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_machine() {
        let load = LoadSummary::sample();
        assert!(load.cpus >= 1);
        assert!(load.agent_rss_kib > 0);
        assert!((0.0..=100.0).contains(&load.memory_used_percent));
    }

    #[test]
    fn parses_meminfo_lines() {
        let meminfo = "MemTotal:        1000 kB\nMemAvailable:     250 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemTotal"), Some(1000));
        assert_eq!(meminfo_kib(meminfo, "MemAvailable"), Some(250));
        assert_eq!(meminfo_kib(meminfo, "Missing"), None);
    }
}
