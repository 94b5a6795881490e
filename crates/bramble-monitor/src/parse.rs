//! Parsers for the /proc and /sys files the collectors read. Each takes the file's text and
//! returns what it could read: a line that does not parse is skipped with a debug log, so
//! one odd kernel never costs the rest of a sample, and nothing here panics on any input.

use tracing::debug;

use crate::sample::{CoreTimes, CpuTimes, Disk, Interface, MemoryField};

/// The parts of /proc/stat the monitor uses.
#[derive(Debug, Default, PartialEq)]
pub struct ProcStat {
    pub total: Option<CpuTimes>,
    pub cores: Vec<CoreTimes>,
    pub boot_time_seconds: Option<u64>,
}

/// Parses the `cpu` lines of /proc/stat (`cpu  user nice system idle iowait irq softirq
/// steal guest guest_nice`, in ticks) and `btime`. Guest time is already counted in user
/// and nice, so, like node_exporter's `node_cpu_seconds_total`, it is not added again.
pub fn proc_stat(text: &str, ticks_per_second: f64, cores: &mut Vec<CoreTimes>) -> ProcStat {
    cores.clear();
    let mut stat = ProcStat::default();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        if key == "btime" {
            stat.boot_time_seconds = fields.next().and_then(|value| value.parse().ok());
            continue;
        }
        let Some(cpu) = key.strip_prefix("cpu") else {
            continue;
        };
        let mut ticks = [0u64; 8];
        let mut read = 0;
        for (slot, field) in ticks.iter_mut().zip(fields) {
            match field.parse() {
                Ok(value) => {
                    *slot = value;
                    read += 1;
                }
                Err(_) => break,
            }
        }
        // Kernels before 2.6.11 had no steal column; four columns is the oldest format.
        if read < 4 {
            debug!(line, "skipping a /proc/stat cpu line that does not parse");
            continue;
        }
        let seconds = |index: usize| ticks[index] as f64 / ticks_per_second;
        let times = CpuTimes {
            user: seconds(0),
            nice: seconds(1),
            system: seconds(2),
            idle: seconds(3),
            iowait: seconds(4),
            irq: seconds(5),
            softirq: seconds(6),
            steal: seconds(7),
        };
        if cpu.is_empty() {
            stat.total = Some(times);
        } else if let Ok(number) = cpu.parse::<u32>() {
            cores.push(CoreTimes { cpu: number, times });
        } else {
            debug!(line, "skipping a /proc/stat line with an odd cpu name");
        }
    }
    stat.cores = std::mem::take(cores);
    stat
}

/// /proc/loadavg: `0.52 0.58 0.59 1/467 12345`.
pub fn loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_ascii_whitespace();
    let mut load = [0.0f64; 3];
    for slot in &mut load {
        *slot = fields.next()?.parse().ok()?;
        if !slot.is_finite() || *slot < 0.0 {
            return None;
        }
    }
    Some(load)
}

/// /proc/uptime: `30726.02 21990.96` (seconds up, seconds idle summed over cores).
pub fn uptime(text: &str) -> Option<f64> {
    let seconds: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds)
}

/// /proc/meminfo: `MemAvailable:   23224580 kB`, `HugePages_Total:       0`. Names follow
/// node_exporter: `Active(anon)` becomes `Active_anon`; kB values become bytes.
pub fn meminfo(text: &str, fields: &mut Vec<MemoryField>) {
    fields.clear();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_ascii_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            debug!(line, "skipping a /proc/meminfo line that does not parse");
            continue;
        };
        let bytes = match parts.next() {
            None => false,
            Some("kB") => true,
            Some(_) => {
                debug!(line, "skipping a /proc/meminfo line with an unknown unit");
                continue;
            }
        };
        let name = metric_safe_memory_name(name);
        if name.is_empty() {
            continue;
        }
        fields.push(MemoryField {
            name,
            value: if bytes {
                value.saturating_mul(1024)
            } else {
                value
            },
            bytes,
        });
    }
}

/// `Active(anon)` -> `Active_anon`, as node_exporter names it; anything but letters,
/// digits and `_` is dropped so the name is always a valid metric name part.
fn metric_safe_memory_name(name: &str) -> String {
    let mut safe = String::with_capacity(name.len() + 1);
    for character in name.trim().chars() {
        match character {
            '(' => safe.push('_'),
            character if character.is_ascii_alphanumeric() || character == '_' => {
                safe.push(character)
            }
            _ => {}
        }
    }
    safe
}

/// Whether a block device is left out of the disk figures, as node_exporter's default
/// `--collector.diskstats.device-exclude` does: RAM disks, loop devices, floppies and
/// partitions of whole disks that are counted already (`sda1`, `nvme0n1p1`,
/// `mmcblk0p1` — node_exporter keeps the last; we drop it so the SD card is counted once).
pub fn is_ignored_disk(name: &str) -> bool {
    let digits_after = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|byte| byte.is_ascii_digit()))
    };
    if ["ram", "zram", "loop", "fd"]
        .iter()
        .any(|prefix| digits_after(prefix))
    {
        return true;
    }
    // sda1, hdb2, vda1, xvda1: a disk letter then a partition number.
    for prefix in ["sd", "hd", "vd", "xvd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            let digits = &rest[letters..];
            if letters > 0 && !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
            {
                return true;
            }
        }
    }
    // nvme0n1p1 and mmcblk0p1: a partition of a disk.
    for prefix in ["nvme", "mmcblk"] {
        if let Some(rest) = name.strip_prefix(prefix)
            && let Some((_, partition)) = rest.rsplit_once('p')
            && !partition.is_empty()
            && partition.bytes().all(|byte| byte.is_ascii_digit())
        {
            return true;
        }
    }
    false
}

/// /proc/diskstats: `254 0 vda 5362705 575103 600561698 7314943 19021792 1099061 ...`.
/// Sectors are always 512 bytes there, whatever the device's own sector size.
pub fn diskstats(text: &str, disks: &mut Vec<Disk>) {
    const SECTOR_BYTES: u64 = 512;
    disks.clear();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace().skip(2);
        let Some(device) = fields.next() else {
            continue;
        };
        if is_ignored_disk(device) {
            continue;
        }
        let mut values = [0u64; 11];
        let mut read = 0;
        for (slot, field) in values.iter_mut().zip(fields) {
            match field.parse() {
                Ok(value) => {
                    *slot = value;
                    read += 1;
                }
                Err(_) => break,
            }
        }
        if read < 11 {
            debug!(line, "skipping a /proc/diskstats line that does not parse");
            continue;
        }
        let millis = |value: u64| value as f64 / 1000.0;
        disks.push(Disk {
            device: device.to_string(),
            reads_completed: values[0],
            reads_merged: values[1],
            read_bytes: values[2].saturating_mul(SECTOR_BYTES),
            read_time_seconds: millis(values[3]),
            writes_completed: values[4],
            writes_merged: values[5],
            written_bytes: values[6].saturating_mul(SECTOR_BYTES),
            write_time_seconds: millis(values[7]),
            io_now: values[8],
            io_time_seconds: millis(values[9]),
            io_time_weighted_seconds: millis(values[10]),
        });
    }
}

/// /proc/net/dev: two header lines, then `  eth0: rx_bytes rx_packets rx_errs rx_drop
/// fifo frame compressed multicast tx_bytes tx_packets tx_errs tx_drop ...`.
pub fn net_dev(text: &str, interfaces: &mut Vec<Interface>) {
    interfaces.clear();
    for line in text.lines() {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.contains('|') || name.contains(' ') {
            continue;
        }
        let mut values = [0u64; 16];
        let mut read = 0;
        for (slot, field) in values.iter_mut().zip(counters.split_ascii_whitespace()) {
            match field.parse() {
                Ok(value) => {
                    *slot = value;
                    read += 1;
                }
                Err(_) => break,
            }
        }
        if read < 12 {
            debug!(line, "skipping a /proc/net/dev line that does not parse");
            continue;
        }
        interfaces.push(Interface {
            device: name.to_string(),
            receive_bytes: values[0],
            receive_packets: values[1],
            receive_errs: values[2],
            receive_drop: values[3],
            transmit_bytes: values[8],
            transmit_packets: values[9],
            transmit_errs: values[10],
            transmit_drop: values[11],
        });
    }
}

/// One line of /proc/self/mounts.
#[derive(Debug, PartialEq)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub read_only: bool,
}

/// Filesystem kinds `node_filesystem_*` skips, as node_exporter 1.5's default
/// `--collector.filesystem.fs-types-exclude`: nothing on them is disk space.
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// Whether node_exporter's default `--collector.filesystem.mount-points-exclude` skips it:
/// `^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)`.
fn is_ignored_mountpoint(mountpoint: &str) -> bool {
    let under = |root: &str| {
        mountpoint == root
            || mountpoint
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let strictly_under = |root: &str| {
        mountpoint
            .strip_prefix(root)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
    };
    under("/dev")
        || under("/proc")
        || under("/sys")
        || strictly_under("/run/credentials")
        || strictly_under("/var/lib/docker")
        || strictly_under("/var/lib/containers/storage")
}

/// The real filesystems of /proc/self/mounts, the last mount of each mount point only (the
/// one a path resolves to).
pub fn mounts(text: &str) -> Vec<Mount> {
    let mut found: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 4 {
            debug!(line, "skipping a mounts line that does not parse");
            continue;
        }
        let fstype = fields[2];
        if PSEUDO_FILESYSTEMS.contains(&fstype) {
            continue;
        }
        let mountpoint = bramble_util::mounts::unescape_field(fields[1]);
        if is_ignored_mountpoint(&mountpoint) {
            continue;
        }
        found.retain(|mount| mount.mountpoint != mountpoint);
        found.push(Mount {
            device: bramble_util::mounts::unescape_field(fields[0]),
            mountpoint,
            fstype: fstype.to_string(),
            read_only: fields[3].split(',').any(|option| option == "ro"),
        });
    }
    found
}

/// A thermal zone's `temp` file: millidegrees Celsius.
pub fn millidegrees(text: &str) -> Option<f64> {
    let value: i64 = text.trim().parse().ok()?;
    // Below absolute zero or above 200 °C is a broken sensor, not a temperature.
    let celsius = value as f64 / 1000.0;
    (-273.0..=200.0).contains(&celsius).then_some(celsius)
}

/// cpufreq's `scaling_cur_freq`: kHz.
pub fn kilohertz(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .and_then(|khz| khz.checked_mul(1000))
}

/// The firmware's throttled word: `0x50005` (sysfs prints hex; `vcgencmd get_throttled`
/// prints `throttled=0x50005`).
pub fn throttled(text: &str) -> Option<u32> {
    let text = text.trim();
    let text = text.strip_prefix("throttled=").unwrap_or(text);
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u32::from_str_radix(digits, 16).ok()
}

/// /proc/self/stat: utime and stime (fields 14 and 15) in ticks, threads (field 20). The
/// command name (field 2) may hold spaces and parentheses, so fields count from the last
/// `)`.
pub fn self_stat(text: &str, ticks_per_second: f64) -> Option<(f64, u64)> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest starts at field 3 (state): field n is fields[n - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let threads: u64 = fields.get(17)?.parse().ok()?;
    Some(((utime + stime) as f64 / ticks_per_second, threads))
}

/// /proc/self/status's `VmRSS:   12345 kB`, in bytes.
pub fn resident_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: u64 = line
        .trim_start_matches("VmRSS:")
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    kilobytes.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's /proc/stat (a 2-core x86_64 VM), shortened after `btime`.
    const PROC_STAT: &str = "cpu  2881687 19292 829692 2199096 40604 0 137780 2861 0 0
cpu0 1414346 8771 401804 1151626 12305 0 65592 1377 0 0
cpu1 1467341 10521 427888 1047470 28298 0 72188 1484 0 0
intr 74758244 0 0 0 0 0 0 0 0 0 0 0
ctxt 123456789
btime 1795995148
processes 16629
procs_running 3
procs_blocked 0
softirq 1 2 3 4 5 6 7 8 9 10 11
";

    #[test]
    fn proc_stat_gives_total_cores_and_boot_time() {
        let mut cores = Vec::new();
        let stat = proc_stat(PROC_STAT, 100.0, &mut cores);
        let total = stat.total.expect("the cpu line");
        assert_eq!(total.user, 28816.87);
        assert_eq!(total.idle, 21990.96);
        assert_eq!(total.steal, 28.61);
        assert_eq!(stat.cores.len(), 2);
        assert_eq!(stat.cores[1].cpu, 1);
        assert_eq!(stat.cores[1].times.iowait, 282.98);
        assert_eq!(stat.boot_time_seconds, Some(1795995148));
    }

    #[test]
    fn proc_stat_skips_broken_lines() {
        let mut cores = Vec::new();
        let stat = proc_stat(
            "cpu 1 2\ncpuX 1 2 3 4\ncpu0 1 2 3 4\nbtime x\n",
            100.0,
            &mut cores,
        );
        assert_eq!(stat.total, None);
        assert_eq!(stat.cores.len(), 1);
        assert_eq!(stat.boot_time_seconds, None);
    }

    #[test]
    fn loadavg_and_uptime() {
        assert_eq!(
            loadavg("2.67 2.95 3.53 3/107 16629\n"),
            Some([2.67, 2.95, 3.53])
        );
        assert_eq!(loadavg("2.67 nan 3.53"), None);
        assert_eq!(loadavg(""), None);
        assert_eq!(uptime("30726.02 21990.96\n"), Some(30726.02));
        assert_eq!(uptime("-1 0"), None);
    }

    #[test]
    fn meminfo_names_and_units_follow_node_exporter() {
        // The top of this machine's /proc/meminfo and lines from node_exporter's fixture.
        let text = "MemTotal:       24684092 kB
MemFree:          419228 kB
MemAvailable:   23224580 kB
Buffers:          117688 kB
Cached:         22484260 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Active(anon):       1564 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
Broken line without colon
Weird:  12 MB
";
        let mut fields = Vec::new();
        meminfo(text, &mut fields);
        let find = |name: &str| fields.iter().find(|field| field.name == name).cloned();
        assert_eq!(find("MemAvailable").map(|f| f.value), Some(23224580 * 1024));
        assert_eq!(find("Active_anon").map(|f| f.value), Some(1564 * 1024));
        let huge = find("HugePages_Total").expect("a unitless field");
        assert!(!huge.bytes);
        assert_eq!(find("Weird"), None);
        assert_eq!(fields.len(), 10);
    }

    #[test]
    fn diskstats_skips_loop_ram_and_partitions() {
        // This machine's (a virtio disk, loop and zram devices) and a Pi's SD card.
        let text = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 5362705 575103 600561698 7314943 19021792 1099061 997597528 5377444 0 1067340 13002161 1576092 1198 713985960 188748 2394899 121023
 254       1 vda1 5 0 10 0 0 0 0 0 0 0 0
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 179       0 mmcblk0 20213 10346 1564390 16752 3219 4097 75682 11836 0 20640 29476
 179       1 mmcblk0p1 143 512 6986 176 1 0 1 0 0 200 176
   1       0 ram0 0 0 0 0 0 0 0 0 0 0 0
 259       0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11
 259       1 nvme0n1p1 1 2 3 4 5 6 7 8 9 10 11
   8       0 sda 1 2 3 4 5 6 7 8 9 10
";
        let mut disks = Vec::new();
        diskstats(text, &mut disks);
        let names: Vec<&str> = disks.iter().map(|disk| disk.device.as_str()).collect();
        assert_eq!(names, ["vda", "mmcblk0", "nvme0n1"]);
        assert_eq!(disks[0].read_bytes, 600561698 * 512);
        assert_eq!(disks[0].written_bytes, 997597528 * 512);
        assert_eq!(disks[0].io_time_seconds, 1067.34);
        assert_eq!(disks[1].reads_completed, 20213);
    }

    #[test]
    fn net_dev_reads_receive_and_transmit() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 3044033734366 473573433    0 3904    0     0          0         0 3044033734366 473573433    0    0    0     0       0          0
  eth0: 68210035552 520993275 1 2 3 4 5 6 9434032 162391 7 8 0 0 0 0
  bad: 1 2 3
";
        let mut interfaces = Vec::new();
        net_dev(text, &mut interfaces);
        assert_eq!(interfaces.len(), 2);
        assert_eq!(interfaces[0].receive_drop, 3904);
        let eth0 = &interfaces[1];
        assert_eq!(eth0.device, "eth0");
        assert_eq!(eth0.receive_bytes, 68210035552);
        assert_eq!(eth0.receive_errs, 1);
        assert_eq!(eth0.transmit_bytes, 9434032);
        assert_eq!(eth0.transmit_errs, 7);
        assert_eq!(eth0.transmit_drop, 8);
    }

    #[test]
    fn mounts_keep_real_filesystems_once() {
        let text = "proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
devtmpfs /dev devtmpfs rw,relatime,size=12334492k 0 0
overlay / overlay rw,relatime,lowerdir=/l 0 0
/dev/vda / ext4 rw,relatime 0 0
/dev/vda /run/netns ext4 rw,relatime 0 0
tmpfs /run tmpfs rw,nosuid 0 0
/dev/mmcblk0p1 /boot/firmware vfat ro,relatime 0 0
/dev/sdb1 /mnt/my\\040disk ext4 rw 0 0
/dev/sdc1 /var/lib/docker/overlay ext4 rw 0 0
short line
";
        let found = mounts(text);
        let points: Vec<&str> = found
            .iter()
            .map(|mount| mount.mountpoint.as_str())
            .collect();
        assert_eq!(
            points,
            ["/", "/run/netns", "/run", "/boot/firmware", "/mnt/my disk"]
        );
        assert_eq!(found[0].device, "/dev/vda");
        assert!(found[3].read_only);
        assert!(!found[0].read_only);
    }

    #[test]
    fn sensors_and_throttling() {
        assert_eq!(millidegrees("48312\n"), Some(48.312));
        assert_eq!(millidegrees("-5000"), Some(-5.0));
        assert_eq!(millidegrees("999999999"), None);
        assert_eq!(millidegrees("garbage"), None);
        assert_eq!(kilohertz("1500000\n"), Some(1_500_000_000));
        assert_eq!(kilohertz("x"), None);
        assert_eq!(throttled("50005\n"), Some(0x50005));
        assert_eq!(throttled("throttled=0x50005\n"), Some(0x50005));
        assert_eq!(throttled("0x0"), Some(0));
        assert_eq!(throttled("nope"), None);
    }

    #[test]
    fn own_process_figures() {
        let stat = "16641 (my (odd) name) R 16624 16624 12799 0 -1 4194304 126 0 0 0 250 50 0 0 20 0 7 0 3072603 3932160 552 18446744073709551615";
        assert_eq!(self_stat(stat, 100.0), Some((3.0, 7)));
        assert_eq!(self_stat("garbage", 100.0), None);
        let status = "Name:\tbramble\nVmPeak:\t  100 kB\nVmRSS:\t   15360 kB\nThreads:\t7\n";
        assert_eq!(resident_bytes(status), Some(15360 * 1024));
        assert_eq!(resident_bytes("Name: x\n"), None);
    }
}
