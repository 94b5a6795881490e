//! `monitor.*` RPC: `monitor.sample` (the latest sample, for `bramble nodes` and `bramble
//! metrics`) and `monitor.history` (a tier of the summary history, for `bramble metrics
//! --history`), answered by every agent about itself; and `monitor.alerts`, the active
//! alerts of this node alone or, asked for the cluster, of every member (for `bramble
//! alerts` and `bramble nodes`).

use std::sync::Arc;

use bramble_net::rpc::{Request, encode};
use bramble_net::{ErrorKind, Handler, RpcError};
use serde::{Deserialize, Serialize};

use crate::alerts::Alert;
use crate::history::{Point, SERIES, Tier};
use crate::sample::Sample;
use crate::subsystem::Monitor;

pub const METHOD_SAMPLE: &str = "monitor.sample";
pub const METHOD_HISTORY: &str = "monitor.history";
pub const METHOD_ALERTS: &str = "monitor.alerts";

/// What `monitor.alerts` answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertScope {
    /// The alerts this node evaluates (its own conditions, the members it sees down).
    Node,
    /// Every member's, gathered by the asked node with a short timeout per member.
    Cluster,
}

/// `monitor.alerts`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertsResponse {
    /// The node that answered (and gathered).
    pub asked: String,
    /// Active alerts, merged across reporters, in (kind, node, subject) order.
    pub alerts: Vec<Alert>,
    /// Members whose alerts are missing, and why (down, or no answer in time).
    pub unanswered: Vec<Unanswered>,
}

/// A member that did not answer for its alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unanswered {
    pub node: String,
    pub reason: String,
}

/// `monitor.sample`: the answering node and its latest sample (none before the first).
pub type SampleResponse = (String, Option<Sample>);

/// `monitor.history`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub node: String,
    pub tier: Tier,
    /// How far apart the points are, in milliseconds.
    pub step_millis: u64,
    /// The names of each point's values, in order.
    pub series: Vec<String>,
    pub points: Vec<Point>,
}

pub struct MonitorService {
    monitor: Arc<Monitor>,
}

impl MonitorService {
    pub fn new(monitor: Arc<Monitor>) -> MonitorService {
        MonitorService { monitor }
    }
}

#[async_trait::async_trait]
impl Handler for MonitorService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        request.require_authenticated()?;
        match request.method {
            "sample" => encode(&(self.monitor.node().to_string(), self.monitor.latest())),
            "history" => {
                let tier: Tier = request.decode()?;
                let (step, points) = self.monitor.history(tier);
                encode(&HistoryResponse {
                    node: self.monitor.node().to_string(),
                    tier,
                    step_millis: step.as_millis() as u64,
                    series: SERIES.iter().map(|name| name.to_string()).collect(),
                    points,
                })
            }
            "alerts" => {
                let scope: AlertScope = request.decode()?;
                let answer = match scope {
                    AlertScope::Node => AlertsResponse {
                        asked: self.monitor.node().to_string(),
                        alerts: self.monitor.local_alerts(),
                        unanswered: Vec::new(),
                    },
                    AlertScope::Cluster => crate::gather::cluster_alerts(&self.monitor).await,
                };
                encode(&answer)
            }
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the monitor service has no method {other:?}"),
            )),
        }
    }
}
