//! Diverting the network namespace's outbound TCP, UDP and DNS to the daemon: the nftables table
//! and the
//! policy routing, installed together and removed together.

pub mod nft;
pub mod routing;

use tracing::info;

use crate::config::InterceptionConfig;

pub use self::{
    nft::{DnsSpec, HEARTBEAT_INTERVAL, KernelAllow, NftError, TableSpec},
    routing::{RoutingError, RoutingSpec},
};

/// Errors installing or removing the interception.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The nftables table could not be changed.
    #[error("failed to apply the nftables table")]
    Nft(#[from] NftError),
    /// The policy routing could not be changed.
    #[error("failed to apply the policy routing")]
    Routing(#[from] RoutingError),
}

/// The installed interception. Call [`Interception::remove`] to take it down; dropping it leaves
/// the table and routes in place, so that a crashed daemon keeps new connections from passing
/// without a decision.
#[derive(Debug)]
pub struct Interception {
    table: TableSpec,
    routing: RoutingSpec,
}

impl Interception {
    /// Installs the table and the policy routing, replacing leftovers of an earlier run. With
    /// `dns`, port-53 traffic is diverted to the resolver. `allowed` lists the destinations
    /// that pass without the daemon once it is gone.
    pub async fn install(
        config: &InterceptionConfig,
        dns: Option<DnsSpec>,
        allowed: &[KernelAllow],
    ) -> Result<Self, FirewallError> {
        let mut interception = Self::from_config(config);
        interception.table.dns = dns;
        // Routes first: with the table in place but no routes, marked packets would leave
        // without being diverted.
        routing::install(&interception.routing).await?;
        // On failure the routes stay: with a table left by a crashed run they keep diverting,
        // so new connections are still stopped rather than let through.
        nft::install(&interception.table, allowed)?;
        info!(
            table = "inet tollgate",
            tcp_port = config.tcp_port,
            dns_port = interception.table.dns.as_ref().map(|dns| dns.port),
            route_table = config.route_table,
            "interception installed"
        );
        Ok(interception)
    }

    /// Tells the kernel that the daemon still runs; see [`HEARTBEAT_INTERVAL`].
    pub fn heartbeat(&self) -> Result<(), FirewallError> {
        Ok(nft::heartbeat()?)
    }

    /// Replaces the destinations that pass without the daemon once it is gone.
    pub fn replace_allowed(&self, allowed: &[KernelAllow]) -> Result<(), FirewallError> {
        Ok(nft::replace_allowed(allowed)?)
    }

    /// Removes the table and the policy routing.
    pub async fn remove(self) -> Result<(), FirewallError> {
        // Table first, so that no packet is marked once the routes are gone.
        let table = nft::remove();
        let routes = routing::remove(&self.routing).await;
        table?;
        routes?;
        info!("interception removed");
        Ok(())
    }

    /// Removes what a daemon with this configuration installs, whether or not it is running.
    pub async fn remove_leftovers(config: &InterceptionConfig) -> Result<(), FirewallError> {
        Self::from_config(config).remove().await
    }

    fn from_config(config: &InterceptionConfig) -> Self {
        Self {
            table: TableSpec {
                tcp_port: config.tcp_port,
                udp_port: config.udp_port,
                intercept_mark: config.intercept_mark,
                bypass_mark: config.bypass_mark,
                dns: None,
            },
            routing: RoutingSpec {
                mark: config.intercept_mark,
                table: config.route_table,
                priority: config.rule_priority,
            },
        }
    }
}
