//! A client of the control socket, used by the `tollgate` command.

use std::{
    io,
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::protocol::{Request, RequestEnvelope, Response};

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket exists at the path.
    #[error("tollgated is not running: no control socket at {0}")]
    NotRunning(PathBuf),
    /// A socket file exists but nobody listens on it.
    #[error("tollgated is not running: {0} refused the connection (left by a stopped daemon?)")]
    Refused(PathBuf),
    /// The socket exists but this user may not open it.
    #[error("permission denied on {0}: run as root or as the configured desktop_user")]
    PermissionDenied(PathBuf),
    /// Connecting failed for another reason.
    #[error("failed to connect to {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("failed to talk to tollgated")]
    Io(#[from] io::Error),
    /// The daemon closed the connection without a reply.
    #[error("tollgated closed the connection without a reply")]
    Closed,
    /// The daemon's reply was not valid.
    #[error("invalid reply from tollgated: {0}")]
    InvalidReply(String),
}

/// A connection to the daemon's control socket.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    /// Connects to the control socket at `path`.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).await.map_err(|source| {
            let path = path.to_owned();
            match source.kind() {
                io::ErrorKind::NotFound => ClientError::NotRunning(path),
                io::ErrorKind::ConnectionRefused => ClientError::Refused(path),
                io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path),
                _ => ClientError::Connect { path, source },
            }
        })?;
        let (reader, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(reader),
            writer,
        })
    }

    /// Sends a request and returns the daemon's reply, which may be [`Response::Error`].
    pub async fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_vec(&RequestEnvelope::new(request))
            .map_err(|err| ClientError::InvalidReply(err.to_string()))?;
        line.push(b'\n');
        if let Err(err) = self.writer.write_all(&line).await {
            // A daemon that rejects this client writes one error line and closes the socket,
            // possibly before reading the request: show its error instead of the broken pipe.
            if let Ok(Some(response)) = self.next_response().await {
                return Ok(response);
            }
            return Err(err.into());
        }
        self.next_response().await?.ok_or(ClientError::Closed)
    }

    /// Reads the next line from the daemon: the reply to a request, or an event after
    /// [`Request::Watch`]. Returns `None` when the daemon closed the connection.
    pub async fn next_response(&mut self) -> Result<Option<Response>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|err| ClientError::InvalidReply(format!("{err}: {}", line.trim_end())))
    }
}
