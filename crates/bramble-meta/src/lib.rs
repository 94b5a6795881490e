//! The control plane: a typed, versioned cluster catalog replicated by Raft (openraft 0.9)
//! and stored in redb. Every node holds a replica; up to five are voters.
//!
//! - [`types`]: the Raft type configuration and the catalog's commands.
//! - [`store`]: the Raft log and the state machine (the catalog) in one redb file.
//! - [`network`]: Raft's RPCs over the cluster's mutual-TLS transport.
//! - [`node`]: a node's Raft instance, request routing to the leader, voter management.
//! - [`lease`]: leases renewed in the leader's memory, committed only when they change hands.
//! - [`service`]: the `meta.*` RPC methods.
//! - [`api`]: requests and answers shared with the CLI.
//! - [`watch`]: prefix watches with a bounded queue per watcher.
//! - [`settings`] holds this node's `meta.toml`.

pub mod api;
pub mod group;
pub mod lease;
pub mod network;
pub mod node;
mod read_lease;
pub mod service;
pub mod settings;
pub mod store;
pub mod types;
pub mod watch;

pub use node::{Meta, MetaError};
pub use settings::MetaSettings;
pub use watch::Watch;
