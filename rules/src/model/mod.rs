//! The rule model: who a rule applies to, where to, what it does and for how long.
//!
//! Every type here is plain data: it serializes to the JSON of the rule store, the control
//! protocol and rule exports, and parses from the text the `tollgate` command takes.

pub mod address;
pub mod glob;
pub mod lifetime;
pub mod name;
pub mod port;
pub mod subject;

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::ParseError;
use address::AddressMatch;
use lifetime::Lifetime;
use port::PortMatch;
use subject::Subject;

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
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Identifier assigned by the rule set when the rule is added.
    pub id: RuleId,
    /// The processes the rule applies to.
    #[serde(default)]
    pub subject: Subject,
    /// The destinations the rule applies to.
    #[serde(default)]
    pub destination: Destination,
    /// What happens to a matching connection.
    pub action: Action,
    /// How long the rule stays in force.
    pub lifetime: Lifetime,
    /// Marks an exception: a priority rule beats every rule without the mark.
    #[serde(default)]
    pub priority: bool,
    /// Disabled rules are kept but never match.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Free text the user attached to the rule.
    #[serde(default)]
    pub note: String,
    /// Creation time in milliseconds since the Unix epoch.
    #[serde(default)]
    pub created_unix_ms: u64,
    /// Time of the last change, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub updated_unix_ms: u64,
    /// Number of connections the rule decided.
    #[serde(default)]
    pub hits: u64,
    /// Time of the last connection the rule decided, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub last_hit_unix_ms: Option<u64>,
}

impl Rule {
    /// Creates an enabled rule without priority, note or hits, created at time 0.
    pub fn new(
        id: RuleId,
        subject: Subject,
        destination: Destination,
        action: Action,
        lifetime: Lifetime,
    ) -> Self {
        Self {
            id,
            subject,
            destination,
            action,
            lifetime,
            priority: false,
            enabled: true,
            note: String::new(),
            created_unix_ms: 0,
            updated_unix_ms: 0,
            hits: 0,
            last_hit_unix_ms: None,
        }
    }

    /// Returns whether `other` has the same conditions (subject, destination, priority), so the
    /// two rules match the same connections and only precedence decides between them.
    pub fn same_conditions(&self, other: &Self) -> bool {
        self.subject == other.subject
            && self.destination == other.destination
            && self.priority == other.priority
    }
}

fn enabled_by_default() -> bool {
    true
}

/// The destinations a rule applies to. Every field must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Destination {
    /// Destination address, network, name or scope.
    pub address: AddressMatch,
    /// Destination port.
    pub port: PortMatch,
    /// Transport protocol.
    pub protocol: ProtocolMatch,
}

impl Destination {
    /// Returns a destination that matches every connection.
    pub fn any() -> Self {
        Self::default()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = match &self.address {
            AddressMatch::Any => "any address".to_owned(),
            other => other.to_string(),
        };
        let port = match &self.port {
            PortMatch::Any => "any port".to_owned(),
            other => format!("port {other}"),
        };
        let protocol = match self.protocol {
            ProtocolMatch::Any => "tcp+udp",
            ProtocolMatch::Tcp => "tcp",
            ProtocolMatch::Udp => "udp",
        };
        write!(f, "{address} {port} {protocol}")
    }
}

/// A transport protocol condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolMatch {
    /// TCP and UDP.
    #[default]
    Any,
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
}

impl ProtocolMatch {
    /// Returns whether `protocol` satisfies the condition.
    pub fn contains(self, protocol: Protocol) -> bool {
        match self {
            Self::Any => true,
            Self::Tcp => protocol == Protocol::Tcp,
            Self::Udp => protocol == Protocol::Udp,
        }
    }
}

impl From<Protocol> for ProtocolMatch {
    fn from(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Tcp => Self::Tcp,
            Protocol::Udp => Self::Udp,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn rule_json_shape() {
        let mut rule = Rule::new(
            RuleId(3),
            Subject::executable("/usr/bin/curl"),
            Destination {
                address: "*.example.com".parse().unwrap(),
                port: "80,443".parse().unwrap(),
                protocol: ProtocolMatch::Tcp,
            },
            Action::Allow,
            Lifetime::Forever,
        );
        rule.note = "web".into();

        let json = serde_json::to_string(&rule).unwrap();

        assert_eq!(
            json,
            r#"{"id":3,"subject":{"executable":{"path":"/usr/bin/curl"}},"destination":{"address":{"domain":"example.com"},"port":{"list":[80,443]},"protocol":"tcp"},"action":"allow","lifetime":"forever","priority":false,"enabled":true,"note":"web","created_unix_ms":0,"updated_unix_ms":0,"hits":0,"last_hit_unix_ms":null}"#
        );
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), rule);
    }

    #[test]
    fn rule_json_defaults_optional_fields() {
        let rule: Rule =
            serde_json::from_str(r#"{"id":1,"action":"deny","lifetime":"forever"}"#).unwrap();

        assert!(rule.subject.is_any());
        assert_eq!(rule.destination, Destination::any());
        assert!(rule.enabled);
        assert!(!rule.priority);
    }

    #[test]
    fn rule_json_rejects_unknown_fields() {
        let error = serde_json::from_str::<Rule>(
            r#"{"id":1,"action":"deny","lifetime":"forever","colour":"red"}"#,
        )
        .unwrap_err();

        assert!(error.to_string().contains("colour"), "{error}");
    }

    #[test]
    fn destination_displays_each_part() {
        let destination = Destination {
            address: "10.0.0.0/8".parse().unwrap(),
            port: PortMatch::Port(22),
            protocol: ProtocolMatch::Tcp,
        };

        assert_eq!(destination.to_string(), "10.0.0.0/8 port 22 tcp");
        assert_eq!(
            Destination::any().to_string(),
            "any address any port tcp+udp"
        );
    }
}
