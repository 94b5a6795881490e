//! Errors of the multiplexed transport, split by what a caller can do about them: the
//! connection is gone (retry elsewhere), the peer refused or abandoned this stream (read
//! its error), or this side gave up waiting.

use std::net::SocketAddr;
use std::time::Duration;

use crate::rpc::RpcError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MuxError {
    #[error("could not connect to {address}: {message}")]
    Connect {
        address: SocketAddr,
        message: String,
    },
    #[error("TLS handshake with {address} failed: {message}")]
    Tls {
        address: SocketAddr,
        message: String,
    },
    /// The connection ended (closed by either side, a protocol violation, shutdown); every
    /// stream on it fails with this.
    #[error("the connection to {peer} is closed: {reason}")]
    ConnectionClosed { peer: SocketAddr, reason: String },
    /// The peer reset the stream (a handler error, a refused stream, ...).
    #[error("{0}")]
    Remote(RpcError),
    /// The peer stopped reading the body this side was sending.
    #[error("the peer stopped reading this stream")]
    Stopped,
    /// No progress on a stream (no data, or no credit) for this long.
    #[error("no progress on the stream for {0:?}")]
    Timeout(Duration),
    /// A body or header larger than the receiver accepts.
    #[error("{0}")]
    TooLarge(String),
    /// A frame that breaks the protocol; the connection is closed because of it.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A header or unary body that could not be encoded or decoded.
    #[error("could not decode: {0}")]
    Decode(String),
    /// Reading what to send, or writing what arrived, failed on this side.
    #[error("local I/O failed: {0}")]
    LocalIo(String),
    /// The body was already finished or reset on this side.
    #[error("the stream is already finished on this side")]
    Finished,
}

impl MuxError {
    /// The remote error, if the peer answered with one.
    pub fn remote(&self) -> Option<&RpcError> {
        match self {
            MuxError::Remote(error) => Some(error),
            _ => None,
        }
    }

    /// True when the connection itself failed, so a retry on a new connection may work.
    pub fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            MuxError::Connect { .. }
                | MuxError::Tls { .. }
                | MuxError::ConnectionClosed { .. }
                | MuxError::Protocol(_)
        )
    }
}
