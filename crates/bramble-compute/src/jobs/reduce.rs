//! Combining what the tasks print (`--reduce sum|min|max|concat`). A task's value is the
//! last non-empty line of its standard output. Whole numbers are added exactly (as
//! 128-bit integers, so a billion-sample π count never rounds); a value with a fraction
//! or exponent turns the reduction into floating point.

use serde::{Deserialize, Serialize};

use super::spec::Reduce;

/// Longest value kept from one task (the last line, or for `concat` its first bytes).
pub const MAX_VALUE_BYTES: usize = 4096;
/// Longest `concat` result kept in the catalog.
pub const MAX_CONCAT_BYTES: usize = 256 * 1024;

/// A number a task printed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Number {
    Integer(i128),
    Float(f64),
}

impl Number {
    pub fn parse(text: &str) -> Option<Number> {
        let text = text.trim();
        if let Ok(integer) = text.parse::<i128>() {
            return Some(Number::Integer(integer));
        }
        text.parse::<f64>()
            .ok()
            .filter(|float| float.is_finite())
            .map(Number::Float)
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Number::Integer(integer) => integer as f64,
            Number::Float(float) => float,
        }
    }

    fn combine(self, other: Number, reduce: Reduce) -> Number {
        match (reduce, self, other) {
            (Reduce::Sum, Number::Integer(a), Number::Integer(b)) => match a.checked_add(b) {
                Some(sum) => Number::Integer(sum),
                None => Number::Float(a as f64 + b as f64),
            },
            (Reduce::Sum, a, b) => Number::Float(a.as_f64() + b.as_f64()),
            (Reduce::Min, Number::Integer(a), Number::Integer(b)) => Number::Integer(a.min(b)),
            (Reduce::Min, a, b) => Number::Float(a.as_f64().min(b.as_f64())),
            (Reduce::Max, Number::Integer(a), Number::Integer(b)) => Number::Integer(a.max(b)),
            (Reduce::Max, a, b) => Number::Float(a.as_f64().max(b.as_f64())),
            (Reduce::Concat | Reduce::None, a, _) => a,
        }
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Integer(integer) => write!(formatter, "{integer}"),
            Number::Float(float) => write!(formatter, "{float}"),
        }
    }
}

/// The value a task contributes, taken from its standard output.
pub fn task_value(reduce: Reduce, stdout_head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stdout_head);
    let value = match reduce {
        Reduce::None => return None,
        Reduce::Concat => text.to_string(),
        _ => text
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string(),
    };
    let mut end = value.len().min(MAX_VALUE_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Some(value[..end].to_string())
}

/// A reduction so far: what a checkpoint keeps with the set of tasks it covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Reduction {
    pub number: Option<Number>,
    /// `concat`: the values in task order (index, text), bounded by [`MAX_CONCAT_BYTES`].
    pub pieces: Vec<(u32, String)>,
    pub concat_bytes: usize,
    pub concat_truncated: bool,
    /// Tasks whose value was not a number (their first few indices).
    pub not_numbers: Vec<u32>,
    pub not_number_count: u32,
}

impl Reduction {
    /// Adds task `index`'s value. The caller adds each index at most once.
    pub fn add(&mut self, reduce: Reduce, index: u32, value: Option<&str>) {
        match reduce {
            Reduce::None => {}
            Reduce::Concat => {
                let text = value.unwrap_or("");
                if self.concat_bytes + text.len() > MAX_CONCAT_BYTES {
                    self.concat_truncated = true;
                    return;
                }
                self.concat_bytes += text.len();
                let at = self
                    .pieces
                    .partition_point(|(existing, _)| *existing < index);
                self.pieces.insert(at, (index, text.to_string()));
            }
            _ => match value.and_then(Number::parse) {
                Some(number) => {
                    self.number = Some(match self.number {
                        Some(so_far) => so_far.combine(number, reduce),
                        None => number,
                    });
                }
                None => {
                    self.not_number_count += 1;
                    if self.not_numbers.len() < 10 {
                        self.not_numbers.push(index);
                    }
                }
            },
        }
    }

    /// The result as text (`None`: nothing to show).
    pub fn render(&self, reduce: Reduce) -> Option<String> {
        match reduce {
            Reduce::None => None,
            Reduce::Concat => Some(
                self.pieces
                    .iter()
                    .map(|(_, text)| text.as_str())
                    .collect::<String>(),
            ),
            _ => self.number.map(|number| number.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_stay_exact_until_a_fraction_appears() {
        let mut reduction = Reduction::default();
        for index in 0..3 {
            let value = task_value(Reduce::Sum, b"progress...\n785398163\n\n");
            reduction.add(Reduce::Sum, index, value.as_deref());
        }
        assert_eq!(reduction.render(Reduce::Sum).as_deref(), Some("2356194489"));
        reduction.add(Reduce::Sum, 3, Some("0.5"));
        assert_eq!(
            reduction.render(Reduce::Sum).as_deref(),
            Some("2356194489.5")
        );
        reduction.add(Reduce::Sum, 4, Some("not a number"));
        assert_eq!(reduction.not_numbers, vec![4]);
    }

    #[test]
    fn min_max_and_concat_keep_task_order() {
        let mut low = Reduction::default();
        let mut concat = Reduction::default();
        for (index, value) in [(2u32, "7"), (0, "-3"), (1, "12")] {
            low.add(Reduce::Min, index, Some(value));
            concat.add(Reduce::Concat, index, Some(value));
        }
        assert_eq!(low.render(Reduce::Min).as_deref(), Some("-3"));
        assert_eq!(concat.render(Reduce::Concat).as_deref(), Some("-3127"));
    }
}
