//! The Monte Carlo pi kernel: splitmix64 seeding, xoshiro256++ and the hit test.
//!
//! This file is the reference for Bramble's native pi task: the agent carries a copy of
//! `count_hits` and the generator below, and a task with the same seed and sample count
//! must give bit-for-bit the same hit count whether it runs as this WebAssembly module or
//! natively. The tests at the bottom pin known values; keep the copies identical (core
//! only, no dependencies, no floating point).

/// The splitmix64 generator, used only to expand a 64-bit seed into xoshiro's state.
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// xoshiro256++ (Blackman and Vigna), seeded with four successive splitmix64 outputs.
pub struct Xoshiro256PlusPlus {
    s: [u64; 4],
}

impl Xoshiro256PlusPlus {
    pub fn from_seed(seed: u64) -> Self {
        let mut sm = SplitMix64::new(seed);
        let s0 = sm.next_u64();
        let s1 = sm.next_u64();
        let s2 = sm.next_u64();
        let s3 = sm.next_u64();
        Xoshiro256PlusPlus {
            s: [s0, s1, s2, s3],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.s;
        let result = s0.wrapping_add(*s3).rotate_left(23).wrapping_add(*s0);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }
}

/// One sample: the high and low 32 bits of `r` are a point in [0, 2^32)^2; it is a hit
/// when it lies strictly inside the quarter circle of radius 2^32.
pub fn is_hit(r: u64) -> bool {
    let x = r >> 32;
    let y = r & 0xFFFF_FFFF;
    // Each square is below 2^64, so it fits a u64; their sum needs a u128.
    u128::from(x * x) + u128::from(y * y) < 1u128 << 64
}

/// The number of hits among `samples` samples drawn from the generator seeded with `seed`.
/// `4 * hits / samples` estimates pi.
pub fn count_hits(seed: u64, samples: u64) -> u64 {
    let mut rng = Xoshiro256PlusPlus::from_seed(seed);
    let mut hits = 0u64;
    for _ in 0..samples {
        if is_hit(rng.next_u64()) {
            hits += 1;
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_from_zero() {
        let mut sm = SplitMix64::new(0);
        assert_eq!(sm.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(sm.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(sm.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn xoshiro_state_is_four_splitmix_outputs() {
        let rng = Xoshiro256PlusPlus::from_seed(0);
        assert_eq!(
            rng.s,
            [
                0xE220_A839_7B1D_CDAF,
                0x6E78_9E6A_A1B9_65F4,
                0x06C4_5D18_8009_454F,
                0xF88B_B8A8_724C_81EC,
            ]
        );
    }

    #[test]
    fn xoshiro_known_outputs() {
        let mut rng = Xoshiro256PlusPlus::from_seed(0);
        let first: [u64; 3] = [rng.next_u64(), rng.next_u64(), rng.next_u64()];
        assert_eq!(first, XOSHIRO_SEED0);
    }

    #[test]
    fn hit_test_edges() {
        assert!(is_hit(0));
        // (2^32 - 1)^2 * 2 is far outside the circle.
        assert!(!is_hit(u64::MAX));
        // x = 2^32 - 1, y = 0: (2^32 - 1)^2 < 2^64.
        assert!(is_hit(0xFFFF_FFFF_0000_0000));
        assert!(is_hit(0x0000_0000_FFFF_FFFF));
    }

    #[test]
    fn known_hit_counts() {
        assert_eq!(count_hits(42, 0), 0);
        assert_eq!(count_hits(42, 1_000_000), HITS_SEED42_1M);
        assert_eq!(count_hits(7, 1_000_000), HITS_SEED7_1M);
    }

    // Computed with an independent implementation (Python, arbitrary-precision integers
    // masked to 64 bits) written from the reference C code.
    const XOSHIRO_SEED0: [u64; 3] = [
        0x5317_5D61_490B_23DF,
        0x61DA_6F3D_C380_D507,
        0x5C0F_DF91_EC9A_7BFC,
    ];
    const HITS_SEED42_1M: u64 = 785_208;
    const HITS_SEED7_1M: u64 = 784_805;
}
