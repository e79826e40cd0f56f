//! The upstream side: a hickory [`Resolver`] over the configured servers, whose sockets carry
//! the bypass mark so the firewall does not divert the resolver's own queries back to it.

use std::{
    fs, future::Future, io, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc, time::Duration,
};

use hickory_net::{
    DnsError, NetError,
    runtime::{
        RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime, iocompat::AsyncIoTokioAsStd,
    },
};
use hickory_proto::{
    op::ResponseCode,
    rr::{Name, Record, RecordType},
};
use hickory_resolver::{
    Resolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
};
use rustls::{RootCertStore, pki_types::CertificateDer, pki_types::pem::PemObject};
use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::config::{DnsConfig, UpstreamConfig, UpstreamProtocol};

/// The resolver's view of its upstream servers.
#[derive(Clone)]
pub struct Upstream {
    resolver: Resolver<MarkedRuntime>,
}

/// The upstream response to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAnswer {
    /// Response code for the client.
    pub code: ResponseCode,
    /// Answer records, CNAMEs included.
    pub answers: Vec<Record>,
    /// Authority records, such as the SOA of a negative answer.
    pub authorities: Vec<Record>,
}

/// Errors building the upstream resolver.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No upstream is configured and resolv.conf names none besides the resolver itself.
    #[error("no upstream DNS server: set dns.upstreams or add a nameserver to {0}")]
    NoUpstream(PathBuf),
    /// resolv.conf could not be read.
    #[error("failed to read {path}")]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The extra CA file could not be read or holds no certificate.
    #[error("failed to load CA certificates from {path}: {reason}")]
    ExtraCa {
        /// The file.
        path: PathBuf,
        /// The reason, such as a missing file or an invalid certificate.
        reason: String,
    },
    /// rustls rejected the TLS settings.
    #[error("failed to build the TLS client configuration")]
    Tls(#[source] rustls::Error),
    /// hickory rejected the resolver settings.
    #[error("failed to build the upstream resolver")]
    Resolver(#[source] NetError),
}

impl Upstream {
    /// Builds the resolver for `upstreams` with the timeouts and CA of `config`. Its sockets
    /// carry `bypass_mark` when given, which needs `CAP_NET_ADMIN`.
    pub fn new(
        config: &DnsConfig,
        upstreams: &[UpstreamConfig],
        bypass_mark: Option<u32>,
    ) -> Result<Self, UpstreamError> {
        if upstreams.is_empty() {
            return Err(UpstreamError::NoUpstream(config.resolv_conf_path.clone()));
        }
        let servers = upstreams.iter().map(name_server).collect();
        let provider = MarkedRuntime {
            inner: TokioRuntimeProvider::default(),
            mark: bypass_mark,
        };
        let mut builder =
            Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
                .with_options(options(config.upstream_timeout()));
        builder = builder.with_tls_config(tls_config(config.extra_ca_path.as_ref())?);
        let resolver = builder.build().map_err(UpstreamError::Resolver)?;
        Ok(Self { resolver })
    }

    /// Asks the upstream for `record_type` records of `name`, an absolute name. Failures become
    /// SERVFAIL, a negative answer keeps its code and SOA.
    pub async fn lookup(&self, name: Name, record_type: RecordType) -> UpstreamAnswer {
        match self.resolver.lookup(name, record_type).await {
            Ok(lookup) => UpstreamAnswer {
                code: ResponseCode::NoError,
                answers: lookup.answers().to_vec(),
                authorities: lookup.authorities().to_vec(),
            },
            Err(err) => failed(err),
        }
    }
}

/// Turns a lookup error into the answer for the client.
fn failed(err: NetError) -> UpstreamAnswer {
    let (code, authorities) = match err {
        NetError::Dns(DnsError::NoRecordsFound(no_records)) => {
            let soa = no_records.soa.map(|soa| soa.into_record_of_rdata());
            (no_records.response_code, soa.into_iter().collect())
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => {
            (ResponseCode::NXDomain, Vec::new())
        }
        other => {
            tracing::debug!(error = %other, "upstream lookup failed");
            (ResponseCode::ServFail, Vec::new())
        }
    };
    UpstreamAnswer {
        code,
        answers: Vec::new(),
        authorities,
    }
}

fn name_server(upstream: &UpstreamConfig) -> NameServerConfig {
    let server_name: Arc<str> = upstream.server_name.as_deref().unwrap_or_default().into();
    let mut server = match upstream.protocol {
        UpstreamProtocol::Udp => NameServerConfig::udp_and_tcp(upstream.address),
        UpstreamProtocol::Tcp => NameServerConfig::tcp(upstream.address),
        UpstreamProtocol::Tls => NameServerConfig::tls(upstream.address, server_name),
        UpstreamProtocol::Https => {
            let path = upstream.path.as_deref().map(Arc::from);
            NameServerConfig::https(upstream.address, server_name, path)
        }
    };
    for connection in &mut server.connections {
        connection.port = upstream.port();
    }
    server
}

fn options(timeout: Duration) -> ResolverOpts {
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    // One try per server: the client retries on its own, and a down upstream must give
    // SERVFAIL within about one timeout.
    options.attempts = 1;
    options.use_hosts_file = ResolveHosts::Never;
    options.preserve_intermediates = true;
    options.try_tcp_on_error = true;
    options
}

/// Builds the rustls client configuration: ring as the crypto provider, the web PKI roots and
/// the certificates of `extra_ca_path`.
fn tls_config(extra_ca_path: Option<&PathBuf>) -> Result<rustls::ClientConfig, UpstreamError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca_path {
        for certificate in read_certificates(path)? {
            roots
                .add(certificate)
                .map_err(|err| UpstreamError::ExtraCa {
                    path: path.clone(),
                    reason: err.to_string(),
                })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UpstreamError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn read_certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, UpstreamError> {
    let invalid = |reason: String| UpstreamError::ExtraCa {
        path: path.clone(),
        reason,
    };
    let pem = fs::read(path).map_err(|err| invalid(err.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(err.to_string()))?;
    if certificates.is_empty() {
        return Err(invalid("no PEM certificate found".into()));
    }
    Ok(certificates)
}

/// tokio's runtime provider, with `SO_MARK` set on every socket before it sends.
#[derive(Clone)]
struct MarkedRuntime {
    inner: TokioRuntimeProvider,
    mark: Option<u32>,
}

impl RuntimeProvider for MarkedRuntime {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = UdpSocket;
    type Tcp = AsyncIoTokioAsStd<TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.inner.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Tcp>>>> {
        let mark = self.mark;
        Box::pin(async move {
            let socket = match server_addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            if let Some(mark) = mark {
                SockRef::from(&socket).set_mark(mark)?;
            }
            if let Some(bind_addr) = bind_addr {
                socket.bind(bind_addr)?;
            }
            socket.set_nodelay(true)?;
            let timeout = timeout.unwrap_or(TCP_CONNECT_TIMEOUT);
            match tokio::time::timeout(timeout, socket.connect(server_addr)).await {
                Ok(stream) => Ok(AsyncIoTokioAsStd(stream?)),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TCP connect to {server_addr} timed out"),
                )),
            }
        })
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        _server_addr: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Udp>>>> {
        let mark = self.mark;
        Box::pin(async move {
            let socket = UdpSocket::bind(local_addr).await?;
            if let Some(mark) = mark {
                SockRef::from(&socket).set_mark(mark)?;
            }
            Ok(socket)
        })
    }
}

const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
