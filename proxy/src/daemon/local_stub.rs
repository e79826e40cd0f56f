//! Local stub resolvers among the DNS upstreams, such as systemd-resolved on 127.0.0.53. Their
//! own queries must pass undiverted, or the resolver that forwards to them receives them again.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tollgate_resolver::{UpstreamConfig, UpstreamProtocol, sockets};
use tracing::warn;

/// Returns the uids of the local stub resolvers among `upstreams`: plain DNS upstreams on an
/// address of this network namespace whose port a UDP socket is bound to. The uid is the
/// effective uid of a process that has that socket open. A stub such as dnsmasq binds as root and
/// then switches to its own user, which creates the sockets of its upstream queries, so the
/// socket's own uid would be root. The sockets are read from `/proc/net/udp` and
/// `/proc/net/udp6`, which list those of the calling thread's network namespace.
///
/// NOTE: a stub that serves an IPv4 address from a dual-stack IPv6 socket bound to `::` is not
/// found, and neither is a stub started after the daemon.
pub(super) fn stub_uids(upstreams: &[UpstreamConfig]) -> Vec<u32> {
    let mut uids = Vec::new();
    for upstream in upstreams {
        let plain = matches!(
            upstream.protocol,
            UpstreamProtocol::Udp | UpstreamProtocol::Tcp
        );
        if !plain || !sockets::is_local_address(upstream.address) {
            continue;
        }
        let table_path = match upstream.address {
            IpAddr::V4(_) => "/proc/net/udp",
            IpAddr::V6(_) => "/proc/net/udp6",
        };
        let table = match fs::read_to_string(table_path) {
            Ok(table) => table,
            Err(err) => {
                warn!(path = table_path, error = %err, "failed to read the socket table");
                continue;
            }
        };
        let address = SocketAddr::new(upstream.address, upstream.port());
        for socket in bound_sockets(&table, address) {
            let uid = holder_uid(socket.inode).unwrap_or(socket.uid);
            if !uids.contains(&uid) {
                uids.push(uid);
            }
        }
    }
    uids
}

/// A socket of a `/proc/net/udp` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SocketEntry {
    local: SocketAddr,
    /// The uid of the process that created the socket.
    uid: u32,
    inode: u64,
}

/// Returns the sockets in `table`, the text of `/proc/net/udp` or `/proc/net/udp6`, that are
/// bound to `address`, or to the unspecified address of its family on the same port.
fn bound_sockets(table: &str, address: SocketAddr) -> Vec<SocketEntry> {
    let unspecified = match address.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    // The first line names the columns.
    table
        .lines()
        .skip(1)
        .filter_map(parse_socket_line)
        .filter(|socket| {
            let ip = socket.local.ip();
            socket.local.port() == address.port() && (ip == address.ip() || ip == unspecified)
        })
        .collect()
}

/// Parses one socket line. The columns are `sl`, `local_address`, `rem_address`, `st`,
/// `tx_queue:rx_queue`, `tr:tm->when`, `retrnsmt`, `uid`, `timeout` and `inode`, followed by
/// others.
fn parse_socket_line(line: &str) -> Option<SocketEntry> {
    let columns: Vec<&str> = line.split_whitespace().collect();
    Some(SocketEntry {
        local: parse_address(columns.get(1)?)?,
        uid: columns.get(7)?.parse().ok()?,
        inode: columns.get(9)?.parse().ok()?,
    })
}

/// Returns the effective uid of a process that has the socket with `inode` open, found through
/// the `socket:[INODE]` links in `/proc/PID/fd`.
fn holder_uid(inode: u64) -> Option<u32> {
    let target = format!("socket:[{inode}]");
    for process in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(descriptors) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = descriptors.flatten().any(|descriptor| {
            fs::read_link(descriptor.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
        });
        if holds {
            let status = fs::read_to_string(process.path().join("status")).ok()?;
            return effective_uid(&status);
        }
    }
    None
}

/// Returns the effective uid from the text of `/proc/PID/status`, whose `Uid:` line lists the
/// real, effective, saved and filesystem uids.
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Parses `ADDRESS:PORT` as the kernel prints it: the address as 32-bit words in hexadecimal,
/// each word in the machine's byte order, and the port in hexadecimal.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for start in (0..address.len()).step_by(8) {
        let word = u32::from_str_radix(address.get(start..start + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

// The sample lines were printed by Linux 6.18 on x86-64, which is little-endian.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    const UDP: &str = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 7119: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 129151 2 000000005d2ea6c6 0
 7120: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   102        0 129153 2 000000005d2ea6c7 0
 7121: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   103        0 129154 2 000000005d2ea6c8 0
 7122: 3500007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000   104        0 129155 2 000000005d2ea6c9 0
";

    const UDP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 7119: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000   105        0 129152 2 00000000af36c942 0
";

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn entry(local: &str, uid: u32, inode: u64) -> SocketEntry {
        SocketEntry {
            local: address(local),
            uid,
            inode,
        }
    }

    #[test]
    fn ipv4_socket_line_parses() {
        let line = UDP.lines().nth(1).unwrap();
        assert_eq!(
            parse_socket_line(line),
            Some(entry("127.0.0.53:53", 101, 129151))
        );
    }

    #[test]
    fn ipv6_socket_line_parses() {
        let line = UDP6.lines().nth(1).unwrap();
        assert_eq!(
            parse_socket_line(line),
            Some(entry("[::1]:53", 105, 129152))
        );
    }

    #[test]
    fn stub_address_matches_exact_and_unspecified() {
        let uids: Vec<u32> = bound_sockets(UDP, address("127.0.0.53:53"))
            .iter()
            .map(|socket| socket.uid)
            .collect();
        assert_eq!(uids, [101, 103]);
    }

    #[test]
    fn other_port_does_not_match() {
        let on_8080 = bound_sockets(UDP, address("127.0.0.53:8080"));
        assert_eq!(on_8080, [entry("127.0.0.53:8080", 104, 129155)]);
        assert!(bound_sockets(UDP, address("127.0.0.53:5353")).is_empty());
    }

    #[test]
    fn ipv6_stub_matches() {
        let sockets = bound_sockets(UDP6, address("[::1]:53"));
        assert_eq!(sockets, [entry("[::1]:53", 105, 129152)]);
    }

    #[test]
    fn header_and_garbage_are_skipped() {
        assert!(parse_socket_line(UDP.lines().next().unwrap()).is_none());
        assert!(parse_socket_line(" 1: 3500007F 00000000:0000 07").is_none());
        assert!(parse_socket_line(" 1: 35007F:0035 00000000:0000 07 0 0 0 1 0 5").is_none());
    }

    #[test]
    fn effective_uid_is_second_of_uid_line() {
        let status = "Name:\tdnsmasq\nUmask:\t0022\nUid:\t65534\t65533\t65532\t65531\n";
        assert_eq!(effective_uid(status), Some(65533));
        assert_eq!(effective_uid("Name:\tdnsmasq\n"), None);
    }

    #[test]
    fn own_socket_holder_is_found() {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let local = socket.local_addr().unwrap();
        let table = fs::read_to_string("/proc/net/udp").unwrap();
        let entry = bound_sockets(&table, local)
            .into_iter()
            .find(|entry| entry.local == local)
            .expect("own socket missing from /proc/net/udp");
        let own_uid = effective_uid(&fs::read_to_string("/proc/self/status").unwrap());
        assert_eq!(holder_uid(entry.inode), own_uid);
    }
}
