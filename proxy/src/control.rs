//! The control socket: a Unix socket speaking the line-based JSON protocol of [`crate::protocol`]
//! to root and the configured desktop user.

use std::{
    fs, io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::broadcast,
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    daemon::{RequestError, Shared},
    protocol::{ErrorCode, MAX_REQUEST_LINE, PROTOCOL_VERSION, Request, RequestEnvelope, Response},
};

/// Second in which a rejected client was last logged.
static REJECTED_LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The bound control socket. The socket file is removed on drop.
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
    allowed_uids: Vec<u32>,
}

/// Returns the uids allowed on the control socket: root and the desktop user, given as a name
/// or a numeric uid.
pub fn allowed_uids(desktop_user: Option<&str>) -> anyhow::Result<Vec<u32>> {
    let mut uids = vec![0];
    let Some(user) = desktop_user else {
        return Ok(uids);
    };
    let uid = match user.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => nix::unistd::User::from_name(user)
            .with_context(|| format!("failed to look up desktop_user {user:?}"))?
            .with_context(|| format!("desktop_user {user:?} not found in the user database"))?
            .uid
            .as_raw(),
    };
    uids.push(uid);
    Ok(uids)
}

impl ControlListener {
    /// Binds the control socket at `path`, creating its directory. A socket file left by a
    /// crashed daemon is replaced; a socket that another daemon still serves is an error.
    pub fn bind(path: &Path, allowed_uids: Vec<u32>) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)
                .with_context(|| format!("failed to create directory {}", dir.display()))?;
        }
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path)
            .with_context(|| format!("failed to bind control socket {}", path.display()))?;
        // Anyone may connect; each peer's uid is checked with SO_PEERCRED instead, so that a
        // refused user gets an explanation rather than a bare "permission denied".
        fs::set_permissions(path, fs::Permissions::from_mode(0o666))
            .with_context(|| format!("failed to set permissions of {}", path.display()))?;
        info!(path = %path.display(), "control socket listening");
        Ok(Self {
            listener,
            path: path.to_owned(),
            allowed_uids,
        })
    }

    /// Accepts clients until the task is aborted.
    pub async fn serve(self, shared: Arc<Shared>) {
        let mut next_client = 1u64;
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(error = %err, "failed to accept control client");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let client = next_client;
            next_client += 1;
            let shared = Arc::clone(&shared);
            let allowed = self.allowed_uids.clone();
            let span = info_span!("control", client);
            tokio::spawn(
                async move {
                    if let Err(err) = serve_client(stream, &shared, &allowed).await {
                        debug!(error = %err, "control client ended with an error");
                    }
                }
                .instrument(span),
            );
        }
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_file(&self.path)
            && err.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), error = %err, "failed to remove control socket");
        }
    }
}

fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; remove it or set control_socket",
            path.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another tollgated is already serving {}", path.display());
    }
    fs::remove_file(path).with_context(|| format!("failed to remove stale {}", path.display()))
}

async fn serve_client(stream: UnixStream, shared: &Shared, allowed: &[u32]) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    if !allowed.contains(&uid) {
        // Any local user can connect, so the warning is limited to one a second.
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        if REJECTED_LOGGED.swap(second, std::sync::atomic::Ordering::Relaxed) != second {
            warn!(uid, "control client rejected: uid not allowed");
        }
        let message = format!(
            "uid {uid} may not control tollgated; run as root or set desktop_user in the config"
        );
        return send(&mut write, &error(ErrorCode::Forbidden, message)).await;
    }

    let mut reader = BufReader::new(read);
    loop {
        let line = match read_line(&mut reader).await? {
            Line::Request(line) => line,
            Line::End => return Ok(()),
            Line::TooLong => {
                let message = format!("request line longer than {MAX_REQUEST_LINE} bytes");
                warn!(uid, "control client sent an oversized line; disconnecting");
                return send(&mut write, &error(ErrorCode::Malformed, message)).await;
            }
        };
        let envelope = match parse_request(&line) {
            Ok(envelope) => envelope,
            Err((code, message)) => {
                warn!(uid, %message, "control client sent an invalid request; disconnecting");
                return send(&mut write, &error(code, message)).await;
            }
        };
        debug!(uid, request = ?envelope.request, "control request");
        if envelope.request == Request::Watch {
            return watch(reader, write, shared.subscribe()).await;
        }
        let response = handle(shared, envelope.request).await;
        send(&mut write, &response).await?;
    }
}

async fn handle(shared: &Shared, request: Request) -> Response {
    let result = match request {
        Request::Status => Ok(Response::Status(shared.status().await)),
        Request::ListPending => Ok(Response::Pending {
            requests: shared.pending(),
        }),
        Request::Decide {
            id,
            action,
            lifetime,
            scope,
            port,
        } => shared.decide(id, action, lifetime, (scope, port)),
        Request::ListConnections => Ok(Response::Connections {
            connections: shared.connections(),
        }),
        Request::ListRules => Ok(shared.rules()),
        Request::AddRule { rule } => shared.add_rule(rule),
        Request::EditRule { id, changes } => shared.edit_rule(id, changes),
        Request::RemoveRule { id } => shared.remove_rule(id),
        Request::SetInterception { enabled } => shared.set_interception(enabled).await,
        Request::ImportRules { rules, new_ids } => shared.import_rules(rules, new_ids),
        Request::Explain { connection } => Ok(shared.explain(*connection)),
        // Handled by the caller, which turns the connection into an event stream.
        Request::Watch => Ok(Response::Watching),
    };
    result.unwrap_or_else(|(code, message)| error(code, message))
}

/// Parses one request line, or returns the error code and message to send back.
pub fn parse_request(line: &str) -> Result<RequestEnvelope, RequestError> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|err| {
        (
            ErrorCode::Malformed,
            format!("request is not valid JSON: {err}"),
        )
    })?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err((ErrorCode::Malformed, "request is not a JSON object".into()));
    };
    let version = match fields.remove("version") {
        Some(version) => match version.as_u64() {
            Some(number) => Some(number),
            None => {
                return Err((
                    ErrorCode::Malformed,
                    format!(
                        "the \"version\" field must be the integer {PROTOCOL_VERSION}, \
                         got {version}"
                    ),
                ));
            }
        },
        None => None,
    };
    match version {
        Some(version) if version == u64::from(PROTOCOL_VERSION) => {}
        Some(version) => {
            return Err((
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {version} is not supported; \
                     this daemon speaks {PROTOCOL_VERSION}"
                ),
            ));
        }
        None => {
            return Err((
                ErrorCode::Malformed,
                "request has no numeric \"version\" field".into(),
            ));
        }
    }
    // The request is parsed without the version so that its unknown fields are rejected,
    // which serde cannot do through the envelope's flattened field.
    let request: Request = serde_json::from_value(serde_json::Value::Object(fields.clone()))
        .map_err(|err| (ErrorCode::Malformed, format!("invalid request: {err}")))?;
    // serde ignores unknown fields of unit variants such as `status`, so compare the keys.
    if let Ok(serde_json::Value::Object(known)) = serde_json::to_value(&request)
        && let Some(unknown) = fields.keys().find(|key| !known.contains_key(*key))
    {
        return Err((
            ErrorCode::Malformed,
            format!("invalid request: unknown field `{unknown}`"),
        ));
    }
    Ok(RequestEnvelope {
        version: PROTOCOL_VERSION,
        request,
    })
}

async fn watch(
    mut reader: BufReader<impl AsyncRead + Unpin>,
    mut write: OwnedWriteHalf,
    mut events: broadcast::Receiver<crate::protocol::Event>,
) -> io::Result<()> {
    send(&mut write, &Response::Watching).await?;
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => send(&mut write, &Response::Event(event)).await?,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "watcher too slow; events dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // Anything the watcher sends is ignored; end of input ends the stream.
            read = reader.read(&mut scratch) => {
                if read? == 0 {
                    return Ok(());
                }
            }
        }
    }
}

enum Line {
    Request(String),
    TooLong,
    End,
}

async fn read_line(reader: &mut BufReader<impl AsyncRead + Unpin>) -> io::Result<Line> {
    let mut buffer = Vec::new();
    let limit = (MAX_REQUEST_LINE + 1) as u64;
    let read = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut buffer)
        .await?;
    if read == 0 {
        return Ok(Line::End);
    }
    if buffer.last() != Some(&b'\n') && buffer.len() > MAX_REQUEST_LINE {
        return Ok(Line::TooLong);
    }
    match String::from_utf8(buffer) {
        Ok(line) => Ok(Line::Request(line)),
        Err(_) => Ok(Line::Request(String::from("\u{fffd}"))),
    }
}

async fn send(write: &mut OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error { code, message }
}

#[cfg(test)]
mod tests {
    use tollgate_rules::{Action, LifetimeSpec};

    use super::*;

    #[test]
    fn parses_decide_request() {
        let line = r#"{"version":1,"type":"decide","id":3,"action":"allow","lifetime":"forever"}"#;
        let envelope = parse_request(line).unwrap();
        assert_eq!(
            envelope.request,
            Request::decide(3, Action::Allow, LifetimeSpec::Forever)
        );
    }

    #[test]
    fn parses_decide_request_with_a_wider_scope() {
        let line = r#"{"version":1,"type":"decide","id":3,"action":"deny","lifetime":"once","scope":"domain","port":"any"}"#;
        let envelope = parse_request(line).unwrap();
        assert_eq!(
            envelope.request,
            Request::Decide {
                id: 3,
                action: Action::Deny,
                lifetime: LifetimeSpec::Once,
                scope: crate::protocol::Scope::Domain,
                port: crate::protocol::PortScope::Any,
            }
        );
    }

    #[test]
    fn rejects_version_that_is_not_an_integer() {
        let (code, message) = parse_request(r#"{"version":1.0,"type":"status"}"#).unwrap_err();
        assert_eq!(code, ErrorCode::Malformed);
        assert!(message.contains("must be the integer 1"), "{message}");
        assert!(message.contains("got 1.0"), "{message}");
    }

    #[test]
    fn rejects_other_version() {
        let (code, message) = parse_request(r#"{"version":2,"type":"status"}"#).unwrap_err();
        assert_eq!(code, ErrorCode::UnsupportedVersion);
        assert!(message.contains("version 2"), "{message}");
    }

    #[test]
    fn rejects_garbage_and_unknown_types() {
        for line in [
            "not json",
            "{}",
            r#"{"version":"1","type":"status"}"#,
            r#"{"version":1,"type":"reboot"}"#,
            r#"{"version":1,"type":"decide","id":-1,"action":"allow","lifetime":"once"}"#,
            r#"{"version":1,"type":"decide","id":1,"action":"maybe","lifetime":"once"}"#,
            r#"{"version":1,"type":"status","extra":true}"#,
        ] {
            let (code, message) = parse_request(line).unwrap_err();
            assert_eq!(code, ErrorCode::Malformed, "{line}: {message}");
        }
    }

    #[test]
    fn envelope_round_trips() {
        let envelope = RequestEnvelope::new(Request::ListPending);
        let line = serde_json::to_string(&envelope).unwrap();
        assert_eq!(line, r#"{"version":1,"type":"list_pending"}"#);
        assert_eq!(parse_request(&line).unwrap(), envelope);
    }
}
