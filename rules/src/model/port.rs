//! Destination port conditions: any, one port, a list or a range.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// A destination port condition.
///
/// Ports are 1 to 65535. A list is kept sorted without duplicates, and a range has
/// `first <= last`; parsing and deserialization enforce both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "PortMatchFields")]
pub enum PortMatch {
    /// Every port.
    #[default]
    Any,
    /// One port.
    Port(u16),
    /// Any of these ports.
    List(Vec<u16>),
    /// Every port from `first` to `last`, both included.
    Range {
        /// Lowest port of the range.
        first: u16,
        /// Highest port of the range.
        last: u16,
    },
}

impl PortMatch {
    /// Returns whether `port` satisfies the condition.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Self::Any => true,
            Self::Port(expected) => *expected == port,
            Self::List(ports) => ports.binary_search(&port).is_ok(),
            Self::Range { first, last } => (*first..=*last).contains(&port),
        }
    }

    /// Returns how many ports the condition covers; fewer ports make a rule more specific.
    pub fn port_count(&self) -> u32 {
        match self {
            Self::Any => 65535,
            Self::Port(_) => 1,
            Self::List(ports) => u32::try_from(ports.len()).unwrap_or(u32::MAX),
            Self::Range { first, last } => u32::from(*last) - u32::from(*first) + 1,
        }
    }

    /// Creates a list condition: sorts and deduplicates `ports` and checks that none is 0.
    pub fn list(mut ports: Vec<u16>) -> Result<Self, ParseError> {
        ports.sort_unstable();
        ports.dedup();
        let text = format_list(&ports);
        if ports.is_empty() {
            return Err(ParseError::new(
                "port",
                &text,
                "a port list cannot be empty",
            ));
        }
        if ports[0] == 0 {
            return Err(ParseError::new("port", &text, "ports are 1 to 65535"));
        }
        Ok(Self::List(ports))
    }

    /// Creates a range condition, checking that `first` is at least 1 and at most `last`.
    pub fn range(first: u16, last: u16) -> Result<Self, ParseError> {
        if first == 0 || first > last {
            return Err(ParseError::new(
                "port",
                &format!("{first}-{last}"),
                "a range is FIRST-LAST with 1 <= FIRST <= LAST <= 65535",
            ));
        }
        Ok(Self::Range { first, last })
    }
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Port(port) => write!(f, "{port}"),
            Self::List(ports) => f.write_str(&format_list(ports)),
            Self::Range { first, last } => write!(f, "{first}-{last}"),
        }
    }
}

impl FromStr for PortMatch {
    type Err = ParseError;

    /// Parses `any`, a port such as `443`, a list such as `80,443` or a range such as
    /// `8000-8100`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            ParseError::new(
                "port",
                s,
                "expected any, a port from 1 to 65535, a list such as 80,443 or a range such \
                 as 8000-8100",
            )
        };
        if s == "any" {
            return Ok(Self::Any);
        }
        if let Some((first, last)) = s.split_once('-') {
            let first = first.parse().map_err(|_| invalid())?;
            let last = last.parse().map_err(|_| invalid())?;
            return Self::range(first, last);
        }
        if s.contains(',') {
            let ports: Result<Vec<u16>, _> = s.split(',').map(str::parse).collect();
            return Self::list(ports.map_err(|_| invalid())?);
        }
        match s.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Self::Port(port)),
            _ => Err(invalid()),
        }
    }
}

fn format_list(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    ports.join(",")
}

/// The serialized form of [`PortMatch`], checked on deserialization.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PortMatchFields {
    Any,
    Port(u16),
    List(Vec<u16>),
    Range { first: u16, last: u16 },
}

impl TryFrom<PortMatchFields> for PortMatch {
    type Error = ParseError;

    fn try_from(fields: PortMatchFields) -> Result<Self, Self::Error> {
        match fields {
            PortMatchFields::Any => Ok(Self::Any),
            PortMatchFields::Port(0) => Err(ParseError::new("port", "0", "ports are 1 to 65535")),
            PortMatchFields::Port(port) => Ok(Self::Port(port)),
            PortMatchFields::List(ports) => Self::list(ports),
            PortMatchFields::Range { first, last } => Self::range(first, last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_match_parses_and_displays() {
        for text in ["any", "443", "65535", "80,443", "8000-8100", "22-22"] {
            let port: PortMatch = text.parse().unwrap();
            assert_eq!(port.to_string(), text);
        }
        assert_eq!("443,80,443".parse(), Ok(PortMatch::List(vec![80, 443])));

        for text in [
            "0", "65536", "-1", "http", "", "0-5", "9-8", "80,0", "80,", "1-2-3",
        ] {
            let error = text.parse::<PortMatch>().unwrap_err();
            assert_eq!(error.field, "port", "{text}");
        }
    }

    #[test]
    fn port_match_contains() {
        let list: PortMatch = "80,443".parse().unwrap();
        let range: PortMatch = "8000-8100".parse().unwrap();

        assert!(PortMatch::Any.contains(1));
        assert!(PortMatch::Port(22).contains(22));
        assert!(!PortMatch::Port(22).contains(23));
        assert!(list.contains(443));
        assert!(!list.contains(444));
        assert!(range.contains(8000));
        assert!(range.contains(8100));
        assert!(!range.contains(8101));
    }

    #[test]
    fn port_count_orders_specificity() {
        assert_eq!(PortMatch::Port(1).port_count(), 1);
        assert_eq!("80,443".parse::<PortMatch>().unwrap().port_count(), 2);
        assert_eq!("8000-8099".parse::<PortMatch>().unwrap().port_count(), 100);
        assert_eq!(PortMatch::Any.port_count(), 65535);
    }

    #[test]
    fn port_match_serde_checks_values() {
        let json = serde_json::to_string(&PortMatch::Range { first: 1, last: 2 }).unwrap();
        assert_eq!(json, r#"{"range":{"first":1,"last":2}}"#);
        assert_eq!(
            serde_json::from_str::<PortMatch>(r#"{"list":[443,80]}"#).unwrap(),
            PortMatch::List(vec![80, 443])
        );
        for bad in [
            r#"{"port":0}"#,
            r#"{"list":[]}"#,
            r#"{"range":{"first":9,"last":8}}"#,
        ] {
            assert!(serde_json::from_str::<PortMatch>(bad).is_err(), "{bad}");
        }
    }
}
