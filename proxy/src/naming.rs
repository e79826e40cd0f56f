//! Naming a connection's destination: from the names its process resolved through the local
//! resolver, or else from the first bytes it sends (TLS server name, HTTP `Host`).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;
use tollgate_resolver::{
    Asker, AskerLookup, NameMap, NameScope, Transport,
    http_host::{HttpHost, http_host},
    sni::{ClientHelloName, client_hello_name},
};
use tollgate_rules::Protocol;

use crate::{
    attribution::OwnerLookup,
    protocol::{NameSource, ProcessInfo},
};

/// A destination's host name and how it was learned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Naming {
    /// The host name, when known.
    pub host: Option<String>,
    /// The way the name was learned.
    pub source: NameSource,
    /// Every name of the destination: the host, then each CNAME target from DNS.
    pub chain: Vec<String>,
}

/// Returns the name that `asker` resolved to `ip`, or the latest any asker resolved to it.
pub fn from_dns(names: &NameMap, asker: Asker, ip: IpAddr) -> Option<Naming> {
    let found = names.lookup(asker, ip, Instant::now())?;
    let source = match found.scope {
        NameScope::Asker => NameSource::Dns,
        NameScope::Machine => NameSource::DnsMachine,
    };
    Some(Naming {
        host: Some(found.name().to_string()),
        source,
        chain: found.chain.iter().map(ToString::to_string).collect(),
    })
}

/// Reads the TLS server name or HTTP host from the first bytes the client sent, waiting at most
/// `timeout` for them. The bytes stay in the socket (`MSG_PEEK`), so the relay later sends
/// exactly what the client sent. Returns `None` for other protocols, for clients that send
/// nothing in time (server-speaks-first protocols), and for requests without a name.
pub async fn peek_name(stream: &TcpStream, timeout: Duration) -> Option<Naming> {
    tokio::time::timeout(timeout, peek_loop(stream))
        .await
        .ok()
        .flatten()
}

async fn peek_loop(stream: &TcpStream) -> Option<Naming> {
    // No buffer until the client sends, so thousands of silent held connections cost nothing.
    stream.readable().await.ok()?;
    let mut buffer = vec![0u8; FIRST_PEEK];
    let mut seen = 0;
    loop {
        let length = stream.peek(&mut buffer).await.ok()?;
        if length == 0 {
            return None;
        }
        if length > seen {
            seen = length;
            match decide(&buffer[..length]) {
                Decision::Named(naming) => return Some(naming),
                Decision::Unnamed => return None,
                Decision::NeedMore if length == MAX_PEEK => return None,
                Decision::NeedMore if length == buffer.len() => {
                    buffer.resize(MAX_PEEK, 0);
                    continue;
                }
                Decision::NeedMore => {}
            }
        }
        // A peek leaves the socket readable, so waiting for readiness would spin; poll instead.
        tokio::time::sleep(PEEK_POLL).await;
    }
}

enum Decision {
    Named(Naming),
    Unnamed,
    NeedMore,
}

fn decide(bytes: &[u8]) -> Decision {
    let tls = client_hello_name(bytes);
    if let ClientHelloName::Name(name) = &tls {
        return named(name.to_string(), NameSource::Tls);
    }
    let http = http_host(bytes);
    if let HttpHost::Name(name) = &http {
        return named(name.to_string(), NameSource::Http);
    }
    if tls == ClientHelloName::NeedMore || http == HttpHost::NeedMore {
        Decision::NeedMore
    } else {
        Decision::Unnamed
    }
}

fn named(host: String, source: NameSource) -> Decision {
    Decision::Named(Naming {
        chain: vec![host.clone()],
        host: Some(host),
        source,
    })
}

/// Returns the asker key of a flow: its process when known, else its client address.
///
/// NOTE: a flow whose process is unknown (outside the attributed cgroup) is keyed by address,
/// so such programs on one address share names.
pub fn asker_for(process: Option<&ProcessInfo>, source: SocketAddr) -> Asker {
    match process {
        Some(process) => Asker::Process { pid: process.pid },
        None => Asker::Address(source.ip().to_canonical()),
    }
}

/// The resolver's asker lookup, backed by the daemon's owner lookup.
pub struct DaemonAskers {
    owners: Arc<dyn OwnerLookup>,
}

impl DaemonAskers {
    /// Creates the lookup over `owners`.
    pub fn new(owners: Arc<dyn OwnerLookup>) -> Self {
        Self { owners }
    }
}

impl AskerLookup for DaemonAskers {
    fn asker(&self, transport: Transport, client: SocketAddr, server: SocketAddr) -> Asker {
        let protocol = match transport {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        };
        let process = self.owners.lookup(protocol, client, server);
        asker_for(process.as_deref(), client)
    }
}

/// Bytes peeked at most: a ClientHello with post-quantum key shares is about 1.8 KiB, and
/// a request head rarely exceeds a few KiB.
const MAX_PEEK: usize = 16 * 1024;
/// Bytes peeked first; the buffer grows to [`MAX_PEEK`] only for longer first bytes.
const FIRST_PEEK: usize = 2 * 1024;
/// Pause between two peeks while the client's first bytes are incomplete.
const PEEK_POLL: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_request_is_named() {
        let Decision::Named(naming) = decide(b"GET / HTTP/1.1\r\nHost: blog.test\r\n\r\n") else {
            panic!("expected a name");
        };
        assert_eq!(naming.host.as_deref(), Some("blog.test"));
        assert_eq!(naming.source, NameSource::Http);
    }

    #[test]
    fn ssh_banner_is_unnamed() {
        assert!(matches!(
            decide(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Decision::Unnamed
        ));
    }

    #[test]
    fn partial_request_needs_more() {
        assert!(matches!(decide(b"GET / HT"), Decision::NeedMore));
    }

    #[test]
    fn unknown_process_is_keyed_by_address() {
        let source: SocketAddr = "[::ffff:10.77.0.2]:40000".parse().unwrap();
        assert_eq!(
            asker_for(None, source),
            Asker::Address("10.77.0.2".parse().unwrap())
        );
    }
}
