//! The allowlist of enforce mode: which processes may reach which destinations.
//!
//! A policy is a TOML file of `[[allow]]` entries (`docs/policy.md`). A flow is allowed when
//! one entry matches it in every field the entry sets. Every other flow is denied, and the
//! [`Denial`] names the entry that came closest and what did not match. Matching does no I/O.

use std::{
    fmt, fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use tollgate_rules::{AddressMatch, Protocol, ProtocolMatch};

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    entries: Vec<PolicyEntry>,
}

/// One `[[allow]]` entry. A field that is absent matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// Label shown in denial reasons.
    #[serde(default)]
    pub name: Option<String>,
    /// Executable paths or globs (`*` matches any run of characters, `?` one character). A
    /// flow matches when its executable or the script its interpreter runs matches one.
    #[serde(default)]
    pub executables: Option<Vec<String>>,
    /// Domain names: `example.com` matches that name only, `*.example.com` its subdomains.
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    /// Addresses or networks in CIDR form.
    #[serde(default)]
    pub networks: Option<Vec<Network>>,
    /// Destination ports.
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
    /// Transport protocol: `tcp`, `udp` or `any` (the default).
    #[serde(default = "any_protocol")]
    pub protocol: ProtocolMatch,
}

fn any_protocol() -> ProtocolMatch {
    ProtocolMatch::Any
}

/// An address or a network of a policy entry, written as `203.0.113.10` or `198.51.100.0/24`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Network(pub AddressMatch);

impl TryFrom<String> for Network {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.parse::<AddressMatch>() {
            Ok(AddressMatch::Any) => {
                Err("network \"any\" is not allowed; leave out networks".into())
            }
            Ok(address @ (AddressMatch::Ip(_) | AddressMatch::Cidr(_))) => Ok(Self(address)),
            Ok(_) => Err(format!(
                "{text:?} is not an address or network; put names under domains"
            )),
            Err(err) => Err(err.to_string()),
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The facts of a flow that a policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct FlowFacts<'a> {
    /// Executable of the process, when known.
    pub executable: Option<&'a Path>,
    /// Script run by an interpreter, when known.
    pub script: Option<&'a Path>,
    /// Domain name of the destination, when known.
    pub host: Option<&'a str>,
    /// Destination address.
    pub ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// Why a policy denies a flow: the closest entry and the fields it did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Index (from 1) and name of the entry with the fewest mismatches, if the policy has any.
    pub closest: Option<(usize, Option<String>)>,
    /// One description per field that did not match.
    pub mismatches: Vec<String>,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((index, name)) = &self.closest else {
            return f.write_str("the policy has no allow entries");
        };
        match name {
            Some(name) => write!(
                f,
                "no allow entry matches; closest is #{index} \"{name}\": "
            )?,
            None => write!(f, "no allow entry matches; closest is #{index}: ")?,
        }
        f.write_str(&self.mismatches.join("; "))
    }
}

/// Errors loading a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("failed to read policy file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid policy.
    #[error("invalid policy file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid policy file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Description of the invalid value.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow: Vec<PolicyEntry>,
}

impl Policy {
    /// Reads and checks the policy at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|err| match err {
            ParseFailure::Toml(source) => PolicyError::Parse {
                path: path.to_owned(),
                source,
            },
            ParseFailure::Invalid(reason) => PolicyError::Invalid {
                path: path.to_owned(),
                reason,
            },
        })
    }

    /// Returns the entries in file order.
    pub fn entries(&self) -> &[PolicyEntry] {
        &self.entries
    }

    /// Returns `Ok(index)` of the first entry (from 1) that allows `flow`, or why none does.
    pub fn check(&self, flow: &FlowFacts<'_>) -> Result<usize, Denial> {
        let mut closest: Option<(usize, Vec<String>)> = None;
        for (index, entry) in self.entries.iter().enumerate() {
            let mismatches = entry.mismatches(flow);
            if mismatches.is_empty() {
                return Ok(index + 1);
            }
            if closest
                .as_ref()
                .is_none_or(|(_, best)| mismatches.len() < best.len())
            {
                closest = Some((index, mismatches));
            }
        }
        Err(match closest {
            Some((index, mismatches)) => Denial {
                closest: Some((index + 1, self.entries[index].name.clone())),
                mismatches,
            },
            None => Denial {
                closest: None,
                mismatches: Vec::new(),
            },
        })
    }

    fn parse(text: &str) -> Result<Self, ParseFailure> {
        let file: PolicyFile = toml::from_str(text).map_err(ParseFailure::Toml)?;
        for (index, entry) in file.allow.iter().enumerate() {
            entry.validate().map_err(|reason| {
                ParseFailure::Invalid(format!("allow entry #{}: {reason}", index + 1))
            })?;
        }
        Ok(Self {
            entries: file.allow,
        })
    }
}

enum ParseFailure {
    Toml(toml::de::Error),
    Invalid(String),
}

impl PolicyEntry {
    fn validate(&self) -> Result<(), String> {
        let empty_list = self.executables.as_ref().is_some_and(Vec::is_empty)
            || self.domains.as_ref().is_some_and(Vec::is_empty)
            || self.networks.as_ref().is_some_and(Vec::is_empty)
            || self.ports.as_ref().is_some_and(Vec::is_empty);
        if empty_list {
            return Err("a list must not be empty; leave the key out to match everything".into());
        }
        for pattern in self.executables.iter().flatten() {
            if !pattern.starts_with('/') {
                return Err(format!(
                    "executable {pattern:?} is not an absolute path or glob"
                ));
            }
        }
        for domain in self.domains.iter().flatten() {
            let bare = domain.strip_prefix("*.").unwrap_or(domain);
            if bare.is_empty() || bare.contains('*') || bare.contains('/') {
                return Err(format!("domain {domain:?} is not a name or *.name"));
            }
        }
        if self.ports.iter().flatten().any(|port| *port == 0) {
            return Err("port 0 is not a destination port".into());
        }
        Ok(())
    }

    /// Returns a description of each field of this entry that `flow` does not match.
    fn mismatches(&self, flow: &FlowFacts<'_>) -> Vec<String> {
        let mut mismatches = Vec::new();
        if let Some(patterns) = &self.executables
            && !self.matches_process(patterns, flow)
        {
            let executable = flow
                .executable
                .map_or_else(|| "unknown".to_owned(), |path| path.display().to_string());
            mismatches.push(format!(
                "executable {executable} is not in [{}]",
                patterns.join(", ")
            ));
        }
        if let Some(reason) = self.destination_mismatch(flow) {
            mismatches.push(reason);
        }
        if let Some(ports) = &self.ports
            && !ports.contains(&flow.port)
        {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            mismatches.push(format!(
                "port {} is not in [{}]",
                flow.port,
                list.join(", ")
            ));
        }
        let protocol_matches = match self.protocol {
            ProtocolMatch::Any => true,
            ProtocolMatch::Tcp => flow.protocol == Protocol::Tcp,
            ProtocolMatch::Udp => flow.protocol == Protocol::Udp,
        };
        if !protocol_matches {
            mismatches.push(format!(
                "protocol {} is not {}",
                flow.protocol, self.protocol
            ));
        }
        mismatches
    }

    fn matches_process(&self, patterns: &[String], flow: &FlowFacts<'_>) -> bool {
        let paths = [flow.executable, flow.script];
        patterns.iter().any(|pattern| {
            paths.iter().flatten().any(|path| {
                path.to_str()
                    .is_some_and(|path| glob_matches(pattern, path))
            })
        })
    }

    /// Checks the address and name together: a destination matches when its address is in
    /// one of `networks` or its name matches one of `domains`.
    fn destination_mismatch(&self, flow: &FlowFacts<'_>) -> Option<String> {
        if self.networks.is_none() && self.domains.is_none() {
            return None;
        }
        let in_network = self
            .networks
            .iter()
            .flatten()
            .any(|network| address_matches(&network.0, flow.ip));
        let named = match flow.host {
            Some(host) => self
                .domains
                .iter()
                .flatten()
                .any(|domain| domain_matches(domain, host)),
            None => false,
        };
        if in_network || named {
            return None;
        }
        let mut allowed: Vec<String> = Vec::new();
        allowed.extend(self.networks.iter().flatten().map(ToString::to_string));
        allowed.extend(self.domains.iter().flatten().cloned());
        let destination = match flow.host {
            Some(host) => format!("{host} ({})", flow.ip),
            None if self.domains.is_some() => format!("{} (name unknown)", flow.ip),
            None => flow.ip.to_string(),
        };
        Some(format!(
            "destination {destination} is not in [{}]",
            allowed.join(", ")
        ))
    }
}

fn address_matches(network: &AddressMatch, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    match network {
        AddressMatch::Any => true,
        AddressMatch::Ip(address) => *address == ip,
        AddressMatch::Cidr(cidr) => cidr.contains(ip),
        // Parsing keeps names and scopes out of networks.
        AddressMatch::Host(_) | AddressMatch::Domain(_) | AddressMatch::Scope(_) => false,
    }
}

/// Matches `host` against `example.com` (that name only) or `*.example.com` (any name below
/// it, but not `example.com` itself). Names compare case-insensitively, and a trailing dot is
/// ignored.
fn domain_matches(domain: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    match domain.strip_prefix("*.") {
        Some(parent) => host
            .strip_suffix(parent)
            .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        None => host == domain,
    }
}

/// Matches `text` against a glob where `*` stands for any run of characters (`/` included)
/// and `?` for one character.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Position after the last `*` and the text position it was tried at, for backtracking.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p + 1, t));
            p += 1;
        } else if let Some((after_star, tried)) = star {
            p = after_star;
            t = tried + 1;
            star = Some((after_star, tried + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
        [[allow]]
        name = "web"
        executables = ["/usr/bin/curl", "/opt/app/bin/*"]
        networks = ["203.0.113.10", "198.51.100.0/24"]
        ports = [80, 443]
        protocol = "tcp"

        [[allow]]
        name = "docs"
        domains = ["example.org", "*.example.com"]
    "#;

    fn policy() -> Policy {
        match Policy::parse(POLICY) {
            Ok(policy) => policy,
            Err(ParseFailure::Toml(err)) => panic!("{err}"),
            Err(ParseFailure::Invalid(reason)) => panic!("{reason}"),
        }
    }

    fn flow<'a>(executable: &'a str, ip: &str, port: u16) -> FlowFacts<'a> {
        FlowFacts {
            executable: Some(Path::new(executable)),
            script: None,
            host: None,
            ip: ip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn entry_allows_matching_flow() {
        assert_eq!(
            policy().check(&flow("/usr/bin/curl", "203.0.113.10", 80)),
            Ok(1)
        );
        assert_eq!(
            policy().check(&flow("/opt/app/bin/x", "198.51.100.7", 443)),
            Ok(1)
        );
    }

    #[test]
    fn denial_names_closest_entry_and_field() {
        let denial = policy()
            .check(&flow("/usr/bin/curl", "203.0.113.20", 80))
            .unwrap_err();
        assert_eq!(denial.closest, Some((1, Some("web".into()))));
        assert_eq!(denial.mismatches.len(), 1, "{denial}");
        assert!(denial.to_string().contains("203.0.113.20"), "{denial}");
    }

    #[test]
    fn unknown_executable_is_denied() {
        let mut facts = flow("/usr/bin/curl", "203.0.113.10", 80);
        facts.executable = None;
        let denial = policy().check(&facts).unwrap_err();
        assert!(
            denial.to_string().contains("executable unknown"),
            "{denial}"
        );
    }

    #[test]
    fn script_matches_executable_pattern() {
        let mut facts = flow("/usr/bin/python3", "203.0.113.10", 80);
        facts.script = Some(Path::new("/opt/app/bin/fetch.py"));
        assert_eq!(policy().check(&facts), Ok(1));
    }

    #[test]
    fn domains_match_exact_and_subdomains() {
        let mut facts = flow("/usr/bin/wget", "192.0.2.1", 443);
        facts.host = Some("api.example.com");
        assert_eq!(policy().check(&facts), Ok(2));
        facts.host = Some("example.com");
        assert!(policy().check(&facts).is_err());
        facts.host = Some("EXAMPLE.org.");
        assert_eq!(policy().check(&facts), Ok(2));
        facts.host = Some("www.example.org");
        assert!(policy().check(&facts).is_err());
    }

    #[test]
    fn unnamed_flow_misses_domain_entry() {
        let denial = policy()
            .check(&flow("/usr/bin/wget", "192.0.2.1", 443))
            .unwrap_err();
        assert!(denial.to_string().contains("name unknown"), "{denial}");
    }

    #[test]
    fn empty_policy_denies_everything() {
        let Ok(empty) = Policy::parse("") else {
            panic!("empty policy rejected");
        };
        let denial = empty
            .check(&flow("/usr/bin/curl", "203.0.113.10", 80))
            .unwrap_err();
        assert_eq!(denial.to_string(), "the policy has no allow entries");
    }

    #[test]
    fn invalid_entries_are_rejected() {
        for text in [
            "[[allow]]\nexecutables = []\n",
            "[[allow]]\nexecutables = [\"curl\"]\n",
            "[[allow]]\ndomains = [\"a.*.com\"]\n",
            "[[allow]]\nports = [0]\n",
            "[[allow]]\nnetworks = [\"10.0.0.1/8\"]\n",
            "[[allow]]\nhost = \"x\"\n",
        ] {
            assert!(Policy::parse(text).is_err(), "accepted: {text}");
        }
    }

    #[test]
    fn glob_matching() {
        assert!(glob_matches("/usr/bin/*", "/usr/bin/curl"));
        assert!(glob_matches("/usr/*/curl", "/usr/local/bin/curl"));
        assert!(glob_matches("/usr/bin/pytho?3", "/usr/bin/python3"));
        assert!(!glob_matches("/usr/bin/*", "/usr/sbin/curl"));
        assert!(!glob_matches("/usr/bin/curl", "/usr/bin/curl2"));
    }
}
