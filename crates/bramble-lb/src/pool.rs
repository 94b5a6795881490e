//! The runtime state of a balancer's backends, shared by the proxy (which picks backends
//! and counts sessions), the health checker (which marks them up or down) and the stats
//! page (which reads everything). Counters are atomics so the hot path takes no lock;
//! the few strings (last check result) sit behind short mutexes.
//!
//! A configuration change builds a new [`Pool`] and carries each surviving backend's
//! state over ([`Pool::carry_over`]), so health and counters survive `lb set`, and
//! connections already open keep their `Arc<BackendState>`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{AdminState, BackendSpec};

/// How long a backend stays out of rotation after connection errors (passive ejection)
/// before it gets traffic again without waiting for an active check.
pub const EJECTION_TIME: Duration = Duration::from_secs(5);
/// Consecutive connection errors that eject a backend.
pub const EJECTION_ERRORS: u32 = 3;

/// One backend server at run time.
#[derive(Debug)]
pub struct BackendState {
    pub spec: BackendSpec,
    /// Result of active checks (true without checks configured).
    healthy: AtomicBool,
    /// Passive ejection: not before this many milliseconds since `created`.
    ejected_until_ms: AtomicU64,
    consecutive_errors: AtomicU32,
    /// Current sessions (HTTP requests in flight or TCP connections open).
    pub active: AtomicUsize,
    pub total_sessions: AtomicU64,
    pub errors: AtomicU64,
    /// When the backend last came back up, for slow start.
    came_up: Mutex<Option<Instant>>,
    last_check: Mutex<String>,
    created: Instant,
}

/// A point-in-time view of one backend, for the stats page and `lb show`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStats {
    pub name: String,
    pub addr: String,
    /// up, down, drain or disabled.
    pub status: String,
    pub weight: u32,
    pub effective_weight: u32,
    pub active_sessions: usize,
    pub total_sessions: u64,
    pub errors: u64,
    pub last_check: String,
}

impl BackendState {
    pub fn new(spec: BackendSpec) -> Self {
        BackendState {
            spec,
            healthy: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_errors: AtomicU32::new(0),
            active: AtomicUsize::new(0),
            total_sessions: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            came_up: Mutex::new(None),
            last_check: Mutex::new("not checked yet".to_string()),
            created: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// May new sessions go here? (Healthy, enabled, not ejected.)
    pub fn accepts_new_sessions(&self) -> bool {
        self.spec.admin == AdminState::Enabled
            && self.spec.weight > 0
            && self.is_healthy()
            && !self.is_ejected()
    }

    /// Whether passive ejection keeps this backend out. Never ejected (the usual case)
    /// reads no clock: this runs for every backend on every request.
    fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && until > self.now_ms()
    }

    /// May a sticky session continue here? (Draining servers keep their sessions.)
    pub fn accepts_sticky_sessions(&self) -> bool {
        self.spec.admin != AdminState::Disabled && self.is_healthy() && !self.is_ejected()
    }

    /// Called by the health checker with each check's outcome once rise/fall decided.
    pub fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if healthy && !was {
            *self
                .came_up
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()) = Some(Instant::now());
            self.consecutive_errors.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    pub fn set_last_check(&self, description: impl Into<String>) {
        *self
            .last_check
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = description.into();
    }

    /// Records a connection error to this backend (passive health): after
    /// [`EJECTION_ERRORS`] in a row it is skipped for [`EJECTION_TIME`].
    pub fn record_connect_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let errors = self.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if errors >= EJECTION_ERRORS {
            self.ejected_until_ms.store(
                self.now_ms() + EJECTION_TIME.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
    }

    pub fn record_success(&self) {
        // Read first: an unconditional store on every request would bounce this cache
        // line between the data-plane threads.
        if self.consecutive_errors.load(Ordering::Relaxed) != 0 {
            self.consecutive_errors.store(0, Ordering::Relaxed);
        }
    }

    /// Weight now, ramped linearly over `slow_start` after the backend came back up.
    pub fn effective_weight(&self, slow_start: Duration) -> u32 {
        let weight = self.spec.weight;
        if slow_start.is_zero() {
            return weight;
        }
        let came_up = *self
            .came_up
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match came_up {
            Some(since) if since.elapsed() < slow_start => {
                let fraction = since.elapsed().as_secs_f64() / slow_start.as_secs_f64();
                ((weight as f64 * fraction).ceil() as u32).clamp(1, weight.max(1))
            }
            _ => weight,
        }
    }

    pub fn stats(&self, slow_start: Duration) -> BackendStats {
        let status = match self.spec.admin {
            AdminState::Disabled => "disabled",
            AdminState::Drain if self.is_healthy() => "drain",
            _ if !self.is_healthy() => "down",
            _ if self.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms() => "ejected",
            _ => "up",
        };
        BackendStats {
            name: self.spec.name.clone(),
            addr: self.spec.addr.to_string(),
            status: status.to_string(),
            weight: self.spec.weight,
            effective_weight: self.effective_weight(slow_start),
            active_sessions: self.active.load(Ordering::Relaxed),
            total_sessions: self.total_sessions.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_check: self
                .last_check
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone(),
        }
    }

    /// Moves the run-time state of `old` into a state for `spec` (same server, new
    /// configuration: weight or admin state changed).
    fn inherit(spec: BackendSpec, old: &BackendState) -> BackendState {
        let state = BackendState::new(spec);
        state.healthy.store(old.is_healthy(), Ordering::Relaxed);
        state.total_sessions.store(
            old.total_sessions.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        state
            .errors
            .store(old.errors.load(Ordering::Relaxed), Ordering::Relaxed);
        state.set_last_check(
            old.last_check
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone(),
        );
        state
    }
}

/// A session counted on a backend for as long as this guard lives.
pub struct SessionGuard {
    backend: Arc<BackendState>,
}

impl SessionGuard {
    pub fn new(backend: Arc<BackendState>) -> Self {
        backend.active.fetch_add(1, Ordering::Relaxed);
        backend.total_sessions.fetch_add(1, Ordering::Relaxed);
        SessionGuard { backend }
    }

    pub fn backend(&self) -> &Arc<BackendState> {
        &self.backend
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A point-in-time view of one balancer on one node: `lb show`, the stats page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BalancerStats {
    pub name: String,
    pub listen: String,
    pub mode: String,
    pub balance: String,
    /// The node holding the virtual IP, when known.
    pub vip_holder: Option<String>,
    /// Requests (HTTP) or connections (TCP) accepted from clients since start.
    pub frontend_sessions: u64,
    /// Requests answered with an error by the balancer itself (502, 503, 504, 4xx limits).
    pub frontend_errors: u64,
    pub backends: Vec<BackendStats>,
}

/// All backends of one balancer.
#[derive(Debug)]
pub struct Pool {
    pub backends: Vec<Arc<BackendState>>,
}

impl Pool {
    pub fn new(specs: &[BackendSpec]) -> Pool {
        Pool {
            backends: specs
                .iter()
                .cloned()
                .map(|spec| Arc::new(BackendState::new(spec)))
                .collect(),
        }
    }

    /// A pool for new specs that keeps the state of backends present in `old` (matched by
    /// name and address).
    pub fn carry_over(specs: &[BackendSpec], old: &Pool) -> Pool {
        Pool {
            backends: specs
                .iter()
                .cloned()
                .map(|spec| {
                    match old.backends.iter().find(|existing| {
                        existing.spec.name == spec.name && existing.spec.addr == spec.addr
                    }) {
                        Some(existing) => Arc::new(BackendState::inherit(spec, existing)),
                        None => Arc::new(BackendState::new(spec)),
                    }
                })
                .collect(),
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<BackendState>> {
        self.backends
            .iter()
            .find(|backend| backend.spec.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, port: u16) -> BackendSpec {
        BackendSpec {
            name: name.into(),
            addr: ([127, 0, 0, 1], port).into(),
            weight: 4,
            admin: AdminState::Enabled,
        }
    }

    #[test]
    fn repeated_connection_errors_eject_and_success_resets() {
        let backend = BackendState::new(spec("web1", 1));
        backend.record_connect_error();
        backend.record_connect_error();
        assert!(backend.accepts_new_sessions());
        backend.record_success();
        for _ in 0..EJECTION_ERRORS {
            backend.record_connect_error();
        }
        assert!(!backend.accepts_new_sessions());
        assert_eq!(backend.stats(Duration::ZERO).status, "ejected");
    }

    #[test]
    fn slow_start_ramps_weight_after_recovery() {
        let backend = BackendState::new(spec("web1", 1));
        backend.set_healthy(false);
        backend.set_healthy(true);
        let weight = backend.effective_weight(Duration::from_secs(60));
        assert!((1..4).contains(&weight), "{weight}");
        assert_eq!(backend.effective_weight(Duration::ZERO), 4);
    }

    #[test]
    fn configuration_changes_keep_health_and_counters() {
        let old = Pool::new(&[spec("web1", 1), spec("web2", 2)]);
        old.backends[0].set_healthy(false);
        drop(SessionGuard::new(old.backends[1].clone()));
        let mut changed = spec("web2", 2);
        changed.weight = 9;
        let new = Pool::carry_over(&[spec("web1", 1), changed, spec("web3", 3)], &old);
        assert!(!new.by_name("web1").unwrap().is_healthy());
        assert_eq!(
            new.by_name("web2")
                .unwrap()
                .total_sessions
                .load(Ordering::Relaxed),
            1
        );
        assert_eq!(new.by_name("web2").unwrap().spec.weight, 9);
        assert!(new.by_name("web3").unwrap().is_healthy());
    }
}
