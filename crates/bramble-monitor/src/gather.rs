//! The cluster's alerts, gathered by whichever node is asked: its own, and every live
//! member's `monitor.alerts` (scope `Node`), asked at once over the nodes' kept RPC
//! connections with a short timeout each, then merged. Members that are down are not
//! asked (the node-down alert speaks for them) and, like members that did not answer in
//! time, are listed as unanswered, so a reader knows which nodes' own conditions (a full
//! disk, a hot board) are missing from the list.

use std::time::Duration;

use bramble_cluster::NodeState;
use tokio::task::JoinSet;

use crate::alerts::merge;
use crate::service::{AlertScope, AlertsResponse, METHOD_ALERTS, Unanswered};
use crate::subsystem::Monitor;

/// How long a member has to answer: the CLI waits for the slowest.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Every member's alerts as the node `monitor` runs on gathers them.
pub async fn cluster_alerts(monitor: &Monitor) -> AlertsResponse {
    let mut answers = vec![monitor.local_alerts()];
    let mut unanswered = Vec::new();
    let mut asking = JoinSet::new();
    for member in monitor.membership().nodes().await {
        if member.name == monitor.node() {
            continue;
        }
        match member.state {
            NodeState::Left => {}
            NodeState::Dead => unanswered.push(Unanswered {
                node: member.name,
                reason: "down: not asked".to_string(),
            }),
            NodeState::Alive | NodeState::Suspect => {
                let rpc = monitor.rpc().clone();
                asking.spawn(async move {
                    let answer = tokio::time::timeout(
                        ASK_TIMEOUT,
                        rpc.call_reusing::<_, AlertsResponse>(
                            member.addr,
                            METHOD_ALERTS,
                            &AlertScope::Node,
                        ),
                    )
                    .await;
                    let outcome = match answer {
                        Ok(Ok(response)) => Ok(response.alerts),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
                    };
                    (member.name, outcome)
                });
            }
        }
    }
    while let Some(joined) = asking.join_next().await {
        match joined {
            Ok((_, Ok(alerts))) => answers.push(alerts),
            Ok((node, Err(reason))) => unanswered.push(Unanswered { node, reason }),
            // A panicked ask names no node; it cannot happen short of a bug.
            Err(error) => unanswered.push(Unanswered {
                node: "?".to_string(),
                reason: error.to_string(),
            }),
        }
    }
    unanswered.sort_by(|left, right| left.node.cmp(&right.node));
    AlertsResponse {
        asked: monitor.node().to_string(),
        alerts: merge(answers),
        unanswered,
    }
}
