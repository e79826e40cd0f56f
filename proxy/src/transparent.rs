//! Sockets of the transparent proxy: the TPROXY listeners, the daemon's own upstream
//! connections, and resets.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

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
