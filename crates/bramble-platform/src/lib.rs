//! The platform the agent gives its subsystems (the load balancer today; storage, jobs and
//! services next), so that each plugs in the same way:
//!
//! - [`subsystem`]: the contract — a subsystem's name, the roles it runs on, its RPC
//!   service, its status, and a start that returns a handle with an ordered stop — and
//!   [`subsystem::Subsystems`], which starts them and stops them in reverse order.
//! - [`service`]: the `agent.*` RPC methods (`agent.workers`, `agent.subsystems`).
//! - [`drain`]: drained nodes (`bramble drain`): the catalog keys `nodes/drain/<node>`,
//!   their `drain.*` RPC and the readers the balancer, services and jobs use.
//! - [`bench_service`]: the `bench.*` bulk streams every agent serves over the mux
//!   (`bench.sink`, `bench.source`, `bench.push`), for measuring the network between nodes.
//! - [`upgrade`]: `upgrade.*`, how an agent receives a new build of itself and restarts
//!   into it (`bramble upgrade`), and the launcher that runs the installed build.

pub mod bench_service;
pub mod drain;
pub mod lease_holder;
pub mod service;
pub mod subsystem;
pub mod upgrade;

pub use subsystem::{Alarm, Context, Running, Subsystem, SubsystemFigures, Subsystems};
