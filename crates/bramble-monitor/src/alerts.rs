//! Alerts beyond the anchors' defaults (issue 12): a node down, a balancer backend down, a
//! board throttled (under-voltage, frequency capped or throttled now) or over 80 °C, a
//! filesystem over 90 % full. This module is the pure part, with time passed in, so the
//! conditions and their hysteresis are tested with synthetic samples:
//!
//! - `observe_*` turn what a node sees — its sample, its membership table, its subsystems'
//!   alarms — into [`Observation`]s: conditions that hold right now.
//! - An [`AlertBook`] turns observations into alerts with hysteresis, so an alert does not
//!   flap: a condition from the sample must hold for [`RAISE_AFTER`] before it fires and be
//!   gone for [`CLEAR_AFTER`] before it resolves, and its threshold has a band (fires over
//!   80 °C, resolves under 77 °C; fires over 90 %, resolves under 88 %). A node down and a
//!   backend down fire and resolve at once: gossip's failure detector and the balancer's
//!   rise and fall counts have already filtered those.
//! - [`merge`] folds the answers of several nodes into the cluster's list: a node down is
//!   reported by every node that sees it, and listed once with all of them.
//!
//! Every node evaluates its own conditions each second (and the node-down condition from
//! its own view of the membership), so `monitor.alerts` on any node can answer for the
//! cluster by asking the others.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sample::{Sample, THROTTLE_CONDITIONS};

pub const KIND_NODE_DOWN: &str = "node_down";
pub const KIND_BACKEND_DOWN: &str = "backend_down";
pub const KIND_THROTTLED: &str = "throttled";
pub const KIND_OVER_TEMPERATURE: &str = "over_temperature";
pub const KIND_FILESYSTEM_FULL: &str = "filesystem_full";
/// Every kind the monitor raises itself, for `/metrics` (each with its count, zero too).
pub const KINDS: [&str; 5] = [
    KIND_NODE_DOWN,
    KIND_BACKEND_DOWN,
    KIND_THROTTLED,
    KIND_OVER_TEMPERATURE,
    KIND_FILESYSTEM_FULL,
];

/// A board fires over this temperature...
pub const HOT_CELSIUS: f64 = 80.0;
/// ...and resolves under this one.
pub const COOLED_CELSIUS: f64 = 77.0;
/// A filesystem fires over this use...
pub const FULL_PERCENT: f64 = 90.0;
/// ...and resolves under this one.
pub const FREED_PERCENT: f64 = 88.0;
/// How long a condition from the sample holds before it fires.
pub const RAISE_AFTER: Duration = Duration::from_secs(3);
/// How long it is gone before it resolves.
pub const CLEAR_AFTER: Duration = Duration::from_secs(10);
/// Alerts one node keeps at most (a host with thousands of full mounts must not take the
/// memory); observations beyond are ignored.
pub const MAX_ALERTS_PER_NODE: usize = 256;
/// The throttling bits that raise an alert: under-voltage, frequency capped, throttled
/// (now). The soft temperature limit is the over-temperature alert's business.
const THROTTLE_BITS: u32 = 0b0111;

/// One active alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// One of [`KINDS`], or a subsystem's alarm kind.
    pub kind: String,
    /// The node it is about (for a node down, the node that is down).
    pub node: String,
    /// What on that node (`/var`, `cpu-thermal`, `webfarm/web1`); empty when the node
    /// itself is the subject.
    pub subject: String,
    /// When the condition was first seen, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    pub message: String,
    /// The nodes that report it.
    pub reported_by: Vec<String>,
}

impl Alert {
    pub fn key(&self) -> AlertKey {
        AlertKey {
            kind: self.kind.clone(),
            node: self.node.clone(),
            subject: self.subject.clone(),
        }
    }
}

/// What tells alerts apart: the same kind, node and subject is the same alert.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlertKey {
    pub kind: String,
    pub node: String,
    pub subject: String,
}

impl AlertKey {
    pub fn new(kind: &str, node: &str, subject: &str) -> AlertKey {
        AlertKey {
            kind: kind.to_string(),
            node: node.to_string(),
            subject: subject.to_string(),
        }
    }
}

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub key: AlertKey,
    pub message: String,
}

/// How long a kind's condition holds before firing and is gone before resolving.
fn holds(kind: &str) -> (Duration, Duration) {
    match kind {
        KIND_THROTTLED | KIND_OVER_TEMPERATURE | KIND_FILESYSTEM_FULL => (RAISE_AFTER, CLEAR_AFTER),
        // Membership and the balancer's checks are already debounced.
        _ => (Duration::ZERO, Duration::ZERO),
    }
}

/// The conditions in `node`'s sample: throttling now, hot zones, full filesystems.
/// `active` says which alerts are active, for the thresholds' bands.
pub fn observe_sample(
    node: &str,
    sample: &Sample,
    active: impl Fn(&AlertKey) -> bool,
    out: &mut Vec<Observation>,
) {
    if let Some(word) = sample.throttled
        && word & THROTTLE_BITS != 0
    {
        let flags: Vec<&str> = THROTTLE_CONDITIONS
            .iter()
            .filter(|(bit, _)| (1 << bit) & THROTTLE_BITS & word != 0)
            .map(|(_, name)| *name)
            .collect();
        out.push(Observation {
            key: AlertKey::new(KIND_THROTTLED, node, ""),
            message: format!(
                "{node} is throttled now ({}; firmware word {word:#x})",
                flags.join(", ")
            ),
        });
    }

    for zone in &sample.thermal_zones {
        let subject = if zone.kind.is_empty() {
            format!("zone{}", zone.zone)
        } else {
            zone.kind.clone()
        };
        let key = AlertKey::new(KIND_OVER_TEMPERATURE, node, &subject);
        let limit = if active(&key) {
            COOLED_CELSIUS
        } else {
            HOT_CELSIUS
        };
        if zone.celsius > limit {
            out.push(Observation {
                message: format!(
                    "{node}'s {subject} is at {:.1} °C (alert over {HOT_CELSIUS:.0} °C, clears under {COOLED_CELSIUS:.0} °C)",
                    zone.celsius
                ),
                key,
            });
        }
    }

    // One alert per device: the same disk mounted in several places (bind mounts, a
    // container's /etc/hosts) is one full disk. Named by its shortest mount point.
    let mut devices: BTreeMap<&str, &crate::sample::Filesystem> = BTreeMap::new();
    for filesystem in &sample.filesystems {
        if filesystem.read_only || filesystem.size_bytes == 0 {
            continue;
        }
        let device = if filesystem.device.is_empty() {
            filesystem.mountpoint.as_str()
        } else {
            filesystem.device.as_str()
        };
        devices
            .entry(device)
            .and_modify(|kept| {
                if filesystem.mountpoint.len() < kept.mountpoint.len() {
                    *kept = filesystem;
                }
            })
            .or_insert(filesystem);
    }
    let mut root_seen = false;
    for filesystem in devices.values() {
        root_seen |= filesystem.mountpoint == "/";
        let used = filesystem.size_bytes.saturating_sub(filesystem.free_bytes);
        let usable = used + filesystem.avail_bytes;
        if usable == 0 {
            continue;
        }
        let percent = used as f64 * 100.0 / usable as f64;
        let key = AlertKey::new(KIND_FILESYSTEM_FULL, node, &filesystem.mountpoint);
        let limit = if active(&key) {
            FREED_PERCENT
        } else {
            FULL_PERCENT
        };
        if percent > limit {
            out.push(Observation {
                message: format!(
                    "{node}'s {} ({}, {}) is {percent:.1} % full: {} left of {}",
                    filesystem.mountpoint,
                    filesystem.device,
                    filesystem.fstype,
                    human_bytes(filesystem.avail_bytes),
                    human_bytes(filesystem.size_bytes)
                ),
                key,
            });
        }
    }
    // `/` of a kind /metrics skips (overlay in a container) is still the node's disk.
    if !root_seen && let Some(percent) = sample.root_used_percent {
        let key = AlertKey::new(KIND_FILESYSTEM_FULL, node, "/");
        let limit = if active(&key) {
            FREED_PERCENT
        } else {
            FULL_PERCENT
        };
        if percent > limit {
            out.push(Observation {
                message: format!("{node}'s / is {percent:.1} % full"),
                key,
            });
        }
    }
}

/// A member as the node-down condition needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberState {
    pub name: String,
    pub address: String,
    pub dead: bool,
    pub heartbeat_age_ms: Option<u64>,
}

/// The members `observer` sees dead (a member that left on purpose is not down).
pub fn observe_members(observer: &str, members: &[MemberState], out: &mut Vec<Observation>) {
    for member in members
        .iter()
        .filter(|member| member.dead && member.name != observer)
    {
        let silence = member
            .heartbeat_age_ms
            .map(|age| format!(": no heartbeat for {:.1} s", age as f64 / 1000.0))
            .unwrap_or_default();
        out.push(Observation {
            key: AlertKey::new(KIND_NODE_DOWN, &member.name, ""),
            message: format!("{} ({}) is down{silence}", member.name, member.address),
        });
    }
}

/// The node's subsystems' alarms (a backend down on the balancer it serves).
pub fn observe_alarms(node: &str, alarms: &[bramble_platform::Alarm], out: &mut Vec<Observation>) {
    for alarm in alarms {
        out.push(Observation {
            key: AlertKey::new(alarm.kind, node, &alarm.subject),
            message: alarm.message.clone(),
        });
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// When the condition was first seen in this run of it.
    since_ms: u64,
    message: String,
    /// When it fired; None while it waits for [`RAISE_AFTER`].
    fired_ms: Option<u64>,
    /// Since when an active alert's condition has been gone.
    gone_since_ms: Option<u64>,
}

/// An alert that fired or resolved in an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Fired(Alert),
    Resolved(Alert),
}

/// One node's alerts: conditions waiting to fire, active alerts, and their timing.
#[derive(Debug, Clone)]
pub struct AlertBook {
    reporter: String,
    entries: BTreeMap<AlertKey, Entry>,
}

impl AlertBook {
    /// The book of the node named `reporter`.
    pub fn new(reporter: &str) -> AlertBook {
        AlertBook {
            reporter: reporter.to_string(),
            entries: BTreeMap::new(),
        }
    }

    /// Whether `key` is an active (fired) alert.
    pub fn is_active(&self, key: &AlertKey) -> bool {
        self.entries
            .get(key)
            .is_some_and(|entry| entry.fired_ms.is_some())
    }

    /// Applies one round of observations made at `now_ms`; returns what fired and
    /// resolved.
    pub fn update(&mut self, now_ms: u64, observations: Vec<Observation>) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for observation in observations {
            if !self.entries.contains_key(&observation.key)
                && self.entries.len() >= MAX_ALERTS_PER_NODE
            {
                continue;
            }
            seen.insert(observation.key.clone());
            let entry = self
                .entries
                .entry(observation.key.clone())
                .or_insert_with(|| Entry {
                    since_ms: now_ms,
                    message: String::new(),
                    fired_ms: None,
                    gone_since_ms: None,
                });
            entry.message = observation.message;
            entry.gone_since_ms = None;
            let (raise_after, _) = holds(&observation.key.kind);
            if entry.fired_ms.is_none()
                && now_ms.saturating_sub(entry.since_ms) >= raise_after.as_millis() as u64
            {
                entry.fired_ms = Some(now_ms);
                changes.push(Change::Fired(make_alert(
                    &self.reporter,
                    &observation.key,
                    entry,
                )));
            }
        }
        let mut resolved = Vec::new();
        for (key, entry) in self.entries.iter_mut() {
            if seen.contains(key) {
                continue;
            }
            if entry.fired_ms.is_none() {
                // Never fired: it just goes.
                resolved.push((key.clone(), false));
                continue;
            }
            let gone_since = *entry.gone_since_ms.get_or_insert(now_ms);
            let (_, clear_after) = holds(&key.kind);
            if now_ms.saturating_sub(gone_since) >= clear_after.as_millis() as u64 {
                resolved.push((key.clone(), true));
            }
        }
        for (key, was_active) in resolved {
            if let Some(entry) = self.entries.remove(&key)
                && was_active
            {
                changes.push(Change::Resolved(make_alert(&self.reporter, &key, &entry)));
            }
        }
        changes
    }

    /// The active alerts, in key order.
    pub fn active(&self) -> Vec<Alert> {
        self.entries
            .iter()
            .filter(|(_, entry)| entry.fired_ms.is_some())
            .map(|(key, entry)| make_alert(&self.reporter, key, entry))
            .collect()
    }

    /// Active alerts of each of [`KINDS`] (zero included), then of any other kind.
    pub fn counts_by_kind(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<String, usize> =
            KINDS.iter().map(|kind| (kind.to_string(), 0)).collect();
        for (key, entry) in &self.entries {
            if entry.fired_ms.is_some() {
                *counts.entry(key.kind.clone()).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }
}

fn make_alert(reporter: &str, key: &AlertKey, entry: &Entry) -> Alert {
    Alert {
        kind: key.kind.clone(),
        node: key.node.clone(),
        subject: key.subject.clone(),
        since_unix_ms: entry.since_ms,
        message: entry.message.clone(),
        reported_by: vec![reporter.to_string()],
    }
}

/// Several nodes' alerts as one list: the same alert reported by several nodes once, with
/// every reporter, the earliest `since` and the earliest reporter's message.
pub fn merge(answers: impl IntoIterator<Item = Vec<Alert>>) -> Vec<Alert> {
    let mut merged: BTreeMap<AlertKey, Alert> = BTreeMap::new();
    for alert in answers.into_iter().flatten() {
        match merged.get_mut(&alert.key()) {
            None => {
                merged.insert(alert.key(), alert);
            }
            Some(kept) => {
                if alert.since_unix_ms < kept.since_unix_ms {
                    kept.since_unix_ms = alert.since_unix_ms;
                    kept.message = alert.message.clone();
                }
                for reporter in alert.reported_by {
                    if !kept.reported_by.contains(&reporter) {
                        kept.reported_by.push(reporter);
                    }
                }
                kept.reported_by.sort();
            }
        }
    }
    merged.into_values().collect()
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Filesystem, ThermalZone};

    const SECOND: u64 = 1000;

    fn filesystem(device: &str, mountpoint: &str, used_percent: u64) -> Filesystem {
        Filesystem {
            device: device.into(),
            fstype: "ext4".into(),
            mountpoint: mountpoint.into(),
            size_bytes: 1000,
            free_bytes: 1000 - used_percent * 10,
            avail_bytes: 1000 - used_percent * 10,
            files: 10,
            files_free: 5,
            read_only: false,
        }
    }

    fn hot(celsius: f64) -> Sample {
        Sample {
            thermal_zones: vec![ThermalZone {
                zone: 0,
                kind: "cpu-thermal".into(),
                celsius,
            }],
            ..Sample::default()
        }
    }

    /// Runs one second of the book against `sample`; returns the changes.
    fn round(book: &mut AlertBook, at_ms: u64, sample: &Sample) -> Vec<Change> {
        let mut observations = Vec::new();
        observe_sample("n1", sample, |key| book.is_active(key), &mut observations);
        book.update(at_ms, observations)
    }

    fn kinds(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|change| match change {
                Change::Fired(alert) => format!("fired {} {}", alert.kind, alert.subject),
                Change::Resolved(alert) => format!("resolved {} {}", alert.kind, alert.subject),
            })
            .collect()
    }

    #[test]
    fn temperature_fires_after_holding_and_does_not_flap_around_the_limit() {
        let mut book = AlertBook::new("n1");
        // A blip over 80 °C that does not hold for three seconds never fires.
        assert!(round(&mut book, 0, &hot(85.0)).is_empty());
        assert!(round(&mut book, SECOND, &hot(60.0)).is_empty());
        assert!(book.active().is_empty());
        // Held: fires once, three seconds after it was first seen.
        for second in 2..5 {
            assert!(round(&mut book, second * SECOND, &hot(81.0)).is_empty());
        }
        let changes = round(&mut book, 5 * SECOND, &hot(82.5));
        assert_eq!(kinds(&changes), ["fired over_temperature cpu-thermal"]);
        let active = book.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].since_unix_ms, 2 * SECOND);
        assert!(
            active[0].message.contains("82.5 °C"),
            "{}",
            active[0].message
        );
        // Wobbling between 77 and 80 °C keeps it active, without new changes.
        for (second, celsius) in (6..30).zip([79.0, 78.0, 80.5, 77.5].iter().cycle()) {
            assert!(round(&mut book, second * SECOND, &hot(*celsius)).is_empty());
            assert_eq!(book.active().len(), 1);
        }
        // Under 77 °C for ten seconds resolves it; one warm second in between restarts
        // the wait.
        for second in 30..35 {
            assert!(round(&mut book, second * SECOND, &hot(70.0)).is_empty());
        }
        assert!(round(&mut book, 35 * SECOND, &hot(79.0)).is_empty());
        for second in 36..45 {
            assert!(round(&mut book, second * SECOND, &hot(70.0)).is_empty());
        }
        let changes = round(&mut book, 46 * SECOND, &hot(70.0));
        assert_eq!(kinds(&changes), ["resolved over_temperature cpu-thermal"]);
        assert!(book.active().is_empty());
        assert_eq!(
            book.counts_by_kind()
                .iter()
                .map(|(_, count)| count)
                .sum::<usize>(),
            0
        );
    }

    #[test]
    fn a_full_filesystem_fires_once_per_disk_with_a_band() {
        let sample = |percent: u64| Sample {
            filesystems: vec![
                filesystem("/dev/sda1", "/", 50),
                // One disk mounted twice: one alert, named by the shorter mount point.
                filesystem("/dev/sdb1", "/srv/data", percent),
                filesystem("/dev/sdb1", "/data", percent),
                // Read-only or empty filesystems never count.
                Filesystem {
                    read_only: true,
                    ..filesystem("/dev/sr0", "/media/cd", 100)
                },
                Filesystem {
                    size_bytes: 0,
                    ..filesystem("none", "/empty", 0)
                },
            ],
            root_used_percent: Some(99.0),
            ..Sample::default()
        };
        let mut book = AlertBook::new("n1");
        let mut fired = Vec::new();
        for second in 0..4 {
            fired.extend(round(&mut book, second * SECOND, &sample(95)));
        }
        assert_eq!(kinds(&fired), ["fired filesystem_full /data"]);
        let alert = &book.active()[0];
        assert!(alert.message.contains("95.0 % full"), "{}", alert.message);
        assert!(alert.message.contains("/dev/sdb1"), "{}", alert.message);
        // 89 % is inside the band: still active. 87 % for ten seconds resolves.
        for second in 4..20 {
            assert!(round(&mut book, second * SECOND, &sample(89)).is_empty());
        }
        assert_eq!(book.active().len(), 1);
        let mut changes = Vec::new();
        for second in 20..31 {
            changes.extend(round(&mut book, second * SECOND, &sample(87)));
        }
        assert_eq!(kinds(&changes), ["resolved filesystem_full /data"]);
        // A node whose / is outside the filesystem list (overlay) still reports it.
        let overlay = Sample {
            root_used_percent: Some(93.0),
            ..Sample::default()
        };
        let mut fired = Vec::new();
        for second in 40..44 {
            fired.extend(round(&mut book, second * SECOND, &overlay));
        }
        assert_eq!(kinds(&fired), ["fired filesystem_full /"]);
    }

    #[test]
    fn throttling_now_fires_and_since_boot_alone_does_not() {
        let throttled = |word: u32| Sample {
            throttled: Some(word),
            ..Sample::default()
        };
        let mut book = AlertBook::new("n1");
        for second in 0..10 {
            // Bits 16-19: it happened since boot, but not now.
            assert!(round(&mut book, second * SECOND, &throttled(0x50000)).is_empty());
        }
        // The soft temperature limit alone is the temperature alert's business.
        assert!(round(&mut book, 10 * SECOND, &throttled(0x8)).is_empty());
        let mut fired = Vec::new();
        for second in 11..15 {
            fired.extend(round(&mut book, second * SECOND, &throttled(0x50005)));
        }
        assert_eq!(kinds(&fired), ["fired throttled "]);
        let message = &book.active()[0].message;
        assert!(
            message.contains("under_voltage, throttled") && message.contains("0x50005"),
            "{message}"
        );
    }

    #[test]
    fn node_down_comes_from_membership_at_once_and_merges_across_reporters() {
        let members = |n3_dead: bool| {
            vec![
                MemberState {
                    name: "n1".into(),
                    address: "10.0.0.1:7946".into(),
                    dead: false,
                    heartbeat_age_ms: Some(100),
                },
                MemberState {
                    name: "n3".into(),
                    address: "10.0.0.3:7946".into(),
                    dead: n3_dead,
                    heartbeat_age_ms: Some(2400),
                },
            ]
        };
        let mut n1 = AlertBook::new("n1");
        let mut n2 = AlertBook::new("n2");
        let observe = |observer: &str, dead: bool| {
            let mut out = Vec::new();
            observe_members(observer, &members(dead), &mut out);
            out
        };
        assert!(n1.update(0, observe("n1", false)).is_empty());
        let fired = n1.update(SECOND, observe("n1", true));
        assert_eq!(kinds(&fired), ["fired node_down "]);
        n2.update(2 * SECOND, observe("n2", true));
        // A node never reports itself down.
        assert!(observe("n3", true).is_empty());

        let merged = merge([n1.active(), n2.active()]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].node, "n3");
        assert_eq!(merged[0].since_unix_ms, SECOND);
        assert_eq!(merged[0].reported_by, ["n1", "n2"]);
        assert!(
            merged[0]
                .message
                .contains("n3 (10.0.0.3:7946) is down: no heartbeat for 2.4 s"),
            "{}",
            merged[0].message
        );
        // Alive again: resolved at once.
        let resolved = n1.update(3 * SECOND, observe("n1", false));
        assert_eq!(kinds(&resolved), ["resolved node_down "]);
    }

    #[test]
    fn subsystem_alarms_become_alerts_and_the_book_is_bounded() {
        let alarm = |subject: String| bramble_platform::Alarm {
            kind: KIND_BACKEND_DOWN,
            subject,
            message: "down".into(),
        };
        let mut book = AlertBook::new("n2");
        let mut out = Vec::new();
        observe_alarms("n2", &[alarm("webfarm/web1".into())], &mut out);
        let fired = book.update(0, out);
        assert_eq!(kinds(&fired), ["fired backend_down webfarm/web1"]);
        assert_eq!(
            book.counts_by_kind()
                .into_iter()
                .find(|(kind, _)| kind == KIND_BACKEND_DOWN),
            Some((KIND_BACKEND_DOWN.to_string(), 1))
        );
        let mut many = Vec::new();
        // The alert already there stays; new ones are taken until the bound.
        let flood: Vec<_> = std::iter::once(alarm("webfarm/web1".into()))
            .chain((0..1000).map(|index| alarm(format!("b/{index}"))))
            .collect();
        observe_alarms("n2", &flood, &mut many);
        book.update(SECOND, many);
        assert_eq!(book.active().len(), MAX_ALERTS_PER_NODE);
    }
}
