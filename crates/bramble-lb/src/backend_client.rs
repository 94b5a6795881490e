//! The HTTP client a balancer forwards requests with: pooled HTTP/1.1 keep-alive
//! connections to the backends, and the body type that flows through the proxy.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Timeouts;
use crate::memory_budget::BACKEND_BUFFER_BYTES;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;
/// Bodies in both directions: streamed from the other side, buffered, or the balancer's own.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
pub(crate) type BackendClient = Client<HttpConnector, ProxyBody>;

/// Idle backend connections are closed after this long: shorter than common backend
/// keep-alive timeouts (Apache's 5 s), so the balancer rarely reuses a connection the
/// backend is closing at that very moment.
const BACKEND_POOL_IDLE: Duration = Duration::from_secs(4);
/// The client for the backends: keep-alive pool, connect timeout from the spec.
pub(crate) fn backend_client(timeouts: &Timeouts) -> BackendClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_millis(timeouts.connect_ms)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(BACKEND_POOL_IDLE)
        .pool_timer(TokioTimer::new())
        // Bounded so a request's share of the data-plane memory budget covers it.
        .http1_max_buf_size(BACKEND_BUFFER_BYTES)
        .build(connector)
}
