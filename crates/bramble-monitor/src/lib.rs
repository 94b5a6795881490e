//! Monitoring in every agent (issue 12): what Telegraf, node_exporter and
//! Netdata's collectors do, without another daemon or a database.
//!
//! - [`collector`] reads /proc and /sys into a [`sample::Sample`] each second (CPU by mode,
//!   load, memory, filesystems, disk I/O, network, uptime, temperatures, CPU frequency, the
//!   Pi's throttling flags, the agent's own cost), with [`parse`] doing the text.
//! - [`history`] keeps the last hour at 1 s and the last day at 1 min in fixed rings of
//!   summary points, the minute tier persisted in the node's data directory.
//! - [`exposition`] renders a sample in the Prometheus text format with node_exporter's
//!   names; [`subsystem`] serves it on `/metrics` over the shared hardened HTTP server and
//!   appends the other subsystems' own figures.
//! - [`service`] is `monitor.*` RPC: the live sample and the history, for `bramble nodes`
//!   and `bramble metrics`, and the alerts, for `bramble alerts` ([`gather`] asks every
//!   member for the cluster's).
//! - [`live`] takes the cluster's picture a second at a time (every node from gossip with
//!   its last second's point), for the dashboard's event stream and `bramble top`.
//! - [`alerts`] evaluates a node's alert conditions each second with hysteresis;
//!   [`webhook`] POSTs them as they fire and resolve, from one node under a lease.
//! - [`influx`] pushes samples to InfluxDB 1.x in the line protocol with Telegraf's names
//!   ([`line_protocol`]), over the bounded client of [`http_post`].
//! - [`settings`] reads and checks `monitor.toml`.

pub mod alerts;
pub mod collector;
pub mod exposition;
pub mod gather;
pub mod history;
pub mod http_post;
pub mod influx;
pub mod line_protocol;
pub mod live;
pub mod parse;
pub mod sample;
pub mod service;
pub mod settings;
pub mod subsystem;
pub mod webhook;

/// What can go wrong in the monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("the history file is corrupt: {0}")]
    CorruptHistory(String),
    #[error("saving the history: {0}")]
    Save(String),
    #[error("{path}: {message}")]
    Settings { path: String, message: String },
}
