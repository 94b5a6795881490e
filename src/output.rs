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
