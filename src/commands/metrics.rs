//! `bramble metrics <node>`: a node's live sample (`monitor.sample`) as tables, or with
//! `--history 1h|24h` its summary history (`monitor.history`); `--json` for scripts. And
//! the temperature and throttling columns `bramble nodes` adds from each node's sample.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use bramble_monitor::history::{Point, SERIES, Tier};
use bramble_monitor::sample::{Sample, THROTTLE_CONDITIONS, throttle_flags};
use bramble_monitor::service::{HistoryResponse, METHOD_HISTORY, METHOD_SAMPLE, SampleResponse};
use serde_json::{Map, Value, json};

use crate::cli::{GlobalOptions, HistorySpan, MetricsArgs};
use crate::client::ClusterClient;
use crate::output;

/// Rows a history table shows at most; `--json` has every point.
const TABLE_ROWS: usize = 60;

pub async fn run(global: &GlobalOptions, args: &MetricsArgs) -> Result<()> {
    let client = crate::target::resolve(global)?;
    let address = client.address_of(&args.node).await?;
    if let Some(span) = args.history {
        let tier = match span {
            HistorySpan::Hour => Tier::Hour,
            HistorySpan::Day => Tier::Day,
        };
        let history: HistoryResponse = client
            .call_at(address, METHOD_HISTORY, &tier)
            .await
            .with_context(|| format!("asking {} for its history", args.node))?;
        return print_history(&history, args.output.json);
    }
    let (node, sample): SampleResponse = client
        .call_at(address, METHOD_SAMPLE, &())
        .await
        .with_context(|| format!("asking {} for its sample", args.node))?;
    let sample =
        sample.ok_or_else(|| anyhow!("{node} has taken no sample yet; try again in a second"))?;
    // The CPU's busy share needs two samples; the last second's point has it.
    let recent: Option<HistoryResponse> = client
        .call_at(address, METHOD_HISTORY, &Tier::Hour)
        .await
        .ok();
    let last_point = recent.and_then(|history| history.points.last().copied());
    if args.output.json {
        return output::print_json(&json!({
            "node": node,
            "sample": sample,
            "last_second": last_point.map(|point| point_json(&point)),
        }));
    }
    print_sample(&node, &sample, last_point.as_ref());
    Ok(())
}

fn print_sample(node: &str, sample: &Sample, last: Option<&Point>) {
    let mut table = output::table(&["FIGURE", "VALUE"]);
    let mut row = |name: &str, value: String| {
        table.add_row(vec![name.to_string(), value]);
    };
    let value = |index: usize| {
        last.map(|point| point.values[index])
            .filter(|value| value.is_finite())
    };
    row("node", node.to_string());
    row(
        "CPU busy (last second)",
        value(0).map_or("-".into(), |busy| {
            format!("{busy:.1} % of {} cores", sample.cpus.len())
        }),
    );
    row(
        "load 1/5/15 min",
        sample.load.map_or("-".into(), |[one, five, fifteen]| {
            format!("{one:.2} {five:.2} {fifteen:.2}")
        }),
    );
    let bytes = |name: &str| sample.memory_bytes(name).map_or("-".into(), human_bytes);
    row("memory total", bytes("MemTotal"));
    row("memory available", bytes("MemAvailable"));
    row(
        "memory used",
        sample.memory_used_bytes().map_or("-".into(), human_bytes),
    );
    row(
        "swap used",
        sample.swap_used_bytes().map_or("-".into(), human_bytes),
    );
    row(
        "network in / out",
        match (value(5), value(6)) {
            (Some(received), Some(sent)) => format!(
                "{}/s / {}/s",
                human_bytes(received as u64),
                human_bytes(sent as u64)
            ),
            _ => "-".into(),
        },
    );
    row(
        "disk read / write",
        match (value(7), value(8)) {
            (Some(read), Some(written)) => format!(
                "{}/s / {}/s",
                human_bytes(read as u64),
                human_bytes(written as u64)
            ),
            _ => "-".into(),
        },
    );
    row(
        "uptime",
        sample
            .uptime_seconds
            .map_or("-".into(), |seconds| human_duration(seconds as u64)),
    );
    for zone in &sample.thermal_zones {
        row(
            &format!("temperature zone {} ({})", zone.zone, zone.kind),
            format!("{:.1} °C", zone.celsius),
        );
    }
    if sample.thermal_zones.is_empty() {
        row("temperature", "no sensor".into());
    }
    if !sample.cpu_frequencies.is_empty() {
        let frequencies: Vec<String> = sample
            .cpu_frequencies
            .iter()
            .map(|frequency| format!("{} MHz", frequency.hertz / 1_000_000))
            .collect();
        row("CPU frequency", frequencies.join(", "));
    }
    row(
        "throttling",
        sample
            .throttled
            .map_or("no firmware interface".into(), describe_throttling),
    );
    if let Some(process) = sample.process {
        row(
            "agent",
            format!(
                "{} resident, {:.1} s CPU, {} threads",
                human_bytes(process.resident_bytes),
                process.cpu_seconds,
                process.threads
            ),
        );
    }
    println!("{table}");

    if !sample.filesystems.is_empty() {
        let mut table = output::table(&["MOUNT", "DEVICE", "TYPE", "SIZE", "AVAILABLE", "USED"]);
        for filesystem in &sample.filesystems {
            let used = filesystem.size_bytes.saturating_sub(filesystem.free_bytes);
            let usable = used + filesystem.avail_bytes;
            table.add_row(vec![
                filesystem.mountpoint.clone(),
                filesystem.device.clone(),
                filesystem.fstype.clone(),
                human_bytes(filesystem.size_bytes),
                human_bytes(filesystem.avail_bytes),
                if usable > 0 {
                    format!("{:.0} %", used as f64 * 100.0 / usable as f64)
                } else {
                    "-".into()
                },
            ]);
        }
        println!("{table}");
    }
    if !sample.interfaces.is_empty() {
        let mut table = output::table(&[
            "INTERFACE",
            "RECEIVED",
            "SENT",
            "ERRORS IN/OUT",
            "DROPS IN/OUT",
        ]);
        for interface in &sample.interfaces {
            table.add_row(vec![
                interface.device.clone(),
                human_bytes(interface.receive_bytes),
                human_bytes(interface.transmit_bytes),
                format!("{}/{}", interface.receive_errs, interface.transmit_errs),
                format!("{}/{}", interface.receive_drop, interface.transmit_drop),
            ]);
        }
        println!("{table}");
    }
    if !sample.disks.is_empty() {
        let mut table = output::table(&["DISK", "READ", "WRITTEN", "READS", "WRITES", "BUSY"]);
        for disk in &sample.disks {
            table.add_row(vec![
                disk.device.clone(),
                human_bytes(disk.read_bytes),
                human_bytes(disk.written_bytes),
                disk.reads_completed.to_string(),
                disk.writes_completed.to_string(),
                format!("{:.0} s", disk.io_time_seconds),
            ]);
        }
        println!("{table}");
    }
    println!("Totals since boot; rates over the last second. `--json` has every figure.");
}

/// "under_voltage (now), throttled (since boot)" or "none".
fn describe_throttling(word: u32) -> String {
    let mut parts = Vec::new();
    for (bit, condition) in THROTTLE_CONDITIONS {
        let (now, since_boot) = throttle_flags(word, bit);
        if now {
            parts.push(format!("{condition} (now)"));
        } else if since_boot {
            parts.push(format!("{condition} (since boot)"));
        }
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// A point as a JSON object: its time and each series by name, absent ones null.
fn point_json(point: &Point) -> Value {
    let mut object = Map::new();
    object.insert("unix_seconds".into(), json!(point.unix_seconds));
    for (name, value) in SERIES.iter().zip(point.values) {
        let value = if value.is_finite() {
            json!(f64::from(value))
        } else {
            Value::Null
        };
        object.insert((*name).to_string(), value);
    }
    Value::Object(object)
}

fn print_history(history: &HistoryResponse, as_json: bool) -> Result<()> {
    if as_json {
        let points: Vec<Value> = history.points.iter().map(point_json).collect();
        return output::print_json(&json!({
            "node": history.node,
            "tier": match history.tier { Tier::Hour => "1h", Tier::Day => "24h" },
            "step_millis": history.step_millis,
            "points": points,
        }));
    }
    if history.points.is_empty() {
        println!("{} has no history yet.", history.node);
        return Ok(());
    }
    // Consecutive points are averaged into at most TABLE_ROWS rows.
    let per_row = history.points.len().div_ceil(TABLE_ROWS);
    let mut table = output::table(&[
        "TIME (UTC)",
        "CPU",
        "LOAD1",
        "MEM USED",
        "MEM AVAIL",
        "SWAP",
        "NET IN/s",
        "NET OUT/s",
        "DISK R/s",
        "DISK W/s",
        "TEMP",
        "THROTTLED",
        "ROOT FS",
    ]);
    for chunk in history.points.chunks(per_row) {
        let mean = |index: usize| {
            let present: Vec<f64> = chunk
                .iter()
                .map(|point| f64::from(point.values[index]))
                .filter(|value| value.is_finite())
                .collect();
            (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
        };
        let throttled = chunk
            .iter()
            .map(|point| point.values[10])
            .filter(|value| value.is_finite())
            .fold(None, |bits: Option<u32>, value| {
                Some(bits.unwrap_or(0) | value as u32)
            });
        let show =
            |value: Option<f64>, format: &dyn Fn(f64) -> String| value.map_or("-".into(), format);
        table.add_row(vec![
            clock(chunk[0].unix_seconds),
            show(mean(0), &|value| format!("{value:.1} %")),
            show(mean(1), &|value| format!("{value:.2}")),
            show(mean(2), &|value| human_bytes(value as u64)),
            show(mean(3), &|value| human_bytes(value as u64)),
            show(mean(4), &|value| human_bytes(value as u64)),
            show(mean(5), &|value| human_bytes(value as u64)),
            show(mean(6), &|value| human_bytes(value as u64)),
            show(mean(7), &|value| human_bytes(value as u64)),
            show(mean(8), &|value| human_bytes(value as u64)),
            show(mean(9), &|value| format!("{value:.1} °C")),
            throttled.map_or("-".into(), |bits| format!("{bits:#x}")),
            show(mean(11), &|value| format!("{value:.0} %")),
        ]);
    }
    println!("{table}");
    println!(
        "{} points of {} s from {}; {} per row. `--json` has every point.",
        history.points.len(),
        history.step_millis as f64 / 1000.0,
        history.node,
        per_row
    );
    Ok(())
}

/// `MM-DD HH:MM:SS` in UTC from Unix seconds (civil-from-days, Howard Hinnant's algorithm).
fn clock(unix_seconds: u32) -> String {
    let seconds = i64::from(unix_seconds);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    format!(
        "{month:02}-{day:02} {:02}:{:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_duration(seconds: u64) -> String {
    let days = seconds / 86_400;
    let hours = seconds % 86_400 / 3600;
    let minutes = seconds % 3600 / 60;
    if days > 0 {
        format!("{days} d {hours} h {minutes} min")
    } else {
        format!("{hours} h {minutes} min")
    }
}

/// The temperature and throttling of a node for `bramble nodes`, from its live sample; "-"
/// when it does not answer within a second or has no sensor.
pub async fn temperature_and_throttling(
    client: &ClusterClient,
    address: std::net::SocketAddr,
) -> (String, String) {
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        client.call_at::<_, SampleResponse>(address, METHOD_SAMPLE, &()),
    )
    .await;
    let Ok(Ok((_, Some(sample)))) = answer else {
        return ("-".into(), "-".into());
    };
    (
        sample
            .hottest_celsius()
            .map_or("-".into(), |celsius| format!("{celsius:.1} °C")),
        sample.throttled.map_or("-".into(), describe_throttling),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_and_units() {
        assert_eq!(clock(0), "01-01 00:00:00");
        assert_eq!(clock(1_795_995_148), "11-29 23:32:28");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(
            describe_throttling(0x50005),
            "under_voltage (now), throttled (now)"
        );
        assert_eq!(
            describe_throttling(0x20000),
            "frequency_capped (since boot)"
        );
        assert_eq!(describe_throttling(0), "none");
    }
}
