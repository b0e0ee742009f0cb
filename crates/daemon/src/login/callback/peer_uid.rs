//! Which user holds the other end of a connection to the callback port, so that the browser
//! (which runs as this user) is never pushed out for another user's connections.
//!
//! On Linux the kernel lists every TCP socket with its owner in `/proc/net/tcp` and
//! `/proc/net/tcp6`: the peer's socket is the line whose local address is our connection's peer
//! and whose remote address is our end. Elsewhere nothing is found, every peer counts as "not
//! known", and the callback keeps the rule it had before (idle longest goes first).
//!
//! The files list every socket on the machine, so they are read only when the accept loop must
//! make room, once for a whole batch of connections (see `callback::serve`), and only the lines
//! that point at the callback port are kept.

use std::collections::HashMap;
use std::net::SocketAddr;

/// The owners of the sockets connected to the callback port, as seen in one read.
// Elsewhere none is ever read.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(super) struct Owners(HashMap<(SocketAddr, SocketAddr), u32>);

impl Owners {
    /// The uid that owns the peer of a connection whose peer is `peer` and our end `local`.
    pub(super) fn uid(&self, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
        self.0.get(&(canonical(peer), canonical(local))).copied()
    }
}

/// This process's uid, as the kernel records it on the sockets it (and the browser it started)
/// opens: the filesystem uid, which is the effective one.
pub(super) fn own_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Reads the owners of the sockets whose remote end is one of `ports` (the callback port);
/// `None` when neither file could be read (no /proc, out of descriptors).
#[cfg(target_os = "linux")]
pub(super) fn read(ports: &[u16]) -> Option<Owners> {
    let mut owners = HashMap::new();
    let mut read_any = false;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        // Not there (no IPv6, say): those peers are just not known.
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        read_any = true;
        for line in text.lines().skip(1) {
            if let Some((local, remote, uid)) = parse_line(line, ports) {
                owners.insert((local, remote), uid);
            }
        }
    }
    read_any.then_some(Owners(owners))
}

/// Elsewhere no owner is known: the callback keeps its rule of before.
#[cfg(not(target_os = "linux"))]
pub(super) fn read(_ports: &[u16]) -> Option<Owners> {
    None
}

/// One line of `/proc/net/tcp*`: `sl local rem st tx:rx tr:when retrnsmt uid …`. Lines in
/// TIME_WAIT (state 06) are skipped: the kernel shows them with uid 0, whoever held them.
#[cfg(target_os = "linux")]
fn parse_line(line: &str, ports: &[u16]) -> Option<(SocketAddr, SocketAddr, u32)> {
    let mut fields = line.split_whitespace();
    let (_, local, remote, state) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let remote = parse_addr(remote)?;
    if !ports.contains(&remote.port()) || state == "06" {
        return None;
    }
    let uid = fields.nth(3)?.parse().ok()?;
    Some((canonical(parse_addr(local)?), canonical(remote), uid))
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6). The address is printed as the
/// kernel's 32-bit words in this machine's byte order, the port as a number.
#[cfg(target_os = "linux")]
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// An IPv4 peer seen through an IPv6 socket is listed as an IPv4-mapped address on one side and
/// may be a plain IPv4 one on the other: both are compared as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
