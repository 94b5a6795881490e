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

/// A number of CPUs as people write it (`0.5`, `2`, `1.25`), in thousandths of a CPU
/// (`500`, `2000`, `1250`): the finest a CPU quota is worth asking for.
pub fn parse_cpus(text: &str) -> Result<u32> {
    let trimmed = text.trim();
    let (whole, fraction) = trimmed.split_once('.').unwrap_or((trimmed, ""));
    let all_digits = |part: &str| part.chars().all(|character| character.is_ascii_digit());
    let well_formed = !(whole.is_empty() && fraction.is_empty())
        && all_digits(whole)
        && all_digits(fraction)
        && !trimmed.ends_with('.');
    if !well_formed {
        bail!("{text:?} is not a number of CPUs such as 0.5, 2 or 1.25");
    }
    if fraction.len() > 3 {
        bail!("{text:?}: at most three decimals (a thousandth of a CPU)");
    }
    let whole: u32 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| anyhow!("{text:?} is too many CPUs"))?
    };
    let thousandths: u32 = format!("{fraction:0<3}").parse().unwrap_or(0);
    whole
        .checked_mul(1000)
        .and_then(|millis| millis.checked_add(thousandths))
        .ok_or_else(|| anyhow!("{text:?} is too many CPUs"))
}

/// `500ms`, `5s`, `2m`, `1h` or a bare number of milliseconds.
pub fn parse_milliseconds(text: &str) -> Result<u64> {
    parse_with_units(
        text,
        &[
            ("", 1),
            ("ms", 1),
            ("s", 1000),
            ("m", 60_000),
            ("h", 3_600_000),
        ],
        "a duration such as 500ms, 5s, 2m or 1h",
    )
}

/// `3600s`, `90m`, `12h`, `30d` or a bare number of seconds: how long a token lives.
pub fn parse_lifetime_seconds(text: &str) -> Result<u64> {
    parse_with_units(
        text,
        &[("", 1), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)],
        "a lifetime such as 3600s, 12h or 30d",
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
        assert_eq!(parse_milliseconds("2h").unwrap(), 7_200_000);
        assert!(parse_milliseconds("5d").is_err());
        assert!(parse_milliseconds("s").is_err());
        assert_eq!(parse_milliseconds("500").unwrap(), 500);
        assert_eq!(parse_lifetime_seconds("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_lifetime_seconds("12h").unwrap(), 12 * 3600);
        assert!(parse_lifetime_seconds("2w").is_err());
        assert!(parse_milliseconds("99999999999999999999s").is_err());
    }

    #[test]
    fn cpus_parse_to_thousandths() {
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert_eq!(parse_cpus("1.25").unwrap(), 1250);
        assert_eq!(parse_cpus(".25").unwrap(), 250);
        assert_eq!(parse_cpus("0.001").unwrap(), 1);
        assert!(
            parse_cpus("0.0005")
                .unwrap_err()
                .to_string()
                .contains("three decimals")
        );
        for bad in ["", ".", "2.", "-1", "half", "1,5", "1.2.3", "9999999"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
    }
}
