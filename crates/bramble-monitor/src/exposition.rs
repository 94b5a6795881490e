//! A sample in the Prometheus text exposition format 0.0.4, with node_exporter's metric
//! names and labels wherever node_exporter has one (so Grafana's "Node Exporter Full"
//! works unchanged), and `bramble_*` names for the rest.
//!
//! Hand-written rather than through the `prometheus-client` crate the issue names (0.26,
//! reachable on crates.io): that crate writes OpenMetrics only, where a counter family is
//! declared without its `_total` suffix (`# TYPE my_counter counter`, then
//! `my_counter_total 1`, its own documentation's example). Prometheus
//! reads that, but `promtool check metrics` (2.42, Debian's) parses the 0.0.4 format and
//! reports every such counter as a family without help text — our own metrics would fail
//! the lint the drill requires. The format is small; the care is in escaping label values
//! and help text, and in keeping each family's samples together.

use std::fmt::Write as _;

use crate::sample::{Sample, THROTTLE_CONDITIONS, throttle_flags};

/// The content type of the 0.0.4 text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes families into a text buffer.
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn with_capacity(bytes: usize) -> Exposition {
        Exposition {
            text: String::with_capacity(bytes),
        }
    }

    /// Starts a family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                escape_label_into(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        write_value(&mut self.text, value);
        self.text.push('\n');
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// Appends text already in the format (another subsystem's families).
    pub fn append(&mut self, text: &str) {
        self.text.push_str(text);
        if !text.is_empty() && !text.ends_with('\n') {
            self.text.push('\n');
        }
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label_into(text: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => text.push_str("\\\\"),
            '"' => text.push_str("\\\""),
            '\n' => text.push_str("\\n"),
            other => text.push(other),
        }
    }
}

/// Help text escapes backslash and newline (not quotes).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Integers as integers; NaN and infinities as the format spells them.
fn write_value(text: &mut String, value: f64) {
    if value.is_nan() {
        text.push_str("NaN");
    } else if value.is_infinite() {
        text.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(text, "{}", value as i64);
    } else {
        let _ = write!(text, "{value}");
    }
}

/// Renders every family of `sample`; a family whose sensor is absent is left out.
pub fn render_sample(sample: &Sample, out: &mut Exposition) {
    cpu(sample, out);
    if let Some([one, five, fifteen]) = sample.load {
        out.single("node_load1", "gauge", "1m load average.", one);
        out.single("node_load5", "gauge", "5m load average.", five);
        out.single("node_load15", "gauge", "15m load average.", fifteen);
    }
    for field in &sample.memory {
        let name = if field.bytes {
            format!("node_memory_{}_bytes", field.name)
        } else {
            format!("node_memory_{}", field.name)
        };
        out.single(
            &name,
            "gauge",
            &format!(
                "Memory information field {}.",
                &name["node_memory_".len()..]
            ),
            field.value as f64,
        );
    }
    filesystems(sample, out);
    disks(sample, out);
    network(sample, out);
    if let Some(boot) = sample.boot_time_seconds {
        out.single(
            "node_boot_time_seconds",
            "gauge",
            "Node boot time, in unixtime.",
            boot as f64,
        );
    }
    out.single(
        "node_time_seconds",
        "gauge",
        "System time in seconds since epoch (1970).",
        sample.taken_unix_millis as f64 / 1000.0,
    );
    if let Some(uptime) = sample.uptime_seconds {
        out.single(
            "bramble_node_uptime_seconds",
            "gauge",
            "Seconds since the node booted (/proc/uptime).",
            uptime,
        );
    }
    if !sample.thermal_zones.is_empty() {
        out.family(
            "node_thermal_zone_temp",
            "gauge",
            "Zone temperature in Celsius",
        );
        for zone in &sample.thermal_zones {
            let number = zone.zone.to_string();
            out.sample(
                "node_thermal_zone_temp",
                &[("type", &zone.kind), ("zone", &number)],
                zone.celsius,
            );
        }
    }
    if !sample.cpu_frequencies.is_empty() {
        out.family(
            "node_cpu_scaling_frequency_hertz",
            "gauge",
            "Current scaled CPU thread frequency in hertz.",
        );
        for frequency in &sample.cpu_frequencies {
            let cpu = frequency.cpu.to_string();
            out.sample(
                "node_cpu_scaling_frequency_hertz",
                &[("cpu", &cpu)],
                frequency.hertz as f64,
            );
        }
    }
    if let Some(word) = sample.throttled {
        out.family(
            "bramble_pi_throttled",
            "gauge",
            "1 when the Raspberry Pi firmware reports the condition (get_throttled), now or since boot.",
        );
        for (bit, condition) in THROTTLE_CONDITIONS {
            let (now, since_boot) = throttle_flags(word, bit);
            out.sample(
                "bramble_pi_throttled",
                &[("condition", condition), ("when", "now")],
                f64::from(u8::from(now)),
            );
            out.sample(
                "bramble_pi_throttled",
                &[("condition", condition), ("when", "since_boot")],
                f64::from(u8::from(since_boot)),
            );
        }
    }
    if let Some(process) = sample.process {
        out.single(
            "bramble_agent_resident_memory_bytes",
            "gauge",
            "Resident memory of the Bramble agent process.",
            process.resident_bytes as f64,
        );
        out.single(
            "bramble_agent_cpu_seconds_total",
            "counter",
            "User and system CPU time of the Bramble agent process.",
            process.cpu_seconds,
        );
        out.single(
            "bramble_agent_threads",
            "gauge",
            "Threads of the Bramble agent process.",
            process.threads as f64,
        );
    }
}

fn cpu(sample: &Sample, out: &mut Exposition) {
    if sample.cpus.is_empty() {
        return;
    }
    out.family(
        "node_cpu_seconds_total",
        "counter",
        "Seconds the CPUs spent in each mode.",
    );
    for core in &sample.cpus {
        let cpu = core.cpu.to_string();
        for (mode, seconds) in core.times.modes() {
            out.sample(
                "node_cpu_seconds_total",
                &[("cpu", &cpu), ("mode", mode)],
                seconds,
            );
        }
    }
}

fn filesystems(sample: &Sample, out: &mut Exposition) {
    if sample.filesystems.is_empty() {
        return;
    }
    type Value = fn(&crate::sample::Filesystem) -> f64;
    const FAMILIES: [(&str, &str, Value); 6] = [
        (
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            |fs| fs.size_bytes as f64,
        ),
        (
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            |fs| fs.free_bytes as f64,
        ),
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            |fs| fs.avail_bytes as f64,
        ),
        (
            "node_filesystem_files",
            "Filesystem total file nodes.",
            |fs| fs.files as f64,
        ),
        (
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            |fs| fs.files_free as f64,
        ),
        (
            "node_filesystem_readonly",
            "Filesystem read-only status.",
            |fs| f64::from(u8::from(fs.read_only)),
        ),
    ];
    for (name, help, value) in FAMILIES {
        out.family(name, "gauge", help);
        for filesystem in &sample.filesystems {
            out.sample(
                name,
                &[
                    ("device", &filesystem.device),
                    ("fstype", &filesystem.fstype),
                    ("mountpoint", &filesystem.mountpoint),
                ],
                value(filesystem),
            );
        }
    }
}

fn disks(sample: &Sample, out: &mut Exposition) {
    if sample.disks.is_empty() {
        return;
    }
    type Value = fn(&crate::sample::Disk) -> f64;
    const FAMILIES: [(&str, &str, &str, Value); 11] = [
        (
            "node_disk_reads_completed_total",
            "counter",
            "The total number of reads completed successfully.",
            |disk| disk.reads_completed as f64,
        ),
        (
            "node_disk_reads_merged_total",
            "counter",
            "The total number of reads merged.",
            |disk| disk.reads_merged as f64,
        ),
        (
            "node_disk_read_bytes_total",
            "counter",
            "The total number of bytes read successfully.",
            |disk| disk.read_bytes as f64,
        ),
        (
            "node_disk_read_time_seconds_total",
            "counter",
            "The total number of seconds spent by all reads.",
            |disk| disk.read_time_seconds,
        ),
        (
            "node_disk_writes_completed_total",
            "counter",
            "The total number of writes completed successfully.",
            |disk| disk.writes_completed as f64,
        ),
        (
            "node_disk_writes_merged_total",
            "counter",
            "The number of writes merged.",
            |disk| disk.writes_merged as f64,
        ),
        (
            "node_disk_written_bytes_total",
            "counter",
            "The total number of bytes written successfully.",
            |disk| disk.written_bytes as f64,
        ),
        (
            "node_disk_write_time_seconds_total",
            "counter",
            "This is the total number of seconds spent by all writes.",
            |disk| disk.write_time_seconds,
        ),
        (
            "node_disk_io_now",
            "gauge",
            "The number of I/Os currently in progress.",
            |disk| disk.io_now as f64,
        ),
        (
            "node_disk_io_time_seconds_total",
            "counter",
            "Total seconds spent doing I/Os.",
            |disk| disk.io_time_seconds,
        ),
        (
            "node_disk_io_time_weighted_seconds_total",
            "counter",
            "The weighted number of seconds spent doing I/Os.",
            |disk| disk.io_time_weighted_seconds,
        ),
    ];
    for (name, kind, help, value) in FAMILIES {
        out.family(name, kind, help);
        for disk in &sample.disks {
            out.sample(name, &[("device", &disk.device)], value(disk));
        }
    }
}

fn network(sample: &Sample, out: &mut Exposition) {
    if sample.interfaces.is_empty() {
        return;
    }
    type Value = fn(&crate::sample::Interface) -> u64;
    const FAMILIES: [(&str, &str, Value); 8] = [
        (
            "node_network_receive_bytes_total",
            "Network device statistic receive_bytes.",
            |i| i.receive_bytes,
        ),
        (
            "node_network_receive_packets_total",
            "Network device statistic receive_packets.",
            |i| i.receive_packets,
        ),
        (
            "node_network_receive_errs_total",
            "Network device statistic receive_errs.",
            |i| i.receive_errs,
        ),
        (
            "node_network_receive_drop_total",
            "Network device statistic receive_drop.",
            |i| i.receive_drop,
        ),
        (
            "node_network_transmit_bytes_total",
            "Network device statistic transmit_bytes.",
            |i| i.transmit_bytes,
        ),
        (
            "node_network_transmit_packets_total",
            "Network device statistic transmit_packets.",
            |i| i.transmit_packets,
        ),
        (
            "node_network_transmit_errs_total",
            "Network device statistic transmit_errs.",
            |i| i.transmit_errs,
        ),
        (
            "node_network_transmit_drop_total",
            "Network device statistic transmit_drop.",
            |i| i.transmit_drop,
        ),
    ];
    for (name, help, value) in FAMILIES {
        out.family(name, "counter", help);
        for interface in &sample.interfaces {
            out.sample(
                name,
                &[("device", &interface.device)],
                value(interface) as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{CoreTimes, CpuTimes, Filesystem, MemoryField, ThermalZone};

    #[test]
    fn renders_node_exporter_names_and_escapes_labels() {
        let sample = Sample {
            taken_unix_millis: 1_800_000_000_500,
            cpus: vec![CoreTimes {
                cpu: 0,
                times: CpuTimes {
                    user: 12.5,
                    ..CpuTimes::default()
                },
            }],
            load: Some([0.5, 0.25, 1.0]),
            memory: vec![MemoryField {
                name: "MemAvailable".into(),
                value: 4096,
                bytes: true,
            }],
            filesystems: vec![Filesystem {
                device: "/dev/sda1".into(),
                fstype: "ext4".into(),
                mountpoint: "/mnt/a \"quoted\\\" \n name".into(),
                size_bytes: 100,
                free_bytes: 50,
                avail_bytes: 40,
                files: 10,
                files_free: 5,
                read_only: false,
            }],
            thermal_zones: vec![ThermalZone {
                zone: 0,
                kind: "cpu-thermal".into(),
                celsius: 48.312,
            }],
            throttled: Some(0x50005),
            ..Sample::default()
        };
        let mut out = Exposition::with_capacity(1024);
        render_sample(&sample, &mut out);
        let text = out.into_text();
        assert!(text.contains("# TYPE node_cpu_seconds_total counter\n"));
        assert!(text.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 12.5\n"));
        assert!(text.contains("node_load1 0.5\n"));
        assert!(text.contains("node_memory_MemAvailable_bytes 4096\n"));
        assert!(text.contains(
            "node_filesystem_avail_bytes{device=\"/dev/sda1\",fstype=\"ext4\",mountpoint=\"/mnt/a \\\"quoted\\\\\\\" \\n name\"} 40\n"
        ));
        assert!(text.contains("node_thermal_zone_temp{type=\"cpu-thermal\",zone=\"0\"} 48.312\n"));
        assert!(
            text.contains("bramble_pi_throttled{condition=\"under_voltage\",when=\"now\"} 1\n")
        );
        assert!(
            text.contains("bramble_pi_throttled{condition=\"throttled\",when=\"since_boot\"} 1\n")
        );
        assert!(
            text.contains("bramble_pi_throttled{condition=\"frequency_capped\",when=\"now\"} 0\n")
        );
        assert!(text.contains("node_time_seconds 1800000000.5\n"));
        // Absent sensors are absent.
        assert!(!text.contains("node_cpu_scaling_frequency_hertz"));
        assert!(!text.contains("node_disk_"));
        assert!(!text.contains("bramble_agent_"));
    }

    #[test]
    fn values_are_spelled_as_the_format_wants() {
        let mut text = String::new();
        for value in [
            1.0,
            -2.0,
            0.125,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e20,
        ] {
            write_value(&mut text, value);
            text.push(' ');
        }
        assert_eq!(text, "1 -2 0.125 NaN +Inf -Inf 100000000000000000000 ");
    }
}
