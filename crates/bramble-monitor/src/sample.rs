//! One sample of a node: what the collectors read from /proc and /sys at one moment. It is
//! what `/metrics` renders, what `monitor.sample` answers and what the history summarises.
//! Counters are kept as the kernel gives them (totals since boot); rates are worked out
//! between two samples. A sensor the node does not have is `None` or an empty list, never
//! a zero.

use serde::{Deserialize, Serialize};

/// CPU time by mode, in seconds since boot (the kernel's ticks divided by `USER_HZ`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuTimes {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
}

impl CpuTimes {
    /// The modes in node_exporter's order, with their label values.
    pub fn modes(&self) -> [(&'static str, f64); 8] {
        [
            ("user", self.user),
            ("nice", self.nice),
            ("system", self.system),
            ("idle", self.idle),
            ("iowait", self.iowait),
            ("irq", self.irq),
            ("softirq", self.softirq),
            ("steal", self.steal),
        ]
    }

    pub fn total(&self) -> f64 {
        self.modes().iter().map(|(_, seconds)| seconds).sum()
    }

    /// Time not spent idle or waiting for I/O.
    pub fn busy(&self) -> f64 {
        self.total() - self.idle - self.iowait
    }
}

/// One CPU core's times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoreTimes {
    pub cpu: u32,
    pub times: CpuTimes,
}

/// One line of /proc/meminfo, in node_exporter's naming: `Active(anon)` becomes
/// `Active_anon`; `bytes` is true when the kernel gave kB (the value is then in bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryField {
    pub name: String,
    pub value: u64,
    pub bytes: bool,
}

/// A mounted filesystem's size (statvfs), node_exporter's `node_filesystem_*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filesystem {
    pub device: String,
    pub fstype: String,
    pub mountpoint: String,
    pub size_bytes: u64,
    pub free_bytes: u64,
    /// Free to unprivileged users (`df`'s "Available").
    pub avail_bytes: u64,
    pub files: u64,
    pub files_free: u64,
    pub read_only: bool,
}

/// One block device's counters from /proc/diskstats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    pub device: String,
    pub reads_completed: u64,
    pub reads_merged: u64,
    pub read_bytes: u64,
    pub read_time_seconds: f64,
    pub writes_completed: u64,
    pub writes_merged: u64,
    pub written_bytes: u64,
    pub write_time_seconds: f64,
    pub io_now: u64,
    pub io_time_seconds: f64,
    pub io_time_weighted_seconds: f64,
}

/// One network interface's counters from /proc/net/dev.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub device: String,
    pub receive_bytes: u64,
    pub receive_packets: u64,
    pub receive_errs: u64,
    pub receive_drop: u64,
    pub transmit_bytes: u64,
    pub transmit_packets: u64,
    pub transmit_errs: u64,
    pub transmit_drop: u64,
}

/// A thermal zone of /sys/class/thermal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThermalZone {
    pub zone: u32,
    /// The zone's `type` file (`cpu-thermal` on a Pi).
    pub kind: String,
    pub celsius: f64,
}

/// A core's current frequency (cpufreq's `scaling_cur_freq`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuFrequency {
    pub cpu: u32,
    pub hertz: u64,
}

/// The agent process's own cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessFigures {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
}

/// The Pi firmware's throttling word (`get_throttled`): bits 0-3 now, 16-19 since boot.
pub const THROTTLE_CONDITIONS: [(u32, &str); 4] = [
    (0, "under_voltage"),
    (1, "frequency_capped"),
    (2, "throttled"),
    (3, "soft_temperature_limit"),
];

/// Whether `condition`'s bit (0-3) is set now, and since boot.
pub fn throttle_flags(word: u32, bit: u32) -> (bool, bool) {
    (word & (1 << bit) != 0, word & (1 << (bit + 16)) != 0)
}

/// Everything one round of the collectors read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub taken_unix_millis: u64,
    pub cpu_total: Option<CpuTimes>,
    pub cpus: Vec<CoreTimes>,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: Option<[f64; 3]>,
    pub memory: Vec<MemoryField>,
    pub filesystems: Vec<Filesystem>,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
    pub uptime_seconds: Option<f64>,
    pub boot_time_seconds: Option<u64>,
    pub thermal_zones: Vec<ThermalZone>,
    pub cpu_frequencies: Vec<CpuFrequency>,
    /// The Pi's throttling word; `None` on boards without the firmware interface.
    pub throttled: Option<u32>,
    pub process: Option<ProcessFigures>,
    /// Use of the root filesystem in percent (statvfs of `/`, even when `/` is a kind that
    /// `/metrics` skips, such as overlay), for the history.
    pub root_used_percent: Option<f64>,
}

impl Sample {
    /// A /proc/meminfo value in bytes, by its name (`MemAvailable`).
    pub fn memory_bytes(&self, name: &str) -> Option<u64> {
        self.memory
            .iter()
            .find(|field| field.name == name && field.bytes)
            .map(|field| field.value)
    }

    /// The hottest thermal zone, in °C.
    pub fn hottest_celsius(&self) -> Option<f64> {
        self.thermal_zones
            .iter()
            .map(|zone| zone.celsius)
            .fold(None, |hottest, celsius| {
                Some(hottest.map_or(celsius, |hottest: f64| hottest.max(celsius)))
            })
    }

    /// MemTotal less MemAvailable: what programs hold.
    pub fn memory_used_bytes(&self) -> Option<u64> {
        Some(
            self.memory_bytes("MemTotal")?
                .saturating_sub(self.memory_bytes("MemAvailable")?),
        )
    }

    pub fn swap_used_bytes(&self) -> Option<u64> {
        Some(
            self.memory_bytes("SwapTotal")?
                .saturating_sub(self.memory_bytes("SwapFree")?),
        )
    }

    /// Bytes received and sent by every interface but loopback, since boot.
    pub fn network_totals(&self) -> (u64, u64) {
        self.interfaces
            .iter()
            .filter(|interface| interface.device != "lo")
            .fold((0, 0), |(received, sent), interface| {
                (
                    received.saturating_add(interface.receive_bytes),
                    sent.saturating_add(interface.transmit_bytes),
                )
            })
    }

    /// Bytes read from and written to every disk, since boot.
    pub fn disk_totals(&self) -> (u64, u64) {
        self.disks.iter().fold((0, 0), |(read, written), disk| {
            (
                read.saturating_add(disk.read_bytes),
                written.saturating_add(disk.written_bytes),
            )
        })
    }
}
