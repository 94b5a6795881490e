//! The commands that create, join, leave and inspect a cluster, and the catalog commands
//! (the emulator's commands live in `crate::emulator`).

pub mod alerts;
pub mod api;
pub mod bench;
pub mod catalog;
pub mod demo_web;
pub mod drain;
pub mod exec;
pub mod fs;
pub mod jobs;
pub mod lb;
pub mod membership;
pub mod metrics;
pub mod mpi;
pub mod rolling;
pub mod s3;
pub mod service;
pub mod top;
pub mod upgrade;
pub mod volume;
pub mod workers;
