//! The configuration a balancer serves with, as one immutable value per version of its
//! spec ([`Runtime`]), the cell that holds the current one ([`RuntimeCell`]), and the
//! client-side counters that outlive configuration changes.
//!
//! The proxies read from here and the balancer writes here, so both depend on this module
//! and neither on the other.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bramble_util::Shutdown;

use crate::backend_client::BackendConnections;
use crate::balance::Selector;
use crate::config::BalancerSpec;
use crate::pool::Pool;

/// Client-side counters, kept across configuration changes.
#[derive(Debug, Default)]
pub(crate) struct FrontendCounters {
    /// HTTP requests or TCP connections accepted.
    pub(crate) sessions: AtomicU64,
    /// Answers the balancer produced itself because something failed or a limit was hit,
    /// plus connections refused over `max_connections`.
    pub(crate) errors: AtomicU64,
    /// Client connections open now, for `max_connections`.
    pub(crate) open_connections: AtomicUsize,
}

/// Everything a request needs, for one version of the spec.
pub(crate) struct Runtime {
    pub(crate) spec: BalancerSpec,
    pub(crate) pool: Arc<Pool>,
    pub(crate) selector: Selector,
    /// Keep-alive connections to the backends (HTTP mode), one idle list per data-plane
    /// thread so that a request and its backend connection share a thread.
    pub(crate) connections: Arc<BackendConnections>,
    pub(crate) frontend: Arc<FrontendCounters>,
}

impl Runtime {
    pub(crate) fn new(
        spec: BalancerSpec,
        previous: Option<&Runtime>,
        frontend: Arc<FrontendCounters>,
        stop: &Shutdown,
    ) -> Runtime {
        let pool = match previous {
            Some(previous) => Pool::carry_over(&spec.backends, &previous.pool),
            None => Pool::new(&spec.backends),
        };
        // Reusing the connections keeps idle ones warm across a change; only their
        // connect timeout is baked in.
        let connect_timeout = Duration::from_millis(spec.timeouts.connect_ms);
        let connections = match previous {
            Some(previous) if previous.connections.connect_timeout() == connect_timeout => {
                previous.connections.clone()
            }
            _ => Arc::new(BackendConnections::new(connect_timeout, stop.clone())),
        };
        let selector = Selector::new(spec.balance.clone(), slow_start(&spec), pool.backends.len());
        Runtime {
            spec,
            pool: Arc::new(pool),
            selector,
            connections,
            frontend,
        }
    }
}

/// The spec's slow-start period as a duration.
pub(crate) fn slow_start(spec: &BalancerSpec) -> Duration {
    Duration::from_secs(u64::from(spec.slow_start_secs))
}

/// The current [`Runtime`]. A read lock held just long enough to clone an `Arc` costs
/// the hot path next to nothing, and writers (configuration changes) are rare.
pub(crate) struct RuntimeCell {
    current: RwLock<Arc<Runtime>>,
}

impl RuntimeCell {
    pub(crate) fn new(runtime: Runtime) -> RuntimeCell {
        RuntimeCell {
            current: RwLock::new(Arc::new(runtime)),
        }
    }

    pub(crate) fn load(&self) -> Arc<Runtime> {
        self.current
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub(crate) fn store(&self, runtime: Arc<Runtime>) {
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = runtime;
    }
}
