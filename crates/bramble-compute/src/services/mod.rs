//! Replicated services: `bramble service create web --replicas 2 -- ./server`.
//!
//! A service is a spec in the catalog ([`spec`]); the node holding the
//! `services/reconciler` lease ([`reconciler`]) places its replicas on nodes
//! ([`placement`]); every node's [`supervisor`] runs the replicas placed on it, restarts
//! them with back-off and stops them when they move or go. `service update` moves
//! replicas to a new version a few at a time, and back if it fails ([`rollout`]).

pub mod admin;
pub mod placement;
pub mod reconciler;
pub mod rollout;
pub mod service;
pub mod spec;
pub mod subsystem;
pub mod supervisor;
