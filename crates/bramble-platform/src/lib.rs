//! The platform the agent gives its subsystems (the load balancer today; storage, jobs and
//! services next), so that each plugs in the same way:
//!
//! - [`subsystem`]: the contract — a subsystem's name, the roles it runs on, its RPC
//!   service, its status, and a start that returns a handle with an ordered stop — and
//!   [`subsystem::Subsystems`], which starts them and stops them in reverse order.
//! - [`service`]: the `agent.*` RPC methods (`agent.workers`, `agent.subsystems`).

pub mod service;
pub mod subsystem;

pub use subsystem::{Context, Running, Subsystem, Subsystems};
