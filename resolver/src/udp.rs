//! The UDP side of the resolver: receives diverted queries with their original destination
//! and answers each from a socket bound to that destination.

use std::{
    io::{self, IoSliceMut},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    num::NonZeroUsize,
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use hickory_net::xfer::Protocol;
use hickory_server::server::Request;
use lru::LruCache;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
use tokio::{io::Interest, net::UdpSocket, sync::Semaphore};
use tracing::{debug, warn};

use crate::{
    handler::{DnsHandler, encode_reply, udp_response_limit},
    malformed::formerr_for,
    sockets,
};

/// Serves the UDP listener `socket` until the task is aborted.
pub(crate) async fn serve(socket: UdpSocket, handler: DnsHandler, mark: Option<u32>) {
    let listener = Arc::new(socket);
    let local = listener.local_addr().ok();
    let replies = Arc::new(ReplySockets::new(mark));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buffer = vec![0u8; MAX_QUERY_LEN];
    loop {
        let (length, client, server) = match receive(&listener, &mut buffer).await {
            Ok(received) => received,
            Err(err) => {
                warn!(error = %err, "failed to receive DNS query");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            debug!(%client, "too many DNS queries in flight; query dropped");
            continue;
        };
        let query = Query {
            bytes: buffer[..length].to_vec(),
            client,
            server: server.or(local).unwrap_or(client),
            from_listener: server.is_none() || server == local,
        };
        let (handler, listener, replies) =
            (handler.clone(), Arc::clone(&listener), Arc::clone(&replies));
        tokio::spawn(async move {
            answer(query, &handler, &listener, &replies).await;
            drop(permit);
        });
    }
}

/// One received datagram.
struct Query {
    bytes: Vec<u8>,
    client: SocketAddr,
    /// The address the client sent the query to.
    server: SocketAddr,
    /// Whether the query was sent to the listener itself rather than diverted to it.
    from_listener: bool,
}

async fn answer(query: Query, handler: &DnsHandler, listener: &UdpSocket, replies: &ReplySockets) {
    let response = match Request::from_bytes(query.bytes.clone(), query.client, Protocol::Udp) {
        Ok(request) => {
            let reply = handler.reply(&request, query.server).await;
            encode_reply(&request, &reply, udp_response_limit(&request))
        }
        Err(err) => {
            debug!(client = %query.client, error = %err, "malformed DNS query");
            match formerr_for(&query.bytes) {
                Some(bytes) => bytes,
                None => return,
            }
        }
    };
    let sent = if query.from_listener {
        listener.send_to(&response, query.client).await
    } else {
        replies.send(query.server, &response, query.client).await
    };
    if let Err(err) = sent {
        debug!(client = %query.client, server = %query.server, error = %err, "failed to send DNS answer");
    }
}

/// Receives one datagram, returning its length, sender and original destination.
async fn receive(
    socket: &UdpSocket,
    buffer: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    loop {
        socket.readable().await?;
        let result = socket.try_io(Interest::READABLE, || {
            receive_now(socket.as_raw_fd(), buffer).map_err(io::Error::from)
        });
        match result {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

fn receive_now(fd: i32, buffer: &mut [u8]) -> nix::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    let mut control = nix::cmsg_space!(libc::sockaddr_in6);
    let mut iov = [IoSliceMut::new(buffer)];
    let message =
        recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut control), MsgFlags::MSG_TRUNC)?;
    let client = message
        .address
        .as_ref()
        .and_then(socket_addr)
        .ok_or(nix::Error::EAFNOSUPPORT)?;
    let mut server = None;
    for control in message.cmsgs()? {
        server = match control {
            ControlMessageOwned::Ipv4OrigDstAddr(address) => Some(from_sockaddr_in(&address)),
            ControlMessageOwned::Ipv6OrigDstAddr(address) => Some(from_sockaddr_in6(&address)),
            _ => server,
        };
    }
    // With MSG_TRUNC the length is the datagram's, which may exceed the buffer.
    Ok((message.bytes.min(MAX_QUERY_LEN), client, server))
}

fn socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

fn from_sockaddr_in(address: &libc::sockaddr_in) -> SocketAddr {
    let ip = Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr));
    SocketAddr::new(IpAddr::V4(ip), u16::from_be(address.sin_port))
}

fn from_sockaddr_in6(address: &libc::sockaddr_in6) -> SocketAddr {
    let ip = Ipv6Addr::from(address.sin6_addr.s6_addr);
    SocketAddr::new(IpAddr::V6(ip), u16::from_be(address.sin6_port))
}

/// How answers from one original destination are sent.
#[derive(Clone)]
enum ReplyPath {
    /// A shared unconnected socket bound to the destination, which is not an address of this
    /// machine, so no other local socket listens on it.
    Shared(Arc<UdpSocket>),
    /// A connected socket per answer, because the destination is an address of this machine
    /// where a local stub resolver may listen (see [`sockets::connected_reply_socket`]).
    PerAnswer,
}

/// Reply paths by original destination, reused across answers and capped in number.
struct ReplySockets {
    mark: Option<u32>,
    paths: Mutex<LruCache<SocketAddr, ReplyPath>>,
}

impl ReplySockets {
    fn new(mark: Option<u32>) -> Self {
        Self {
            mark,
            paths: Mutex::new(LruCache::new(MAX_REPLY_SOCKETS)),
        }
    }

    /// Sends `response` to `client` from `server`.
    async fn send(
        &self,
        server: SocketAddr,
        response: &[u8],
        client: SocketAddr,
    ) -> io::Result<usize> {
        match self.path(server)? {
            ReplyPath::Shared(socket) => socket.send_to(response, client).await,
            ReplyPath::PerAnswer => {
                let socket = sockets::connected_reply_socket(server, client, self.mark)?;
                socket.send(response).await
            }
        }
    }

    fn path(&self, server: SocketAddr) -> io::Result<ReplyPath> {
        let mut paths = self
            .paths
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(path) = paths.get(&server) {
            return Ok(path.clone());
        }
        let path = if sockets::is_local_address(server.ip()) {
            ReplyPath::PerAnswer
        } else {
            ReplyPath::Shared(Arc::new(sockets::reply_socket(server, self.mark)?))
        };
        paths.put(server, path.clone());
        Ok(path)
    }
}

/// Largest query read; longer datagrams are cut, which makes them malformed.
const MAX_QUERY_LEN: usize = 4096;
/// Queries answered at once; more are dropped, and their clients retry.
const MAX_IN_FLIGHT: usize = 4096;
/// Reply paths kept, one per original destination, each with at most one open socket.
const MAX_REPLY_SOCKETS: NonZeroUsize = NonZeroUsize::new(256).expect("256 is not zero");

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use socket2::{Domain, Socket, Type};

    use super::*;

    /// The address of a stand-in local stub resolver, on loopback.
    const STUB_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);
    const RECEIVE_TIMEOUT: Duration = Duration::from_secs(2);

    /// Binds a UDP socket with `SO_REUSEADDR`, as stub resolvers such as dnsmasq do.
    fn stub_socket() -> UdpSocket {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket.bind(&SocketAddr::from((STUB_IP, 0)).into()).unwrap();
        UdpSocket::from_std(socket.into()).unwrap()
    }

    async fn receive_from(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buffer = [0u8; 64];
        let (length, from) = tokio::time::timeout(RECEIVE_TIMEOUT, socket.recv_from(&mut buffer))
            .await
            .expect("no datagram within the timeout")
            .unwrap();
        (buffer[..length].to_vec(), from)
    }

    #[test]
    fn loopback_is_local_address() {
        assert!(sockets::is_local_address(IpAddr::V4(STUB_IP)));
        assert!(sockets::is_local_address(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn documentation_address_is_not_local() {
        assert!(!sockets::is_local_address(IpAddr::V4(Ipv4Addr::new(
            192, 0, 2, 1
        ))));
    }

    /// Needs `CAP_NET_ADMIN`, for the reply sockets' `IP_TRANSPARENT`.
    #[tokio::test]
    async fn answers_from_stub_address_leave_stub_its_queries() {
        let stub = stub_socket();
        let stub_address = stub.local_addr().unwrap();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        client.connect(stub_address).await.unwrap();
        let client_address = client.local_addr().unwrap();
        let replies = ReplySockets::new(None);

        for round in 0..3 {
            let answer = format!("answer {round}");
            replies
                .send(stub_address, answer.as_bytes(), client_address)
                .await
                .unwrap();
            let (received, from) = receive_from(&client).await;
            assert_eq!(received, answer.as_bytes());
            assert_eq!(from, stub_address);

            // Another program's query to the stub, such as the resolver's own upstream query,
            // must reach the stub and no reply socket.
            let asker = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            asker.send_to(b"query", stub_address).await.unwrap();
            let (received, from) = receive_from(&stub).await;
            assert_eq!(received, b"query");
            assert_eq!(from, asker.local_addr().unwrap());
        }
    }
}
