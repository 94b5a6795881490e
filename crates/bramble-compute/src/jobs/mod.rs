//! Parallel jobs: `bramble run -n N -- command`, `bramble pi`, `bramble jobs`.
//!
//! A job is stored in the catalog ([`spec`], [`record`]); the node holding the
//! `jobs/scheduler` lease ([`scheduler`]) places its tasks with one of the [`policy`]
//! models on the nodes' slots; every node's [`runner`] pulls tasks, runs them and
//! reports results, which the scheduler counts once per task index and checkpoints.
//! [`montecarlo`] is the recipe's π task built in; [`reduce`] combines what tasks print.

pub mod admin;
pub mod index_set;
pub mod launch;
pub mod montecarlo;
pub mod policy;
pub mod record;
pub mod reduce;
pub mod runner;
pub mod scheduler;
pub mod service;
pub mod spec;
pub mod subsystem;
