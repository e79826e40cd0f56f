//! Finding the process that opened a connection.

use std::net::SocketAddr;

use tollgate_rules::Protocol;

use crate::protocol::ProcessInfo;

/// Finds the process that owns a flow, given the flow's addresses as the proxy received it.
pub trait OwnerLookup: Send + Sync {
    /// Returns the owner of the flow from `source` to `destination`, or `None` when it cannot
    /// be known. Implementations must never guess.
    fn lookup(
        &self,
        protocol: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Option<ProcessInfo>;
}

/// An owner lookup that returns no process, used when kernel attribution is not available.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAttribution;

impl OwnerLookup for NoAttribution {
    fn lookup(&self, _: Protocol, _: SocketAddr, _: SocketAddr) -> Option<ProcessInfo> {
        None
    }
}
