//! The collectors: one round reads /proc and /sys into a [`Sample`]. It runs every second
//! on boards as small as a Pi Zero, so it keeps one text buffer for every file it reads
//! (cleared, never shrunk) and reuses the previous sample's lists; each read is bounded,
//! so a file that grows without limit (a pathological mount table) cannot take the memory.
//! Paths are relative to a root (`/` on a node) so tests can point it at a copy.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::parse;
use crate::sample::{CpuFrequency, Filesystem, ProcessFigures, Sample, ThermalZone};

/// The most any one file may hold: /proc/stat of a 64-core board with its interrupt lines
/// is well under this; a mount table of a few thousand mounts fits.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Thermal zones and cores looked at, at most.
const MAX_SENSORS: usize = 256;

/// Reads the node's figures; create once, call [`Collector::collect`] each second.
pub struct Collector {
    root: PathBuf,
    ticks_per_second: f64,
    buffer: String,
    /// The `vcgencmd` binary, if the firmware file is absent and the binary exists.
    vcgencmd: Option<PathBuf>,
    /// The thermal zone directories and cpufreq files found at start (sensors do not come
    /// and go while the system runs; listing /sys each second would cost more than reading).
    thermal_zones: Vec<(u32, PathBuf)>,
    frequency_files: Vec<(u32, PathBuf)>,
}

impl Collector {
    /// A collector for this machine.
    pub fn new() -> Collector {
        Collector::with_root(Path::new("/"))
    }

    /// A collector reading `root/proc/...` and `root/sys/...`.
    pub fn with_root(root: &Path) -> Collector {
        // SAFETY: sysconf has no preconditions; it only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks_per_second = if ticks > 0 { ticks as f64 } else { 100.0 };
        let firmware = root.join("sys/devices/platform/soc/soc:firmware/get_throttled");
        let vcgencmd = if firmware.exists() || root != Path::new("/") {
            None
        } else {
            ["/usr/bin/vcgencmd", "/opt/vc/bin/vcgencmd"]
                .iter()
                .map(PathBuf::from)
                .find(|path| path.exists())
        };
        Collector {
            thermal_zones: numbered_entries(&root.join("sys/class/thermal"), "thermal_zone"),
            frequency_files: numbered_entries(&root.join("sys/devices/system/cpu"), "cpu")
                .into_iter()
                .map(|(cpu, dir)| (cpu, dir.join("cpufreq/scaling_cur_freq")))
                .filter(|(_, file)| file.exists())
                .collect(),
            root: root.to_path_buf(),
            ticks_per_second,
            buffer: String::with_capacity(16 * 1024),
            vcgencmd,
        }
    }

    /// Reads `relative` under the root into the shared buffer; false if it cannot.
    fn read(&mut self, relative: &str) -> bool {
        let path = self.root.join(relative);
        read_bounded_into(&path, &mut self.buffer)
    }

    /// One round of every collector, written over `sample` (its lists keep their memory).
    pub fn collect(&mut self, sample: &mut Sample) {
        sample.taken_unix_millis = bramble_util::time::unix_millis();

        if self.read("proc/stat") {
            let stat = parse::proc_stat(
                &self.buffer,
                self.ticks_per_second,
                &mut std::mem::take(&mut sample.cpus),
            );
            sample.cpu_total = stat.total;
            sample.cpus = stat.cores;
            sample.boot_time_seconds = stat.boot_time_seconds;
        } else {
            sample.cpu_total = None;
            sample.cpus.clear();
            sample.boot_time_seconds = None;
        }
        sample.load = if self.read("proc/loadavg") {
            parse::loadavg(&self.buffer)
        } else {
            None
        };
        sample.uptime_seconds = if self.read("proc/uptime") {
            parse::uptime(&self.buffer)
        } else {
            None
        };
        if self.read("proc/meminfo") {
            parse::meminfo(&self.buffer, &mut sample.memory);
        } else {
            sample.memory.clear();
        }
        if self.read("proc/diskstats") {
            parse::diskstats(&self.buffer, &mut sample.disks);
        } else {
            sample.disks.clear();
        }
        if self.read("proc/net/dev") {
            parse::net_dev(&self.buffer, &mut sample.interfaces);
        } else {
            sample.interfaces.clear();
        }
        self.filesystems(sample);
        self.sensors(sample);
        sample.throttled = self.throttled();
        sample.process = self.own_process();
    }

    fn filesystems(&mut self, sample: &mut Sample) {
        sample.filesystems.clear();
        sample.root_used_percent = filesystem_usage(&self.root).and_then(|usage| {
            // `df`'s Use%: used over what users can have (used + available).
            let used = usage.size_bytes.saturating_sub(usage.free_bytes);
            let usable = used + usage.avail_bytes;
            (usable > 0).then(|| used as f64 * 100.0 / usable as f64)
        });
        if !self.read("proc/self/mounts") {
            return;
        }
        for mount in parse::mounts(&self.buffer) {
            let path = self.root.join(mount.mountpoint.trim_start_matches('/'));
            let Some(usage) = filesystem_usage(&path) else {
                continue;
            };
            sample.filesystems.push(Filesystem {
                device: mount.device,
                fstype: mount.fstype,
                mountpoint: mount.mountpoint,
                read_only: mount.read_only,
                ..usage
            });
        }
    }

    fn sensors(&mut self, sample: &mut Sample) {
        sample.thermal_zones.clear();
        for index in 0..self.thermal_zones.len() {
            let (zone, dir) = &self.thermal_zones[index];
            let (zone, temp, kind_file) = (*zone, dir.join("temp"), dir.join("type"));
            if !read_bounded_into(&temp, &mut self.buffer) {
                continue;
            }
            let Some(celsius) = parse::millidegrees(&self.buffer) else {
                debug!(
                    zone,
                    "skipping a thermal zone whose temperature does not parse"
                );
                continue;
            };
            let kind = if read_bounded_into(&kind_file, &mut self.buffer) {
                self.buffer.trim().to_string()
            } else {
                String::new()
            };
            sample.thermal_zones.push(ThermalZone {
                zone,
                kind,
                celsius,
            });
        }
        sample.cpu_frequencies.clear();
        for index in 0..self.frequency_files.len() {
            let (cpu, file) = &self.frequency_files[index];
            let (cpu, file) = (*cpu, file.clone());
            if read_bounded_into(&file, &mut self.buffer)
                && let Some(hertz) = parse::kilohertz(&self.buffer)
            {
                sample.cpu_frequencies.push(CpuFrequency { cpu, hertz });
            }
        }
    }

    /// The Pi firmware's throttling word: sysfs if the kernel has it, else `vcgencmd`.
    fn throttled(&mut self) -> Option<u32> {
        if self.read("sys/devices/platform/soc/soc:firmware/get_throttled") {
            return parse::throttled(&self.buffer);
        }
        let vcgencmd = self.vcgencmd.clone()?;
        let word = run_vcgencmd(&vcgencmd);
        if word.is_none() {
            // Without access to the firmware (no /dev/vchiq in a container, say) it would
            // fail every second: asked once, then left alone.
            debug!(path = %vcgencmd.display(), "vcgencmd get_throttled gave nothing; not asking again");
            self.vcgencmd = None;
        }
        word
    }

    fn own_process(&mut self) -> Option<ProcessFigures> {
        // Always this process's own files, whatever the root.
        if !read_bounded_into(Path::new("/proc/self/stat"), &mut self.buffer) {
            return None;
        }
        let (cpu_seconds, threads) = parse::self_stat(&self.buffer, self.ticks_per_second)?;
        if !read_bounded_into(Path::new("/proc/self/status"), &mut self.buffer) {
            return None;
        }
        Some(ProcessFigures {
            resident_bytes: parse::resident_bytes(&self.buffer)?,
            cpu_seconds,
            threads,
        })
    }
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}

/// Reads at most [`MAX_FILE_BYTES`] of `path` into `buffer` (cleared first). A file that
/// is larger is refused rather than cut, since a cut table would parse into wrong totals.
fn read_bounded_into(path: &Path, buffer: &mut String) -> bool {
    buffer.clear();
    let Ok(file) = File::open(path) else {
        return false;
    };
    match file.take(MAX_FILE_BYTES + 1).read_to_string(buffer) {
        Ok(length) if length as u64 <= MAX_FILE_BYTES => true,
        Ok(_) => {
            debug!(path = %path.display(), "skipping a file larger than {MAX_FILE_BYTES} bytes");
            buffer.clear();
            false
        }
        Err(error) => {
            debug!(path = %path.display(), %error, "could not read");
            buffer.clear();
            false
        }
    }
}

/// `vcgencmd get_throttled`: a mailbox call to the firmware, a few milliseconds on the
/// collectors' blocking thread. Bounded in time (killed after a second) and in output (the
/// answer is one short line; more is refused).
fn run_vcgencmd(path: &Path) -> Option<u32> {
    const MAX_OUTPUT: u64 = 256;
    let mut child = Command::new(path)
        .arg("get_throttled")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut output = String::new();
    child
        .stdout
        .take()?
        .take(MAX_OUTPUT + 1)
        .read_to_string(&mut output)
        .ok()?;
    if !status.success() || output.len() as u64 > MAX_OUTPUT {
        return None;
    }
    parse::throttled(&output)
}

/// `dir/<prefix><number>` entries, sorted by number (thermal_zone0, cpu3).
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let number = name.to_str()?.strip_prefix(prefix)?.parse().ok()?;
            Some((number, entry.path()))
        })
        .take(MAX_SENSORS)
        .collect();
    found.sort();
    found
}

/// statvfs of `path` (sizes only; device, kind and mount point are filled by the caller).
/// A hung network mount would block here, as it blocks `df`: the collectors run on a
/// blocking thread of their own for that reason, never on the agent's runtime.
fn filesystem_usage(path: &Path) -> Option<Filesystem> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut bytes = path.as_os_str().as_bytes().to_vec();
    if bytes.contains(&0) {
        return None;
    }
    bytes.push(0);
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `bytes` is NUL-terminated without interior NULs; `stat` is a valid place to
    // write one statvfs, read only after the call succeeded.
    let stat = unsafe {
        if libc::statvfs(bytes.as_ptr().cast(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    let block = stat.f_frsize as u64;
    Some(Filesystem {
        device: String::new(),
        fstype: String::new(),
        mountpoint: String::new(),
        size_bytes: (stat.f_blocks as u64).saturating_mul(block),
        free_bytes: (stat.f_bfree as u64).saturating_mul(block),
        avail_bytes: (stat.f_bavail as u64).saturating_mul(block),
        files: stat.f_files as u64,
        files_free: stat.f_ffree as u64,
        read_only: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_this_machine() {
        let mut collector = Collector::new();
        let mut sample = Sample::default();
        collector.collect(&mut sample);
        assert!(sample.cpu_total.is_some());
        assert!(!sample.cpus.is_empty());
        assert!(sample.load.is_some());
        assert!(sample.memory_bytes("MemTotal").is_some());
        assert!(
            sample
                .interfaces
                .iter()
                .any(|interface| interface.device == "lo")
        );
        assert!(sample.boot_time_seconds.is_some());
        assert!(sample.root_used_percent.is_some());
        let process = sample.process.expect("this process's figures");
        assert!(process.resident_bytes > 0);
        // A second round reuses the lists and still reads the same shape.
        let cores = sample.cpus.len();
        collector.collect(&mut sample);
        assert_eq!(sample.cpus.len(), cores);
    }

    #[test]
    fn a_fake_pi_root_gives_sensors_and_absent_ones_stay_absent() {
        let root = tempfile::tempdir().expect("a temp dir");
        let write = |relative: &str, text: &str| {
            let path = root.path().join(relative);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        };
        write("sys/class/thermal/thermal_zone0/temp", "48312\n");
        write("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
        write(
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq",
            "1500000\n",
        );
        write(
            "sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq",
            "600000\n",
        );
        write(
            "sys/devices/platform/soc/soc:firmware/get_throttled",
            "50005\n",
        );
        write("proc/loadavg", "0.10 0.20 0.30 1/100 42\n");
        let mut collector = Collector::with_root(root.path());
        let mut sample = Sample::default();
        collector.collect(&mut sample);
        assert_eq!(
            sample.thermal_zones,
            vec![ThermalZone {
                zone: 0,
                kind: "cpu-thermal".into(),
                celsius: 48.312
            }]
        );
        assert_eq!(sample.cpu_frequencies.len(), 2);
        assert_eq!(sample.cpu_frequencies[1].hertz, 600_000_000);
        assert_eq!(sample.throttled, Some(0x50005));
        assert_eq!(sample.load, Some([0.1, 0.2, 0.3]));
        // No /proc/stat, meminfo, diskstats or net/dev in the fake root: absent, not zero.
        assert_eq!(sample.cpu_total, None);
        assert!(sample.memory.is_empty());
        assert!(sample.disks.is_empty());
        assert!(sample.interfaces.is_empty());
        assert_eq!(sample.uptime_seconds, None);
    }

    #[test]
    fn vcgencmd_is_read_bounded_in_time_and_size() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            path
        };
        assert_eq!(
            run_vcgencmd(&script("good", "echo throttled=0x50005")),
            Some(0x50005)
        );
        assert_eq!(
            run_vcgencmd(&script("failing", "echo throttled=0x1; exit 1")),
            None
        );
        assert_eq!(
            run_vcgencmd(&script("chatty", "yes throttled=0x1 | head -c 100000")),
            None
        );
        let started = Instant::now();
        assert_eq!(run_vcgencmd(&script("hung", "exec sleep 30")), None);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'x'; MAX_FILE_BYTES as usize + 10]).expect("write");
        let mut buffer = String::new();
        assert!(!read_bounded_into(&path, &mut buffer));
        assert!(buffer.is_empty());
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// How long one round takes here (`cargo test --release -p bramble-monitor -- --ignored
    /// --nocapture round_cost`): a figure to watch, not an assertion.
    #[test]
    #[ignore]
    fn round_cost() {
        let mut collector = Collector::new();
        let mut sample = Sample::default();
        collector.collect(&mut sample);
        let rounds = 500;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            collector.collect(&mut sample);
        }
        eprintln!(
            "one round of the collectors: {:?}",
            started.elapsed() / rounds
        );
    }
}
