//! Port choice for emulated nodes. Each node needs one port free for both TCP (RPC) and UDP
//! (gossip). Ports are taken below the kernel's ephemeral range, so that while a node is
//! down no outgoing connection can borrow its port and keep it from restarting.
//!
//! A port is free when chosen but bound only when its agent starts, seconds later (the
//! last node of `bramble up` starts last). Another emulator on the machine (a second
//! cluster, parallel tests) could choose it meanwhile, and one of the two agents would not
//! start. So every emulator records what it hands out in a registry file in the temp
//! directory, under `flock`, and skips what any of them handed out in the last
//! [`REMEMBERED_FOR_MS`].

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

/// How long a port handed out by any emulator is left alone by the others: longer than an
/// agent takes to start and bind it.
const REMEMBERED_FOR_MS: u64 = 120_000;
/// The registry is a few lines per cluster; a larger file is not ours to trust.
const MAX_REGISTRY_BYTES: u64 = 1 << 20;

/// The machine-wide record of recently handed-out ports, locked while open.
struct Registry {
    file: std::fs::File,
    /// Port -> when it was handed out (Unix ms).
    recent: std::collections::BTreeMap<u16, u64>,
}

impl Registry {
    /// Opens and locks `<temp>/bramble-emulator-ports-<uid>` (this user's own, 0600, never
    /// through a symlink). None if it cannot be had: this process's own record still holds.
    fn open() -> Option<Registry> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let path = std::env::temp_dir().join(format!("bramble-emulator-ports-{uid}"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .ok()?;
        // SAFETY: a valid descriptor; the lock goes with it when the file is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return None;
        }
        let mut text = String::new();
        (&mut file)
            .take(MAX_REGISTRY_BYTES)
            .read_to_string(&mut text)
            .ok()?;
        let now = bramble_util::time::unix_millis();
        let recent = text
            .lines()
            .filter_map(|line| {
                let (port, when) = line.split_once(' ')?;
                Some((port.parse().ok()?, when.parse().ok()?))
            })
            .filter(|(_, when): &(u16, u64)| now.saturating_sub(*when) < REMEMBERED_FOR_MS)
            .collect();
        Some(Registry { file, recent })
    }

    fn taken(&self, port: u16) -> bool {
        self.recent.contains_key(&port)
    }

    /// Records `ports` and writes the registry back (still locked until dropped).
    fn record(mut self, ports: impl IntoIterator<Item = u16>) {
        use std::io::{Seek, Write};
        let now = bramble_util::time::unix_millis();
        self.recent
            .extend(ports.into_iter().map(|port| (port, now)));
        let text: String = self
            .recent
            .iter()
            .map(|(port, when)| format!("{port} {when}\n"))
            .collect();
        let _ = self.file.set_len(0);
        let _ = self.file.rewind();
        let _ = self.file.write_all(text.as_bytes());
    }
}

/// Finds `count` loopback ports free for both TCP and UDP, starting at a random offset,
/// and never one this process handed out before.
pub fn free_loopback_addresses(count: usize) -> Result<Vec<SocketAddr>> {
    let mut handed_out = handed_out();
    let registry = Registry::open();
    let (low, high, start) = search_range();
    let span = u32::from(high - low);
    let mut found = Vec::with_capacity(count);
    if count == 0 {
        return Ok(found);
    }
    for step in 0..span {
        let port = low + ((start + step) % span) as u16;
        if handed_out.contains(&port)
            || registry
                .as_ref()
                .is_some_and(|registry| registry.taken(port))
        {
            continue;
        }
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let tcp = TcpListener::bind(address);
        let udp = UdpSocket::bind(address);
        if tcp.is_ok() && udp.is_ok() {
            handed_out.insert(port);
            found.push(address);
            if found.len() == count {
                if let Some(registry) = registry {
                    registry.record(found.iter().map(SocketAddr::port));
                }
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
    let registry = Registry::open();
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
                && !registry
                    .as_ref()
                    .is_some_and(|registry| registry.taken(port))
                && TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
        });
        if all_free {
            handed_out.extend(first..=last);
            if let Some(registry) = registry {
                registry.record(first..=last);
            }
            return Ok(first);
        }
    }
    bail!("no {count} consecutive free loopback ports between {low} and {high}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handed_out_ports_are_recorded_for_other_emulators_to_skip() {
        let addresses = free_loopback_addresses(3).expect("three ports");
        let first_run = free_loopback_port_run(2).expect("a run of two");
        let registry = Registry::open().expect("the registry");
        for address in &addresses {
            assert!(registry.taken(address.port()), "{address}");
        }
        assert!(registry.taken(first_run) && registry.taken(first_run + 1));
        drop(registry);
        // Nothing handed out twice, even though none of them is bound yet.
        let more = free_loopback_addresses(3).expect("three more");
        assert!(more.iter().all(|address| !addresses.contains(address)));
    }
}
