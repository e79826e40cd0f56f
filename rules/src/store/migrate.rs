//! Upgrades of older rule store files to the current schema.
//!
//! Version 1 stored each rule as JSON with a subject of `"any"` or `{"executable": PATH}`, an
//! address of `"any"`, `{"ip": IP}` or `{"cidr": {"addr": IP, "prefix": N}}`, a port of
//! `"any"` or `{"port": N}`, and a creation time in seconds (`created_unix`). Version 2 stores
//! the current [`Rule`] shape and adds the `hits` and `settings` tables.

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use crate::model::{
    Action, Destination, ProtocolMatch, Rule, RuleId,
    address::{AddressMatch, Cidr},
    lifetime::Lifetime,
    port::PortMatch,
    subject::Subject,
};

/// A rule as schema version 1 stored it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleV1 {
    id: RuleId,
    subject: SubjectV1,
    destination: DestinationV1,
    action: Action,
    lifetime: Lifetime,
    enabled: bool,
    note: String,
    created_unix: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SubjectV1 {
    Any,
    Executable(PathBuf),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationV1 {
    address: AddressV1,
    port: PortV1,
    protocol: ProtocolMatch,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AddressV1 {
    Any,
    Ip(IpAddr),
    Cidr { addr: IpAddr, prefix: u8 },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PortV1 {
    Any,
    Port(u16),
}

impl RuleV1 {
    /// Converts the rule to the current shape. Version 1 counted no hits and had no change
    /// time, so the change time is the creation time.
    pub(crate) fn upgrade(self) -> Result<Rule, String> {
        let subject = match self.subject {
            SubjectV1::Any => Subject::any(),
            SubjectV1::Executable(path) => Subject::executable(path),
        };
        let address = match self.destination.address {
            AddressV1::Any => AddressMatch::Any,
            AddressV1::Ip(ip) => AddressMatch::Ip(ip),
            AddressV1::Cidr { addr, prefix } => {
                AddressMatch::Cidr(Cidr::new(addr, prefix).map_err(|error| error.to_string())?)
            }
        };
        let port = match self.destination.port {
            PortV1::Any => PortMatch::Any,
            PortV1::Port(0) => return Err("port 0 is not a valid port".to_owned()),
            PortV1::Port(port) => PortMatch::Port(port),
        };
        let created_unix_ms = self.created_unix.saturating_mul(1000);
        let mut rule = Rule::new(
            self.id,
            subject,
            Destination {
                address,
                port,
                protocol: self.destination.protocol,
            },
            self.action,
            self.lifetime,
        );
        rule.enabled = self.enabled;
        rule.note = self.note;
        rule.created_unix_ms = created_unix_ms;
        rule.updated_unix_ms = created_unix_ms;
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_rule_upgrades_every_field() {
        let json = r#"{"id":4,"subject":{"executable":"/usr/bin/curl"},"destination":{"address":{"cidr":{"addr":"10.0.0.0","prefix":8}},"port":{"port":443},"protocol":"tcp"},"action":"deny","lifetime":"forever","enabled":false,"note":"old","created_unix":1700000000}"#;

        let rule = serde_json::from_str::<RuleV1>(json)
            .unwrap()
            .upgrade()
            .unwrap();

        assert_eq!(rule.id, RuleId(4));
        assert_eq!(rule.subject, Subject::executable("/usr/bin/curl"));
        assert_eq!(
            rule.destination.address,
            AddressMatch::Cidr("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(rule.destination.port, PortMatch::Port(443));
        assert_eq!(rule.destination.protocol, ProtocolMatch::Tcp);
        assert_eq!(rule.action, Action::Deny);
        assert_eq!(rule.lifetime, Lifetime::Forever);
        assert!(!rule.enabled);
        assert_eq!(rule.note, "old");
        assert_eq!(rule.created_unix_ms, 1_700_000_000_000);
        assert_eq!(rule.updated_unix_ms, 1_700_000_000_000);
        assert_eq!(rule.hits, 0);
    }

    #[test]
    fn v1_any_rule_upgrades() {
        let json = r#"{"id":1,"subject":"any","destination":{"address":"any","port":"any","protocol":"any"},"action":"allow","lifetime":"forever","enabled":true,"note":"","created_unix":0}"#;

        let rule = serde_json::from_str::<RuleV1>(json)
            .unwrap()
            .upgrade()
            .unwrap();

        assert!(rule.subject.is_any());
        assert_eq!(rule.destination, Destination::any());
    }

    #[test]
    fn v1_invalid_network_is_reported() {
        let json = r#"{"id":1,"subject":"any","destination":{"address":{"cidr":{"addr":"10.0.0.1","prefix":8}},"port":"any","protocol":"any"},"action":"allow","lifetime":"forever","enabled":true,"note":"","created_unix":0}"#;

        let error = serde_json::from_str::<RuleV1>(json)
            .unwrap()
            .upgrade()
            .unwrap_err();

        assert!(error.contains("host bits"), "{error}");
    }
}
