//! Tollgate's local DNS resolver and the names it teaches the firewall.
//!
//! The daemon diverts every outbound port-53 query to the resolver, which forwards it to the
//! upstream servers and records which asker resolved which name to which addresses, so that
//! connections and prompts can speak in names. When a connection has no DNS name, the first
//! bytes it sends may still name its host (TLS server name, HTTP `Host`).
//!
//! - [`server`]: [`DnsServer`], the running resolver, and the daemon's [`Hooks`].
//! - [`handler`]: answering one request: policy, upstream, name map.
//! - [`upstream`]: the hickory resolver over the configured servers, with the bypass mark.
//! - [`udp`](crate::server) and [`tcp`](crate::server) loops serve transparent sockets from
//!   [`sockets`]; [`malformed`] answers requests that do not parse.
//! - [`name_map`]: names per asker and address, with TTL, grace period and caps; [`answer`]
//!   extracts chains and addresses from answers; [`asker`] says who asked.
//! - [`domain`]: name normalization, patterns and the CNAME chain verdict; [`policy`]: which
//!   names are refused at query time.
//! - [`sni`] and [`http_host`]: names from a connection's first bytes.
//! - [`config`] and [`resolv_conf`]: settings and the default upstreams.

#![warn(missing_docs)]

pub mod answer;
pub mod asker;
pub mod config;
pub mod domain;
pub mod handler;
pub mod http_host;
pub mod malformed;
pub mod name_map;
pub mod policy;
pub mod resolv_conf;
pub mod server;
pub mod sni;
pub mod sockets;
mod tcp;
mod udp;
pub mod upstream;

pub use asker::{Asker, AskerLookup, ByAddress, Transport};
pub use config::{DnsConfig, RefusalMode, UpstreamConfig, UpstreamProtocol};
pub use domain::{DomainName, DomainPattern, NameVerdict, chain_verdict};
pub use name_map::{NameMap, NameMatch, NameScope};
pub use policy::{QueryPolicy, RefuseNothing};
pub use server::{DnsServer, Hooks, ServerError};
