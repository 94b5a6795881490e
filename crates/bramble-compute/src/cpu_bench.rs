//! `bramble bench cpu`: sysbench's CPU test, the same algorithm, so a node's figure reads
//! beside the seeds' board figures (`sysbench --test=cpu --cpu-max-prime=9999`) and beside
//! `sysbench cpu` run on the node itself. One event is one pass of trial division: for
//! every c in 3..max_prime, divide by 2, 3, ... up to √c in 64-bit integers, counting the
//! primes. It also gives the jobs scheduler each node's speed (the greedy policy's weight).
//!
//! 64-bit division is a library call on 32-bit ARM, so a 32-bit build on a Pi is several
//! times slower than a 64-bit one on the same board (sysbench issue 209); the seeds'
//! figures look like 32-bit Raspbian. Reports therefore name the architecture.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// sysbench's default `--cpu-max-prime`, and the one speeds are measured at.
pub const DEFAULT_MAX_PRIME: u64 = 10_000;
/// Bounds on what one run may ask for: it runs inside the agent.
pub const MAX_MAX_PRIME: u64 = 10_000_000;
pub const MAX_THREADS: u32 = 256;
/// The longest run (an RPC answer must come back within the CLI's deadline).
pub const MAX_SECONDS: f64 = 12.0;

/// What to run (sysbench's `--cpu-max-prime`, `--threads`, `--events`, `--time`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuBenchRequest {
    pub max_prime: u64,
    pub threads: u32,
    /// Stop after this many events (0: no limit).
    pub events: u64,
    /// Stop after this long (0: no limit; at most [`MAX_SECONDS`] either way).
    pub seconds: f64,
}

impl CpuBenchRequest {
    pub fn validate(&self) -> Result<(), String> {
        if !(3..=MAX_MAX_PRIME).contains(&self.max_prime) {
            return Err(format!(
                "--cpu-max-prime is 3 to {MAX_MAX_PRIME}, not {}",
                self.max_prime
            ));
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(format!("--threads is 1 to {MAX_THREADS}"));
        }
        if !self.seconds.is_finite() || self.seconds < 0.0 || self.seconds > MAX_SECONDS {
            return Err(format!("--time is 0 to {MAX_SECONDS} seconds"));
        }
        if self.events == 0 && self.seconds == 0.0 {
            return Err("give --events or --time (or both)".to_string());
        }
        Ok(())
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuBenchResult {
    pub node: String,
    /// The build's architecture (`x86_64`, `aarch64`, `arm`).
    pub architecture: String,
    pub max_prime: u64,
    pub threads: u32,
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    /// Per event, in milliseconds: sysbench's latency figures.
    pub latency_min_ms: f64,
    pub latency_average_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_max_ms: f64,
    /// Primes one event finds (1,228 below 10,000): the same work as sysbench's.
    pub primes_per_event: u64,
    /// Stopped at [`MAX_SECONDS`] before `events` were done.
    pub cut_short: bool,
}

pub use bramble_kernels::prime_event;

/// Runs the test on this thread and `threads - 1` more (blocking: call it off the async
/// runtime). Threads take events from one counter until the count or the time is reached.
pub fn run(request: &CpuBenchRequest, node: &str) -> Result<CpuBenchResult, String> {
    request.validate()?;
    let limit = if request.events == 0 {
        u64::MAX
    } else {
        request.events
    };
    let time = if request.seconds == 0.0 {
        MAX_SECONDS
    } else {
        request.seconds
    };
    let deadline = Duration::from_secs_f64(time);
    let taken = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let worker = |taken: Arc<AtomicU64>, stop: Arc<AtomicBool>| {
        let mut latencies = Vec::new();
        let mut primes = 0;
        while !stop.load(Ordering::Relaxed) {
            if taken.fetch_add(1, Ordering::Relaxed) >= limit {
                break;
            }
            let event_started = Instant::now();
            primes = std::hint::black_box(prime_event(std::hint::black_box(request.max_prime)));
            latencies.push(event_started.elapsed());
            if started.elapsed() >= deadline {
                stop.store(true, Ordering::Relaxed);
            }
        }
        (latencies, primes)
    };
    let (mut latencies, primes) = std::thread::scope(|scope| {
        let others: Vec<_> = (1..request.threads)
            .map(|_| {
                let (taken, stop) = (taken.clone(), stop.clone());
                scope.spawn(|| worker(taken, stop))
            })
            .collect();
        let (mut latencies, primes) = worker(taken.clone(), stop.clone());
        for other in others {
            if let Ok((more, _)) = other.join() {
                latencies.extend(more);
            }
        }
        (latencies, primes)
    });
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let events = latencies.len() as u64;
    let milliseconds = |duration: Duration| duration.as_secs_f64() * 1000.0;
    let average = if events == 0 {
        0.0
    } else {
        latencies.iter().map(|d| milliseconds(*d)).sum::<f64>() / events as f64
    };
    let at = |fraction: f64| {
        latencies
            .get(((events as f64 * fraction).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| milliseconds(*d))
    };
    Ok(CpuBenchResult {
        node: node.to_string(),
        architecture: std::env::consts::ARCH.to_string(),
        max_prime: request.max_prime,
        threads: request.threads,
        events,
        seconds,
        events_per_second: events as f64 / seconds.max(1e-9),
        latency_min_ms: latencies.first().map_or(0.0, |d| milliseconds(*d)),
        latency_average_ms: average,
        latency_p95_ms: at(0.95),
        latency_max_ms: latencies.last().map_or(0.0, |d| milliseconds(*d)),
        primes_per_event: primes,
        cut_short: request.events != 0 && events < request.events,
    })
}

/// A node's speed for the greedy policy, from a run at the default max prime: events per
/// second per thread, over 1,000 (a Pi 4 core is about 0.1 in a 64-bit build, a recent
/// x86 core about 3).
pub fn speed_of(result: &CpuBenchResult) -> Option<f64> {
    (result.max_prime == DEFAULT_MAX_PRIME && result.events > 0)
        .then(|| result.events_per_second / f64::from(result.threads) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_stop_at_their_event_count_and_requests_are_bounded() {
        let request = CpuBenchRequest {
            max_prime: 2_000,
            threads: 2,
            events: 50,
            seconds: 0.0,
        };
        let result = run(&request, "n1").unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(result.events, 50);
        assert!(!result.cut_short);
        assert!(result.latency_min_ms <= result.latency_p95_ms);
        assert!(result.latency_p95_ms <= result.latency_max_ms);
        assert_eq!(result.primes_per_event, prime_event(2_000));
        assert!(speed_of(&result).is_none(), "not the default max prime");
        let bad = |change: fn(&mut CpuBenchRequest)| {
            let mut request = request;
            change(&mut request);
            request.validate().is_err()
        };
        assert!(bad(|r| r.max_prime = 2));
        assert!(bad(|r| r.threads = 0));
        assert!(bad(|r| r.seconds = 60.0));
        assert!(bad(|r| r.seconds = f64::NAN));
        assert!(bad(|r| {
            r.events = 0;
            r.seconds = 0.0
        }));
    }
}
