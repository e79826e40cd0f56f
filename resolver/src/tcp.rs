//! The TCP side of the resolver: length-prefixed queries (RFC 1035 section 4.2.2) on diverted
//! connections, whose local address is the server the client connected to.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hickory_net::xfer::Protocol;
use hickory_server::server::Request;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

use crate::{
    handler::{DnsHandler, encode_reply},
    malformed::formerr_for,
};

/// Serves the TCP listener until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, handler: DnsHandler) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(error = %err, "failed to accept DNS connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            debug!(%client, "too many DNS connections; connection closed");
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(err) = serve_connection(stream, client, &handler).await {
                debug!(%client, error = %err, "DNS connection ended");
            }
            drop(permit);
        });
    }
}

/// Answers queries on one connection in order until the client closes it or stays idle for
/// [`IDLE_TIMEOUT`].
async fn serve_connection(
    mut stream: TcpStream,
    client: SocketAddr,
    handler: &DnsHandler,
) -> std::io::Result<()> {
    let server = stream.local_addr()?;
    loop {
        let mut length = [0u8; 2];
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut length)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(err)) => return Err(err),
            Err(_) => return Ok(()),
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
        tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;

        let Some(response) = respond(query, client, server, handler).await else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&(response.len() as u16).to_be_bytes());
        framed.extend_from_slice(&response);
        stream.write_all(&framed).await?;
    }
}

async fn respond(
    query: Vec<u8>,
    client: SocketAddr,
    server: SocketAddr,
    handler: &DnsHandler,
) -> Option<Vec<u8>> {
    match Request::from_bytes(query.clone(), client, Protocol::Tcp) {
        Ok(request) => {
            let reply = handler.reply(&request, server).await;
            Some(encode_reply(&request, &reply, u16::MAX))
        }
        Err(err) => {
            debug!(%client, error = %err, "malformed DNS query");
            formerr_for(&query)
        }
    }
}

/// How long a connection may wait between queries, and for the rest of a started query.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 512;
