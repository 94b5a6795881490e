//! The commands that create, join, leave and inspect a cluster (the emulator's commands
//! live in `crate::emulator`).

pub mod membership;
