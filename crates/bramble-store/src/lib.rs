//! Bramble's storage volumes (recipe 2 of the cookbook: GlusterFS's job).
//!
//! A volume is a layout over bricks (a directory on each chosen node). Files are cut into
//! blocks; each block carries a BLAKE3 hash checked on every read and copy, and lives on
//! every brick of one set, the set computed from the file's version id. File metadata is
//! kept in the catalog (Raft) as one record per path, so listings are range scans and
//! renames and overwrites are atomic; block bytes never go through Raft, only over bulk
//! streams between agents.
//!
//! In reading order:
//! - [`volume`]: specs, layouts, sets and placement; [`keys`]: the catalog keys;
//!   [`paths`]: validating user paths; [`file`]: file records and block names.
//! - [`brick`]: one brick directory on disk, durable and checked.
//! - [`node`]: the subsystem's state on one node; [`blocks`]: moving one copy;
//!   [`write`] and [`read`]: files in and out; [`patch`]: changing part of a file;
//!   [`namespace`]: stat, ls, mkdir, rm, mv;
//!   [`volumes`]: volume administration; [`hints`] and [`heal`]: copies owed to bricks
//!   that were away, and the worker that delivers them when they return; [`scrub`]:
//!   re-reading every block in the background.
//! - [`s3`]: the S3-compatible endpoint over volumes.
//! - [`admin`]: the requests and answers; [`service`]: `store.*`; [`subsystem`]: the
//!   agent's declaration.

pub mod admin;
pub mod blocks;
pub mod brick;
pub mod erasure;
pub mod file;
pub mod heal;
pub mod hints;
pub mod keys;
pub mod namespace;
pub mod node;
pub mod patch;
pub mod paths;
pub mod read;
pub mod reclaim;
pub mod s3;
pub mod scrub;
pub mod service;
pub mod subsystem;
pub mod volume;
pub mod volumes;
pub mod write;
