//! ICMP "port unreachable" for denied UDP flows, sent as if from the original destination, so
//! a program with a connected socket fails at once with `ECONNREFUSED` instead of waiting.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use socket2::{Domain, Protocol as SocketProtocol, Socket, Type};

/// Tells `client` that `destination` has no UDP port open, for a datagram of `payload_len`
/// bytes the client sent there. Needs `CAP_NET_RAW` and `CAP_NET_ADMIN`.
pub fn send_port_unreachable(
    client: SocketAddr,
    destination: SocketAddr,
    payload_len: usize,
    bypass_mark: u32,
) -> io::Result<()> {
    let udp_len = u16::try_from(payload_len + UDP_HEADER_LEN).unwrap_or(u16::MAX);
    let udp_header = udp_header(client.port(), destination.port(), udp_len);
    let (domain, protocol, message) = match (client.ip(), destination.ip()) {
        (IpAddr::V4(from), IpAddr::V4(to)) => (
            Domain::IPV4,
            SocketProtocol::ICMPV4,
            icmpv4_message(from, to, udp_len, &udp_header),
        ),
        (IpAddr::V6(from), IpAddr::V6(to)) => (
            Domain::IPV6,
            SocketProtocol::ICMPV6,
            icmpv6_message(from, to, udp_len, &udp_header),
        ),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{client} and {destination} are of different address families"),
            ));
        }
    };

    let socket = Socket::new(domain, Type::RAW, Some(protocol))?;
    // Transparent, so it may send from the destination's address, which is not ours.
    let (level, option) = match domain {
        Domain::IPV4 => (libc::SOL_IP, libc::IP_TRANSPARENT),
        _ => (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT),
    };
    set_int_option(&socket, level, option, 1)?;
    socket.set_mark(bypass_mark)?;
    socket.bind(&SocketAddr::new(destination.ip(), 0).into())?;
    socket.send_to(&message, &SocketAddr::new(client.ip(), 0).into())?;
    Ok(())
}

const UDP_HEADER_LEN: usize = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;
const IPPROTO_UDP: u8 = 17;
const TTL: u8 = 64;

fn udp_header(source_port: u16, destination_port: u16, len: u16) -> [u8; UDP_HEADER_LEN] {
    let mut header = [0u8; UDP_HEADER_LEN];
    header[0..2].copy_from_slice(&source_port.to_be_bytes());
    header[2..4].copy_from_slice(&destination_port.to_be_bytes());
    header[4..6].copy_from_slice(&len.to_be_bytes());
    // A zero checksum is allowed for IPv4 and ignored when matching the error to a socket.
    header
}

/// Builds an ICMPv4 destination-unreachable message quoting the client's IPv4 and UDP headers.
fn icmpv4_message(from: Ipv4Addr, to: Ipv4Addr, udp_len: u16, udp: &[u8]) -> Vec<u8> {
    let mut inner = [0u8; 20];
    inner[0] = 0x45;
    inner[2..4].copy_from_slice(&(udp_len.saturating_add(20)).to_be_bytes());
    inner[8] = TTL;
    inner[9] = IPPROTO_UDP;
    inner[12..16].copy_from_slice(&from.octets());
    inner[16..20].copy_from_slice(&to.octets());
    let checksum = internet_checksum(&inner);
    inner[10..12].copy_from_slice(&checksum.to_be_bytes());

    let mut message = vec![ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&inner);
    message.extend_from_slice(udp);
    let checksum = internet_checksum(&message);
    message[2..4].copy_from_slice(&checksum.to_be_bytes());
    message
}

/// Builds an ICMPv6 destination-unreachable message quoting the client's IPv6 and UDP headers.
/// The kernel fills in the checksum of ICMPv6 raw sockets.
fn icmpv6_message(from: Ipv6Addr, to: Ipv6Addr, udp_len: u16, udp: &[u8]) -> Vec<u8> {
    let mut message = vec![ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&[0x60, 0, 0, 0]);
    message.extend_from_slice(&udp_len.to_be_bytes());
    message.extend_from_slice(&[IPPROTO_UDP, TTL]);
    message.extend_from_slice(&from.octets());
    message.extend_from_slice(&to.octets());
    message.extend_from_slice(udp);
    message
}

/// Computes the ones' complement checksum of RFC 1071.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = match chunk {
            [high, low] => u16::from_be_bytes([*high, *low]),
            [high] => u16::from_be_bytes([*high, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn set_int_option(socket: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the descriptor is open for the call, and the value is a c_int whose size is
    // passed with it.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example() {
        // The example of RFC 1071, section 3: the sum is 0xddf2, so the checksum is 0x220d.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&bytes), 0x220d);
    }

    #[test]
    fn icmpv4_message_checksums_to_zero() {
        let udp = udp_header(40000, 7, 13);
        let message = icmpv4_message(
            Ipv4Addr::new(10, 77, 0, 2),
            Ipv4Addr::new(203, 0, 113, 10),
            13,
            &udp,
        );
        assert_eq!(message.len(), 8 + 20 + 8);
        assert_eq!(internet_checksum(&message), 0);
        assert_eq!(internet_checksum(&message[8..28]), 0);
        assert_eq!(&message[36 - 8..36], &udp);
    }

    #[test]
    fn icmpv6_message_quotes_headers() {
        let udp = udp_header(40000, 443, 20);
        let from: Ipv6Addr = "fd77::2".parse().unwrap();
        let to: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let message = icmpv6_message(from, to, 20, &udp);
        assert_eq!(message.len(), 8 + 40 + 8);
        assert_eq!(message[0], ICMPV6_DEST_UNREACH);
        assert_eq!(message[1], ICMPV6_PORT_UNREACH);
        assert_eq!(message[8] >> 4, 6);
        assert_eq!(&message[16..32], &from.octets());
        assert_eq!(&message[32..48], &to.octets());
    }
}
