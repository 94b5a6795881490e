//! The bottom layer of Bramble: what every other crate needs and nothing above it knows.
//!
//! - [`buffers`]: a bounded pool of the large buffers blocks pass through, reused instead
//!   of mapped afresh each time.
//! - [`files`]: crash-safe writes (temp file, fsync, rename), private (0600) files for
//!   secrets, and size-bounded reads so a corrupt or hostile file cannot exhaust memory.
//! - [`mounts`]: decoding the kernel's mount tables.
//! - [`memory`]: keeping the resident size low after bursts of allocation.
//! - [`scheduling`]: the control plane's threads first when the CPU is saturated.
//! - [`secrets`]: the constant-time comparison for secrets and digests.
//! - [`runtime_threads`]: single-threaded runtimes on threads of their own, at normal
//!   priority, for data-plane work.
//! - [`names`]: validation of names that users and peers send us (node names, roles).
//! - [`password`]: argon2id hashes of passwords people type, and their checks.
//! - [`shutdown`]: the one signal every background task takes so the agent ends cleanly.
//! - [`time`]: wall-clock helpers.
//! - [`workers`]: named background workers with their state, errors and restarts.

pub mod buffers;
pub mod files;
pub mod memory;
pub mod mounts;
pub mod names;
pub mod password;
pub mod runtime_threads;
pub mod scheduling;
pub mod secrets;
pub mod shutdown;
pub mod time;
pub mod workers;

pub use shutdown::{Shutdown, ShutdownTrigger};
pub use workers::{Restart, WorkerContext, WorkerInfo, WorkerState, Workers};
