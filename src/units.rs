//! Numbers with units as people type them on the command line (`500ms`, `1M`): one
//! parser for every such flag.

use anyhow::{Result, anyhow, bail};

/// Parses `<digits><unit>`, where `unit` is one of `units` (compared without case; the
/// empty unit may be listed for a bare number). `what` names the flag's kind in errors,
/// with examples.
pub fn parse_with_units(text: &str, units: &[(&str, u64)], what: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| anyhow!("{text:?} is not {what}"))?;
    let unit = unit.trim();
    let Some((_, factor)) = units
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
    else {
        bail!("unknown unit {unit:?} in {text:?}: use {what}");
    };
    number
        .checked_mul(*factor)
        .ok_or_else(|| anyhow!("{text:?} is too large"))
}

/// `1M`, `256K`, `4MiB`, `65536` (bytes).
pub fn parse_size(text: &str) -> Result<u64> {
    const KIB: u64 = 1024;
    parse_with_units(
        text,
        &[
            ("", 1),
            ("B", 1),
            ("K", KIB),
            ("KB", KIB),
            ("KiB", KIB),
            ("M", KIB * KIB),
            ("MB", KIB * KIB),
            ("MiB", KIB * KIB),
            ("G", KIB * KIB * KIB),
            ("GB", KIB * KIB * KIB),
            ("GiB", KIB * KIB * KIB),
        ],
        "a size such as 1M, 256K or 65536",
    )
}

/// `500ms`, `5s`, `2m` or a bare number of milliseconds.
pub fn parse_milliseconds(text: &str) -> Result<u64> {
    parse_with_units(
        text,
        &[("", 1), ("ms", 1), ("s", 1000), ("m", 60_000)],
        "a duration such as 500ms, 5s or 2m",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("256k").unwrap(), 256 << 10);
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert!(parse_size("1T").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_milliseconds("2m").unwrap(), 120_000);
        assert_eq!(parse_milliseconds("5s").unwrap(), 5000);
        assert_eq!(parse_milliseconds("500ms").unwrap(), 500);
        assert!(parse_milliseconds("5h").is_err());
        assert!(parse_milliseconds("s").is_err());
        assert_eq!(parse_milliseconds("500").unwrap(), 500);
        assert!(parse_milliseconds("99999999999999999999s").is_err());
    }
}
