//! Output for people (tables) and for scripts (JSON).

use anyhow::Result;
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

pub fn table(headers: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers.to_vec());
    table
}

pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// KiB as a short human figure: "12.3 MB".
pub fn kib(value: u64) -> String {
    if value >= 1024 * 1024 {
        format!("{:.1} GB", value as f64 / (1024.0 * 1024.0))
    } else if value >= 1024 {
        format!("{:.1} MB", value as f64 / 1024.0)
    } else {
        format!("{value} KB")
    }
}

/// A progress bar for long CLI work (on stderr), or a hidden one for `--json` output.
pub fn progress_bar(length: u64, hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(length);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar
}

/// How long ago a wall-clock moment was: "12s ago", "5m ago", "3h ago", "2d ago".
pub fn age(unix_ms: u64) -> String {
    let seconds = bramble_util::time::unix_millis().saturating_sub(unix_ms) / 1000;
    format!("{} ago", span(seconds))
}

/// How far off a wall-clock moment is: "in 29d", or "passed" once it has.
pub fn time_until(unix_ms: u64) -> String {
    let now = bramble_util::time::unix_millis();
    if unix_ms <= now {
        return "passed".to_string();
    }
    format!("in {}", span((unix_ms - now) / 1000))
}

fn span(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}
