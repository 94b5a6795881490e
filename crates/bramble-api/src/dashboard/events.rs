//! `GET /api/v1/events`: the live picture the dashboard draws, as Server-Sent Events, one
//! event a second: every node (gossip's view: state, roles, load, memory) with the point
//! its last second makes (CPU busy, load, memory, network and disk rates, temperature,
//! throttling, root filesystem) — the monitor's own `Point::between` of two consecutive
//! samples, so the dashboard shows the figures `bramble metrics` and the history show.
//!
//! A node whose sample does not come within [`SAMPLE_WAIT`] is marked `unreachable` in
//! that event: a power-cut board turns red on the next tick, before gossip has decided it
//! is dead. Each open stream asks every live node once a second (at most
//! [`MAX_SAMPLED_NODES`]; beyond, gossip's figures alone); streams are bounded per agent
//! ([`MAX_STREAMS`]), end when the client goes, when the agent stops, or when their
//! session ends (checked each minute; the page then asks for the password again).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bramble_cluster::{Membership, NodeState};
use bramble_monitor::history::{Point, SERIES};
use bramble_monitor::sample::Sample;
use bramble_monitor::service::{METHOD_SAMPLE, SampleResponse};
use bramble_net::RpcClient;
use bramble_util::Shutdown;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinSet;

/// Event streams open at once on one agent.
pub const MAX_STREAMS: usize = 16;
/// Nodes asked for their sample each second by one stream.
pub const MAX_SAMPLED_NODES: usize = 64;
/// How long a node's sample may take before it counts as unreachable this second.
const SAMPLE_WAIT: Duration = Duration::from_millis(800);
const TICK: Duration = Duration::from_secs(1);
/// How often a stream checks that its session still stands.
const SESSION_CHECK_EVERY: u32 = 60;

/// The response body of a stream: events as the producer writes them.
pub struct EventBody {
    events: mpsc::Receiver<Bytes>,
    /// Held as long as the stream is open: one of [`MAX_STREAMS`].
    _permit: OwnedSemaphorePermit,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.events
            .poll_recv(context)
            .map(|event| event.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// What a stream asks whether its caller may still listen.
pub type StillAllowed = Box<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Opens a stream: the body to answer with, and the producer running until it ends.
pub fn open(
    permit: OwnedSemaphorePermit,
    membership: Arc<Membership>,
    client: RpcClient,
    still_allowed: StillAllowed,
    mut shutdown: Shutdown,
) -> EventBody {
    // Two events of slack: a client that cannot keep up misses seconds, never piles them.
    let (sender, events) = mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let mut previous: HashMap<String, Sample> = HashMap::new();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = sender.closed() => break,
                _ = ticker.tick() => {}
            }
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(SESSION_CHECK_EVERY) && !still_allowed().await {
                let _ = sender.try_send(Bytes::from_static(b"event: end\ndata: {}\n\n"));
                break;
            }
            let event = snapshot(&membership, &client, &mut previous).await;
            let mut text = b"data: ".to_vec();
            if serde_json::to_writer(&mut text, &event).is_err() {
                continue;
            }
            text.extend_from_slice(b"\n\n");
            match sender.try_send(Bytes::from(text)) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    });
    EventBody {
        events,
        _permit: permit,
    }
}

/// One event: every node with its last second.
async fn snapshot(
    membership: &Membership,
    client: &RpcClient,
    previous: &mut HashMap<String, Sample>,
) -> Value {
    let nodes = membership.nodes().await;
    let mut asked = JoinSet::new();
    for node in nodes
        .iter()
        .filter(|node| matches!(node.state, NodeState::Alive | NodeState::Suspect))
        .take(MAX_SAMPLED_NODES)
    {
        let client = client.clone();
        let (name, address) = (node.name.clone(), node.addr);
        asked.spawn(async move {
            let answer = tokio::time::timeout(
                SAMPLE_WAIT,
                client.call::<_, SampleResponse>(address, METHOD_SAMPLE, &()),
            )
            .await;
            let sample = match answer {
                Ok(Ok((_, sample))) => Ok(sample),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no sample within {} ms", SAMPLE_WAIT.as_millis())),
            };
            (name, sample)
        });
    }
    let mut samples: HashMap<String, Result<Option<Sample>, String>> = HashMap::new();
    while let Some(joined) = asked.join_next().await {
        if let Ok((name, sample)) = joined {
            samples.insert(name, sample);
        }
    }
    previous.retain(|name, _| nodes.iter().any(|node| &node.name == name));
    let rows: Vec<Value> = nodes
        .iter()
        .map(|node| {
            let mut row = serde_json::to_value(node).unwrap_or_else(|_| json!({}));
            match samples.remove(&node.name) {
                Some(Ok(Some(sample))) => {
                    let point = Point::between(previous.get(&node.name), &sample);
                    row["point"] = json!(
                        point
                            .values
                            .iter()
                            .map(|value| if value.is_finite() {
                                json!(value)
                            } else {
                                Value::Null
                            })
                            .collect::<Vec<_>>()
                    );
                    row["reachable"] = json!(true);
                    previous.insert(node.name.clone(), sample);
                }
                Some(Ok(None)) => row["reachable"] = json!(true),
                Some(Err(problem)) => {
                    row["reachable"] = json!(false);
                    row["problem"] = json!(problem);
                    previous.remove(&node.name);
                }
                None => {}
            }
            row
        })
        .collect();
    json!({
        "unix_ms": bramble_util::time::unix_millis(),
        "series": SERIES,
        "nodes": rows,
    })
}
