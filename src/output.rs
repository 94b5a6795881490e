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
