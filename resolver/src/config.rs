//! Settings of the local resolver: where it forwards, how long names are kept, and how a
//! refused name is answered. The daemon reads them from the `[dns]` table of its config file.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// Settings of the local resolver. `docs/config.md` lists each key with its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Whether the daemon runs the resolver and diverts port-53 traffic to it.
    pub enabled: bool,
    /// Loopback port of the resolver's transparent UDP and TCP sockets (127.0.0.1 and ::1).
    pub port: u16,
    /// Upstream servers. When empty, the nameservers of `resolv_conf_path` read at start.
    pub upstreams: Vec<UpstreamConfig>,
    /// The resolv.conf whose nameservers are the default upstreams.
    pub resolv_conf_path: PathBuf,
    /// PEM file of extra CA certificates trusted for DNS-over-TLS and DNS-over-HTTPS upstreams,
    /// besides the built-in web PKI roots.
    pub extra_ca_path: Option<PathBuf>,
    /// Milliseconds allowed for one upstream query before the client gets SERVFAIL.
    pub upstream_timeout_ms: u64,
    /// Seconds a name stays mapped to an address after the answer's TTL ran out.
    pub name_grace_secs: u64,
    /// Maximum number of name mappings, per asker and machine-wide each.
    pub max_names: usize,
    /// How a query for a refused name is answered.
    pub refusal: RefusalMode,
    /// Milliseconds a held connection without a DNS name waits for its first bytes, to read
    /// the TLS server name or HTTP host from them.
    pub peek_timeout_ms: u64,
}

/// One upstream DNS server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The server's IP address.
    pub address: IpAddr,
    /// How to reach it.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Port; 53 for UDP and TCP, 853 for TLS and 443 for HTTPS when absent.
    pub port: Option<u16>,
    /// Name in the server's certificate; required for TLS and HTTPS.
    pub server_name: Option<String>,
    /// URL path of a DNS-over-HTTPS server; `/dns-query` when absent.
    pub path: Option<String>,
}

/// Transport to an upstream server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// UDP, retried over TCP when an answer is truncated.
    #[default]
    Udp,
    /// TCP only.
    Tcp,
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over HTTPS (RFC 8484), HTTP/2.
    Https,
}

/// How a query for a name the policy refuses is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalMode {
    /// NXDOMAIN: the name does not exist.
    #[default]
    Nxdomain,
    /// An A query gets 0.0.0.0 and an AAAA query `::`, so programs fail to connect at once;
    /// other query types get an empty answer.
    NullAddress,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            port: 15053,
            upstreams: Vec::new(),
            resolv_conf_path: PathBuf::from("/etc/resolv.conf"),
            extra_ca_path: None,
            upstream_timeout_ms: 2000,
            name_grace_secs: 300,
            max_names: 65536,
            refusal: RefusalMode::Nxdomain,
            peek_timeout_ms: 500,
        }
    }
}

impl DnsConfig {
    /// Returns the upstream timeout as a duration.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }

    /// Returns the grace period as a duration.
    pub fn name_grace(&self) -> Duration {
        Duration::from_secs(self.name_grace_secs)
    }

    /// Returns the peek timeout as a duration.
    pub fn peek_timeout(&self) -> Duration {
        Duration::from_millis(self.peek_timeout_ms)
    }

    /// Checks the values that serde cannot, returning a message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.port == 0 {
            return Err("dns.port must not be 0".into());
        }
        if self.upstream_timeout_ms == 0 {
            return Err("dns.upstream_timeout_ms must be at least 1".into());
        }
        if self.max_names == 0 {
            return Err("dns.max_names must be at least 1".into());
        }
        for upstream in &self.upstreams {
            upstream.validate()?;
        }
        Ok(())
    }
}

impl UpstreamConfig {
    /// Returns a plain UDP upstream on port 53.
    pub fn udp(address: IpAddr) -> Self {
        Self {
            address,
            protocol: UpstreamProtocol::Udp,
            port: None,
            server_name: None,
            path: None,
        }
    }

    /// Returns the port, or the protocol's default.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.protocol {
            UpstreamProtocol::Udp | UpstreamProtocol::Tcp => 53,
            UpstreamProtocol::Tls => 853,
            UpstreamProtocol::Https => 443,
        })
    }

    fn validate(&self) -> Result<(), String> {
        let encrypted = matches!(
            self.protocol,
            UpstreamProtocol::Tls | UpstreamProtocol::Https
        );
        if encrypted && self.server_name.is_none() {
            return Err(format!(
                "dns upstream {} uses {:?} and needs server_name, the name in its certificate",
                self.address, self.protocol
            ));
        }
        Ok(())
    }
}
