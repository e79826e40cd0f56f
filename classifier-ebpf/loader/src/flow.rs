//! The flow to look up, and its conversion to a map key.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::{
        fd::{AsFd, AsRawFd as _},
        unix::net::UnixDatagram,
    },
};

use socket2::SockRef;
use tollgate_classifier_common::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, Ports};

/// Transport protocol of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP, recorded when the client sends its SYN.
    Tcp,
    /// UDP, recorded for each datagram the client sends.
    Udp,
}

/// A flow, with the addresses the receiving socket reports.
///
/// `src` is the client's address and `dst` the address it sent to. For a TPROXY listener
/// `dst` is the original destination: `getsockname()` of an accepted TCP socket, or the
/// `IP_ORIGDSTADDR`/`IPV6_ORIGDSTADDR` control message of a UDP `recvmsg()`. IPv4-mapped IPv6
/// addresses match the IPv4 flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowLookup {
    /// Network namespace cookie of the flow (`SO_NETNS_COOKIE` of the receiving socket, see
    /// [`netns_cookie`]), or `None` for the network namespace of the calling thread.
    pub netns_cookie: Option<u64>,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Client address.
    pub src: SocketAddr,
    /// Destination the client sent to.
    pub dst: SocketAddr,
}

impl FlowLookup {
    /// Creates the lookup for an accepted TCP socket: peer address, local address and the
    /// socket's network namespace.
    pub fn from_accepted_tcp<S: AsFd>(socket: &S) -> io::Result<Self> {
        let socket_ref = SockRef::from(socket);
        Ok(Self {
            netns_cookie: Some(netns_cookie(socket)?),
            protocol: Protocol::Tcp,
            src: inet_address(socket_ref.peer_addr()?)?,
            dst: inet_address(socket_ref.local_addr()?)?,
        })
    }

    /// Returns the map key of this flow in the network namespace `netns_cookie`.
    pub(crate) fn key(&self, netns_cookie: u64) -> FlowKey {
        let protocol = match self.protocol {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        };
        let ports = Ports {
            src: self.src.port(),
            dst: self.dst.port(),
        };
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                FlowKey::ipv4(netns_cookie, protocol, src.octets(), dst.octets(), ports)
            }
            (src, dst) => FlowKey::ipv6(
                netns_cookie,
                protocol,
                ipv6_octets(src),
                ipv6_octets(dst),
                ports,
            ),
        }
    }
}

/// Returns the network namespace cookie of a socket (`SO_NETNS_COOKIE`, Linux 5.14 or later).
pub fn netns_cookie<S: AsFd>(socket: &S) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the descriptor is valid for the borrow, and `cookie`/`len` describe a writable
    // buffer of the size the kernel writes for this option.
    let result = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Returns the network namespace cookie of the calling thread.
pub(crate) fn current_netns_cookie() -> io::Result<u64> {
    netns_cookie(&UnixDatagram::unbound()?)
}

fn inet_address(address: socket2::SockAddr) -> io::Result<SocketAddr> {
    address.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket is not an IPv4 or IPv6 socket",
        )
    })
}

fn ipv6_octets(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(address) => address.to_ipv6_mapped().octets(),
        IpAddr::V6(address) => address.octets(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use tollgate_classifier_common::{AF_INET, AF_INET6};

    use super::*;

    fn lookup(src: SocketAddr, dst: SocketAddr) -> FlowLookup {
        FlowLookup {
            netns_cookie: Some(1),
            protocol: Protocol::Tcp,
            src,
            dst,
        }
    }

    #[test]
    fn key_of_ipv4_flow() {
        let flow = lookup(
            "127.0.0.1:40000".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );

        let key = flow.key(9);

        assert_eq!(key.netns_cookie, 9);
        assert_eq!(key.family, AF_INET);
        assert_eq!(key.protocol, IPPROTO_TCP);
        assert_eq!(key.src_addr[..4], [127, 0, 0, 1]);
        assert_eq!(key.dst_addr[..4], [10, 0, 0, 1]);
        assert_eq!(key.src_port, 40000);
        assert_eq!(key.dst_port, 443);
    }

    #[test]
    fn mapped_lookup_matches_ipv4_key() {
        let mapped = |address: Ipv4Addr, port| {
            SocketAddr::V6(SocketAddrV6::new(address.to_ipv6_mapped(), port, 0, 0))
        };
        let plain = lookup(
            "127.0.0.1:40000".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        let flow = lookup(
            mapped(Ipv4Addr::LOCALHOST, 40000),
            mapped(Ipv4Addr::new(10, 0, 0, 1), 443),
        );

        assert_eq!(flow.key(9), plain.key(9));
    }

    #[test]
    fn mixed_families_stay_ipv6() {
        let flow = lookup(
            "127.0.0.1:40000".parse().unwrap(),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 443),
        );

        assert_eq!(flow.key(9).family, AF_INET6);
    }

    #[test]
    fn udp_key_uses_udp_protocol() {
        let mut flow = lookup("[::1]:5000".parse().unwrap(), "[::1]:53".parse().unwrap());
        flow.protocol = Protocol::Udp;

        let key = flow.key(9);

        assert_eq!(key.protocol, IPPROTO_UDP);
        assert_eq!(key.family, AF_INET6);
    }

    #[test]
    fn netns_cookie_of_socket_matches_thread() {
        let socket = UnixDatagram::unbound().unwrap();

        let cookie = netns_cookie(&socket).unwrap();

        assert_ne!(cookie, 0);
        assert_eq!(current_netns_cookie().unwrap(), cookie);
    }
}
