//! The VIP on a real network interface (Keepalived's `virtual_ipaddress`): the holder adds
//! the address to the interface, announces it with gratuitous ARP so that hosts on the
//! segment send to its MAC from then on, and deletes it when it lets go.
//!
//! The address is added with a **kernel lifetime** of [`ADDRESS_LIFETIME_SECS`] and
//! refreshed at every lease renewal. The catalog lease is what keeps two holders apart
//! while agents run (see [`crate::vip`]); the lifetime covers the agent that cannot let
//! go itself — killed with SIGKILL, frozen with SIGSTOP, or out of memory — whose address
//! the kernel then removes a second or two later instead of answering ARP forever
//! (Keepalived leaves the address behind in that case).
//!
//! Speaks rtnetlink and AF_PACKET directly through libc: a few syscalls per renewal
//! instead of starting `ip` seven times a second. Needs CAP_NET_ADMIN (addresses) and
//! CAP_NET_RAW (ARP); without them every call fails with an error that says so.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Kernel lifetime of the address: refreshed every renewal, so it only runs out when the
/// agent stopped renewing (the kernel rounds expiry to whole seconds: gone 1–2 s later).
pub const ADDRESS_LIFETIME_SECS: u32 = 1;
/// When gratuitous ARPs go out, counted from the takeover: a burst of three, then one
/// more after any previous holder killed without letting go has lost the address to its
/// kernel lifetime, for hosts that resolved the address to that holder meanwhile
/// (Keepalived also repeats its burst, after `garp_master_delay`, 5 s).
const ANNOUNCE_AFTER: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(150),
    Duration::from_millis(300),
    Duration::from_millis(2500),
];

#[derive(Debug, Error)]
pub enum InterfaceError {
    #[error("a VIP on an interface must be an IPv4 address; {0} is not (IPv6 is not built yet)")]
    NotIpv4(IpAddr),
    #[error("interface {interface:?} does not exist on this node")]
    NoSuchInterface { interface: String },
    #[error(
        "{action} on {interface} needs CAP_NET_ADMIN and CAP_NET_RAW (run the agent as root or grant them): {source}"
    )]
    NotPermitted {
        action: &'static str,
        interface: String,
        source: io::Error,
    },
    #[error("{action} on {interface} failed: {source}")]
    Failed {
        action: &'static str,
        interface: String,
        source: io::Error,
    },
}

/// One balancer's VIP on one interface of this node.
#[derive(Debug)]
pub struct InterfaceVip {
    interface: String,
    address: Ipv4Addr,
    /// When we added the address, if we have not deleted it since.
    added_at: Option<Instant>,
    /// How many of [`ANNOUNCE_AFTER`] have been sent since.
    announced: usize,
}

impl InterfaceVip {
    pub fn new(interface: &str, address: IpAddr) -> Result<InterfaceVip, InterfaceError> {
        let IpAddr::V4(address) = address else {
            return Err(InterfaceError::NotIpv4(address));
        };
        Ok(InterfaceVip {
            interface: interface.to_string(),
            address,
            added_at: None,
            announced: 0,
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn address(&self) -> IpAddr {
        IpAddr::V4(self.address)
    }

    /// Whether this node added the address and has not deleted it since.
    pub fn is_present(&self) -> bool {
        self.added_at.is_some()
    }

    /// Adds the address, or refreshes its lifetime, and sends the takeover's gratuitous
    /// ARPs. Returns true when the address was (re)added rather than refreshed.
    pub fn hold(&mut self) -> Result<bool, InterfaceError> {
        let index = self.index()?;
        let newly = self.added_at.is_none();
        netlink_address(
            libc::RTM_NEWADDR,
            index,
            self.address,
            ADDRESS_LIFETIME_SECS,
        )
        .map_err(|source| self.error("adding the VIP", source))?;
        let added_at = *self.added_at.get_or_insert_with(Instant::now);
        if newly {
            self.announced = 0;
        }
        if ANNOUNCE_AFTER
            .get(self.announced)
            .is_some_and(|after| added_at.elapsed() >= *after)
        {
            self.announced += 1;
            self.announce(index)?;
        }
        Ok(newly)
    }

    /// Deletes the address (nothing to do if it is already gone).
    pub fn release(&mut self) -> Result<(), InterfaceError> {
        self.added_at = None;
        let index = match self.index() {
            Ok(index) => index,
            // The interface went away, and its addresses with it.
            Err(InterfaceError::NoSuchInterface { .. }) => return Ok(()),
            Err(error) => return Err(error),
        };
        match netlink_address(libc::RTM_DELADDR, index, self.address, 0) {
            Ok(()) => Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) | Some(libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(source) => Err(self.error("deleting the VIP", source)),
        }
    }

    /// Is the interface up with a carrier? A pulled cable or a downed link makes this
    /// node unfit to hold the VIP, like Keepalived's interface tracking.
    pub fn link_ready(&self) -> Result<bool, InterfaceError> {
        let request = self.request()?;
        let flags = interface_ioctl(libc::SIOCGIFFLAGS, request)
            .map_err(|source| self.error("reading the link state", source))?;
        let flags = i16::from_ne_bytes([flags.data[0], flags.data[1]]) as i32;
        Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
    }

    fn index(&self) -> Result<u32, InterfaceError> {
        let name =
            CString::new(self.interface.as_str()).map_err(|_| InterfaceError::NoSuchInterface {
                interface: self.interface.clone(),
            })?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(InterfaceError::NoSuchInterface {
                interface: self.interface.clone(),
            });
        }
        Ok(index)
    }

    fn request(&self) -> Result<InterfaceRequest, InterfaceError> {
        let bytes = self.interface.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
            return Err(InterfaceError::NoSuchInterface {
                interface: self.interface.clone(),
            });
        }
        let mut request = InterfaceRequest::default();
        request.name[..bytes.len()].copy_from_slice(bytes);
        Ok(request)
    }

    /// Sends one gratuitous ARP request for the VIP from this interface's MAC: hosts that
    /// already have an entry for the address update it to us.
    fn announce(&self, index: u32) -> Result<(), InterfaceError> {
        let hardware = interface_ioctl(libc::SIOCGIFHWADDR, self.request()?)
            .map_err(|source| self.error("reading the MAC address", source))?;
        let mut mac = [0u8; 6];
        // ifr_hwaddr is a sockaddr: two bytes of family, then the address.
        mac.copy_from_slice(&hardware.data[2..8]);
        send_gratuitous_arp(index, mac, self.address)
            .map_err(|source| self.error("sending gratuitous ARP", source))
    }

    fn error(&self, action: &'static str, source: io::Error) -> InterfaceError {
        let interface = self.interface.clone();
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => InterfaceError::NotPermitted {
                action,
                interface,
                source,
            },
            Some(libc::ENODEV) => InterfaceError::NoSuchInterface { interface },
            _ => InterfaceError::Failed {
                action,
                interface,
                source,
            },
        }
    }
}

/// `struct ifreq`: the name, then a union at least as large as the kernel's (24 bytes on
/// 64-bit targets, 16 on 32-bit).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct InterfaceRequest {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

fn interface_ioctl(
    request_code: libc::Ioctl,
    mut request: InterfaceRequest,
) -> io::Result<InterfaceRequest> {
    let socket = new_socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: `request` is a properly sized, initialised `struct ifreq` that outlives the
    // call; both ioctls only write within it.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), request_code, &mut request) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(request)
}

fn new_socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the descriptor is owned by the OwnedFd from here on.
    let descriptor = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if descriptor < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `descriptor` is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(descriptor) })
}

/// Appends one route attribute (`struct rtattr` + payload, padded to 4 bytes).
fn push_attribute(message: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let length = (4 + payload.len()) as u16;
    message.extend_from_slice(&length.to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(payload);
    while !message.len().is_multiple_of(4) {
        message.push(0);
    }
}

/// Builds an RTM_NEWADDR (add or replace, with a lifetime) or RTM_DELADDR request for
/// `address`/32 on interface `index`.
fn address_message(kind: u16, index: u32, address: Ipv4Addr, lifetime_secs: u32) -> Vec<u8> {
    let flags = if kind == libc::RTM_NEWADDR {
        libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE
    } else {
        libc::NLM_F_REQUEST | libc::NLM_F_ACK
    };
    let mut message = Vec::with_capacity(64);
    // struct nlmsghdr: length (patched below), type, flags, sequence, port id.
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&(flags as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    // struct ifaddrmsg: family, prefix length, flags, scope, interface index.
    message.extend_from_slice(&[libc::AF_INET as u8, 32, 0, libc::RT_SCOPE_UNIVERSE]);
    message.extend_from_slice(&index.to_ne_bytes());
    push_attribute(&mut message, libc::IFA_LOCAL, &address.octets());
    push_attribute(&mut message, libc::IFA_ADDRESS, &address.octets());
    if kind == libc::RTM_NEWADDR {
        // struct ifa_cacheinfo: preferred, valid, and two timestamps the kernel fills in.
        let mut lifetimes = Vec::with_capacity(16);
        lifetimes.extend_from_slice(&lifetime_secs.to_ne_bytes());
        lifetimes.extend_from_slice(&lifetime_secs.to_ne_bytes());
        lifetimes.extend_from_slice(&[0; 8]);
        push_attribute(&mut message, libc::IFA_CACHEINFO, &lifetimes);
    }
    let length = message.len() as u32;
    message[..4].copy_from_slice(&length.to_ne_bytes());
    message
}

/// Sends one address request over rtnetlink and waits for the kernel's acknowledgement.
fn netlink_address(kind: u16, index: u32, address: Ipv4Addr, lifetime_secs: u32) -> io::Result<()> {
    let socket = new_socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    let message = address_message(kind, index, address, lifetime_secs);
    // SAFETY: an all-zero sockaddr_nl addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `message` and `kernel` are valid for the given lengths during the call.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 1024];
    // The acknowledgement comes back at once; a receive timeout keeps a kernel that never
    // answers from stalling the election loop.
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: `timeout` is a valid timeval for the duration of the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
    // SAFETY: `reply` is writable for its whole length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_acknowledgement(&reply[..received as usize])
}

/// Reads the NLMSG_ERROR acknowledgement: error 0 is success, else a negated errno.
fn parse_acknowledgement(reply: &[u8]) -> io::Result<()> {
    if reply.len() < 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink reply",
        ));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink reply type {kind}"),
        ));
    }
    let error = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if error == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-error))
    }
}

/// The Ethernet frame of a gratuitous ARP request: broadcast, sender and target protocol
/// address both the VIP.
fn gratuitous_arp_frame(mac: [u8; 6], address: Ipv4Addr) -> [u8; 42] {
    let mut frame = [0u8; 42];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&(libc::ETH_P_ARP as u16).to_be_bytes());
    // Hardware Ethernet, protocol IPv4, address lengths 6 and 4, operation request.
    frame[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&address.octets());
    // Target hardware address stays zero.
    frame[38..42].copy_from_slice(&address.octets());
    frame
}

fn send_gratuitous_arp(index: u32, mac: [u8; 6], address: Ipv4Addr) -> io::Result<()> {
    let protocol = (libc::ETH_P_ARP as u16).to_be();
    let socket = new_socket(libc::AF_PACKET, libc::SOCK_RAW, protocol as i32)?;
    let frame = gratuitous_arp_frame(mac, address);
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut destination: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    destination.sll_family = libc::AF_PACKET as u16;
    destination.sll_protocol = protocol;
    destination.sll_ifindex = index as i32;
    destination.sll_halen = 6;
    destination.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `frame` and `destination` are valid for the given lengths during the call.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&destination as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_requests_carry_the_address_and_lifetime() {
        let address = Ipv4Addr::new(10, 77, 0, 200);
        let add = address_message(libc::RTM_NEWADDR, 7, address, 1);
        assert_eq!(
            u32::from_ne_bytes(add[0..4].try_into().unwrap()) as usize,
            add.len()
        );
        assert!(add.len().is_multiple_of(4));
        // Header 16 + ifaddrmsg 8 + two 8-byte address attributes + 20-byte cache info.
        assert_eq!(add.len(), 16 + 8 + 8 + 8 + 20);
        assert_eq!(u32::from_ne_bytes(add[20..24].try_into().unwrap()), 7);
        assert_eq!(&add[28..32], &[10, 77, 0, 200]);
        let delete = address_message(libc::RTM_DELADDR, 7, address, 0);
        assert_eq!(delete.len(), 16 + 8 + 8 + 8);
    }

    #[test]
    fn gratuitous_arp_names_the_vip_as_sender_and_target() {
        let frame = gratuitous_arp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(&frame[0..6], &[0xff; 6]);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[20..22], &[0, 1]);
        assert_eq!(&frame[28..32], &[10, 0, 0, 5]);
        assert_eq!(&frame[38..42], &[10, 0, 0, 5]);
        assert_eq!(&frame[32..38], &[0; 6]);
    }

    #[test]
    fn acknowledgements_are_read_as_errno() {
        let mut reply = vec![0u8; 36];
        reply[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        assert!(parse_acknowledgement(&reply).is_ok());
        reply[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        let error = parse_acknowledgement(&reply).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EPERM));
        assert!(parse_acknowledgement(&reply[..8]).is_err());
    }

    #[test]
    fn ipv6_and_unknown_interfaces_are_refused_clearly() {
        let error = InterfaceVip::new("eth0", "::1".parse().unwrap()).unwrap_err();
        assert!(error.to_string().contains("IPv4"), "{error}");
        let mut vip =
            InterfaceVip::new("nosuchif0", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))).unwrap();
        let error = vip.hold().unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
        assert!(vip.release().is_ok());
    }
}
