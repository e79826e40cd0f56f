//! Policy routing that delivers marked packets locally, set up over rtnetlink.
//!
//! Two routing rules (IPv4 and IPv6) send packets carrying the intercept mark to a table whose
//! only route is `local default dev lo`, so they loop through `lo` into the prerouting hook where
//! TPROXY takes them. This is the same as:
//!
//! ```text
//! ip rule add fwmark MARK/MARK lookup TABLE pref PRIORITY
//! ip route add local 0.0.0.0/0 dev lo table TABLE
//! ip -6 rule add fwmark MARK/MARK lookup TABLE pref PRIORITY
//! ip -6 route add local ::/0 dev lo table TABLE
//! ```

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt;
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        route::{RouteMessage, RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};

/// The parameters of the policy routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingSpec {
    /// Mark bit that selects the table.
    pub mark: u32,
    /// The routing table.
    pub table: u32,
    /// Priority of the routing rules.
    pub priority: u32,
}

/// Errors changing the policy routing.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The rtnetlink socket could not be opened.
    #[error("failed to open rtnetlink socket")]
    Connect(#[source] io::Error),
    /// The loopback interface was not found.
    #[error("loopback interface lo not found")]
    NoLoopback,
    /// A netlink request failed.
    #[error("failed to {operation}")]
    Request {
        /// The operation that failed.
        operation: &'static str,
        /// The kernel's error.
        #[source]
        source: rtnetlink::Error,
    },
}

/// Installs the routing rules and routes, replacing those of an earlier run.
pub async fn install(spec: &RoutingSpec) -> Result<(), RoutingError> {
    let handle = connect()?;
    remove_rules(&handle, spec).await?;
    let loopback = loopback_index()?;

    let mut v4 = handle.rule().add().v4();
    fill_rule(v4.message_mut(), spec);
    v4.execute().await.map_err(|source| RoutingError::Request {
        operation: "add IPv4 policy routing rule",
        source,
    })?;
    let mut v6 = handle.rule().add().v6();
    fill_rule(v6.message_mut(), spec);
    v6.execute().await.map_err(|source| RoutingError::Request {
        operation: "add IPv6 policy routing rule",
        source,
    })?;

    for route in local_routes(spec.table, loopback) {
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|source| RoutingError::Request {
                operation: "add local route",
                source,
            })?;
    }
    Ok(())
}

/// Removes the routing rules and routes. Missing ones are not an error.
pub async fn remove(spec: &RoutingSpec) -> Result<(), RoutingError> {
    let handle = connect()?;
    remove_rules(&handle, spec).await?;
    let loopback = loopback_index()?;
    for route in local_routes(spec.table, loopback) {
        match handle.route().del(route).execute().await {
            Ok(()) => {}
            Err(err) if is_not_found(&err) => {}
            Err(source) => {
                return Err(RoutingError::Request {
                    operation: "delete local route",
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Returns the number of routing rules that match `spec`, for IPv4 and IPv6 together.
pub async fn count_rules(spec: &RoutingSpec) -> Result<usize, RoutingError> {
    let handle = connect()?;
    Ok(matching_rules(&handle, spec).await?.len())
}

fn connect() -> Result<Handle, RoutingError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(RoutingError::Connect)?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn remove_rules(handle: &Handle, spec: &RoutingSpec) -> Result<(), RoutingError> {
    for rule in matching_rules(handle, spec).await? {
        handle
            .rule()
            .del(rule)
            .execute()
            .await
            .map_err(|source| RoutingError::Request {
                operation: "delete policy routing rule",
                source,
            })?;
    }
    Ok(())
}

async fn matching_rules(
    handle: &Handle,
    spec: &RoutingSpec,
) -> Result<Vec<RuleMessage>, RoutingError> {
    let mut found = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let rules: Vec<RuleMessage> = handle
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await
            .map_err(|source| RoutingError::Request {
                operation: "list policy routing rules",
                source,
            })?;
        found.extend(rules.into_iter().filter(|rule| is_ours(rule, spec)));
    }
    Ok(found)
}

/// Sets the routing rule's fields: `fwmark MARK/MARK lookup TABLE pref PRIORITY`.
fn fill_rule(message: &mut RuleMessage, spec: &RoutingSpec) {
    message.header.action = RuleAction::ToTable;
    message.header.table = u8::try_from(spec.table).unwrap_or(0);
    message.attributes.extend([
        RuleAttribute::Table(spec.table),
        RuleAttribute::Priority(spec.priority),
        RuleAttribute::FwMark(spec.mark),
        RuleAttribute::FwMask(spec.mark),
    ]);
}

fn is_ours(rule: &RuleMessage, spec: &RoutingSpec) -> bool {
    let mut priority = None;
    let mut mark = None;
    let mut table = u32::from(rule.header.table);
    for attribute in &rule.attributes {
        match attribute {
            RuleAttribute::Priority(value) => priority = Some(*value),
            RuleAttribute::FwMark(value) => mark = Some(*value),
            RuleAttribute::Table(value) => table = *value,
            _ => {}
        }
    }
    priority == Some(spec.priority) && mark == Some(spec.mark) && table == spec.table
}

fn local_routes(table: u32, loopback: u32) -> [RouteMessage; 2] {
    let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .output_interface(loopback)
        .table_id(table)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .build();
    let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .output_interface(loopback)
        .table_id(table)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .build();
    [v4, v6]
}

fn loopback_index() -> Result<u32, RoutingError> {
    nix::net::if_::if_nametoindex("lo").map_err(|_| RoutingError::NoLoopback)
}

fn is_not_found(err: &rtnetlink::Error) -> bool {
    match err {
        rtnetlink::Error::NetlinkError(message) => {
            message.raw_code() == -libc::ESRCH || message.raw_code() == -libc::ENOENT
        }
        _ => false,
    }
}
