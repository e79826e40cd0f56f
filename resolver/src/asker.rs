//! The asker of a DNS query: the process behind it, as far as the daemon can find it.

use std::net::{IpAddr, SocketAddr};

/// The transport a query or connection used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// The asker of a query, which is also the key a connection's name is looked up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Asker {
    /// A process, by process id (thread group id).
    Process {
        /// The process id.
        pid: u32,
    },
    /// A client address whose process is unknown. Every program on one address shares it, so
    /// it only separates programs that use different source addresses.
    Address(IpAddr),
}

/// Finds the asker of a query or connection from its addresses. The daemon implements it with
/// kernel attribution; [`ByAddress`] serves until that is available.
pub trait AskerLookup: Send + Sync + 'static {
    /// Returns the asker of the flow from `client` to `server` (the original destination).
    fn asker(&self, transport: Transport, client: SocketAddr, server: SocketAddr) -> Asker;
}

/// An asker lookup without process information, which returns the client's address.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByAddress;

impl AskerLookup for ByAddress {
    fn asker(&self, _: Transport, client: SocketAddr, _: SocketAddr) -> Asker {
        Asker::Address(client.ip().to_canonical())
    }
}
