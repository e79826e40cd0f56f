//! Sockets of the transparent proxy: the TPROXY listeners for TCP and UDP, the daemon's own
//! upstream sockets, UDP reply sockets, and resets.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrStorage, recvmsg,
};
use socket2::{Domain, SockRef, Socket, Type};
use tokio::{
    io::Interest,
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
};

/// Backlog of the listeners. Held connections are accepted at once, so this only needs to cover
/// bursts between two `accept` calls.
const LISTEN_BACKLOG: i32 = 4096;

/// Opens a transparent TCP listener on `addr`, which TPROXY can hand connections for any
/// destination to. Accepted sockets carry `bypass_mark`, like the listener.
///
/// Needs `CAP_NET_ADMIN`. Must be called inside a tokio runtime.
pub fn transparent_listener(addr: SocketAddr, bypass_mark: u32) -> io::Result<TcpListener> {
    let domain = Domain::for_address(addr);
    let socket = Socket::new(domain, Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, 1)?;
    } else {
        set_int_option(&socket, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_mark(bypass_mark)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Connects to `destination` from a socket carrying `bypass_mark`, so the connection leaves
/// without being diverted back to the daemon.
pub async fn connect_upstream(
    destination: SocketAddr,
    bypass_mark: u32,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = match destination {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    SockRef::from(&socket).set_mark(bypass_mark)?;
    match tokio::time::timeout(timeout, socket.connect(destination)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connect to {destination} timed out after {}s",
                timeout.as_secs()
            ),
        )),
    }
}

/// Closes `stream` with a TCP reset, so the peer's next read fails with `ECONNRESET`.
pub fn reset(stream: TcpStream) {
    // A zero linger time makes close() send RST and drop unsent data.
    if let Err(err) = SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %err, "failed to set zero linger; closing normally");
    }
    drop(stream);
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

/// Opens a transparent UDP listener on `addr` that reports each datagram's original
/// destination (`IP_RECVORIGDSTADDR`), for use with [`recv_with_destination`].
///
/// Needs `CAP_NET_ADMIN`. Must be called inside a tokio runtime.
pub fn transparent_udp_listener(addr: SocketAddr, bypass_mark: u32) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, 1)?;
        set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVORIGDSTADDR, 1)?;
    } else {
        set_int_option(&socket, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
        set_int_option(&socket, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_mark(bypass_mark)?;
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Receives one datagram on a listener from [`transparent_udp_listener`]. Returns its length,
/// the client's address and the destination the client sent it to.
pub async fn recv_with_destination(
    socket: &UdpSocket,
    buffer: &mut [u8],
) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    socket
        .async_io(Interest::READABLE, || {
            recvmsg_with_destination(socket, buffer)
        })
        .await
}

fn recvmsg_with_destination(
    socket: &UdpSocket,
    buffer: &mut [u8],
) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    let capacity = buffer.len();
    let mut iov = [io::IoSliceMut::new(buffer)];
    let mut space = nix::cmsg_space!(libc::sockaddr_in6);
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_TRUNC,
    )
    .map_err(io::Error::from)?;

    let source = message
        .address
        .as_ref()
        .and_then(storage_to_socket_addr)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram without source"))?;
    let mut destination = None;
    for control in message.cmsgs().map_err(io::Error::from)? {
        match control {
            ControlMessageOwned::Ipv4OrigDstAddr(addr) => {
                destination = Some(SocketAddr::from(SockaddrIn::from(addr)));
            }
            ControlMessageOwned::Ipv6OrigDstAddr(addr) => {
                destination = Some(SocketAddr::from(SockaddrIn6::from(addr)));
            }
            _ => {}
        }
    }
    let destination = destination.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram without original destination",
        )
    })?;
    // With MSG_TRUNC the length is the datagram's full size; a larger one was cut.
    if message.bytes > capacity {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "datagram of {} bytes from {source} truncated",
                message.bytes
            ),
        ));
    }
    Ok((message.bytes, source, destination))
}

fn storage_to_socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    storage.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// Opens the socket that sends a UDP flow's replies to `client` from `original_destination`,
/// so a connected client socket accepts them. Because it is connected to the client, TPROXY
/// also delivers the client's later datagrams of the flow to it instead of the listener.
pub fn udp_reply_socket(
    original_destination: SocketAddr,
    client: SocketAddr,
    bypass_mark: u32,
) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(original_destination), Type::DGRAM, None)?;
    if original_destination.is_ipv6() {
        socket.set_only_v6(true)?;
        set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, 1)?;
    } else {
        set_int_option(&socket, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_mark(bypass_mark)?;
    socket.bind(&original_destination.into())?;
    socket.connect(&client.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Opens a UDP socket connected to `destination` that carries `bypass_mark`, so its datagrams
/// leave without being diverted back to the daemon.
pub async fn udp_upstream(destination: SocketAddr, bypass_mark: u32) -> io::Result<UdpSocket> {
    let local: SocketAddr = match destination {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    SockRef::from(&socket).set_mark(bypass_mark)?;
    socket.connect(destination).await?;
    Ok(socket)
}
