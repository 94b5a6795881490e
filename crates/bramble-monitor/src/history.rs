//! History without a database: per node, the last hour at one point a second and the last
//! day at one point a minute, in two fixed-size rings of [`Point`]s. A point is a chosen
//! set of summary series as `f32` (52 bytes with its timestamp), not the whole sample:
//! 3,600 + 1,440 points are about 260 KB per node.
//!
//! Only the minute tier is persisted (`<data-dir>/monitor-history.bin`). It is written
//! whole, atomically (temporary file, fsync, rename), every ten minutes and when the agent
//! stops, rather than appended a record a minute: an append-only file needs trimming to
//! stay bounded and a torn last record handled after a power cut, while a whole-file
//! rewrite is always either the old or the new day. It costs 144 writes of 75 KB a day
//! (about 11 MB of the SD card's endurance, less than one append-and-fsync a minute costs
//! in 4 KiB pages), and a power cut loses at most ten minutes. Nothing per-second reaches
//! the disk. The file is bounded and validated when loaded: a corrupt or foreign one is
//! discarded with a warning.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::MonitorError;
use crate::sample::Sample;

/// Points in the second tier: one hour.
pub const SECOND_POINTS: usize = 3600;
/// Points in the minute tier: one day.
pub const MINUTE_POINTS: usize = 1440;
/// The file the minute tier is persisted in, in the node's data directory.
pub const HISTORY_FILE: &str = "monitor-history.bin";

/// The summary series, in the order of [`Point::values`]. Absent figures are NaN.
pub const SERIES: [&str; 12] = [
    "cpu_busy_percent",
    "load1",
    "memory_used_bytes",
    "memory_available_bytes",
    "swap_used_bytes",
    "network_receive_bytes_per_second",
    "network_transmit_bytes_per_second",
    "disk_read_bytes_per_second",
    "disk_write_bytes_per_second",
    "temperature_celsius",
    "throttled_bits",
    "root_filesystem_used_percent",
];
const THROTTLED: usize = 10;

/// One point of history: when (seconds since the Unix epoch; the minute tier's points are
/// at the start of their minute) and the [`SERIES`] values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub unix_seconds: u32,
    pub values: [f32; SERIES.len()],
}

impl Point {
    /// The point for `current`, with rates worked out against `previous` (NaN without one).
    pub fn between(previous: Option<&Sample>, current: &Sample) -> Point {
        let nan = f32::NAN;
        let option = |value: Option<f64>| value.map_or(nan, |value| value as f32);
        let elapsed = previous.map(|previous| {
            current
                .taken_unix_millis
                .saturating_sub(previous.taken_unix_millis) as f64
                / 1000.0
        });
        let rate = |now: u64, before: u64| match elapsed {
            Some(seconds) if seconds > 0.0 && now >= before => (now - before) as f64 / seconds,
            _ => f64::NAN,
        };
        let cpu_busy = match (
            previous.and_then(|previous| previous.cpu_total),
            current.cpu_total,
        ) {
            (Some(before), Some(now)) if now.total() > before.total() => {
                Some((now.busy() - before.busy()) * 100.0 / (now.total() - before.total()))
            }
            _ => None,
        };
        let (received, sent) = current.network_totals();
        let (read, written) = current.disk_totals();
        let (received_before, sent_before) = previous.map_or((0, 0), Sample::network_totals);
        let (read_before, written_before) = previous.map_or((0, 0), Sample::disk_totals);
        Point {
            unix_seconds: (current.taken_unix_millis / 1000).min(u64::from(u32::MAX)) as u32,
            values: [
                option(cpu_busy.map(|busy| busy.clamp(0.0, 100.0))),
                option(current.load.map(|load| load[0])),
                option(current.memory_used_bytes().map(|bytes| bytes as f64)),
                option(
                    current
                        .memory_bytes("MemAvailable")
                        .map(|bytes| bytes as f64),
                ),
                option(current.swap_used_bytes().map(|bytes| bytes as f64)),
                rate(received, received_before) as f32,
                rate(sent, sent_before) as f32,
                rate(read, read_before) as f32,
                rate(written, written_before) as f32,
                option(current.hottest_celsius()),
                option(current.throttled.map(f64::from)),
                option(current.root_used_percent),
            ],
        }
    }
}

/// Which tier of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tier {
    /// The last hour, a point a second.
    Hour,
    /// The last day, a point a minute.
    Day,
}

/// A fixed-capacity ring: pushing into a full one drops the oldest point.
#[derive(Debug, Clone)]
struct Ring {
    points: VecDeque<Point>,
    capacity: usize,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        Ring {
            points: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    fn push(&mut self, point: Point) {
        if self.points.len() == self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }
}

/// Both tiers, and the minute being gathered.
#[derive(Debug, Clone)]
pub struct History {
    seconds: Ring,
    minutes: Ring,
    /// How long a minute-tier step is: 60 s, shorter only under the test knob.
    step: Duration,
    /// The step being gathered: its start and the second-tier points so far.
    gathering: Option<(u64, Vec<Point>)>,
}

impl History {
    pub fn new(step: Duration) -> History {
        History {
            seconds: Ring::new(SECOND_POINTS),
            minutes: Ring::new(MINUTE_POINTS),
            step: step.max(Duration::from_millis(100)),
            gathering: None,
        }
    }

    pub fn step(&self) -> Duration {
        self.step
    }

    /// Records a per-second point; when it starts a new step, the step before is summed up
    /// into the minute tier. Returns true when a minute point was added.
    pub fn record(&mut self, point: Point, taken_unix_millis: u64) -> bool {
        self.seconds.push(point);
        let step_millis = self.step.as_millis().max(1) as u64;
        let step_start = taken_unix_millis - taken_unix_millis % step_millis;
        let mut added = false;
        match &mut self.gathering {
            Some((start, points)) if *start == step_start => points.push(point),
            _ => {
                if let Some((start, points)) = self.gathering.take() {
                    let summary = summarise(start, &points);
                    // A clock stepped backwards (NTP on a board without an RTC) would put
                    // this step before the last one; the tier stays in order instead.
                    let in_order = self
                        .minutes
                        .points
                        .back()
                        .is_none_or(|last| last.unix_seconds <= summary.unix_seconds);
                    if in_order {
                        self.minutes.push(summary);
                        added = true;
                    }
                }
                let mut points = Vec::with_capacity(64);
                points.push(point);
                self.gathering = Some((step_start, points));
            }
        }
        added
    }

    /// The points of a tier, oldest first.
    pub fn points(&self, tier: Tier) -> Vec<Point> {
        match tier {
            Tier::Hour => self.seconds.points.iter().copied().collect(),
            Tier::Day => self.minutes.points.iter().copied().collect(),
        }
    }

    /// The minute tier as the file holds it: a header (magic, version, step in ms, count),
    /// the points, and an FNV-1a checksum of everything before it.
    pub fn encode_minutes(&self) -> Vec<u8> {
        let mut bytes =
            Vec::with_capacity(HEADER_BYTES + self.minutes.points.len() * POINT_BYTES + 8);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes
            .extend_from_slice(&(self.step.as_millis().min(u32::MAX as u128) as u32).to_le_bytes());
        bytes.extend_from_slice(&(self.minutes.points.len() as u32).to_le_bytes());
        for point in &self.minutes.points {
            bytes.extend_from_slice(&point.unix_seconds.to_le_bytes());
            for value in point.values {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        let checksum = fnv1a(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Takes the minute points of a file written by [`History::encode_minutes`], keeping
    /// those of the last day before `now_unix_seconds` (and none from the future).
    pub fn decode_minutes(
        &mut self,
        bytes: &[u8],
        now_unix_seconds: u64,
    ) -> Result<usize, MonitorError> {
        let corrupt = |why: &str| MonitorError::CorruptHistory(why.to_string());
        if bytes.len() > MAX_FILE_BYTES {
            return Err(corrupt("larger than a day of points"));
        }
        if bytes.len() < HEADER_BYTES + 8 {
            return Err(corrupt("shorter than its header"));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 8);
        if fnv1a(body).to_le_bytes() != checksum {
            return Err(corrupt("checksum mismatch"));
        }
        if &body[..4] != MAGIC {
            return Err(corrupt("not a Bramble history file"));
        }
        let word =
            |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        if u16::from_le_bytes([body[4], body[5]]) != VERSION {
            return Err(corrupt("an unknown version"));
        }
        let step_millis = word(6);
        if u128::from(step_millis) != self.step.as_millis() {
            return Err(corrupt(&format!(
                "its steps are {step_millis} ms, this agent's {} ms",
                self.step.as_millis()
            )));
        }
        let count = word(10) as usize;
        if count > MINUTE_POINTS || body.len() != HEADER_BYTES + count * POINT_BYTES {
            return Err(corrupt("its length does not match its count"));
        }
        let oldest =
            now_unix_seconds.saturating_sub(self.step.as_secs().max(1) * MINUTE_POINTS as u64);
        let mut previous = 0u32;
        let mut kept = 0;
        for index in 0..count {
            let at = HEADER_BYTES + index * POINT_BYTES;
            let unix_seconds = word(at);
            if unix_seconds < previous {
                return Err(corrupt("its points are out of order"));
            }
            previous = unix_seconds;
            let mut values = [0f32; SERIES.len()];
            for (slot, value) in values.iter_mut().enumerate() {
                *value = f32::from_le_bytes(
                    body[at + 4 + slot * 4..at + 8 + slot * 4]
                        .try_into()
                        .map_err(|_| corrupt("a short point"))?,
                );
            }
            let seconds = u64::from(unix_seconds);
            if seconds < oldest || seconds > now_unix_seconds {
                continue;
            }
            self.minutes.push(Point {
                unix_seconds,
                values,
            });
            kept += 1;
        }
        Ok(kept)
    }

    /// Loads the minute tier from `data_dir`, if its file is there and sound. A corrupt
    /// file is set aside (renamed `.corrupt`) with a warning; the agent starts empty.
    pub fn load(&mut self, data_dir: &Path) {
        let path = data_dir.join(HISTORY_FILE);
        let bytes = match bramble_util::files::read_bounded(&path, MAX_FILE_BYTES as u64) {
            Ok(bytes) => bytes,
            Err(bramble_util::files::FileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return;
            }
            Err(error) => {
                warn!(%error, "discarding the minute history");
                return;
            }
        };
        let now = bramble_util::time::unix_millis() / 1000;
        if let Err(error) = self.decode_minutes(&bytes, now) {
            warn!(path = %path.display(), %error, "discarding the minute history");
            self.minutes.points.clear();
            let _ = std::fs::rename(&path, path.with_extension("bin.corrupt"));
        }
    }

    /// Writes the minute tier to `data_dir` atomically.
    pub fn save(&self, data_dir: &Path) -> Result<(), MonitorError> {
        save_encoded(data_dir, &self.encode_minutes())
    }
}

/// Writes an encoded minute tier ([`History::encode_minutes`]) to `data_dir` atomically;
/// apart from `save` so the caller can encode under its lock and write outside it.
pub fn save_encoded(data_dir: &Path, bytes: &[u8]) -> Result<(), MonitorError> {
    bramble_util::files::write_atomic(
        &data_dir.join(HISTORY_FILE),
        bytes,
        bramble_util::files::Visibility::Private,
    )
    .map_err(|error| MonitorError::Save(error.to_string()))
}

const MAGIC: &[u8; 4] = b"BRMH";
const VERSION: u16 = 1;
/// magic (4), version (2), step in ms (4), count (4).
const HEADER_BYTES: usize = 14;
const POINT_BYTES: usize = 4 + SERIES.len() * 4;
const MAX_FILE_BYTES: usize = HEADER_BYTES + MINUTE_POINTS * POINT_BYTES + 8;

/// A step's points summed up: the mean of each series over the points that have it (NaN
/// if none has), but the throttled bits OR-ed together, so a second of under-voltage is
/// not averaged away.
fn summarise(start_millis: u64, points: &[Point]) -> Point {
    let mut values = [f32::NAN; SERIES.len()];
    for (series, slot) in values.iter_mut().enumerate() {
        let present = points
            .iter()
            .map(|point| point.values[series])
            .filter(|value| value.is_finite());
        if series == THROTTLED {
            let mut any = false;
            let bits = present.fold(0u32, |bits, value| {
                any = true;
                bits | value as u32
            });
            if any {
                *slot = bits as f32;
            }
            continue;
        }
        let (sum, count) = present.fold((0f64, 0u32), |(sum, count), value| {
            (sum + f64::from(value), count + 1)
        });
        if count > 0 {
            *slot = (sum / f64::from(count)) as f32;
        }
    }
    Point {
        unix_seconds: (start_millis / 1000).min(u64::from(u32::MAX)) as u32,
        values,
    }
}

/// FNV-1a, 64 bits: enough to tell a torn or scribbled file from a sound one.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::CpuTimes;

    fn point(unix_seconds: u32, value: f32) -> Point {
        Point {
            unix_seconds,
            values: [value; SERIES.len()],
        }
    }

    #[test]
    fn rates_and_busy_come_from_two_samples() {
        let mut before = Sample {
            taken_unix_millis: 1_000_000,
            cpu_total: Some(CpuTimes {
                user: 10.0,
                idle: 90.0,
                ..CpuTimes::default()
            }),
            ..Sample::default()
        };
        before.interfaces.push(crate::sample::Interface {
            device: "eth0".into(),
            receive_bytes: 1000,
            transmit_bytes: 0,
            ..Default::default()
        });
        let mut after = before.clone();
        after.taken_unix_millis = 1_002_000;
        after.cpu_total = Some(CpuTimes {
            user: 11.0,
            idle: 91.0,
            ..CpuTimes::default()
        });
        after.interfaces[0].receive_bytes = 5000;
        let point = Point::between(Some(&before), &after);
        assert_eq!(point.values[0], 50.0);
        assert_eq!(point.values[5], 2000.0);
        assert_eq!(point.values[6], 0.0);
        // No temperature sensor: absent, not zero.
        assert!(point.values[9].is_nan());
        // The first sample has no rates.
        assert!(Point::between(None, &after).values[5].is_nan());
    }

    #[test]
    fn rings_stay_bounded_and_minutes_are_means() {
        let mut history = History::new(Duration::from_secs(60));
        let start = 1_800_000_000u64; // a whole minute (divisible by 60)
        let mut minutes = 0;
        for second in 0..(SECOND_POINTS as u64 + 120) {
            let mut value = point((start + second) as u32, (second % 60) as f32);
            value.values[THROTTLED] = if second == 5 { 4.0 } else { 0.0 };
            if history.record(value, (start + second) * 1000) {
                minutes += 1;
            }
        }
        assert_eq!(history.points(Tier::Hour).len(), SECOND_POINTS);
        let day = history.points(Tier::Day);
        assert_eq!(day.len(), minutes);
        assert_eq!(day.len(), 61);
        assert_eq!(day[0].unix_seconds as u64, start);
        assert_eq!(day[0].values[0], 29.5);
        // One throttled second keeps its minute's bit.
        assert_eq!(day[0].values[THROTTLED], 4.0);
        assert_eq!(day[1].values[THROTTLED], 0.0);
    }

    #[test]
    fn a_clock_stepped_back_keeps_the_minute_tier_in_order() {
        let mut history = History::new(Duration::from_secs(60));
        let start = 1_800_000_000u64;
        for seconds in [
            start,
            start + 60,
            start + 120,
            start - 600,
            start - 540,
            start + 180,
        ] {
            history.record(point(seconds as u32, 1.0), seconds * 1000);
        }
        let day = history.points(Tier::Day);
        assert!(
            day.windows(2)
                .all(|pair| pair[0].unix_seconds <= pair[1].unix_seconds)
        );
        let mut reloaded = History::new(Duration::from_secs(60));
        assert!(
            reloaded
                .decode_minutes(&history.encode_minutes(), start + 600)
                .is_ok()
        );
    }

    #[test]
    fn the_minute_tier_round_trips_and_rejects_corruption() {
        let mut history = History::new(Duration::from_secs(60));
        let now = 1_800_000_000u64;
        for minute in 0..(MINUTE_POINTS + 10) as u64 {
            history
                .minutes
                .push(point((now - 100_000 + minute * 60) as u32, minute as f32));
        }
        let mut nan = point(now as u32, 1.0);
        nan.values[9] = f32::NAN;
        history.minutes.push(nan);
        let bytes = history.encode_minutes();
        assert!(bytes.len() <= MAX_FILE_BYTES);

        let mut loaded = History::new(Duration::from_secs(60));
        let kept = loaded.decode_minutes(&bytes, now).expect("a sound file");
        let points = loaded.points(Tier::Day);
        assert_eq!(kept, points.len());
        // Only the last day is kept.
        assert!(
            points
                .iter()
                .all(|point| u64::from(point.unix_seconds) >= now - 86_400)
        );
        assert!(points.last().is_some_and(|point| point.values[9].is_nan()));

        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(
            History::new(Duration::from_secs(60))
                .decode_minutes(&flipped, now)
                .is_err()
        );
        assert!(
            History::new(Duration::from_secs(60))
                .decode_minutes(&bytes[..10], now)
                .is_err()
        );
        assert!(
            History::new(Duration::from_secs(1))
                .decode_minutes(&bytes, now)
                .is_err()
        );
        assert!(
            History::new(Duration::from_secs(60))
                .decode_minutes(&vec![0; MAX_FILE_BYTES + 1], now)
                .is_err()
        );
    }

    #[test]
    fn a_corrupt_file_is_set_aside_on_load() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join(HISTORY_FILE), b"scribbled over").expect("write");
        let mut history = History::new(Duration::from_secs(60));
        history.load(dir.path());
        assert!(history.points(Tier::Day).is_empty());
        assert!(dir.path().join("monitor-history.bin.corrupt").exists());

        history.minutes.push(point(
            (bramble_util::time::unix_millis() / 1000) as u32,
            3.0,
        ));
        history.save(dir.path()).expect("save");
        let mut reloaded = History::new(Duration::from_secs(60));
        reloaded.load(dir.path());
        assert_eq!(reloaded.points(Tier::Day).len(), 1);
    }
}
