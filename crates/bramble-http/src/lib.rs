//! HTTP plumbing shared by everything in Bramble that answers HTTP: the load balancer's
//! data plane, its stats page, the demo web servers, and the HTTP API to come. It sits
//! beside `bramble-net` (above `bramble-util` only), so the API can use it without
//! depending on the load balancer.
//!
//! - [`server`]: one hardened HTTP/1.1 server loop: bounded head, body and connection
//!   count, header-read and idle timeouts, a 408 for clients that stall mid-request.
//! - [`connection`]: a client connection's socket with those timeouts, and the activity
//!   record that tells an idle connection from one with a request under way.
//! - [`budget`]: a byte budget that connections and requests reserve from, so a flood
//!   cannot take more memory than the budget.
//! - [`html`]: escaping for pages built from untrusted strings.

pub mod budget;
pub mod connection;
pub mod html;
pub mod server;

pub use budget::{MemoryBudget, Reservation};
pub use connection::{Activity, ClientIo, InFlight};
pub use server::{PeerCertificates, ServerLimits, serve_http1, serve_https1};
