//! Waiting for the cluster to agree on something, and timing it: each observer node is
//! polled over its own kept-open connection every 50 ms until its view satisfies the
//! condition. Used by `up` (everyone sees everyone alive) and `chaos` (everyone sees the
//! victim dead, or alive again).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bramble_cluster::NodeView;
use bramble_net::{Connection, RpcClient};
use tokio::task::JoinSet;

const POLL_INTERVAL: Duration = Duration::from_millis(50);

pub type ViewCondition = Arc<dyn Fn(&[NodeView]) -> bool + Send + Sync>;

/// When one observer first saw the condition hold.
#[derive(Debug, Clone)]
pub struct Observation {
    pub observer: String,
    pub after: Duration,
}

/// Polls every observer until its view satisfies `condition`, or `timeout` passes. Returns
/// each observer's time, measured from `since`. `progress` is called as observers agree.
pub async fn wait_for_views(
    rpc: &RpcClient,
    observers: Vec<(String, SocketAddr)>,
    condition: ViewCondition,
    since: Instant,
    timeout: Duration,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<Observation>> {
    let total = observers.len();
    let mut tasks = JoinSet::new();
    for (name, address) in observers {
        let rpc = rpc.clone();
        let condition = condition.clone();
        tasks.spawn(async move {
            let mut connection: Option<Connection> = None;
            loop {
                if connection.is_none() {
                    connection = rpc.connect(address).await.ok();
                }
                if let Some(open) = connection.as_mut() {
                    match open.call::<_, Vec<NodeView>>("cluster.nodes", &()).await {
                        Ok(view) if condition(&view) => {
                            return Observation {
                                observer: name,
                                after: since.elapsed(),
                            };
                        }
                        Ok(_) => {}
                        Err(_) => connection = None,
                    }
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        });
    }
    let deadline = tokio::time::Instant::from_std(since + timeout);
    let mut observations = Vec::with_capacity(total);
    progress(0, total);
    while observations.len() < total {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(observation))) => {
                observations.push(observation);
                progress(observations.len(), total);
            }
            Ok(Some(Err(error))) => bail!("an observer task failed: {error}"),
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                let agreed: Vec<&str> = observations.iter().map(|o| o.observer.as_str()).collect();
                bail!(
                    "only {} of {total} nodes agreed within {timeout:?} (agreed: {})",
                    observations.len(),
                    if agreed.is_empty() {
                        "none".to_string()
                    } else {
                        agreed.join(", ")
                    }
                );
            }
        }
    }
    Ok(observations)
}

/// True when `view` lists exactly `expected` names, all alive.
pub fn all_alive(expected: Vec<String>) -> ViewCondition {
    Arc::new(move |view: &[NodeView]| {
        expected.iter().all(|name| {
            view.iter()
                .any(|node| node.name == *name && node.state == bramble_cluster::NodeState::Alive)
        })
    })
}
