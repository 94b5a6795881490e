//! The Monte Carlo estimate of π from the cookbook's recipe 3, as a built-in task kind
//! (`bramble pi`): each task draws its share of points in the unit square and counts
//! those inside the quarter circle. The generator is fixed (splitmix64 seeding
//! xoshiro256++) and each task is seeded from the job's seed and its index, so tasks
//! never share a random stream (the recipe's PySpark job pickles one `random` state into
//! every partition, so its 24 partitions draw the same points) and a job can be replayed.
//! `examples/wasm-pi` implements exactly the same algorithm for WebAssembly, so the two
//! task kinds give the same count for the same seed.

use std::sync::atomic::{AtomicBool, Ordering};

/// Advances a splitmix64 state and returns its next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut mixed = *state;
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mixed ^ (mixed >> 31)
}

/// The seed of task `index` of a job seeded with `job_seed`: one splitmix64 step from a
/// mix of both, so neighbouring indices get unrelated streams.
pub fn task_seed(job_seed: u64, index: u32) -> u64 {
    let mut state = job_seed ^ (u64::from(index)).wrapping_mul(0xD1B5_4A32_D192_ED03);
    splitmix64(&mut state)
}

/// xoshiro256++ (Blackman and Vigna), seeded by four splitmix64 outputs.
pub struct Xoshiro256PlusPlus {
    state: [u64; 4],
}

impl Xoshiro256PlusPlus {
    pub fn new(seed: u64) -> Self {
        let mut seeder = seed;
        Xoshiro256PlusPlus {
            state: [
                splitmix64(&mut seeder),
                splitmix64(&mut seeder),
                splitmix64(&mut seeder),
                splitmix64(&mut seeder),
            ],
        }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.state;
        let result = s0.wrapping_add(*s3).rotate_left(23).wrapping_add(*s0);
        let shifted = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= shifted;
        *s3 = s3.rotate_left(45);
        result
    }
}

/// How many points land inside the quarter circle out of `samples`, from `seed`. One
/// 64-bit draw gives a point: its high and low 32 bits are the coordinates; the test is
/// exact integer arithmetic, so every architecture (and WebAssembly) counts the same.
/// Checks `cancelled` every 2^20 samples.
pub fn count_hits(seed: u64, samples: u64, cancelled: &AtomicBool) -> Option<u64> {
    const CHUNK: u64 = 1 << 20;
    let mut generator = Xoshiro256PlusPlus::new(seed);
    let mut hits = 0u64;
    let mut left = samples;
    while left > 0 {
        if cancelled.load(Ordering::Relaxed) {
            return None;
        }
        let now = left.min(CHUNK);
        for _ in 0..now {
            let draw = generator.next_u64();
            let x = draw >> 32;
            let y = draw & 0xFFFF_FFFF;
            let distance = u128::from(x * x) + u128::from(y * y);
            hits += u64::from(distance < (1u128 << 64));
        }
        left -= now;
    }
    Some(hits)
}

/// The samples task `index` of `partitions` draws out of `total`: an even share, the
/// remainder going to the first tasks.
pub fn samples_of_task(total: u64, partitions: u32, index: u32) -> u64 {
    let partitions = u64::from(partitions.max(1));
    total / partitions + u64::from(u64::from(index) < total % partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_outputs() {
        let mut state = 0;
        assert_eq!(splitmix64(&mut state), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut state), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(&mut state), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn the_estimate_converges_and_replays() {
        let never = AtomicBool::new(false);
        let samples = 2_000_000;
        let hits = count_hits(42, samples, &never).unwrap_or(0);
        let estimate = 4.0 * hits as f64 / samples as f64;
        assert!((estimate - std::f64::consts::PI).abs() < 0.01, "{estimate}");
        assert_eq!(count_hits(42, samples, &never), Some(hits));
        assert_ne!(count_hits(43, samples, &never), Some(hits));
    }

    #[test]
    fn tasks_get_distinct_seeds_and_fair_shares() {
        let seeds: std::collections::HashSet<u64> = (0..1000).map(|i| task_seed(7, i)).collect();
        assert_eq!(seeds.len(), 1000);
        let shares: Vec<u64> = (0..3).map(|i| samples_of_task(10, 3, i)).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        let cancelled = AtomicBool::new(true);
        assert_eq!(count_hits(1, 10, &cancelled), None);
    }
}
