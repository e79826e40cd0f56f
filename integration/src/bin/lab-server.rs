//! The lab's echo servers (TCP and UDP) and bulk server, run inside the net namespace.
//!
//! The echo server returns every byte it receives until the client shuts down its side. The
//! bulk server reads an 8-byte big-endian length, sends that many bytes of the pattern in
//! `tollgate_integration::pattern`, then closes. The UDP echo servers send every datagram back
//! to its sender. All listen dual-stack, so one IPv6 socket serves IPv4 clients too.

use std::{io, net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use nix::sys::socket::{setsockopt, sockopt::Ipv6V6Only};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
};
use tollgate_integration::{
    pattern::fill_pattern,
    topology::{QUIC_PORT, SERVER_ADDRS, UDP_ECHO_PORT},
};

/// TCP echo and bulk servers for the Tollgate lab.
#[derive(Debug, Parser)]
struct Args {
    /// Address of the echo server. An IPv6 address also accepts IPv4 clients.
    #[arg(long, default_value = "[::]:7")]
    echo: SocketAddr,

    /// Address of the bulk server. An IPv6 address also accepts IPv4 clients.
    #[arg(long, default_value = "[::]:9000")]
    bulk: SocketAddr,

    /// Addresses of the UDP echo servers. Each is bound on its own, because a wildcard socket
    /// would answer from the address its route picks rather than the one asked. Default: ports 7
    /// and 443 (standing in for QUIC) on every lab server address.
    #[arg(long)]
    udp_echo: Vec<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();

    let listeners =
        bind_dual_stack(args.echo).and_then(|echo| Ok((echo, bind_dual_stack(args.bulk)?)));
    let (echo_listener, bulk_listener) = match listeners {
        Ok(listeners) => listeners,
        Err(err) => {
            eprintln!(
                "lab-server: failed to listen on {} and {}: {err}",
                args.echo, args.bulk
            );
            return ExitCode::FAILURE;
        }
    };
    let mut udp_addresses = args.udp_echo.clone();
    if udp_addresses.is_empty() {
        for addr in SERVER_ADDRS {
            udp_addresses.push(SocketAddr::new(addr, UDP_ECHO_PORT));
            udp_addresses.push(SocketAddr::new(addr, QUIC_PORT));
        }
    }
    let mut udp_sockets = Vec::new();
    for addr in &udp_addresses {
        match bind_udp_dual_stack(*addr) {
            Ok(socket) => udp_sockets.push(socket),
            Err(err) => {
                eprintln!("lab-server: failed to bind UDP echo on {addr}: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!(
        "lab-server: echo on {}, bulk on {}, UDP echo on {:?}",
        args.echo, args.bulk, udp_addresses
    );

    for socket in udp_sockets {
        tokio::spawn(udp_echo(socket));
    }
    tokio::join!(
        serve(echo_listener, "echo", echo),
        serve(bulk_listener, "bulk", bulk)
    );
    ExitCode::SUCCESS
}

/// Binds a UDP socket, with IPV6_V6ONLY off for IPv6 addresses so IPv4 clients reach it too.
fn bind_udp_dual_stack(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Sends every datagram back to its sender, forever.
async fn udp_echo(socket: UdpSocket) {
    let mut buffer = vec![0u8; 65_535];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((len, peer)) => {
                if let Err(err) = socket.send_to(&buffer[..len], peer).await {
                    eprintln!("lab-server: UDP echo to {peer} failed: {err}");
                }
            }
            Err(err) => eprintln!("lab-server: UDP receive failed: {err}"),
        }
    }
}

/// Binds a listener, with IPV6_V6ONLY off for IPv6 addresses so IPv4 clients connect too.
fn bind_dual_stack(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            setsockopt(&socket, Ipv6V6Only, &false)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections forever and runs `handler` on each in its own task.
async fn serve<F, Fut>(listener: TcpListener, service: &'static str, handler: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Accept fails for reasons like EMFILE, so retry after a pause instead of spinning.
                eprintln!("lab-server: {service}: accept failed: {err}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };

        let connection = handler(stream);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                eprintln!("lab-server: {service}: connection from {peer} failed: {err}");
            }
        });
    }
}

/// Echoes all bytes until the client shuts down its side, then closes.
async fn echo(mut stream: TcpStream) -> io::Result<()> {
    let (mut reader, mut writer) = stream.split();
    tokio::io::copy(&mut reader, &mut writer).await?;
    writer.shutdown().await
}

/// Sends the requested number of pattern bytes, then closes.
async fn bulk(mut stream: TcpStream) -> io::Result<()> {
    let mut len_bytes = [0; 8];
    match stream.read_exact(&mut len_bytes).await {
        Ok(_) => {}
        // A client that closes without a request, such as the lab's readiness probe, is fine.
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
        Err(err) => return Err(err),
    }
    let len = u64::from_be_bytes(len_bytes);

    let mut buf = vec![0; CHUNK_SIZE];
    let mut sent: u64 = 0;
    while sent < len {
        let count = CHUNK_SIZE.min((len - sent).try_into().unwrap_or(CHUNK_SIZE));
        fill_pattern(sent, &mut buf[..count]);
        stream.write_all(&buf[..count]).await?;
        sent += count as u64;
    }
    stream.shutdown().await?;

    // Closing with unread data in the receive buffer sends a reset, which could destroy bytes
    // still in flight to the client. Waiting for the client's close avoids that.
    let mut rest = [0; 512];
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while stream.read(&mut rest).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
    Ok(())
}

const LISTEN_BACKLOG: u32 = 1024;
const CHUNK_SIZE: usize = 64 * 1024;
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long the bulk server waits for the client to close after the last byte.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
