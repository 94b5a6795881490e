//! Port choice for emulated nodes. Each node needs one port free for both TCP (RPC) and UDP
//! (gossip). Ports are taken below the kernel's ephemeral range, so that while a node is
//! down no outgoing connection can borrow its port and keep it from restarting.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use anyhow::{Result, bail};

fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Ports this process has handed out: they are free when chosen but only bound later (an
/// agent starts after all its ports are chosen), so without this two calls in the same
/// millisecond would hand out the same one (say, a node's RPC port and another's S3
/// port).
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The range ports are chosen from (below the ephemeral range) and a starting offset in
/// it, random enough that clusters started at the same moment (parallel tests) rarely
/// probe the same ports.
fn search_range() -> (u16, u16, u32) {
    let low: u16 = 10_000;
    let high = ephemeral_range_start().clamp(low + 2_000, 60_000);
    let span = u32::from(high - low);
    let start = (bramble_util::time::unix_millis() as u32
        ^ std::process::id().wrapping_mul(2_654_435_761))
        % span;
    (low, high, start)
}

fn handed_out() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u16>> {
    HANDED_OUT
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}

/// Finds `count` loopback ports free for both TCP and UDP, starting at a random offset,
/// and never one this process handed out before.
pub fn free_loopback_addresses(count: usize) -> Result<Vec<SocketAddr>> {
    let mut handed_out = handed_out();
    let (low, high, start) = search_range();
    let span = u32::from(high - low);
    let mut found = Vec::with_capacity(count);
    if count == 0 {
        return Ok(found);
    }
    for step in 0..span {
        let port = low + ((start + step) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let tcp = TcpListener::bind(address);
        let udp = UdpSocket::bind(address);
        if tcp.is_ok() && udp.is_ok() {
            handed_out.insert(port);
            found.push(address);
            if found.len() == count {
                return Ok(found);
            }
        }
    }
    bail!(
        "only {} free loopback ports found between {low} and {high}; {count} needed",
        found.len()
    )
}

/// Finds `count` consecutive loopback TCP ports, all free, and returns the first: a
/// service's replica `i` listens on its base port + `i`.
pub fn free_loopback_port_run(count: u16) -> Result<u16> {
    let mut handed_out = handed_out();
    let (low, high, start) = search_range();
    let span = u32::from(high - low);
    for step in 0..span {
        let first = low + ((start + step) % span) as u16;
        let Some(last) = first
            .checked_add(count.saturating_sub(1))
            .filter(|last| *last < high)
        else {
            continue;
        };
        let all_free = (first..=last).all(|port| {
            !handed_out.contains(&port)
                && TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
        });
        if all_free {
            handed_out.extend(first..=last);
            return Ok(first);
        }
    }
    bail!("no {count} consecutive free loopback ports between {low} and {high}")
}
