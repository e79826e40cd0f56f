//! Sockets of the resolver: transparent UDP and TCP listeners that TPROXY hands diverted
//! queries to, and UDP reply sockets bound to the address the client aimed at.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

/// How the resolver's listening sockets are opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Addresses to listen on, UDP and TCP each.
    pub addresses: Vec<SocketAddr>,
    /// Whether the sockets are transparent (`IP_TRANSPARENT`), so TPROXY can hand them queries
    /// for any address. Needs `CAP_NET_ADMIN`.
    pub transparent: bool,
    /// Firewall mark of the sockets, so their packets skip the diversion. Needs
    /// `CAP_NET_ADMIN`.
    pub mark: Option<u32>,
}

/// Opens a UDP listener on `address` that reports each datagram's original destination
/// (`IP_RECVORIGDSTADDR`). Must be called inside a tokio runtime.
pub fn udp_listener(address: SocketAddr, config: &ListenConfig) -> io::Result<UdpSocket> {
    let socket = new_socket(address, Type::DGRAM, Protocol::UDP, config)?;
    if address.is_ipv6() {
        set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVORIGDSTADDR, 1)?;
    } else {
        set_int_option(&socket, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)?;
    }
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// Opens a TCP listener on `address`. Accepted connections report the original destination
/// as their local address. Must be called inside a tokio runtime.
pub fn tcp_listener(address: SocketAddr, config: &ListenConfig) -> io::Result<TcpListener> {
    let socket = new_socket(address, Type::STREAM, Protocol::TCP, config)?;
    socket.bind(&address.into())?;
    socket.listen(TCP_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Opens an unconnected UDP socket bound to `server`, the address a diverted query was sent
/// to, so that its answers carry that source address as the client expects. Transparent, since
/// `server` is usually not a local address; `SO_REUSEADDR` lets the reply socket of an IPv4
/// and an IPv6 listener share it. Must be called inside a tokio runtime.
///
/// TPROXY never hands queries to this socket: for UDP it looks up connected sockets only, so
/// new queries to `server` keep arriving at the listener.
pub fn reply_socket(server: SocketAddr, mark: Option<u32>) -> io::Result<UdpSocket> {
    let config = ListenConfig {
        addresses: Vec::new(),
        transparent: true,
        mark,
    };
    let socket = new_socket(server, Type::DGRAM, Protocol::UDP, &config)?;
    socket.bind(&server.into())?;
    UdpSocket::from_std(socket.into())
}

/// Opens a UDP socket bound to `server` and connected to `client`, for one answer to a query
/// sent to an address of this machine. A local stub resolver may listen on `server` with
/// `SO_REUSEADDR`, and an unconnected socket bound next to it could receive the stub's own
/// queries. A connected socket receives only datagrams from `client`. Close it after the
/// answer, because TPROXY hands the client's later queries to a connected socket that matches
/// them. Must be called inside a tokio runtime.
pub fn connected_reply_socket(
    server: SocketAddr,
    client: SocketAddr,
    mark: Option<u32>,
) -> io::Result<UdpSocket> {
    let config = ListenConfig {
        addresses: Vec::new(),
        transparent: true,
        mark,
    };
    let socket = new_socket(server, Type::DGRAM, Protocol::UDP, &config)?;
    socket.bind(&server.into())?;
    socket.connect(&client.into())?;
    UdpSocket::from_std(socket.into())
}

/// Returns whether `address` belongs to this machine's network namespace, such as a loopback
/// address or the address of an interface, which a plain bind accepts only then.
pub fn is_local_address(address: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(address, 0)).is_ok()
}

fn new_socket(
    address: SocketAddr,
    kind: Type,
    protocol: Protocol,
    config: &ListenConfig,
) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), kind, Some(protocol))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if config.transparent {
        if address.is_ipv6() {
            set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, 1)?;
        } else {
            set_int_option(&socket, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
        }
    }
    if let Some(mark) = config.mark {
        socket.set_mark(mark)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn set_int_option(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call, and the option value is a
    // c_int whose size is passed alongside it.
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
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

const TCP_BACKLOG: i32 = 1024;
