//! A delay line for `bramble chaos slow --delay` where the kernel has no netem queueing
//! discipline (the development VM's kernel lacks `CONFIG_NET_SCH_NETEM`).
//!
//! `bramble netns-delay <namespace> --delay-us D --jitter-us J` runs inside a node's
//! namespace. An iptables rule there (`-t mangle -A POSTROUTING -o eth0 -j NFQUEUE
//! --queue-bypass`) hands every packet the node sends to this process through the
//! kernel's nfnetlink queue (metadata only, no payload copied); the process gives each
//! packet back (`NF_ACCEPT`) when its delay, plus a uniform random jitter, has passed.
//! This is netem's delay on the node's egress, done in user space: packets really wait,
//! so round trips to the node grow by the delay. `--queue-bypass` lets traffic through
//! undelayed, never dropped, if the process is gone. It exits when its namespace is
//! removed or on SIGTERM (`chaos heal`, a new `slow`, `down`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NF_ACCEPT: u32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// The queue number in the node's namespace (queues are per namespace).
pub const QUEUE: u16 = 0;
/// Packets held at once; beyond it the kernel drops (as a full netem queue does).
const QUEUE_LENGTH: u32 = 65_536;
const RECEIVE_BUFFER: usize = 8 * 1024 * 1024;
const NETLINK_HEADER: usize = 16;

/// Where the delay line of a namespace keeps its pid (runtime state, like the namespaces
/// themselves under /run).
pub fn pid_path(namespace: &str) -> PathBuf {
    Path::new("/run/bramble").join(format!("{namespace}.delay.pid"))
}

fn align(length: usize) -> usize {
    (length + 3) & !3
}

/// One nfnetlink queue message: netlink header, nfgenmsg, attributes.
fn message(kind: u16, flags: u16, sequence: u32, attributes: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = vec![libc::AF_UNSPEC as u8, 0];
    body.extend_from_slice(&QUEUE.to_be_bytes());
    for (attribute, payload) in attributes {
        let length = 4 + payload.len();
        body.extend_from_slice(&(length as u16).to_ne_bytes());
        body.extend_from_slice(&attribute.to_ne_bytes());
        body.extend_from_slice(payload);
        body.resize(align(body.len()), 0);
    }
    let mut message = Vec::with_capacity(NETLINK_HEADER + body.len());
    message.extend_from_slice(&((NETLINK_HEADER + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&sequence.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&body);
    message
}

fn verdict(id: u32) -> Vec<u8> {
    let mut header = NF_ACCEPT.to_be_bytes().to_vec();
    header.extend_from_slice(&id.to_be_bytes());
    message(
        NFQNL_MSG_VERDICT,
        NLM_F_REQUEST,
        0,
        &[(NFQA_VERDICT_HDR, &header)],
    )
}

fn send(socket: &OwnedFd, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: a valid socket and a buffer of the given length.
    let sent = unsafe { libc::send(socket.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn receive(socket: &OwnedFd, buffer: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: a valid socket and a writable buffer of the given length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            0,
        )
    };
    if received < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(received as usize)
}

/// The netlink messages in a datagram, as (type, payload after the netlink header).
fn messages(datagram: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    let mut offset = 0;
    while offset + NETLINK_HEADER <= datagram.len() {
        let length = u32::from_ne_bytes([
            datagram[offset],
            datagram[offset + 1],
            datagram[offset + 2],
            datagram[offset + 3],
        ]) as usize;
        if length < NETLINK_HEADER || offset + length > datagram.len() {
            break;
        }
        let kind = u16::from_ne_bytes([datagram[offset + 4], datagram[offset + 5]]);
        found.push((kind, &datagram[offset + NETLINK_HEADER..offset + length]));
        offset += align(length);
    }
    found
}

/// The packet id of a queued packet's message (after nfgenmsg, the attributes).
fn packet_id(payload: &[u8]) -> Option<u32> {
    let mut offset = 4;
    while offset + 4 <= payload.len() {
        let length = u16::from_ne_bytes([payload[offset], payload[offset + 1]]) as usize;
        let attribute = u16::from_ne_bytes([payload[offset + 2], payload[offset + 3]]) & 0x3fff;
        if length < 4 || offset + length > payload.len() {
            return None;
        }
        if attribute == NFQA_PACKET_HDR && length >= 8 {
            let value = &payload[offset + 4..offset + 8];
            return Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
        }
        offset += align(length);
    }
    None
}

/// The nfnetlink socket, bound to the queue in metadata-copy mode.
fn open_queue() -> Result<OwnedFd> {
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("opening an nfnetlink socket");
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_nl is valid; the family is set below.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: a valid socket and address of the given size.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the nfnetlink socket");
    }
    let size = RECEIVE_BUFFER as libc::c_int;
    // SAFETY: a valid socket and an int option. Best effort: a smaller buffer still works.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let command = [NFQNL_CFG_CMD_BIND, 0, 0, 0];
    let mut parameters = 0xffffu32.to_be_bytes().to_vec();
    parameters.push(NFQNL_COPY_META);
    let length = QUEUE_LENGTH.to_be_bytes();
    for (sequence, attributes) in [
        (1u32, vec![(NFQA_CFG_CMD, &command[..])]),
        (
            2,
            vec![
                (NFQA_CFG_PARAMS, &parameters[..]),
                (NFQA_CFG_QUEUE_MAXLEN, &length[..]),
            ],
        ),
    ] {
        send(
            &socket,
            &message(
                NFQNL_MSG_CONFIG,
                NLM_F_REQUEST | NLM_F_ACK,
                sequence,
                &attributes,
            ),
        )
        .context("configuring the queue")?;
        let mut buffer = vec![0u8; 8192];
        let received = receive(&socket, &mut buffer).context("reading the queue's answer")?;
        for (kind, payload) in messages(&buffer[..received]) {
            if kind == NLMSG_ERROR && payload.len() >= 4 {
                let code = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if code != 0 {
                    bail!(
                        "the kernel refused the packet queue: {}",
                        std::io::Error::from_raw_os_error(-code)
                    );
                }
            }
        }
    }
    Ok(socket)
}

/// A small xorshift generator for the jitter (no cryptographic need).
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The packets waiting, earliest release first.
type Held = Arc<(Mutex<BinaryHeap<Reverse<(Instant, u32)>>>, Condvar)>;

/// `bramble netns-delay`: runs until its namespace is removed or it is signalled. The
/// caller has already entered the node's namespace.
pub fn run(namespace: &str, delay: Duration, jitter: Duration) -> Result<()> {
    let socket = Arc::new(open_queue()?);
    if let Some(parent) = pid_path(namespace).parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(pid_path(namespace), std::process::id().to_string())
        .context("writing the delay line's pid file")?;
    let held: Held = Arc::new((Mutex::new(BinaryHeap::new()), Condvar::new()));

    // Giving packets back when they are due.
    let releaser_socket = socket.clone();
    let releaser_held = held.clone();
    std::thread::spawn(move || {
        let (queue, wake) = &*releaser_held;
        let Ok(mut waiting) = queue.lock() else {
            return;
        };
        loop {
            let now = Instant::now();
            let mut batch = Vec::new();
            while let Some(Reverse((due, id))) = waiting.peek().copied() {
                if due > now || batch.len() >= 64 * 1024 {
                    break;
                }
                waiting.pop();
                batch.extend_from_slice(&verdict(id));
            }
            if !batch.is_empty() {
                drop(waiting);
                // A lost verdict leaves the packet to the kernel's queue; nothing to do.
                let _ = send(&releaser_socket, &batch);
                waiting = match queue.lock() {
                    Ok(guard) => guard,
                    Err(_) => return,
                };
                continue;
            }
            let timeout = waiting
                .peek()
                .map(|Reverse((due, _))| due.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1));
            waiting = match wake.wait_timeout(waiting, timeout) {
                Ok((guard, _)) => guard,
                Err(_) => return,
            };
        }
    });

    // Taking packets as the kernel queues them.
    let reader_held = held.clone();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    std::thread::spawn(move || {
        let mut random = Jitter(seed);
        let mut buffer = vec![0u8; 256 * 1024];
        let delay_micros = delay.as_micros() as u64;
        let jitter_micros = jitter.as_micros() as u64;
        loop {
            let received = match receive(&socket, &mut buffer) {
                Ok(received) => received,
                // ENOBUFS: the kernel dropped notifications; those packets stay queued
                // until the queue's bypass or their verdicts, as with a full netem queue.
                Err(_) => continue,
            };
            let arrived = Instant::now();
            let mut ids = Vec::new();
            for (kind, payload) in messages(&buffer[..received]) {
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
                    && let Some(id) = packet_id(payload)
                {
                    ids.push(id);
                }
            }
            let (queue, wake) = &*reader_held;
            let Ok(mut waiting) = queue.lock() else {
                return;
            };
            for id in ids {
                let offset = if jitter_micros > 0 {
                    random.next() % (2 * jitter_micros + 1)
                } else {
                    0
                };
                let micros = (delay_micros + offset).saturating_sub(jitter_micros);
                waiting.push(Reverse((arrived + Duration::from_micros(micros), id)));
            }
            wake.notify_one();
        }
    });

    let namespace_file = Path::new("/var/run/netns").join(namespace);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if !namespace_file.exists() {
            let _ = std::fs::remove_file(pid_path(namespace));
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_accepts_the_packet_by_id_in_network_byte_order() {
        let bytes = verdict(0x0102_0304);
        assert_eq!(bytes.len(), NETLINK_HEADER + 4 + 12);
        let parsed = messages(&bytes);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT);
        // nfgenmsg, then the attribute header, then verdict and id, both big-endian.
        assert_eq!(&parsed[0].1[8..12], &NF_ACCEPT.to_be_bytes());
        assert_eq!(&parsed[0].1[12..16], &[1, 2, 3, 4]);
    }

    #[test]
    fn a_queued_packet_s_id_is_read_and_garbage_is_not() {
        let mut header = 77u32.to_be_bytes().to_vec();
        header.extend_from_slice(&[0x08, 0x00, 3]);
        let packet = message(NFQNL_MSG_PACKET, 0, 0, &[(NFQA_PACKET_HDR, &header)]);
        let parsed = messages(&packet);
        assert_eq!(packet_id(parsed[0].1), Some(77));
        assert_eq!(packet_id(&[0, 0, 0, 0, 200, 0]), None);
        assert!(messages(&[1, 2, 3]).is_empty());
        let mut truncated = packet.clone();
        truncated.truncate(20);
        assert!(messages(&truncated).is_empty());
    }
}
