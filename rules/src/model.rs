//! The rule model: who a rule applies to, where to, what it does and for how long.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    str::FromStr,
};

use serde::{Deserialize, Serialize};

/// Identifier of a rule, unique within one daemon's rule set and stable across restarts for
/// stored rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuleId(pub u64);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One firewall rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Identifier assigned by the rule set when the rule is added.
    pub id: RuleId,
    /// The processes the rule applies to.
    pub subject: Subject,
    /// The destinations the rule applies to.
    pub destination: Destination,
    /// What happens to a matching connection.
    pub action: Action,
    /// How long the rule stays in force.
    pub lifetime: Lifetime,
    /// Disabled rules are kept but never match.
    pub enabled: bool,
    /// Free text the user attached to the rule.
    pub note: String,
    /// Creation time in seconds since the Unix epoch.
    pub created_unix: u64,
}

/// The processes a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// Every process, including connections whose process is unknown.
    Any,
    /// Processes running this executable, compared as an absolute path.
    Executable(PathBuf),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Executable(path) => write!(f, "{}", path.display()),
        }
    }
}

impl FromStr for Subject {
    type Err = ParseError;

    /// Parses `any` or an absolute executable path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "any" {
            return Ok(Self::Any);
        }
        let path = PathBuf::from(s);
        if !path.is_absolute() {
            return Err(ParseError::new(
                "subject",
                s,
                "expected any or an absolute executable path",
            ));
        }
        Ok(Self::Executable(path))
    }
}

/// The destinations a rule applies to. Every field must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Destination {
    /// Destination address or network.
    pub address: AddressMatch,
    /// Destination port.
    pub port: PortMatch,
    /// Transport protocol.
    pub protocol: ProtocolMatch,
}

impl Destination {
    /// Returns a destination that matches every connection.
    pub fn any() -> Self {
        Self {
            address: AddressMatch::Any,
            port: PortMatch::Any,
            protocol: ProtocolMatch::Any,
        }
    }
}

/// A destination address condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressMatch {
    /// Every address.
    Any,
    /// One address. An IPv4 rule also matches the IPv4-mapped IPv6 form of the address.
    Ip(IpAddr),
    /// A network in CIDR form; host bits of `addr` are zero.
    Cidr(Cidr),
}

impl fmt::Display for AddressMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Cidr(cidr) => write!(f, "{cidr}"),
        }
    }
}

impl FromStr for AddressMatch {
    type Err = ParseError;

    /// Parses `any`, an address such as `10.1.2.3` or `2001:db8::1`, or a network such as
    /// `10.0.0.0/8`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "any" {
            return Ok(Self::Any);
        }
        if s.contains('/') {
            return s.parse().map(Self::Cidr);
        }
        s.parse().map(Self::Ip).map_err(|_| {
            ParseError::new(
                "address",
                s,
                "expected any, an IP address or a network such as 10.0.0.0/8",
            )
        })
    }
}

/// A network: address and prefix length, with the host bits cleared.
///
/// Deserialization rejects a prefix longer than the address and an address with host bits set,
/// as [`Cidr::new`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "CidrFields")]
pub struct Cidr {
    /// Network address with the host bits cleared.
    pub addr: IpAddr,
    /// Prefix length: at most 32 for IPv4 and 128 for IPv6.
    pub prefix: u8,
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

/// A destination port condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortMatch {
    /// Every port.
    Any,
    /// One port.
    Port(u16),
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Port(port) => write!(f, "{port}"),
        }
    }
}

impl FromStr for PortMatch {
    type Err = ParseError;

    /// Parses `any` or a port from 1 to 65535.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "any" {
            return Ok(Self::Any);
        }
        match s.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Self::Port(port)),
            _ => Err(ParseError::new(
                "port",
                s,
                "expected any or a port from 1 to 65535",
            )),
        }
    }
}

/// A transport protocol condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolMatch {
    /// TCP and UDP.
    Any,
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
}

impl fmt::Display for ProtocolMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Any => "any",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl FromStr for ProtocolMatch {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(Self::Any),
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(ParseError::new("protocol", s, "expected tcp, udp or any")),
        }
    }
}

/// A transport protocol of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Transmission Control Protocol.
    Tcp,
    /// User Datagram Protocol.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(ParseError::new("protocol", s, "expected tcp or udp")),
        }
    }
}

/// What a rule does with a matching connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Relay the connection to its destination.
    Allow,
    /// Reset the connection.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

impl FromStr for Action {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            _ => Err(ParseError::new("action", s, "expected allow or deny")),
        }
    }
}

/// How long a rule stays in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifetime {
    /// Settles the connections it was made for and is never stored.
    Once,
    /// Lasts until the daemon stops; kept in memory only.
    UntilRestart,
    /// Stored on disk and applied after restarts.
    Forever,
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Once => "once",
            Self::UntilRestart => "until-restart",
            Self::Forever => "forever",
        })
    }
}

impl FromStr for Lifetime {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "once" => Ok(Self::Once),
            "until-restart" => Ok(Self::UntilRestart),
            "forever" => Ok(Self::Forever),
            _ => Err(ParseError::new(
                "lifetime",
                s,
                "expected once, until-restart or forever",
            )),
        }
    }
}

/// A rule field that failed to parse from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {reason}")]
pub struct ParseError {
    /// The field being parsed.
    pub field: &'static str,
    /// The text that was rejected.
    pub value: String,
    /// What was expected instead.
    pub reason: String,
}

impl ParseError {
    pub(crate) fn new(field: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            field,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The serialized fields of [`Cidr`], checked by [`Cidr::new`] on deserialization.
#[derive(Deserialize)]
struct CidrFields {
    addr: IpAddr,
    prefix: u8,
}

impl TryFrom<CidrFields> for Cidr {
    type Error = ParseError;

    fn try_from(fields: CidrFields) -> Result<Self, Self::Error> {
        Self::new(fields.addr, fields.prefix)
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
fn mask_address(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let shift = 32 - u32::from(prefix.min(32));
            let mask = u32::MAX.checked_shl(shift).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask))
        }
        IpAddr::V6(v6) => {
            let shift = 128 - u32::from(prefix.min(128));
            let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
    }
}

/// Prefix length of `::ffff:0:0/96`, the IPv6 network that carries IPv4-mapped addresses.
pub(crate) const MAPPED_IPV4_PREFIX: u8 = 96;

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
        assert_eq!(network.addr, ip("2001:db8::"));
        assert_eq!(network.prefix, 32);
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
    fn cidr_out_of_range_prefix_does_not_panic() {
        let invalid = Cidr {
            addr: ip("10.0.0.1"),
            prefix: 200,
        };

        assert!(invalid.contains(ip("10.0.0.1")));
        assert!(!invalid.contains(ip("10.0.0.2")));
    }

    #[test]
    fn cidr_serde_shape_is_unchanged() {
        let network = cidr("10.0.0.0/8");

        let json = serde_json::to_string(&network).unwrap();

        assert_eq!(json, r#"{"addr":"10.0.0.0","prefix":8}"#);
        assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), network);
    }

    #[test]
    fn cidr_deserialize_rejects_invalid() {
        for json in [
            r#"{"addr":"10.0.0.0","prefix":33}"#,
            r#"{"addr":"10.0.0.1","prefix":8}"#,
            r#"{"addr":"2001:db8::","prefix":129}"#,
        ] {
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

        let error = "example.com".parse::<AddressMatch>().unwrap_err();
        assert_eq!(error.field, "address");
        assert!("10.0.0.1/8".parse::<AddressMatch>().is_err());
    }

    #[test]
    fn address_match_displays_as_parsed() {
        for text in [
            "any",
            "10.1.2.3",
            "2001:db8::1",
            "10.0.0.0/8",
            "2001:db8::/32",
        ] {
            let address: AddressMatch = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
    }

    #[test]
    fn port_match_parses_and_displays() {
        assert_eq!("any".parse(), Ok(PortMatch::Any));
        assert_eq!("443".parse(), Ok(PortMatch::Port(443)));
        assert_eq!("65535".parse(), Ok(PortMatch::Port(65535)));
        assert_eq!(PortMatch::Port(443).to_string(), "443");
        assert_eq!(PortMatch::Any.to_string(), "any");

        for text in ["0", "65536", "-1", "http", ""] {
            let error = text.parse::<PortMatch>().unwrap_err();
            assert_eq!(error.field, "port", "{text}");
        }
    }

    #[test]
    fn protocols_parse_and_display() {
        for (text, expected) in [
            ("any", ProtocolMatch::Any),
            ("tcp", ProtocolMatch::Tcp),
            ("udp", ProtocolMatch::Udp),
        ] {
            assert_eq!(text.parse(), Ok(expected));
            assert_eq!(expected.to_string(), text);
        }
        assert!("TCP".parse::<ProtocolMatch>().is_err());

        assert_eq!("tcp".parse(), Ok(Protocol::Tcp));
        assert_eq!("udp".parse(), Ok(Protocol::Udp));
        assert!("any".parse::<Protocol>().is_err());
    }

    #[test]
    fn lifetime_parses_and_displays() {
        for (text, expected) in [
            ("once", Lifetime::Once),
            ("until-restart", Lifetime::UntilRestart),
            ("forever", Lifetime::Forever),
        ] {
            assert_eq!(text.parse(), Ok(expected));
            assert_eq!(expected.to_string(), text);
        }

        let error = "until_restart".parse::<Lifetime>().unwrap_err();
        assert_eq!(error.field, "lifetime");
    }

    #[test]
    fn subject_parses_and_displays() {
        assert_eq!("any".parse(), Ok(Subject::Any));
        assert_eq!(
            "/usr/bin/curl".parse(),
            Ok(Subject::Executable(PathBuf::from("/usr/bin/curl")))
        );
        assert_eq!(Subject::Any.to_string(), "any");
        assert_eq!(
            Subject::Executable(PathBuf::from("/usr/bin/curl")).to_string(),
            "/usr/bin/curl"
        );

        let error = "curl".parse::<Subject>().unwrap_err();
        assert_eq!(error.field, "subject");
    }

    #[test]
    fn parse_error_names_field_and_value() {
        let error = "maybe".parse::<Action>().unwrap_err();

        assert_eq!(
            error.to_string(),
            r#"invalid action "maybe": expected allow or deny"#
        );
    }
}
