//! `monitor.*` RPC, answered by every agent about itself: `monitor.sample` (the latest
//! sample, for `bramble nodes` and `bramble metrics`) and `monitor.history` (a tier of the
//! summary history, for `bramble metrics --history`).

use std::sync::Arc;

use bramble_net::rpc::{Request, encode};
use bramble_net::{ErrorKind, Handler, RpcError};
use serde::{Deserialize, Serialize};

use crate::history::{Point, SERIES, Tier};
use crate::sample::Sample;
use crate::subsystem::Monitor;

pub const METHOD_SAMPLE: &str = "monitor.sample";
pub const METHOD_HISTORY: &str = "monitor.history";

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
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the monitor service has no method {other:?}"),
            )),
        }
    }
}
