//! Request rates for the stats page: counters are totals, so each scrape is kept as a
//! sample and the rate is the change over a short window of earlier samples.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Rates are averaged over about this long.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// A new sample is stored at most this often, however often the page is scraped, so the
/// window keeps its length when several clients watch the page.
const RATE_SAMPLE_SPACING: Duration = Duration::from_secs(1);
/// Samples kept per series (the window and spacing need about 11).
const RATE_MAX_SAMPLES: usize = 16;
/// Below this span a rate would be mostly noise; report 0 until the history is longer.
const RATE_MIN_SPAN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum RateKey {
    Frontend(String),
    Backend(String, String),
}

#[derive(Default)]
pub(super) struct RateHistory {
    pub(super) series: HashMap<RateKey, VecDeque<(Instant, u64)>>,
}

/// Records `total` at `now` in `samples` and returns the rate per second since the oldest
/// sample in the window.
pub(super) fn observe_rate(
    samples: &mut VecDeque<(Instant, u64)>,
    now: Instant,
    total: u64,
) -> f64 {
    // A counter that went backwards belongs to a new pool: the old history means nothing.
    if samples.back().is_some_and(|&(_, last)| total < last) {
        samples.clear();
    }
    // Keep one sample older than the window as the baseline, drop the ones before it.
    while samples.len() >= 2
        && samples
            .get(1)
            .is_some_and(|&(time, _)| now.saturating_duration_since(time) >= RATE_WINDOW)
    {
        samples.pop_front();
    }
    let rate = match samples.front() {
        Some(&(time, oldest)) if now.saturating_duration_since(time) >= RATE_MIN_SPAN => {
            (total - oldest) as f64 / now.saturating_duration_since(time).as_secs_f64()
        }
        _ => 0.0,
    };
    let due = samples
        .back()
        .is_none_or(|&(time, _)| now.saturating_duration_since(time) >= RATE_SAMPLE_SPACING);
    if due {
        samples.push_back((now, total));
        while samples.len() > RATE_MAX_SAMPLES {
            samples.pop_front();
        }
    }
    rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_counter_deltas_between_scrapes() {
        let start = Instant::now();
        let mut samples = VecDeque::new();
        assert_eq!(observe_rate(&mut samples, start, 100), 0.0);
        // Scrapes in quick succession neither add samples nor give a noisy rate.
        assert_eq!(
            observe_rate(&mut samples, start + Duration::from_millis(10), 100),
            0.0
        );
        assert_eq!(samples.len(), 1);
        let rate = observe_rate(&mut samples, start + Duration::from_secs(2), 120);
        assert!((rate - 10.0).abs() < 1e-9, "{rate}");
        // Over a long run only the window counts.
        for second in 3..=60u64 {
            observe_rate(
                &mut samples,
                start + Duration::from_secs(second),
                120 + (second - 2) * 50,
            );
        }
        assert!(samples.len() <= RATE_MAX_SAMPLES);
        let rate = observe_rate(&mut samples, start + Duration::from_secs(61), 120 + 59 * 50);
        assert!((rate - 50.0).abs() < 1e-9, "{rate}");
        // A counter that went backwards (new pool) restarts the history instead of
        // underflowing.
        assert_eq!(
            observe_rate(&mut samples, start + Duration::from_secs(62), 5),
            0.0
        );
        assert_eq!(samples.len(), 1);
    }
}
