//! Multiplexed streams over one mutual-TLS connection (`bramble-mux/1`): many calls in
//! flight at once, request and response bodies streamed in bounded chunks with per-stream
//! credit-based flow control, and two priority classes so that control traffic (Raft,
//! leases, CLI calls) is never stuck behind bulk transfers (blocks, healing, task output).
//!
//! - [`frame`]: the wire format (10-byte header, payload bounded by [`MuxLimits`]).
//! - `writer`: the one task per connection that writes frames, control before bulk.
//! - `connection`: the stream table and the reader task shared by both sides.
//! - [`body`]: [`BodySender`] and [`BodyReader`], the flow-controlled halves of a stream.
//! - [`server`]: [`StreamHandler`], [`StreamRouter`] and the server side of a connection.
//! - [`client`]: [`MuxClient`] (one kept connection per peer and priority class) and
//!   [`MuxConnection`].
//! - [`bulk_threads`]: the normal-priority threads that run bulk connections, so that
//!   encrypting bulk data never delays the control plane's tasks.
//!
//! The mux shares the RPC port: the TLS handshake negotiates ALPN, `bramble-mux/1` selects
//! the mux and anything else (including no ALPN, as older clients send) the framed RPC of
//! [`crate::rpc`]. See [`crate::rpc::serve_with_streams`]. A client opens bulk streams on
//! a connection of their own, negotiated as `bramble-mux-bulk/1` (the same protocol), which
//! both sides run on their [`bulk_threads`]: control-class streams use the connection
//! negotiated as `bramble-mux/1`, on the caller's runtime.

pub mod body;
pub mod bulk_threads;
pub mod client;
mod connection;
mod error;
pub mod frame;
pub mod server;
mod writer;

use std::time::Duration;

pub use body::{BodyReader, BodySender};
pub use client::{MuxClient, MuxConnection, Response, ResponseReceiver};
pub use error::MuxError;
pub use frame::Priority;
pub use server::{IncomingCall, ResponseWriter, StreamHandler, StreamRouter};

/// ALPN protocol name of the multiplexed transport.
pub const MUX_ALPN: &[u8] = b"bramble-mux/1";
/// ALPN protocol name of a mux connection that carries bulk streams: the same protocol as
/// [`MUX_ALPN`], but the server runs the whole connection on its [`bulk_threads`].
pub const MUX_BULK_ALPN: &[u8] = b"bramble-mux-bulk/1";
/// ALPN protocol name of the one-call-at-a-time RPC (also chosen when a client sends none).
pub const RPC_ALPN: &[u8] = b"bramble-rpc/1";

/// Credit every stream starts with in each direction, before any `Window` frame. Part of
/// the protocol: both ends must agree on it, so it is a constant and not a setting; a
/// receiver that wants a larger window grants the difference when the stream opens.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Connection-wide credit for bulk data every connection starts with in each direction,
/// before any `Window` frame on stream 0; a receiver grants the rest of its
/// [`MuxLimits::connection_bulk_window`] when the connection starts. Part of the protocol,
/// like [`INITIAL_WINDOW`].
pub const INITIAL_CONNECTION_BULK_WINDOW: u32 = 64 * 1024;

/// Bounds of one side of a mux connection. Both ends use the same defaults; a receiver
/// enforces its own values and never trusts the peer's.
#[derive(Debug, Clone)]
pub struct MuxLimits {
    /// Largest payload of any frame: data frames are cut to this size, and a header, a
    /// method name or a reset reason larger than this cannot be sent. Also the most a
    /// control frame waits behind bulk data: one batch of this size being written.
    pub max_frame_payload: u32,
    /// Credit a receiver keeps open per stream (at least [`INITIAL_WINDOW`]): the most
    /// unread data a stream can hold in memory on the receiving side.
    pub stream_window: u32,
    /// Bulk data the peer may have in flight towards this side on one connection (sent
    /// and not yet taken off the socket here), across all its bulk streams. It is granted
    /// back as soon as the reader has taken frames off the connection, not when the
    /// application consumes them (per-stream windows bound memory), so it bounds exactly
    /// the bulk bytes queued in socket buffers ahead of a control frame, whatever the
    /// number of bulk streams. It limits throughput only where the bandwidth-delay
    /// product exceeds it (a gigabit LAN's is about 25 KiB; on loopback 256 KiB keeps the
    /// full speed). At 1 Gbit/s, 256 KiB is 2 ms on the wire; 128 KiB halves that.
    pub connection_bulk_window: u32,
    /// Streams a server accepts at once on one connection; more are refused (reset with
    /// `Unavailable`), the connection stays up.
    pub max_streams: usize,
    /// Streams a client keeps open at once on one connection; more wait for a free slot.
    /// Half the server's limit, so a client never races the server's bookkeeping of a
    /// stream that has just ended.
    pub max_client_streams: usize,
    /// Time a stream may make no progress (no data arriving, no credit to send) before
    /// the waiting side gives up on it.
    pub stream_idle_timeout: Duration,
    /// Time a connection with no open stream may stay silent before it is closed.
    pub connection_idle_timeout: Duration,
    /// Time to deliver the rest of a frame once its header has arrived.
    pub frame_timeout: Duration,
    /// Largest request body a unary method (an [`crate::rpc::Handler`] served through
    /// [`StreamRouter::serve_unary_from`]) may send; the same bound as an RPC frame.
    pub max_unary_request: usize,
    /// Time a unary handler may take.
    pub unary_handler_timeout: Duration,
    /// Frames waiting to be written beyond which a peer that keeps provoking answers
    /// (refused streams) without reading them is disconnected.
    pub max_queued_frames: usize,
}

impl Default for MuxLimits {
    fn default() -> Self {
        MuxLimits {
            max_frame_payload: 64 * 1024,
            stream_window: INITIAL_WINDOW,
            connection_bulk_window: 256 * 1024,
            max_streams: 128,
            max_client_streams: 64,
            stream_idle_timeout: Duration::from_secs(30),
            connection_idle_timeout: Duration::from_secs(120),
            frame_timeout: Duration::from_secs(30),
            max_unary_request: 16 * 1024 * 1024,
            unary_handler_timeout: Duration::from_secs(30),
            max_queued_frames: 4096,
        }
    }
}

impl MuxLimits {
    /// The limits with every value moved into the range the protocol works in: frames of
    /// 1 KiB to 1 MiB, windows of at least their initial values and at most 64 MiB, and at
    /// least one stream. Applied by the server and client before use, so a mistaken
    /// setting degrades performance instead of breaking the protocol.
    pub fn sanitized(mut self) -> Self {
        self.max_frame_payload = self.max_frame_payload.clamp(1024, 1024 * 1024);
        self.stream_window = self.stream_window.clamp(INITIAL_WINDOW, 64 * 1024 * 1024);
        self.connection_bulk_window = self
            .connection_bulk_window
            .clamp(INITIAL_CONNECTION_BULK_WINDOW, 64 * 1024 * 1024);
        self.max_streams = self.max_streams.max(1);
        self.max_client_streams = self.max_client_streams.clamp(1, self.max_streams);
        self.max_queued_frames = self.max_queued_frames.max(64);
        self
    }
}
