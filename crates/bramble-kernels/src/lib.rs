//! Compute kernels whose speed is the point: the CPU benchmark's loop (sysbench's prime
//! test). They live in a crate of their own so the workspace can build them optimised in
//! every profile (`[profile.dev.package.bramble-kernels]`): a test that compares them with
//! `sysbench` must measure the algorithm, not an unoptimised build, and this crate is
//! small enough that optimising it costs nothing in build time.

/// One event of sysbench's CPU test, statement for statement: for every c in
/// 3..max_prime, trial division by 2, 3, ... while the divisor is at most √c (compared as
/// doubles), counting the primes.
pub fn prime_event(max_prime: u64) -> u64 {
    let mut primes = 0;
    let mut candidate = 3u64;
    while candidate < max_prime {
        let root = (candidate as f64).sqrt();
        let mut divisor = 2u64;
        while divisor as f64 <= root {
            if remainder(candidate, divisor) == 0 {
                break;
            }
            divisor += 1;
        }
        if divisor as f64 > root {
            primes += 1;
        }
        candidate += 1;
    }
    primes
}

/// `dividend % divisor` with a 64-bit division, as sysbench's C build does. On x86_64,
/// LLVM would otherwise test whether both numbers fit in 32 bits and divide in 32 bits
/// (much faster on many cores), which measured this loop 10-25 % faster than `sysbench`
/// on the same machine: a different workload, not a faster board. Elsewhere the plain
/// operator already is what sysbench's build does (aarch64 divides in hardware, 32-bit
/// ARM calls the same library routine).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn remainder(dividend: u64, divisor: u64) -> u64 {
    let remainder: u64;
    // SAFETY: `div` divides rdx:rax by a register; rdx is 0, so the quotient fits and the
    // only fault left is a zero divisor, which callers never pass (divisors start at 2).
    unsafe {
        std::arch::asm!(
            "div {divisor}",
            divisor = in(reg) divisor,
            inout("rax") dividend => _,
            inout("rdx") 0u64 => remainder,
            options(pure, nomem, nostack),
        );
    }
    remainder
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn remainder(dividend: u64, divisor: u64) -> u64 {
    dividend % divisor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_finds_the_primes_sysbench_finds() {
        // Primes below 10,000 but 2: 1,228 (sysbench starts at 3).
        assert_eq!(prime_event(10_000), 1228);
        assert_eq!(prime_event(9_999), 1228);
        assert_eq!(prime_event(11), 3); // 3, 5, 7
        assert_eq!(prime_event(3), 0);
    }
}
