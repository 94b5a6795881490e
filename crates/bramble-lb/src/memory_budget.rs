//! The data plane's memory budget: one byte budget shared by every balancer on the node,
//! from which each client connection, each HTTP/2 connection and each request in flight
//! reserves the most memory it can hold before it is served. A flood of connections or
//! streams therefore meets a refusal (a closed connection, or a 503) instead of taking the
//! node's memory; HAProxy gets the same effect from `maxconn` and fixed-size buffers.
//!
//! What is reserved (the worst case of each, with the bounds set in `http_proxy`):
//! - **a client connection**, at accept: [`CONNECTION_BYTES`] (the task, the socket
//!   wrapper, hyper's connection state and its initial 8 KiB read and write buffers), plus,
//!   while a request head longer than 8 KiB arrives, twice the excess (hyper's read buffer
//!   doubles as it fills). So the budget is also the node's connection limit:
//!   `budget / CONNECTION_BYTES` connections (16,384 for 512 MiB), whatever the
//!   balancers' own `max_connections` say;
//! - **an HTTP/2 connection**, once its preface arrives: [`http2_connection_bytes`] (the
//!   receive window of unread request data, every stream's send buffer, HPACK tables, frame
//!   buffers and one header block being assembled);
//! - **a request** (an HTTP/1 request or an HTTP/2 stream), while it is served:
//!   [`request_bytes`] (its decoded head, the replay buffer of its body, and the backend
//!   connection's read and write buffers).
//!
//! Measured by `tests/balancer_flood.rs` (x86-64): an idle connection costs about 8 KiB of
//! resident memory (it reserves 32 KiB), a stream whose client does not read a large
//! answer about 80 KiB (it reserves 160 KiB with the default 64 KiB head limit).
//!
//! Kernel socket buffers are not counted: they are not the agent's memory (RSS) and the
//! kernel bounds them itself (`net.ipv4.tcp_mem`).
//!
//! The budget is a quarter of the machine's memory, between 64 MiB and 1 GiB (128 MiB on
//! a 512 MB Pi Zero 2), or `BRAMBLE_LB_MEMORY_MIB` when set.

use std::sync::{Arc, OnceLock};

use bramble_http::MemoryBudget;
use tracing::{info, warn};

use crate::config::Limits;

/// Reserved by every client connection at accept.
pub(crate) const CONNECTION_BYTES: usize = 32 * 1024;
/// Request-head bytes that [`CONNECTION_BYTES`] covers (hyper's initial read buffer).
pub(crate) const COVERED_HEAD_BYTES: usize = 8 * 1024;

/// HTTP/2 streams a client may have open at once on one connection.
pub(crate) const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Request-body bytes a client may send on one stream before the balancer reads them.
pub(crate) const HTTP2_STREAM_WINDOW: u32 = 64 * 1024;
/// Request-body bytes a client may send on a whole connection before the balancer reads
/// them (smaller than the streams' sum: the connection window bounds them together).
pub(crate) const HTTP2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Largest frame the balancer accepts (the protocol's default and minimum).
pub(crate) const HTTP2_MAX_FRAME_BYTES: u32 = 16 * 1024;
/// Response bytes buffered per stream for a client that does not read.
pub(crate) const HTTP2_MAX_SEND_BUFFER_BYTES: usize = 16 * 1024;
/// Bytes of an HTTP/2 stream's own state in hyper and h2, beyond its buffers.
const HTTP2_STREAM_STATE_BYTES: usize = 1024;
/// The HPACK tables of both directions (4 KiB each, the protocol's default).
const HPACK_TABLE_BYTES: usize = 2 * 4096;

/// Request bodies up to this size (by Content-Length) are read whole before forwarding,
/// so the request can be replayed on another backend if the first one dies.
pub(crate) const REPLAY_BUFFER_BYTES: usize = 64 * 1024;
/// The largest read and write buffers of a backend connection (hyper's client): 16 KiB,
/// HAProxy's `tune.bufsize`; larger answers stream through it.
pub(crate) const BACKEND_BUFFER_BYTES: usize = 16 * 1024;

/// The budget's bounds when derived from the machine's memory.
const MIN_DEFAULT_BUDGET: usize = 64 << 20;
const MAX_DEFAULT_BUDGET: usize = 1 << 30;
/// The bounds of `BRAMBLE_LB_MEMORY_MIB`.
const MIN_BUDGET_MIB: usize = 16;
const MAX_BUDGET_MIB: usize = 64 * 1024;

static BUDGET: OnceLock<Arc<MemoryBudget>> = OnceLock::new();

/// The node's data-plane budget, sized on first use.
pub(crate) fn budget() -> &'static Arc<MemoryBudget> {
    BUDGET.get_or_init(|| {
        let bytes = configured_budget().unwrap_or_else(default_budget);
        info!(
            budget_mib = bytes >> 20,
            max_connections = bytes / CONNECTION_BYTES,
            "data-plane memory budget"
        );
        MemoryBudget::new(bytes)
    })
}

/// The most an HTTP/2 connection holds beyond [`CONNECTION_BYTES`].
pub(crate) fn http2_connection_bytes(limits: &Limits) -> usize {
    let streams = HTTP2_MAX_CONCURRENT_STREAMS as usize;
    HTTP2_CONNECTION_WINDOW as usize
        + streams * (HTTP2_MAX_SEND_BUFFER_BYTES + HTTP2_STREAM_STATE_BYTES)
        + 2 * HTTP2_MAX_FRAME_BYTES as usize
        + HPACK_TABLE_BYTES
        + limits.max_header_bytes
}

/// The most one request in flight holds.
pub(crate) fn request_bytes(limits: &Limits) -> usize {
    limits.max_header_bytes + REPLAY_BUFFER_BYTES + 2 * BACKEND_BUFFER_BYTES
}

fn configured_budget() -> Option<usize> {
    let text = std::env::var("BRAMBLE_LB_MEMORY_MIB").ok()?;
    match text.trim().parse::<usize>() {
        Ok(mib) if (MIN_BUDGET_MIB..=MAX_BUDGET_MIB).contains(&mib) => Some(mib << 20),
        _ => {
            warn!(
                value = %text,
                "BRAMBLE_LB_MEMORY_MIB must be a number of MiB from {MIN_BUDGET_MIB} to {MAX_BUDGET_MIB}; using the default"
            );
            None
        }
    }
}

fn default_budget() -> usize {
    let total = total_memory().unwrap_or(MIN_DEFAULT_BUDGET * 4);
    (total / 4).clamp(MIN_DEFAULT_BUDGET, MAX_DEFAULT_BUDGET)
}

/// The machine's memory from /proc/meminfo (`MemTotal:  16318032 kB`).
fn total_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<usize> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?;
    let kib: usize = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Readies the data plane's process-wide resources: the budget, and an open-file limit
/// that lets it be used. Cheap after the first call.
pub(crate) fn prepare() {
    static PREPARED: OnceLock<()> = OnceLock::new();
    PREPARED.get_or_init(raise_open_file_limit);
    budget();
}

/// Raises this process's soft limit on open files to its hard limit, as HAProxy does for
/// its `maxconn`: every client connection is a descriptor (two with its backend), and a
/// soft limit of 1,024 would refuse connections long before the budget does.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            warn!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                "could not raise the open-file limit"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:        524288 kB\nMemFree:  1000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(512 << 20));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots\n"), None);
    }

    #[test]
    fn the_default_limits_give_documented_costs() {
        let limits = Limits::default();
        // 64 KiB heads: 160 KiB a request, about 2 MiB an HTTP/2 connection.
        assert_eq!(request_bytes(&limits), 160 * 1024);
        let http2 = http2_connection_bytes(&limits);
        assert!((1 << 20..3 << 20).contains(&http2), "{http2}");
        // 512 MiB hold 16,384 idle connections.
        assert_eq!((512 << 20) / CONNECTION_BYTES, 16_384);
    }
}
