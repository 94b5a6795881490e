//! The load balancer (capability 2, recipe 1 of the cookbook): what HAProxy and Keepalived
//! do for the recipe's HA website, inside the agent and configured once in the catalog.
//!
//! - [`keys`]: the catalog keys the balancer owns (specs, VIP leases).
//! - [`config`]: a balancer's specification as stored in the catalog, and its validation.
//! - [`pool`]: backends at run time: health, sessions, counters, passive ejection, slow start.
//! - [`balance`]: choosing a backend: weighted round robin, least connections, power of two
//!   random choices, consistent hashing on source address, header or URI.
//! - [`balancer`]: one running balancer: listener, connection limit, live reconfiguration.
//! - `runtime`: the configuration a balancer serves with, one immutable value per spec
//!   version, read by the proxies and swapped by the balancer (so neither imports the other).
//! - `backend_client`: the per-thread HTTP/1.1 keep-alive connections the HTTP proxy forwards on.
//! - [`workers`]: the data-plane threads (single-threaded runtimes, one per two cores) that
//!   serve client connections, each with its own backend connection pool.
//! - `memory_budget`: the node's data-plane memory budget that connections, HTTP/2
//!   connections and requests reserve their worst case from.
//! - [`http_proxy`] and [`tcp_proxy`]: the data path, with retries, redispatch, sticky
//!   cookies, X-Forwarded-For, timeouts and size bounds.
//! - [`health`]: active checks with HAProxy's interval/rise/fall and check status codes.
//! - [`stats`]: the authenticated statistics page (HTML, JSON, Prometheus), its argon2id
//!   login, rates and renderings, served by `bramble_http`'s hardened server.
//! - [`demo_web`]: the recipe's web server, built in (`bramble demo-web`).
//! - [`vip`]: who may hold a balancer's virtual IP: a lease in the Raft catalog.
//! - [`vip_interface`]: the real-interface mode: the VIP added to a network interface
//!   with a kernel lifetime, and gratuitous ARP on takeover.
//! - [`participant`]: one balancer's VIP on one node, as a state machine stepped each
//!   renewal period: lease requests, serving, letting go.
//! - [`subsystem`]: runs the catalog's balancers on `lb` nodes (one participant worker
//!   each); the stats page; the subsystem's declaration for the agent.

mod backend_client;
pub mod balance;
pub mod balancer;
pub mod config;
pub mod demo_web;
pub mod health;
pub mod http_proxy;
pub mod keys;
mod memory_budget;
pub mod participant;
pub mod pool;
mod runtime;
pub mod service;
pub mod stats;
pub mod subsystem;
pub mod tcp_proxy;
#[cfg(test)]
mod test_client;
pub mod vip;
pub mod vip_interface;
pub mod workers;
