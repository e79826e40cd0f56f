//! Blocking TCP clients for the lab's echo and bulk servers that check every byte.
//!
//! The functions use the network namespace of the calling thread. To run them in the lab's
//! desk, call them inside [`NetNs::run`](crate::NetNs::run) or use the wrappers on
//! [`Lab`](crate::Lab).

use std::{
    io::{self, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns::NetNsError,
    pattern::{fill_pattern, find_mismatch},
};

/// The timeout the [`Lab`](crate::Lab) wrappers use for the connect and for each read or write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `payload` to the echo server at `server` and checks that the same bytes come back.
///
/// A separate thread sends while this one receives, so a payload larger than the socket
/// buffers does not deadlock. `timeout` bounds the connect and each read or write.
pub fn echo(server: SocketAddr, payload: &[u8], timeout: Duration) -> Result<(), TransferError> {
    let stream = connect(server, timeout)?;
    let sender = stream.try_clone().map_err(|source| TransferError::Send {
        server,
        sent: 0,
        source,
    })?;

    thread::scope(|scope| {
        let send = scope.spawn(|| send_all(sender, server, payload));
        let received = receive_echo(&stream, server, payload);
        if received.is_err() {
            // Unblocks the sender, which would otherwise wait for the write timeout. A
            // failure here only means that the connection is gone already.
            let _ = stream.shutdown(Shutdown::Both);
        }
        let sent = send
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A failed receive explains more than the send error it usually causes.
        received.and(sent)
    })
}

/// Requests `len` bytes from the bulk server at `server` and checks them against the pattern.
///
/// Sends `len` as 8 bytes big-endian, then reads until the server closes the connection.
/// `timeout` bounds the connect and each read, not the whole transfer.
pub fn bulk_download(
    server: SocketAddr,
    len: u64,
    timeout: Duration,
) -> Result<BulkTransfer, TransferError> {
    let started = Instant::now();
    let mut stream = connect(server, timeout)?;
    stream
        .write_all(&len.to_be_bytes())
        .map_err(|source| TransferError::Send {
            server,
            sent: 0,
            source,
        })?;

    let mut buf = vec![0; CHUNK_SIZE];
    let mut received: u64 = 0;
    loop {
        let count = stream
            .read(&mut buf)
            .map_err(|source| receive_error(server, received, source))?;
        if count == 0 {
            break;
        }
        let chunk = &buf[..count];

        if received + count as u64 > len {
            return Err(TransferError::Overrun {
                server,
                expected: len,
            });
        }
        if let Some((position, expected)) = find_mismatch(received, chunk) {
            return Err(TransferError::Mismatch {
                server,
                offset: received + position as u64,
                expected,
                actual: chunk[position],
            });
        }
        received += count as u64;
    }

    if received < len {
        return Err(TransferError::Truncated {
            server,
            received,
            expected: len,
        });
    }
    Ok(BulkTransfer {
        bytes: received,
        elapsed: started.elapsed(),
    })
}

/// Fills a payload of `len` bytes with the pattern, for use with [`echo`].
pub fn pattern_payload(len: usize) -> Vec<u8> {
    let mut payload = vec![0; len];
    fill_pattern(0, &mut payload);
    payload
}

/// A completed, verified bulk transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkTransfer {
    /// Bytes received and checked.
    pub bytes: u64,
    /// Time from the start of the connect to the server's close.
    pub elapsed: Duration,
}

/// A failed or corrupted transfer.
///
/// The variants separate what a firewall test usually asserts: a refused or timed-out connect
/// ([`TransferError::Connect`] with the `io::ErrorKind`), a connection reset after it was
/// established ([`TransferError::Reset`]) and data that arrived wrong.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The namespace could not be entered.
    #[error("failed to run the client in the lab namespace")]
    Namespace(#[from] NetNsError),

    /// The TCP connect failed, for example refused, unreachable or timed out.
    #[error("failed to connect to {server}")]
    Connect {
        /// The server address.
        server: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Sending failed after `sent` bytes.
    #[error("failed to send to {server} after {sent} bytes")]
    Send {
        /// The server address.
        server: SocketAddr,
        /// Bytes sent before the failure.
        sent: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The connection was reset after `received` bytes.
    #[error("connection to {server} was reset after {received} bytes")]
    Reset {
        /// The server address.
        server: SocketAddr,
        /// Bytes received before the reset.
        received: u64,
    },

    /// No data arrived within the timeout after `received` bytes.
    #[error("receiving from {server} timed out after {received} bytes")]
    TimedOut {
        /// The server address.
        server: SocketAddr,
        /// Bytes received before the timeout.
        received: u64,
    },

    /// Receiving failed for another reason after `received` bytes.
    #[error("failed to receive from {server} after {received} bytes")]
    Receive {
        /// The server address.
        server: SocketAddr,
        /// Bytes received before the failure.
        received: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The server closed the connection before all expected bytes arrived.
    #[error("{server} closed the connection after {received} of {expected} bytes")]
    Truncated {
        /// The server address.
        server: SocketAddr,
        /// Bytes received.
        received: u64,
        /// Bytes expected.
        expected: u64,
    },

    /// The server sent more bytes than expected.
    #[error("{server} sent more than the expected {expected} bytes")]
    Overrun {
        /// The server address.
        server: SocketAddr,
        /// Bytes expected.
        expected: u64,
    },

    /// A received byte differs from the expected one.
    #[error("byte {offset} from {server} is {actual:#04x}, expected {expected:#04x}")]
    Mismatch {
        /// The server address.
        server: SocketAddr,
        /// Stream offset of the first wrong byte.
        offset: u64,
        /// The expected byte.
        expected: u8,
        /// The received byte.
        actual: u8,
    },
}

fn connect(server: SocketAddr, timeout: Duration) -> Result<TcpStream, TransferError> {
    let connect_error = |source| TransferError::Connect { server, source };
    let stream = TcpStream::connect_timeout(&server, timeout).map_err(connect_error)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(connect_error)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(connect_error)?;
    Ok(stream)
}

/// Writes `payload` to `stream`, then shuts down the write side so the echo server reads EOF.
fn send_all(
    mut stream: TcpStream,
    server: SocketAddr,
    payload: &[u8],
) -> Result<(), TransferError> {
    let mut sent = 0;
    for chunk in payload.chunks(CHUNK_SIZE) {
        stream
            .write_all(chunk)
            .map_err(|source| TransferError::Send {
                server,
                sent,
                source,
            })?;
        sent += chunk.len() as u64;
    }

    stream
        .shutdown(Shutdown::Write)
        .map_err(|source| TransferError::Send {
            server,
            sent,
            source,
        })
}

/// Reads from `stream` until EOF and compares the bytes with `payload`.
fn receive_echo(
    mut stream: &TcpStream,
    server: SocketAddr,
    payload: &[u8],
) -> Result<(), TransferError> {
    let mut buf = vec![0; CHUNK_SIZE];
    let mut received = 0;
    loop {
        let count = stream
            .read(&mut buf)
            .map_err(|source| receive_error(server, received as u64, source))?;
        if count == 0 {
            break;
        }

        let Some(expected) = payload.get(received..received + count) else {
            return Err(TransferError::Overrun {
                server,
                expected: payload.len() as u64,
            });
        };
        if let Some(position) = buf[..count]
            .iter()
            .zip(expected)
            .position(|(actual, expected)| actual != expected)
        {
            return Err(TransferError::Mismatch {
                server,
                offset: (received + position) as u64,
                expected: expected[position],
                actual: buf[position],
            });
        }
        received += count;
    }

    if received < payload.len() {
        return Err(TransferError::Truncated {
            server,
            received: received as u64,
            expected: payload.len() as u64,
        });
    }
    Ok(())
}

/// Sorts a read error into reset, timeout or another failure.
fn receive_error(server: SocketAddr, received: u64, source: io::Error) -> TransferError {
    match source.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
            TransferError::Reset { server, received }
        }
        // A read timeout shows up as EAGAIN, which std maps to WouldBlock.
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TransferError::TimedOut { server, received },
        _ => TransferError::Receive {
            server,
            received,
            source,
        },
    }
}

const CHUNK_SIZE: usize = 64 * 1024;
