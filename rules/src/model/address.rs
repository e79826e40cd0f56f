//! Destination address conditions: any, an IP address, a network, a host name, a domain with
//! its subdomains, or a scope (loopback, local network, internet).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::{error::ParseError, model::name::DomainName};

/// A destination address condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressMatch {
    /// Every address.
    #[default]
    Any,
    /// One address. An IPv4 rule also matches the IPv4-mapped IPv6 form of the address.
    Ip(IpAddr),
    /// A network in CIDR form; host bits of the address are zero.
    Cidr(Cidr),
    /// One host name, compared with each name of the connection (the name the program looked up
    /// and every CNAME target on the way to the address).
    Host(DomainName),
    /// A domain and all its subdomains: `example.com` covers `example.com` and
    /// `www.example.com`, but not `badexample.com`.
    Domain(DomainName),
    /// A class of addresses, see [`Scope`].
    Scope(Scope),
}

impl fmt::Display for AddressMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Cidr(cidr) => write!(f, "{cidr}"),
            Self::Host(name) => write!(f, "{name}"),
            Self::Domain(name) => write!(f, "*.{name}"),
            Self::Scope(scope) => write!(f, "scope:{scope}"),
        }
    }
}

impl FromStr for AddressMatch {
    type Err = ParseError;

    /// Parses `any`, an address such as `10.1.2.3` or `2001:db8::1`, a network such as
    /// `10.0.0.0/8`, a domain with its subdomains written `*.example.com`, a scope written
    /// `scope:loopback`, or else a host name such as `example.com`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "any" {
            return Ok(Self::Any);
        }
        if s.contains('/') {
            return s.parse().map(Self::Cidr);
        }
        if let Ok(ip) = s.parse() {
            return Ok(Self::Ip(ip));
        }
        if let Some(scope) = s.strip_prefix("scope:") {
            return scope.parse().map(Self::Scope);
        }
        if let Some(domain) = s.strip_prefix("*.") {
            return domain.parse().map(Self::Domain);
        }
        s.parse().map(Self::Host).map_err(|error| {
            ParseError::new(
                "address",
                s,
                format!(
                    "expected any, an IP address, a network such as 10.0.0.0/8, a host name, \
                     *.DOMAIN or scope:SCOPE ({})",
                    error.reason
                ),
            )
        })
    }
}

/// A class of destination addresses.
///
/// - `loopback`: `127.0.0.0/8` and `::1`.
/// - `local_network`: addresses that stay on the local network: the private ranges
///   `10.0.0.0/8`, `172.16.0.0/12` and `192.168.0.0/16`, `0.0.0.0/8`, link-local
///   `169.254.0.0/16` and `fe80::/10`, unique local `fc00::/7`, multicast `224.0.0.0/4` and
///   `ff00::/8`, the broadcast address `255.255.255.255`, and `::`.
/// - `internet`: every other address.
///
/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The machine itself.
    Loopback,
    /// Private, link-local, unique local, multicast and broadcast addresses.
    LocalNetwork,
    /// Every other address.
    Internet,
}

impl Scope {
    /// Every scope, in the order of [`Scope::index`].
    pub const ALL: [Self; 3] = [Self::Loopback, Self::LocalNetwork, Self::Internet];

    /// Returns the scope of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => Self::of_v6(v6),
        }
    }

    /// Returns the position of the scope in [`Scope::ALL`].
    pub fn index(self) -> usize {
        match self {
            Self::Loopback => 0,
            Self::LocalNetwork => 1,
            Self::Internet => 2,
        }
    }

    fn of_v4(ip: Ipv4Addr) -> Self {
        if ip.is_loopback() {
            Self::Loopback
        } else if ip.is_private()
            || ip.is_link_local()
            || ip.is_multicast()
            || ip.is_broadcast()
            || ip.octets()[0] == 0
        {
            Self::LocalNetwork
        } else {
            Self::Internet
        }
    }

    fn of_v6(ip: Ipv6Addr) -> Self {
        if ip.is_loopback() {
            Self::Loopback
        } else if ip.is_unique_local()
            || ip.is_unicast_link_local()
            || ip.is_multicast()
            || ip.is_unspecified()
        {
            Self::LocalNetwork
        } else {
            Self::Internet
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loopback => "loopback",
            Self::LocalNetwork => "local-network",
            Self::Internet => "internet",
        })
    }
}

impl FromStr for Scope {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "loopback" => Ok(Self::Loopback),
            "local-network" | "local_network" => Ok(Self::LocalNetwork),
            "internet" => Ok(Self::Internet),
            _ => Err(ParseError::new(
                "scope",
                s,
                "expected loopback, local-network or internet",
            )),
        }
    }
}

/// A network: address and prefix length, with the host bits cleared.
///
/// Serialized as text such as `"10.0.0.0/8"`. Parsing and deserialization reject a prefix
/// longer than the address and an address with host bits set, as [`Cidr::new`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Creates a network, checking that the prefix fits the address family and that the host
    /// bits of `addr` are zero.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, ParseError> {
        let text = format!("{addr}/{prefix}");
        let max_prefix = max_prefix(addr);
        if prefix > max_prefix {
            return Err(ParseError::new(
                "network",
                &text,
                format!("prefix length must be at most {max_prefix}"),
            ));
        }

        let network = mask_address(addr, prefix);
        if network != addr {
            return Err(ParseError::new(
                "network",
                &text,
                format!("host bits are set, the network address is {network}/{prefix}"),
            ));
        }
        Ok(Self { addr, prefix })
    }

    /// Returns the network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Returns the prefix length: at most 32 for IPv4 and 128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Returns whether `ip` lies in this network.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) count as the IPv4 address they carry, on
    /// both sides. So `10.0.0.0/8` contains `::ffff:10.1.2.3`, and `::ffff:10.0.0.0/104` contains
    /// `10.1.2.3`. Any other IPv6 network, `::/0` included, contains no IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let network = self.to_canonical();
        let ip = ip.to_canonical();
        if network.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        mask_address(network.addr, network.prefix) == mask_address(ip, network.prefix)
    }

    /// Returns an IPv4-mapped IPv6 network (one inside `::ffff:0:0/96`) as the IPv4 network it
    /// covers, so `::ffff:10.0.0.0/104` becomes `10.0.0.0/8`. Other networks are returned
    /// unchanged.
    pub fn to_canonical(&self) -> Self {
        if let IpAddr::V6(v6) = self.addr
            && self.prefix >= MAPPED_IPV4_PREFIX
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Self {
                addr: IpAddr::V4(v4),
                prefix: self.prefix - MAPPED_IPV4_PREFIX,
            };
        }
        *self
    }

    /// Returns the prefix length counted in IPv6 bits, where IPv4 `/p` is `/(96 + p)`.
    pub fn ipv6_scale_prefix(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => MAPPED_IPV4_PREFIX + self.prefix,
            IpAddr::V6(_) => self.prefix,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = ParseError;

    /// Parses a network such as `10.0.0.0/8` or `2001:db8::/32`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ParseError::new("network", s, reason);

        let (addr, prefix) = s.split_once('/').ok_or_else(|| {
            invalid("expected an address and a prefix length, such as 10.0.0.0/8")
        })?;
        let addr = addr
            .parse()
            .map_err(|_| invalid("the part before / is not an IP address"))?;
        let prefix = prefix
            .parse()
            .map_err(|_| invalid("the part after / is not a prefix length"))?;
        Self::new(addr, prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = ParseError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> Self {
        cidr.to_string()
    }
}

/// Returns the longest prefix length of the address family of `addr`: 32 or 128.
fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Clears every bit of `addr` after the first `prefix` bits. A prefix longer than the address
/// keeps every bit.
pub(crate) fn mask_address(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from_bits(mask_v4(v4.to_bits(), prefix))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(mask_v6(v6.to_bits(), prefix))),
    }
}

/// Clears every bit of an IPv4 address after the first `prefix` bits.
pub(crate) fn mask_v4(bits: u32, prefix: u8) -> u32 {
    let shift = 32 - u32::from(prefix.min(32));
    bits & u32::MAX.checked_shl(shift).unwrap_or(0)
}

/// Clears every bit of an IPv6 address after the first `prefix` bits.
pub(crate) fn mask_v6(bits: u128, prefix: u8) -> u128 {
    let shift = 128 - u32::from(prefix.min(128));
    bits & u128::MAX.checked_shl(shift).unwrap_or(0)
}

/// Prefix length of `::ffff:0:0/96`, the IPv6 network that carries IPv4-mapped addresses.
const MAPPED_IPV4_PREFIX: u8 = 96;

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().expect("test network parses")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test IP parses")
    }

    #[test]
    fn cidr_parses_and_displays() {
        for text in [
            "10.0.0.0/8",
            "0.0.0.0/0",
            "192.0.2.1/32",
            "2001:db8::/32",
            "::/0",
        ] {
            assert_eq!(cidr(text).to_string(), text);
        }

        let network = cidr("2001:db8::/32");
        assert_eq!(network.addr(), ip("2001:db8::"));
        assert_eq!(network.prefix(), 32);
    }

    #[test]
    fn cidr_rejects_invalid_text() {
        for text in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0/8",
            "10.0.0.0/x",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
        ] {
            let error = text.parse::<Cidr>().unwrap_err();
            assert_eq!(error.field, "network", "{text}");
            assert_eq!(error.value, text);
        }
    }

    #[test]
    fn cidr_rejects_host_bits() {
        let error = "10.0.0.1/8".parse::<Cidr>().unwrap_err();

        assert!(error.reason.contains("10.0.0.0/8"), "{error}");
        assert!("2001:db8::1/32".parse::<Cidr>().is_err());
    }

    #[test]
    fn cidr_contains_by_prefix() {
        let network = cidr("10.0.0.0/8");
        assert!(network.contains(ip("10.0.0.0")));
        assert!(network.contains(ip("10.255.255.255")));
        assert!(!network.contains(ip("11.0.0.0")));
        assert!(!network.contains(ip("9.255.255.255")));

        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("192.0.2.1/32").contains(ip("192.0.2.1")));
        assert!(!cidr("192.0.2.1/32").contains(ip("192.0.2.2")));

        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::")));
    }

    #[test]
    fn cidr_contains_mapped_addresses() {
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:11.1.2.3")));
        assert!(cidr("::ffff:10.0.0.0/104").contains(ip("10.1.2.3")));
        assert!(!cidr("::ffff:10.0.0.0/104").contains(ip("11.1.2.3")));
        assert!(cidr("::ffff:0.0.0.0/96").contains(ip("203.0.113.9")));
    }

    #[test]
    fn cidr_keeps_families_apart() {
        assert!(!cidr("::/0").contains(ip("10.0.0.1")));
        assert!(!cidr("::/0").contains(ip("::ffff:10.0.0.1")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        // IPv4-compatible addresses (::a.b.c.d) are deprecated and stay IPv6.
        assert!(!cidr("10.0.0.0/8").contains(ip("::10.0.0.1")));
    }

    #[test]
    fn cidr_to_canonical_unmaps_ipv4() {
        assert_eq!(
            cidr("::ffff:10.0.0.0/104").to_canonical(),
            cidr("10.0.0.0/8")
        );
        assert_eq!(cidr("::ffff:0.0.0.0/96").to_canonical(), cidr("0.0.0.0/0"));
        assert_eq!(cidr("::/0").to_canonical(), cidr("::/0"));
        assert_eq!(cidr("10.0.0.0/8").to_canonical(), cidr("10.0.0.0/8"));
    }

    #[test]
    fn cidr_serializes_as_text() {
        let network = cidr("10.0.0.0/8");

        let json = serde_json::to_string(&network).unwrap();

        assert_eq!(json, r#""10.0.0.0/8""#);
        assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), network);
    }

    #[test]
    fn cidr_deserialize_rejects_invalid() {
        for json in [r#""10.0.0.0/33""#, r#""10.0.0.1/8""#, r#""2001:db8::/129""#] {
            assert!(serde_json::from_str::<Cidr>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn address_match_parses_each_form() {
        assert_eq!("any".parse(), Ok(AddressMatch::Any));
        assert_eq!("10.1.2.3".parse(), Ok(AddressMatch::Ip(ip("10.1.2.3"))));
        assert_eq!(
            "2001:db8::1".parse(),
            Ok(AddressMatch::Ip(ip("2001:db8::1")))
        );
        assert_eq!(
            "10.0.0.0/8".parse(),
            Ok(AddressMatch::Cidr(cidr("10.0.0.0/8")))
        );
        assert_eq!(
            "Example.COM.".parse(),
            Ok(AddressMatch::Host("example.com".parse().unwrap()))
        );
        assert_eq!(
            "*.example.com".parse(),
            Ok(AddressMatch::Domain("example.com".parse().unwrap()))
        );
        assert_eq!(
            "scope:local-network".parse(),
            Ok(AddressMatch::Scope(Scope::LocalNetwork))
        );

        let error = "exa mple.com".parse::<AddressMatch>().unwrap_err();
        assert_eq!(error.field, "address");
        assert!("10.0.0.1/8".parse::<AddressMatch>().is_err());
        assert!("scope:moon".parse::<AddressMatch>().is_err());
    }

    #[test]
    fn address_match_displays_as_parsed() {
        for text in [
            "any",
            "10.1.2.3",
            "2001:db8::1",
            "10.0.0.0/8",
            "2001:db8::/32",
            "example.com",
            "*.example.com",
            "scope:loopback",
            "scope:internet",
        ] {
            let address: AddressMatch = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
    }

    #[test]
    fn scope_classifies_addresses() {
        for (text, scope) in [
            ("127.0.0.1", Scope::Loopback),
            ("127.9.9.9", Scope::Loopback),
            ("::1", Scope::Loopback),
            ("::ffff:127.0.0.1", Scope::Loopback),
            ("10.1.2.3", Scope::LocalNetwork),
            ("172.16.0.1", Scope::LocalNetwork),
            ("172.31.255.255", Scope::LocalNetwork),
            ("192.168.1.1", Scope::LocalNetwork),
            ("169.254.1.1", Scope::LocalNetwork),
            ("224.0.0.251", Scope::LocalNetwork),
            ("255.255.255.255", Scope::LocalNetwork),
            ("0.0.0.0", Scope::LocalNetwork),
            ("fe80::1", Scope::LocalNetwork),
            ("fd00::1", Scope::LocalNetwork),
            ("ff02::fb", Scope::LocalNetwork),
            ("::ffff:192.168.0.1", Scope::LocalNetwork),
            ("172.32.0.1", Scope::Internet),
            ("203.0.113.10", Scope::Internet),
            ("2001:db8::10", Scope::Internet),
            ("8.8.8.8", Scope::Internet),
        ] {
            assert_eq!(Scope::of(ip(text)), scope, "{text}");
        }
    }
}
