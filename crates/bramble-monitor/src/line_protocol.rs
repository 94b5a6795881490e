//! A sample in InfluxDB's line protocol, with Telegraf's measurement, tag and field names
//! (its `cpu`, `mem`, `swap`, `system`, `disk`, `diskio`, `net` and `temp` inputs), so the
//! dashboards built on Telegraf's data keep working when Bramble pushes instead.
//!
//! Telegraf's definitions are followed where they differ from node_exporter's: `mem.used`
//! is total − free − buffers − cached (gopsutil's), `disk.free` is what unprivileged users
//! may still write (statvfs `f_bavail`), `diskio`'s times are milliseconds, `net` leaves
//! out loopback, CPU usage is the percentage of each mode between two samples. Fields
//! whose figure the node does not have are left out, never written as zero; Telegraf's
//! `usage_guest*` (not in our samples) are absent.
//!
//! Escaping follows the line protocol: measurement names escape `,` and space; tag keys,
//! tag values and field keys escape `,`, `=` and space; tabs, newlines and carriage
//! returns become `\t`, `\n`, `\r` as Telegraf writes them (a raw newline would end the
//! line). A tag value may not be empty or end with a backslash, so an empty value drops
//! the tag and trailing backslashes are cut, as Telegraf does. Integers carry the `i`
//! suffix; NaN and infinities, which the protocol cannot carry, are left out.

use std::fmt::Write as _;

use crate::sample::{CpuTimes, Sample};

/// Writes one line: measurement, tags, fields, timestamp. A line that ends up with no
/// field is removed again (the protocol requires one).
pub struct Line<'a> {
    out: &'a mut String,
    start: usize,
    fields: usize,
}

impl<'a> Line<'a> {
    pub fn new(out: &'a mut String, measurement: &str) -> Line<'a> {
        let start = out.len();
        for character in measurement.chars() {
            match character {
                ',' | ' ' => {
                    out.push('\\');
                    out.push(character);
                }
                other => push_control_escaped(out, other),
            }
        }
        Line {
            out,
            start,
            fields: 0,
        }
    }

    /// A tag; tags must all come before the first field. An empty value is left out.
    pub fn tag(self, key: &str, value: &str) -> Line<'a> {
        let value = value.trim_end_matches('\\');
        if key.is_empty() || value.is_empty() {
            return self;
        }
        self.out.push(',');
        escape_key_into(self.out, key);
        self.out.push('=');
        escape_key_into(self.out, value);
        self
    }

    fn field_key(&mut self, key: &str) {
        self.out.push(if self.fields == 0 { ' ' } else { ',' });
        self.fields += 1;
        escape_key_into(self.out, key);
        self.out.push('=');
    }

    /// A float field; NaN and infinities are left out.
    pub fn float(mut self, key: &str, value: f64) -> Line<'a> {
        if value.is_finite() {
            self.field_key(key);
            let _ = write!(self.out, "{value}");
        }
        self
    }

    pub fn float_opt(self, key: &str, value: Option<f64>) -> Line<'a> {
        match value {
            Some(value) => self.float(key, value),
            None => self,
        }
    }

    /// An integer field (`42i`); values past i64 are capped there.
    pub fn integer(mut self, key: &str, value: u64) -> Line<'a> {
        self.field_key(key);
        let _ = write!(self.out, "{}i", value.min(i64::MAX as u64));
        self
    }

    pub fn integer_opt(self, key: &str, value: Option<u64>) -> Line<'a> {
        match value {
            Some(value) => self.integer(key, value),
            None => self,
        }
    }

    /// Ends the line with its timestamp (seconds: the push asks for `precision=s`).
    /// Returns whether a line was written.
    pub fn finish(self, unix_seconds: u64) -> bool {
        if self.fields == 0 {
            self.out.truncate(self.start);
            return false;
        }
        let _ = writeln!(self.out, " {unix_seconds}");
        true
    }
}

/// Tag keys, tag values and field keys: `,`, `=` and space take a backslash.
fn escape_key_into(out: &mut String, text: &str) {
    for character in text.chars() {
        match character {
            ',' | '=' | ' ' => {
                out.push('\\');
                out.push(character);
            }
            other => push_control_escaped(out, other),
        }
    }
}

/// Tab, newline and carriage return as Telegraf writes them; other control characters
/// (which no protocol reader expects) are dropped.
fn push_control_escaped(out: &mut String, character: char) {
    match character {
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        other if other.is_control() => {}
        other => out.push(other),
    }
}

/// Appends `current`'s lines for `host` to `out`, CPU usage worked out against `previous`
/// (no `cpu` lines without one). Returns the number of lines.
pub fn encode_sample(
    previous: Option<&Sample>,
    current: &Sample,
    host: &str,
    out: &mut String,
) -> usize {
    let time = current.taken_unix_millis / 1000;
    let mut lines = 0;
    let mut count = |written: bool| lines += usize::from(written);

    if let Some(previous) = previous {
        if let (Some(before), Some(now)) = (previous.cpu_total, current.cpu_total) {
            count(cpu_line(out, "cpu-total", host, &before, &now, time));
        }
        for core in &current.cpus {
            if let Some(before) = previous.cpus.iter().find(|old| old.cpu == core.cpu) {
                let name = format!("cpu{}", core.cpu);
                count(cpu_line(out, &name, host, &before.times, &core.times, time));
            }
        }
    }

    let memory = |name: &str| current.memory_bytes(name);
    if let Some(total) = memory("MemTotal") {
        let free = memory("MemFree");
        let buffers = memory("Buffers");
        // gopsutil counts reclaimable slab as cache, and "used" as what is neither free
        // nor buffers nor cache.
        let cached = memory("Cached").map(|cached| cached + memory("SReclaimable").unwrap_or(0));
        let used = free.map(|free| {
            total
                .saturating_sub(free)
                .saturating_sub(buffers.unwrap_or(0))
                .saturating_sub(cached.unwrap_or(0))
        });
        let available = memory("MemAvailable");
        let percent = |part: u64| {
            if total > 0 {
                part as f64 * 100.0 / total as f64
            } else {
                f64::NAN
            }
        };
        count(
            Line::new(out, "mem")
                .tag("host", host)
                .integer("total", total)
                .integer_opt("available", available)
                .integer_opt("used", used)
                .integer_opt("free", free)
                .integer_opt("buffered", buffers)
                .integer_opt("cached", cached)
                .integer_opt("active", memory("Active"))
                .integer_opt("inactive", memory("Inactive"))
                .integer_opt("slab", memory("Slab"))
                .integer_opt("shared", memory("Shmem"))
                .integer_opt("dirty", memory("Dirty"))
                .integer_opt("mapped", memory("Mapped"))
                .integer_opt("commit_limit", memory("CommitLimit"))
                .integer_opt("committed_as", memory("Committed_AS"))
                .integer_opt("swap_total", memory("SwapTotal"))
                .integer_opt("swap_free", memory("SwapFree"))
                .integer_opt("swap_cached", memory("SwapCached"))
                .float_opt("used_percent", used.map(percent))
                .float_opt("available_percent", available.map(percent))
                .finish(time),
        );
    }
    if let (Some(total), Some(free)) = (memory("SwapTotal"), memory("SwapFree")) {
        let used = total.saturating_sub(free);
        count(
            Line::new(out, "swap")
                .tag("host", host)
                .integer("total", total)
                .integer("used", used)
                .integer("free", free)
                .float_opt(
                    "used_percent",
                    (total > 0).then(|| used as f64 * 100.0 / total as f64),
                )
                .finish(time),
        );
    }

    let mut system = Line::new(out, "system").tag("host", host);
    if let Some([one, five, fifteen]) = current.load {
        system = system
            .float("load1", one)
            .float("load5", five)
            .float("load15", fifteen);
    }
    if !current.cpus.is_empty() {
        system = system.integer("n_cpus", current.cpus.len() as u64);
    }
    system = system.integer_opt(
        "uptime",
        current.uptime_seconds.map(|seconds| seconds as u64),
    );
    count(system.finish(time));

    for filesystem in &current.filesystems {
        let used = filesystem.size_bytes.saturating_sub(filesystem.free_bytes);
        let usable = used + filesystem.avail_bytes;
        count(
            Line::new(out, "disk")
                .tag("device", filesystem.device.trim_start_matches("/dev/"))
                .tag("fstype", &filesystem.fstype)
                .tag("host", host)
                .tag("mode", if filesystem.read_only { "ro" } else { "rw" })
                .tag("path", &filesystem.mountpoint)
                .integer("total", filesystem.size_bytes)
                .integer("free", filesystem.avail_bytes)
                .integer("used", used)
                .float_opt(
                    "used_percent",
                    (usable > 0).then(|| used as f64 * 100.0 / usable as f64),
                )
                .integer("inodes_total", filesystem.files)
                .integer("inodes_free", filesystem.files_free)
                .integer(
                    "inodes_used",
                    filesystem.files.saturating_sub(filesystem.files_free),
                )
                .finish(time),
        );
    }

    let millis = |seconds: f64| (seconds * 1000.0).max(0.0) as u64;
    for disk in &current.disks {
        count(
            Line::new(out, "diskio")
                .tag("host", host)
                .tag("name", &disk.device)
                .integer("reads", disk.reads_completed)
                .integer("writes", disk.writes_completed)
                .integer("read_bytes", disk.read_bytes)
                .integer("write_bytes", disk.written_bytes)
                .integer("read_time", millis(disk.read_time_seconds))
                .integer("write_time", millis(disk.write_time_seconds))
                .integer("io_time", millis(disk.io_time_seconds))
                .integer("weighted_io_time", millis(disk.io_time_weighted_seconds))
                .integer("iops_in_progress", disk.io_now)
                .integer("merged_reads", disk.reads_merged)
                .integer("merged_writes", disk.writes_merged)
                .finish(time),
        );
    }

    for interface in current
        .interfaces
        .iter()
        .filter(|interface| interface.device != "lo")
    {
        count(
            Line::new(out, "net")
                .tag("host", host)
                .tag("interface", &interface.device)
                .integer("bytes_sent", interface.transmit_bytes)
                .integer("bytes_recv", interface.receive_bytes)
                .integer("packets_sent", interface.transmit_packets)
                .integer("packets_recv", interface.receive_packets)
                .integer("err_in", interface.receive_errs)
                .integer("err_out", interface.transmit_errs)
                .integer("drop_in", interface.receive_drop)
                .integer("drop_out", interface.transmit_drop)
                .finish(time),
        );
    }

    for zone in &current.thermal_zones {
        // Two zones of one type (two `cpu-thermal`s) would overwrite each other's points.
        let shared = current
            .thermal_zones
            .iter()
            .filter(|other| other.kind == zone.kind)
            .count()
            > 1;
        let sensor = if zone.kind.is_empty() || shared {
            format!("{}_zone{}", zone.kind, zone.zone)
                .trim_start_matches('_')
                .to_string()
        } else {
            zone.kind.clone()
        };
        count(
            Line::new(out, "temp")
                .tag("host", host)
                .tag("sensor", &sensor)
                .float("temp", zone.celsius)
                .finish(time),
        );
    }
    lines
}

/// One `cpu` line: each mode's share of the time between two samples, in percent.
fn cpu_line(
    out: &mut String,
    cpu: &str,
    host: &str,
    before: &CpuTimes,
    now: &CpuTimes,
    time: u64,
) -> bool {
    let total = now.total() - before.total();
    if total <= 0.0 {
        return false;
    }
    let share = |now: f64, before: f64| ((now - before) * 100.0 / total).clamp(0.0, 100.0);
    Line::new(out, "cpu")
        .tag("cpu", cpu)
        .tag("host", host)
        .float("usage_user", share(now.user, before.user))
        .float("usage_system", share(now.system, before.system))
        .float("usage_idle", share(now.idle, before.idle))
        .float("usage_nice", share(now.nice, before.nice))
        .float("usage_iowait", share(now.iowait, before.iowait))
        .float("usage_irq", share(now.irq, before.irq))
        .float("usage_softirq", share(now.softirq, before.softirq))
        .float("usage_steal", share(now.steal, before.steal))
        .finish(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{
        CoreTimes, CpuTimes, Disk, Filesystem, Interface, MemoryField, ThermalZone,
    };

    #[test]
    fn escaping_follows_the_line_protocol() {
        let mut out = String::new();
        assert!(
            Line::new(&mut out, "my measure,ment")
                .tag("tag key", "a,b=c d")
                .tag("empty", "")
                .tag("trailing", "ends\\\\")
                .tag("only", "\\")
                .tag("lines", "one\ntwo\tthree\r\u{7}")
                .float("field,key=x", 1.5)
                .float("nan", f64::NAN)
                .float("infinite", f64::INFINITY)
                .integer("count", 42)
                .integer("huge", u64::MAX)
                .finish(1_800_000_000)
        );
        assert_eq!(
            out,
            "my\\ measure\\,ment,tag\\ key=a\\,b\\=c\\ d,trailing=ends,lines=one\\ntwo\\tthree\\r field\\,key\\=x=1.5,count=42i,huge=9223372036854775807i 1800000000\n"
        );
        // A line without a field is not written at all.
        let before = out.clone();
        assert!(
            !Line::new(&mut out, "empty")
                .tag("host", "n1")
                .float("x", f64::NAN)
                .finish(1)
        );
        assert_eq!(out, before);
    }

    fn sample(at_millis: u64, user: f64, idle: f64) -> Sample {
        let times = CpuTimes {
            user,
            system: 10.0,
            idle,
            ..CpuTimes::default()
        };
        Sample {
            taken_unix_millis: at_millis,
            cpu_total: Some(times),
            cpus: vec![CoreTimes { cpu: 0, times }],
            load: Some([0.5, 0.25, 0.125]),
            memory: [
                ("MemTotal", 1000),
                ("MemFree", 100),
                ("MemAvailable", 600),
                ("Buffers", 50),
                ("Cached", 200),
                ("SReclaimable", 50),
                ("SwapTotal", 400),
                ("SwapFree", 300),
            ]
            .into_iter()
            .map(|(name, value)| MemoryField {
                name: name.to_string(),
                value,
                bytes: true,
            })
            .collect(),
            filesystems: vec![Filesystem {
                device: "/dev/mmcblk0p2".into(),
                fstype: "ext4".into(),
                mountpoint: "/mnt/my disk".into(),
                size_bytes: 1000,
                free_bytes: 300,
                avail_bytes: 200,
                files: 100,
                files_free: 40,
                read_only: false,
            }],
            disks: vec![Disk {
                device: "mmcblk0".into(),
                reads_completed: 5,
                read_bytes: 4096,
                read_time_seconds: 1.5,
                ..Disk::default()
            }],
            interfaces: vec![
                Interface {
                    device: "lo".into(),
                    receive_bytes: 1,
                    ..Interface::default()
                },
                Interface {
                    device: "eth0".into(),
                    receive_bytes: 2000,
                    transmit_bytes: 1000,
                    receive_errs: 3,
                    ..Interface::default()
                },
            ],
            uptime_seconds: Some(1234.7),
            thermal_zones: vec![ThermalZone {
                zone: 0,
                kind: "cpu-thermal".into(),
                celsius: 48.312,
            }],
            ..Sample::default()
        }
    }

    #[test]
    fn a_sample_becomes_telegrafs_measurements() {
        let previous = sample(1_800_000_000_000, 100.0, 880.0);
        let current = sample(1_800_000_001_000, 130.0, 950.0);
        let mut out = String::new();
        let lines = encode_sample(Some(&previous), &current, "pi 1", &mut out);
        let expected = [
            "cpu,cpu=cpu-total,host=pi\\ 1 usage_user=30,usage_system=0,usage_idle=70,usage_nice=0,usage_iowait=0,usage_irq=0,usage_softirq=0,usage_steal=0 1800000001",
            "cpu,cpu=cpu0,host=pi\\ 1 usage_user=30,usage_system=0,usage_idle=70,usage_nice=0,usage_iowait=0,usage_irq=0,usage_softirq=0,usage_steal=0 1800000001",
            "mem,host=pi\\ 1 total=1000i,available=600i,used=600i,free=100i,buffered=50i,cached=250i,swap_total=400i,swap_free=300i,used_percent=60,available_percent=60 1800000001",
            "swap,host=pi\\ 1 total=400i,used=100i,free=300i,used_percent=25 1800000001",
            "system,host=pi\\ 1 load1=0.5,load5=0.25,load15=0.125,n_cpus=1i,uptime=1234i 1800000001",
            "disk,device=mmcblk0p2,fstype=ext4,host=pi\\ 1,mode=rw,path=/mnt/my\\ disk total=1000i,free=200i,used=700i,used_percent=77.77777777777777,inodes_total=100i,inodes_free=40i,inodes_used=60i 1800000001",
            "diskio,host=pi\\ 1,name=mmcblk0 reads=5i,writes=0i,read_bytes=4096i,write_bytes=0i,read_time=1500i,write_time=0i,io_time=0i,weighted_io_time=0i,iops_in_progress=0i,merged_reads=0i,merged_writes=0i 1800000001",
            "net,host=pi\\ 1,interface=eth0 bytes_sent=1000i,bytes_recv=2000i,packets_sent=0i,packets_recv=0i,err_in=3i,err_out=0i,drop_in=0i,drop_out=0i 1800000001",
            "temp,host=pi\\ 1,sensor=cpu-thermal temp=48.312 1800000001",
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), expected);
        assert_eq!(lines, expected.len());

        // Without a previous sample there is no CPU usage yet; the rest is there.
        let mut first = String::new();
        let lines = encode_sample(None, &current, "n1", &mut first);
        assert_eq!(lines, expected.len() - 2);
        assert!(!first.contains("cpu,"));

        // A node without sensors writes no empty lines.
        let mut bare = String::new();
        let lines = encode_sample(None, &Sample::default(), "n1", &mut bare);
        assert_eq!((lines, bare.as_str()), (0, ""));
    }

    #[test]
    fn thermal_zones_of_one_type_stay_apart() {
        let zones = |kinds: [&str; 2]| Sample {
            thermal_zones: kinds
                .iter()
                .enumerate()
                .map(|(zone, kind)| ThermalZone {
                    zone: zone as u32,
                    kind: kind.to_string(),
                    celsius: 40.0,
                })
                .collect(),
            ..Sample::default()
        };
        let mut out = String::new();
        encode_sample(None, &zones(["cpu-thermal", "cpu-thermal"]), "n1", &mut out);
        encode_sample(None, &zones(["", "gpu"]), "n1", &mut out);
        let sensors: Vec<&str> = out
            .lines()
            .filter_map(|line| line.split(',').nth(2)?.split(' ').next())
            .collect();
        assert_eq!(
            sensors,
            [
                "sensor=cpu-thermal_zone0",
                "sensor=cpu-thermal_zone1",
                "sensor=zone0",
                "sensor=gpu"
            ]
        );
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// How many bytes a second of this machine's samples makes, and how long encoding it
    /// takes (`cargo test --release -p bramble-monitor -- --ignored --nocapture
    /// encode_cost`): figures for the backlog's bounds, not an assertion.
    #[test]
    #[ignore]
    fn encode_cost() {
        let mut collector = crate::collector::Collector::new();
        let mut previous = Sample::default();
        collector.collect(&mut previous);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let mut current = Sample::default();
        collector.collect(&mut current);
        let mut out = String::new();
        let lines = encode_sample(Some(&previous), &current, "n1", &mut out);
        let rounds = 1000;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            out.clear();
            encode_sample(Some(&previous), &current, "n1", &mut out);
        }
        eprintln!(
            "one sample: {lines} lines, {} bytes, encoded in {:?}",
            out.len(),
            started.elapsed() / rounds
        );
    }
}
