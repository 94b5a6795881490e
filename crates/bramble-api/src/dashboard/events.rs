//! `GET /api/v1/events`: the live picture the dashboard draws, as Server-Sent Events, one
//! event a second: the monitor's [`LiveSnapshot`] (every node from gossip with the point
//! its last second makes: CPU busy, load, memory, network and disk rates, temperature,
//! throttling, root filesystem), the same picture `bramble top` draws.
//!
//! A node whose sample does not come within the monitor's `SAMPLE_WAIT` is
//! `reachable: false` in that event: a power-cut board turns red on the next tick, before
//! gossip has decided it is dead. Each open stream keeps its own [`Live`] (the previous
//! samples its rates need); streams are bounded per agent ([`MAX_STREAMS`]), end when the
//! client goes, when the agent stops, or when their session ends (checked each minute;
//! the page then asks for the password again).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bramble_cluster::Membership;
use bramble_monitor::live::{Live, LiveSnapshot};
use bramble_net::RpcClient;
use bramble_util::Shutdown;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// Event streams open at once on one agent.
pub const MAX_STREAMS: usize = 16;
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
        let mut live = Live::new();
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
            let event: LiveSnapshot = live.snapshot(membership.nodes().await, &client).await;
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
