//! The load balancer (capability 2, recipe 1 of the cookbook): what HAProxy and Keepalived
//! do for the recipe's HA website, inside the agent and configured once in the catalog.
//!
//! - [`config`]: a balancer's specification as stored in the catalog, and its validation.
//! - [`pool`]: backends at run time: health, sessions, counters, passive ejection, slow start.
//! - [`balance`]: choosing a backend: weighted round robin, least connections, power of two
//!   random choices, consistent hashing on source address, header or URI.
//! - [`balancer`]: one running balancer: listener, connection limit, live reconfiguration.
//! - [`http_proxy`] and [`tcp_proxy`]: the data path, with retries, redispatch, sticky
//!   cookies, X-Forwarded-For, timeouts and size bounds.
//! - [`health`]: active checks with HAProxy's interval/rise/fall and check status codes.
//! - [`stats`]: the authenticated statistics page (HTML, JSON, Prometheus).
//! - [`demo_web`]: the recipe's web server, built in (`bramble demo-web`).
//!
//! Not built yet: the agent subsystem that runs balancers from the catalog on `lb` nodes,
//! the `bramble lb` commands, and virtual-IP failover (docs/ARCHITECTURE.md has the design).

pub mod balance;
pub mod balancer;
pub mod config;
pub mod demo_web;
pub mod health;
pub mod http_proxy;
pub mod pool;
pub mod stats;
pub mod tcp_proxy;
