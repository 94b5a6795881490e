//! Agent-to-agent transport. Every byte between agents (and between the CLI and an agent)
//! travels over TLS 1.3 with certificates issued by the cluster's CA:
//!
//! - [`tls`] builds the rustls configurations: mutual TLS for members and admins, and the
//!   pinned-CA client a joining node uses before it has a certificate.
//! - [`identity`] says who is on the other end of a connection (a node, an admin, or an
//!   anonymous joiner) from its verified certificate.
//! - [`rpc`] is a small request/response protocol over those connections: length-prefixed
//!   postcard frames, bounded in size and time, dispatched to the services that the layers
//!   above register. Anonymous callers can reach only the methods marked as open to them.
//! - [`mux`] multiplexes many calls on one connection, with streamed, flow-controlled
//!   bodies and control traffic always ahead of bulk; it shares the RPC port (ALPN).

pub mod identity;
pub mod mux;
pub mod rpc;
pub mod tls;

pub use identity::Caller;
pub use mux::{
    BodyReader, BodySender, IncomingCall, MuxClient, MuxConnection, MuxError, MuxLimits, Priority,
    ResponseWriter, StreamHandler, StreamRouter,
};
pub use rpc::{
    CallError, Connection, ErrorKind, Handler, MAX_MEMBER_FRAME, Router, RpcClient, RpcError,
    ServerLimits, serve, serve_with_streams,
};
pub use tls::{CLUSTER_SERVER_NAME, Credential, Fingerprint, TlsError};
