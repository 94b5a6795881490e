//! `bench.*`: the built-in bulk streams every agent serves over the mux, so that the
//! network between two nodes can be measured with the agent's own transport (TLS, flow
//! control, bulk threads) instead of a separate tool (`bramble bench net`, issue 13):
//!
//! - `bench.sink`: reads a request body and throws it away; answers with its length and
//!   the time it took ([`SinkReply`] in the response header).
//! - `bench.source`: sends the number of bytes the request header asks for
//!   ([`SourceRequest`]).
//! - `bench.push`: this node streams to another member's `bench.sink` for a few seconds
//!   ([`PushRequest`]); answers with what the streams moved ([`PushReply`]). Node to node,
//!   so the measure includes both agents' work, as block copies will.
//!
//! Every call is bounded: [`MAX_BYTES`] per stream, [`MAX_CONCURRENT_CALLS`] at once (more
//! are refused, not queued), [`MAX_PUSH_STREAMS`] and [`MAX_PUSH_SECONDS`] per push; only
//! members and admins may call, and only on bulk streams, so that a benchmark never runs
//! at control priority.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_cluster::Membership;
use bramble_net::{
    ErrorKind, IncomingCall, MuxClient, MuxError, Priority, ResponseWriter, RpcError, StreamHandler,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// The service's name in the stream router.
pub const SERVICE: &str = "bench";
pub const METHOD_SINK: &str = "bench.sink";
pub const METHOD_SOURCE: &str = "bench.source";
pub const METHOD_PUSH: &str = "bench.push";

/// Most bytes one stream may carry in either direction.
pub const MAX_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Calls served at once (a push counts once, its streams once each on the target).
pub const MAX_CONCURRENT_CALLS: usize = 16;
/// Most streams one push opens.
pub const MAX_PUSH_STREAMS: u32 = 8;
/// Longest push: well under the caller's stream idle timeout (30 s), since the push's
/// own stream is silent until the answer.
pub const MAX_PUSH_SECONDS: u32 = 20;
/// Longest node name accepted in a push.
const MAX_NAME_LENGTH: usize = 253;
/// Size of each chunk sent: one frame.
const CHUNK: usize = 64 * 1024;

/// `bench.sink`'s answer, in the response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkReply {
    pub bytes: u64,
    /// From the call's arrival to the end of its body.
    pub micros: u64,
}

/// `bench.source`'s request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRequest {
    pub bytes: u64,
}

/// `bench.push`'s request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// The member whose `bench.sink` receives the streams.
    pub to: String,
    pub streams: u32,
    pub seconds: u32,
}

/// `bench.push`'s answer, in the response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReply {
    /// Bytes the target's sinks confirmed receiving, all streams together.
    pub bytes: u64,
    /// From the first stream's open to the last sink's answer.
    pub micros: u64,
    pub streams: u32,
}

/// The `bench` stream service of one agent.
pub struct BenchService {
    /// This node's client (node certificate) for pushes to other members.
    mux: MuxClient,
    membership: Arc<Membership>,
    calls: Arc<Semaphore>,
    chunk: Bytes,
}

impl BenchService {
    pub fn new(mux: MuxClient, membership: Arc<Membership>) -> Self {
        BenchService {
            mux,
            membership,
            calls: Arc::new(Semaphore::new(MAX_CONCURRENT_CALLS)),
            chunk: Bytes::from(vec![0x5a; CHUNK]),
        }
    }

    fn admit(&self, call: &IncomingCall) -> Result<OwnedSemaphorePermit, RpcError> {
        if !call.caller.is_authenticated() {
            return Err(RpcError::new(
                ErrorKind::Unauthorized,
                "bench calls need a node or admin certificate",
            ));
        }
        if call.priority != Priority::Bulk {
            return Err(RpcError::bad_request(
                "bench streams must be opened as bulk, never as control",
            ));
        }
        self.calls.clone().try_acquire_owned().map_err(|_| {
            RpcError::new(
                ErrorKind::Unavailable,
                format!("{MAX_CONCURRENT_CALLS} bench calls are already running here"),
            )
        })
    }

    async fn sink(&self, mut call: IncomingCall, response: ResponseWriter) -> Result<(), RpcError> {
        let started = Instant::now();
        let mut bytes = 0u64;
        while let Some(chunk) = call.body.next_chunk().await.map_err(failed)? {
            bytes += chunk.len() as u64;
            if bytes > MAX_BYTES {
                return Err(RpcError::new(
                    ErrorKind::TooLarge,
                    format!("a bench.sink body may carry at most {MAX_BYTES} bytes"),
                ));
            }
        }
        let reply = SinkReply {
            bytes,
            micros: elapsed_micros(started),
        };
        response
            .send_all(&encode(&reply)?, Bytes::new())
            .await
            .map_err(failed)
    }

    async fn source(&self, call: IncomingCall, response: ResponseWriter) -> Result<(), RpcError> {
        let request: SourceRequest = call.decode_header()?;
        if request.bytes > MAX_BYTES {
            return Err(RpcError::new(
                ErrorKind::TooLarge,
                format!("bench.source sends at most {MAX_BYTES} bytes"),
            ));
        }
        let mut sender = response.start(&[]).await.map_err(failed)?;
        let mut left = request.bytes;
        while left > 0 {
            let piece = self.chunk.slice(..(left.min(CHUNK as u64) as usize));
            left -= piece.len() as u64;
            sender.send(piece).await.map_err(failed)?;
        }
        sender.finish().await.map_err(failed)
    }

    async fn push(&self, call: IncomingCall, response: ResponseWriter) -> Result<(), RpcError> {
        let request: PushRequest = call.decode_header()?;
        if request.to.is_empty() || request.to.len() > MAX_NAME_LENGTH {
            return Err(RpcError::bad_request("bench.push needs a node name"));
        }
        if !(1..=MAX_PUSH_STREAMS).contains(&request.streams) {
            return Err(RpcError::bad_request(format!(
                "bench.push opens 1 to {MAX_PUSH_STREAMS} streams"
            )));
        }
        if !(1..=MAX_PUSH_SECONDS).contains(&request.seconds) {
            return Err(RpcError::bad_request(format!(
                "bench.push runs for 1 to {MAX_PUSH_SECONDS} seconds"
            )));
        }
        let target = self
            .membership
            .nodes()
            .await
            .into_iter()
            .find(|node| node.name == request.to)
            .map(|node| node.addr)
            .ok_or_else(|| {
                RpcError::new(
                    ErrorKind::NotFound,
                    format!("no member named {:?}", request.to),
                )
            })?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(u64::from(request.seconds));
        // Dropped with the handler (the caller left, the agent stops): the streams end.
        let mut streams = JoinSet::new();
        for _ in 0..request.streams {
            let mux = self.mux.clone();
            let chunk = self.chunk.clone();
            streams.spawn(push_one(mux, target, chunk, deadline));
        }
        let mut bytes = 0u64;
        while let Some(outcome) = streams.join_next().await {
            let reply = outcome
                .map_err(|error| RpcError::internal(format!("a push stream failed: {error}")))?
                .map_err(|error| {
                    RpcError::new(
                        ErrorKind::Unavailable,
                        format!("streaming to {} failed: {error}", request.to),
                    )
                })?;
            bytes += reply.bytes;
        }
        let reply = PushReply {
            bytes,
            micros: elapsed_micros(started),
            streams: request.streams,
        };
        response
            .send_all(&encode(&reply)?, Bytes::new())
            .await
            .map_err(failed)
    }
}

/// One stream of a push: sends `chunk` over and over until `deadline` (or [`MAX_BYTES`]),
/// then returns what the sink confirmed.
async fn push_one(
    mux: MuxClient,
    target: std::net::SocketAddr,
    chunk: Bytes,
    deadline: Instant,
) -> Result<SinkReply, MuxError> {
    let (mut sender, response) = mux.open(target, METHOD_SINK, &[], Priority::Bulk).await?;
    let mut sent = 0u64;
    while Instant::now() < deadline && sent + chunk.len() as u64 <= MAX_BYTES {
        sender.send(chunk.clone()).await?;
        sent += chunk.len() as u64;
    }
    sender.finish().await?;
    let response = response.wait().await?;
    postcard::from_bytes(&response.header).map_err(|error| MuxError::Decode(error.to_string()))
}

#[async_trait::async_trait]
impl StreamHandler for BenchService {
    async fn handle(&self, call: IncomingCall, response: ResponseWriter) -> Result<(), RpcError> {
        let _permit = self.admit(&call)?;
        match call.method_name() {
            "sink" => self.sink(call, response).await,
            "source" => self.source(call, response).await,
            "push" => self.push(call, response).await,
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the bench service has no method {other:?}"),
            )),
        }
    }
}

/// A mux error as the RPC error a stream handler answers with (shared with `upgrade`).
pub(crate) fn failed(error: MuxError) -> RpcError {
    match error {
        MuxError::Remote(error) => error,
        other => RpcError::new(ErrorKind::Unavailable, other.to_string()),
    }
}

/// A response header, postcard-encoded.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RpcError> {
    postcard::to_allocvec(value).map_err(|error| RpcError::internal(error.to_string()))
}

fn elapsed_micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}
