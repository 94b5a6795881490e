//! What the stats page shows of a balancer: the pool's numbers plus request rates, in the
//! shape the HTML, JSON and Prometheus renderings share.

use serde::Serialize;

use crate::pool::BackendStats;

/// One balancer as the stats page shows it: the pool's numbers plus rates.
#[derive(Debug, Clone, Serialize)]
pub(super) struct BalancerView {
    pub(super) name: String,
    pub(super) listen: String,
    pub(super) mode: String,
    pub(super) balance: String,
    pub(super) vip_holder: Option<String>,
    pub(super) frontend_sessions: u64,
    pub(super) frontend_errors: u64,
    pub(super) frontend_rate_per_second: f64,
    pub(super) backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct BackendView {
    #[serde(flatten)]
    pub(super) stats: BackendStats,
    pub(super) rate_per_second: f64,
}

#[derive(Serialize)]
pub(super) struct StatsDocument<'a> {
    pub(super) balancers: &'a [BalancerView],
}
