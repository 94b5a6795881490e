//! Bramble's compute subsystem: parallel jobs (recipe 3 of the cookbook, and the overview
//! article's scheduling models) run by the agents themselves — no JVM, no ssh, no master
//! that can take a job down with it. See [`jobs`] for how a job flows, and [`services`]
//! for replicated services; [`modules`] holds the WebAssembly modules both run.

pub mod catalog;
pub mod cpu_bench;
pub mod disk_bench;
pub mod exec;
pub mod jobs;
pub mod limits;
pub mod modules;
pub mod process;
pub mod services;
