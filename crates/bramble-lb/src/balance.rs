//! Choosing the backend for a new session (an HTTP request or a TCP connection) from a
//! [`Pool`], with the algorithm the spec names: smooth weighted round robin, least
//! connections, power of two random choices, or a consistent hash of the client IP, a
//! header or the URI path.
//!
//! Every algorithm only considers backends that [`accept new sessions`] and weighs them
//! by their [`effective weight`] (so slow start ramps a recovered server in gradually),
//! and every pick can exclude backends already tried for this request, which is how
//! retries and redispatch avoid the server that just failed.
//!
//! [`accept new sessions`]: crate::pool::BackendState::accepts_new_sessions
//! [`effective weight`]: crate::pool::BackendState::effective_weight

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Balance;
use crate::pool::{BackendState, Pool};

/// Backends tried for one request or connection before giving up (HAProxy's `retries`
/// with `option redispatch`): enough to step over a dead server or two without making
/// the client wait through every connect timeout of a large pool.
pub const MAX_ATTEMPTS: usize = 3;

/// Picks backends for one pool. Holds the little state the algorithms need (round-robin
/// positions, a random generator); a configuration change builds a new one with the new
/// pool, because positions are kept by backend index.
#[derive(Debug)]
pub struct Selector {
    balance: Balance,
    slow_start: Duration,
    /// Smooth weighted round robin's "current weight" per backend index (nginx's
    /// algorithm: it spreads a heavy backend's turns out instead of sending it a burst).
    round_robin: Mutex<Vec<i64>>,
    /// Where least-connections starts looking, so ties rotate instead of always going to
    /// the first backend listed.
    turn: AtomicUsize,
    /// SplitMix64 state: random choices need to be fast and lock-free, not secret.
    random_state: AtomicU64,
}

/// A backend that may take a new session, with the weight it competes with.
#[derive(Clone, Copy)]
struct Candidate<'pool> {
    index: usize,
    backend: &'pool Arc<BackendState>,
    weight: u64,
}

impl Selector {
    pub fn new(balance: Balance, slow_start: Duration, backend_count: usize) -> Selector {
        Selector {
            balance,
            slow_start,
            round_robin: Mutex::new(vec![0; backend_count]),
            turn: AtomicUsize::new(0),
            random_state: AtomicU64::new(random_seed()),
        }
    }

    pub fn balance(&self) -> &Balance {
        &self.balance
    }

    /// The index in `pool.backends` of the backend for a new session, skipping the
    /// indexes in `excluded`; None when no backend can take it.
    ///
    /// `hash_key` is what the hashing algorithms hash (see [`hash_key_for`]); when it is
    /// None (say, the hashed header is absent) they fall back to round robin, as HAProxy
    /// does.
    pub fn pick(&self, pool: &Pool, hash_key: Option<&[u8]>, excluded: &[usize]) -> Option<usize> {
        let candidates = self.candidates(pool, excluded);
        if candidates.is_empty() {
            return None;
        }
        let chosen = match (&self.balance, hash_key) {
            (Balance::Leastconn, _) => self.least_connections(&candidates),
            (Balance::Random, _) => self.power_of_two_choices(&candidates),
            (Balance::HashSource | Balance::HashHeader(_) | Balance::HashUri, Some(key)) => {
                rendezvous(&candidates, key)
            }
            _ => self.round_robin(pool.backends.len(), &candidates),
        };
        Some(chosen)
    }

    fn candidates<'pool>(&self, pool: &'pool Pool, excluded: &[usize]) -> Vec<Candidate<'pool>> {
        pool.backends
            .iter()
            .enumerate()
            .filter(|(index, backend)| !excluded.contains(index) && backend.accepts_new_sessions())
            .map(|(index, backend)| Candidate {
                index,
                backend,
                weight: u64::from(backend.effective_weight(self.slow_start)),
            })
            .filter(|candidate| candidate.weight > 0)
            .collect()
    }

    /// nginx's smooth weighted round robin: every candidate's current weight grows by its
    /// weight, the largest wins and pays back the total. With weights 5, 1, 1 this gives
    /// a a b a c a a rather than a a a a a b c.
    fn round_robin(&self, backend_count: usize, candidates: &[Candidate<'_>]) -> usize {
        let mut current = self
            .round_robin
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if current.len() != backend_count {
            current.resize(backend_count, 0);
        }
        let total: i64 = candidates
            .iter()
            .map(|candidate| candidate.weight as i64)
            .sum();
        let mut best = candidates[0].index;
        let mut best_current = i64::MIN;
        for candidate in candidates {
            current[candidate.index] += candidate.weight as i64;
            if current[candidate.index] > best_current {
                best_current = current[candidate.index];
                best = candidate.index;
            }
        }
        current[best] -= total;
        best
    }

    /// The candidate with the fewest sessions per unit of weight. Counting the session
    /// about to start ((active + 1) / weight, like HAProxy) lets weights matter even
    /// when every backend is idle.
    fn least_connections(&self, candidates: &[Candidate<'_>]) -> usize {
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % candidates.len();
        let mut best = candidates[start];
        for offset in 1..candidates.len() {
            let candidate = candidates[(start + offset) % candidates.len()];
            if is_less_loaded(&candidate, &best) {
                best = candidate;
            }
        }
        best.index
    }

    /// Two weighted random draws, keep the less loaded: nearly as even as least
    /// connections, without every balancer node herding onto the same idle backend.
    fn power_of_two_choices(&self, candidates: &[Candidate<'_>]) -> usize {
        let first = self.weighted_random(candidates, None);
        if candidates.len() == 1 {
            return candidates[first].index;
        }
        let second = self.weighted_random(candidates, Some(first));
        if is_less_loaded(&candidates[second], &candidates[first]) {
            candidates[second].index
        } else {
            candidates[first].index
        }
    }

    /// A position in `candidates`, drawn with probability proportional to weight.
    fn weighted_random(&self, candidates: &[Candidate<'_>], skip: Option<usize>) -> usize {
        let eligible = |position: usize| Some(position) != skip;
        let total: u64 = (0..candidates.len())
            .filter(|position| eligible(*position))
            .map(|position| candidates[position].weight)
            .sum();
        let mut remaining = self.next_random() % total.max(1);
        let mut last = 0;
        for position in (0..candidates.len()).filter(|position| eligible(*position)) {
            last = position;
            if remaining < candidates[position].weight {
                return position;
            }
            remaining -= candidates[position].weight;
        }
        last
    }

    fn next_random(&self) -> u64 {
        mix(self
            .random_state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
    }
}

/// Whether `left` has fewer sessions per unit of weight than `right` (cross-multiplied to
/// stay in integers).
fn is_less_loaded(left: &Candidate<'_>, right: &Candidate<'_>) -> bool {
    let left_load =
        (left.backend.active.load(Ordering::Relaxed) as u128 + 1) * right.weight as u128;
    let right_load =
        (right.backend.active.load(Ordering::Relaxed) as u128 + 1) * left.weight as u128;
    left_load < right_load
}

/// Weighted rendezvous (highest random weight) hashing: each backend scores the key by a
/// hash of (key, backend name) and the best score wins. Removing a backend only moves
/// the keys it won, every other key keeps its winner; and because the score depends on
/// names, not positions, every balancer node and every configuration order agrees.
fn rendezvous(candidates: &[Candidate<'_>], key: &[u8]) -> usize {
    let key_hash = fnv1a(key);
    let mut best = candidates[0].index;
    let mut best_score = f64::MIN;
    for candidate in candidates {
        let combined = mix(key_hash ^ mix(fnv1a(candidate.backend.spec.name.as_bytes())));
        // A uniform number strictly between 0 and 1 from the top 53 bits.
        let uniform = ((combined >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = candidate.weight as f64 / -uniform.ln();
        if score > best_score {
            best_score = score;
            best = candidate.index;
        }
    }
    best
}

/// What the spec's hashing algorithm hashes for one request: the client address, a
/// header's value or the URI path (without the query, like HAProxy's `balance uri`).
/// None for the other algorithms, or when the hashed header is absent.
pub fn hash_key_for(
    balance: &Balance,
    client: IpAddr,
    headers: Option<&hyper::HeaderMap>,
    path: Option<&str>,
) -> Option<Vec<u8>> {
    match balance {
        Balance::HashSource => Some(match client.to_canonical() {
            IpAddr::V4(address) => address.octets().to_vec(),
            IpAddr::V6(address) => address.octets().to_vec(),
        }),
        Balance::HashHeader(name) => headers?
            .get(name.as_str())
            .map(|value| value.as_bytes().to_vec()),
        Balance::HashUri => path.map(|path| path.as_bytes().to_vec()),
        Balance::Roundrobin | Balance::Leastconn | Balance::Random => None,
    }
}

/// FNV-1a: tiny and stable across Rust versions and machines (unlike the standard
/// library's hasher), which consistent hashing across balancer nodes needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    // Without the system generator a clock-based seed is still fine: the numbers only
    // spread load, they protect nothing.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0x1234_5678)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdminState, BackendSpec};
    use crate::pool::SessionGuard;

    fn pool(weights: &[u32]) -> Pool {
        let specs: Vec<BackendSpec> = weights
            .iter()
            .enumerate()
            .map(|(index, weight)| BackendSpec {
                name: format!("web{}", index + 1),
                addr: ([127, 0, 0, 1], 8000 + index as u16).into(),
                weight: *weight,
                admin: AdminState::Enabled,
            })
            .collect();
        Pool::new(&specs)
    }

    fn selector(balance: Balance, pool: &Pool) -> Selector {
        Selector::new(balance, Duration::ZERO, pool.backends.len())
    }

    #[test]
    fn smooth_round_robin_spreads_a_heavy_backend_like_nginx() {
        let pool = pool(&[5, 1, 1]);
        let selector = selector(Balance::Roundrobin, &pool);
        let order: Vec<usize> = (0..7)
            .map(|_| selector.pick(&pool, None, &[]).unwrap())
            .collect();
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_skips_unhealthy_draining_and_excluded_backends() {
        let pool = pool(&[1, 1, 1]);
        pool.backends[0].set_healthy(false);
        let selector = selector(Balance::Roundrobin, &pool);
        for _ in 0..10 {
            assert_eq!(selector.pick(&pool, None, &[1]), Some(2));
        }
        assert_eq!(selector.pick(&pool, None, &[1, 2]), None);

        let mut specs: Vec<BackendSpec> = pool
            .backends
            .iter()
            .map(|backend| backend.spec.clone())
            .collect();
        specs[1].admin = AdminState::Drain;
        let drained = Pool::new(&specs);
        let selector = Selector::new(Balance::Roundrobin, Duration::ZERO, 3);
        for _ in 0..10 {
            assert_ne!(selector.pick(&drained, None, &[]), Some(1));
        }
    }

    #[test]
    fn least_connections_prefers_the_idle_backend_and_rotates_ties() {
        let pool = pool(&[1, 1]);
        let selector = selector(Balance::Leastconn, &pool);
        let first = selector.pick(&pool, None, &[]).unwrap();
        let second = selector.pick(&pool, None, &[]).unwrap();
        assert_ne!(first, second, "idle ties rotate");
        let _busy = SessionGuard::new(pool.backends[0].clone());
        for _ in 0..5 {
            assert_eq!(selector.pick(&pool, None, &[]), Some(1));
        }
    }

    #[test]
    fn power_of_two_choices_uses_every_backend_and_avoids_the_loaded_one() {
        let pool = pool(&[1, 1]);
        let selector = selector(Balance::Random, &pool);
        let mut counts = [0; 2];
        for _ in 0..200 {
            counts[selector.pick(&pool, None, &[]).unwrap()] += 1;
        }
        assert!(counts.iter().all(|count| *count > 20), "{counts:?}");
        let _busy = SessionGuard::new(pool.backends[1].clone());
        for _ in 0..20 {
            assert_eq!(selector.pick(&pool, None, &[]), Some(0));
        }
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_only_the_lost_backends_keys() {
        let pool = pool(&[1, 1, 1, 1]);
        let selector = selector(Balance::HashUri, &pool);
        let keys: Vec<String> = (0..2000).map(|number| format!("/item/{number}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|key| selector.pick(&pool, Some(key.as_bytes()), &[]).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|key| selector.pick(&pool, Some(key.as_bytes()), &[]).unwrap())
            .collect();
        assert_eq!(before, again);
        for backend in 0..4 {
            let share = before.iter().filter(|chosen| **chosen == backend).count();
            assert!(
                (350..650).contains(&share),
                "backend {backend} got {share} of 2000 keys"
            );
        }

        pool.backends[2].set_healthy(false);
        for (key, old) in keys.iter().zip(&before) {
            let new = selector.pick(&pool, Some(key.as_bytes()), &[]).unwrap();
            if *old == 2 {
                assert_ne!(new, 2);
            } else {
                assert_eq!(new, *old, "{key} moved although its backend is still up");
            }
        }
        // Excluding a tried backend is the same as losing it, for that one key.
        let key = keys[0].as_bytes();
        let first = selector.pick(&pool, Some(key), &[]).unwrap();
        assert_ne!(selector.pick(&pool, Some(key), &[first]), Some(first));
    }

    #[test]
    fn consistent_hash_honours_weights_and_falls_back_without_a_key() {
        let pool = pool(&[3, 1]);
        let selector = selector(Balance::HashSource, &pool);
        let heavy = (0..4000u32)
            .filter(|number| selector.pick(&pool, Some(&number.to_be_bytes()), &[]) == Some(0))
            .count();
        assert!(
            (2700..3300).contains(&heavy),
            "{heavy} of 4000 keys on the weight-3 backend"
        );
        let order: Vec<usize> = (0..4)
            .map(|_| selector.pick(&pool, None, &[]).unwrap())
            .collect();
        assert_eq!(
            order.iter().filter(|index| **index == 1).count(),
            1,
            "{order:?}"
        );
    }

    #[test]
    fn hash_keys_come_from_the_right_part_of_the_request() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        let client: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(
            hash_key_for(&Balance::HashSource, client, None, None),
            Some(vec![10, 0, 0, 7])
        );
        assert_eq!(
            hash_key_for(
                &Balance::HashHeader("x-user".into()),
                client,
                Some(&headers),
                None
            ),
            Some(b"alice".to_vec())
        );
        assert_eq!(
            hash_key_for(
                &Balance::HashHeader("x-other".into()),
                client,
                Some(&headers),
                None
            ),
            None
        );
        assert_eq!(
            hash_key_for(&Balance::HashUri, client, None, Some("/a")),
            Some(b"/a".to_vec())
        );
        assert_eq!(
            hash_key_for(&Balance::Roundrobin, client, None, Some("/a")),
            None
        );
    }
}
