//! The running resolver: listeners, upstream and name map put together.

use std::{net::SocketAddr, num::NonZeroUsize, sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tracing::info;

use crate::{
    asker::AskerLookup,
    config::{DnsConfig, UpstreamConfig},
    handler::DnsHandler,
    name_map::{NameMap, NameMapConfig},
    policy::QueryPolicy,
    sockets::{self, ListenConfig},
    tcp, udp,
    upstream::{Upstream, UpstreamError},
};

/// The daemon's hooks into the resolver.
pub struct Hooks {
    /// Finds the process behind each query.
    pub askers: Arc<dyn AskerLookup>,
    /// Refuses names at query time.
    pub policy: Arc<dyn QueryPolicy>,
}

/// The resolver, serving until it is dropped, which closes its sockets.
pub struct DnsServer {
    handler: DnsHandler,
    udp_addresses: Vec<SocketAddr>,
    tcp_addresses: Vec<SocketAddr>,
    tasks: JoinSet<()>,
}

/// Errors starting the resolver.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The upstream resolver could not be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A listening socket could not be opened.
    #[error("failed to listen for DNS on {address}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl DnsServer {
    /// Starts the resolver on `listen` with `upstreams`. Its upstream sockets carry the
    /// listen config's mark. Must be called inside a tokio runtime.
    pub fn start(
        config: &DnsConfig,
        upstreams: &[UpstreamConfig],
        listen: &ListenConfig,
        hooks: Hooks,
    ) -> Result<Self, ServerError> {
        let upstream = Upstream::new(config, upstreams, listen.mark)?;
        let names = Arc::new(NameMap::new(NameMapConfig {
            grace: config.name_grace(),
            max_entries: NonZeroUsize::new(config.max_names).unwrap_or(NonZeroUsize::MIN),
        }));
        let handler = DnsHandler::new(
            upstream,
            names,
            hooks.askers,
            hooks.policy,
            config.refusal,
            // Room for the upstream timeout and one retry over TCP after a truncated answer.
            config.upstream_timeout() * 2 + DEADLINE_MARGIN,
        );
        Self::serve(handler, listen)
    }

    /// Serves `handler` on the addresses of `listen`. Must be called inside a tokio runtime.
    pub fn serve(handler: DnsHandler, listen: &ListenConfig) -> Result<Self, ServerError> {
        let mut server = Self {
            handler,
            udp_addresses: Vec::new(),
            tcp_addresses: Vec::new(),
            tasks: JoinSet::new(),
        };
        for &address in &listen.addresses {
            let failed = |source| ServerError::Listen { address, source };
            let udp = sockets::udp_listener(address, listen).map_err(failed)?;
            let tcp = sockets::tcp_listener(address, listen).map_err(failed)?;
            server.udp_addresses.push(udp.local_addr().map_err(failed)?);
            server.tcp_addresses.push(tcp.local_addr().map_err(failed)?);
            server
                .tasks
                .spawn(udp::serve(udp, server.handler.clone(), listen.mark));
            server.tasks.spawn(tcp::serve(tcp, server.handler.clone()));
            info!(%address, transparent = listen.transparent, "DNS resolver listening");
        }
        Ok(server)
    }

    /// Returns the name map that the resolver records answers into.
    pub fn names(&self) -> Arc<NameMap> {
        Arc::clone(self.handler.names())
    }

    /// Returns the bound UDP addresses, with the ports the system chose for port 0.
    pub fn udp_addresses(&self) -> &[SocketAddr] {
        &self.udp_addresses
    }

    /// Returns the bound TCP addresses.
    pub fn tcp_addresses(&self) -> &[SocketAddr] {
        &self.tcp_addresses
    }
}

/// Time added to the doubled upstream timeout before a request gets SERVFAIL.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
