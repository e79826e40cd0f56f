//! Domain names as rules compare them: normalization, host and domain patterns, and the verdict
//! over a CNAME chain.

use std::{fmt, str::FromStr};

/// A normalized domain name: lowercase ASCII, internationalized labels in punycode (`xn--`), no
/// trailing dot.
///
/// Every name that Tollgate stores or compares goes through [`DomainName::parse`], so that
/// `WWW.Example.COM.`, `www.example.com` and an IDN written in Unicode compare equal to the form
/// that DNS carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

/// A name that cannot be normalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The name is empty, or only a dot.
    #[error("domain name is empty")]
    Empty,
    /// IDNA processing (UTS #46) rejected the name.
    #[error("invalid internationalized domain name {0:?}")]
    Idna(String),
    /// The name is longer than 253 characters or has a label longer than 63.
    #[error("domain name {0:?} is too long")]
    TooLong(String),
    /// A label is empty or has a character other than letters, digits, `-` and `_`.
    #[error("invalid domain name {0:?}: labels may hold only letters, digits, '-' and '_'")]
    InvalidLabel(String),
    /// A pattern uses `*`, which patterns do not support.
    #[error("invalid pattern {0:?}: write .example.com for a domain and its subdomains")]
    Wildcard(String),
}

impl DomainName {
    /// Parses and normalizes `text`: lowercases it, removes one trailing dot and converts
    /// Unicode labels to punycode with UTS #46 processing.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let trimmed = text.trim();
        let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(DomainError::Empty);
        }
        let ascii =
            idna::domain_to_ascii(trimmed).map_err(|_| DomainError::Idna(text.to_owned()))?;
        if ascii.is_empty() {
            return Err(DomainError::Empty);
        }
        if ascii.len() > MAX_NAME_LEN || ascii.split('.').any(|label| label.len() > MAX_LABEL_LEN) {
            return Err(DomainError::TooLong(text.to_owned()));
        }
        if !ascii.split('.').all(is_valid_label) {
            return Err(DomainError::InvalidLabel(text.to_owned()));
        }
        Ok(Self(ascii))
    }

    /// Returns the name as text, without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns whether this name is `domain` or lies below it, label by label: `a.example.com`
    /// is within `example.com`, `badexample.com` is not.
    pub fn is_within(&self, domain: &Self) -> bool {
        match self.0.strip_suffix(domain.as_str()) {
            Some("") => true,
            Some(prefix) => prefix.ends_with('.'),
            None => false,
        }
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DomainName {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A name condition of a rule. `docs/domains.md` has the table of what each form matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    /// Exactly this host name, written `example.com`.
    Host(DomainName),
    /// This name and every name below it, written `.example.com`.
    Domain(DomainName),
}

impl DomainPattern {
    /// Parses `example.com` as a host and `.example.com` as a domain with its subdomains.
    /// Both are normalized like [`DomainName::parse`]; `*` is rejected.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let trimmed = text.trim();
        if trimmed.contains('*') {
            return Err(DomainError::Wildcard(text.to_owned()));
        }
        match trimmed.strip_prefix('.') {
            Some(domain) => DomainName::parse(domain).map(Self::Domain),
            None => DomainName::parse(trimmed).map(Self::Host),
        }
    }

    /// Returns whether `name` matches the pattern.
    pub fn matches(&self, name: &DomainName) -> bool {
        match self {
            Self::Host(host) => name == host,
            Self::Domain(domain) => name.is_within(domain),
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host(host) => write!(f, "{host}"),
            Self::Domain(domain) => write!(f, ".{domain}"),
        }
    }
}

/// The verdict of a name rule on one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameVerdict {
    /// The name may be reached.
    Allow,
    /// The name may not be reached.
    Deny,
}

/// Decides a CNAME chain, the queried name first and each alias target after it.
///
/// `verdict_for` gives the verdict of the rules for one name, or `None` when no rule names it.
/// A deny for any name in the chain wins over allows for the others, so an allowed name cannot
/// smuggle a denied one in through an alias, nor a denied name escape through an allowed alias.
/// Returns `None` when no name in the chain has a verdict.
pub fn chain_verdict<'a>(
    chain: impl IntoIterator<Item = &'a DomainName>,
    mut verdict_for: impl FnMut(&DomainName) -> Option<NameVerdict>,
) -> Option<NameVerdict> {
    let mut verdict = None;
    for name in chain {
        match verdict_for(name) {
            Some(NameVerdict::Deny) => return Some(NameVerdict::Deny),
            Some(NameVerdict::Allow) => verdict = Some(NameVerdict::Allow),
            None => {}
        }
    }
    verdict
}

fn is_valid_label(label: &str) -> bool {
    !label.is_empty()
        && label
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// Maximum length of a name in text form without the trailing dot (RFC 1035 section 2.3.4).
const MAX_NAME_LEN: usize = 253;
/// Maximum length of one label (RFC 1035 section 2.3.4).
const MAX_LABEL_LEN: usize = 63;

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> DomainName {
        DomainName::parse(text).unwrap()
    }

    #[test]
    fn normalization_table() {
        let cases = [
            ("example.com", "example.com"),
            ("Example.COM.", "example.com"),
            ("  www.example.com  ", "www.example.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example.", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("_sip._tcp.example.com", "_sip._tcp.example.com"),
        ];
        for (input, expected) in cases {
            assert_eq!(name(input).as_str(), expected, "{input:?}");
        }
    }

    #[test]
    fn invalid_names_are_rejected() {
        assert_eq!(DomainName::parse(""), Err(DomainError::Empty));
        assert_eq!(DomainName::parse("."), Err(DomainError::Empty));
        assert!(DomainName::parse("a..b").is_err());
        assert!(DomainName::parse("exa mple.com").is_err());
        assert!(DomainName::parse(&"a".repeat(64)).is_err());
        let long = ["abcdefghi"; 26].join(".");
        assert!(matches!(
            DomainName::parse(&long),
            Err(DomainError::TooLong(_))
        ));
    }

    #[test]
    fn within_compares_whole_labels() {
        assert!(name("example.com").is_within(&name("example.com")));
        assert!(name("a.b.example.com").is_within(&name("example.com")));
        assert!(!name("badexample.com").is_within(&name("example.com")));
        assert!(!name("example.com").is_within(&name("a.example.com")));
    }

    #[test]
    fn pattern_match_table() {
        let host = DomainPattern::parse("Example.com").unwrap();
        let domain = DomainPattern::parse(".example.com").unwrap();
        let cases = [
            ("example.com", true, true),
            ("www.example.com", false, true),
            ("a.b.example.com", false, true),
            ("badexample.com", false, false),
            ("example.com.evil.test", false, false),
        ];
        for (input, host_matches, domain_matches) in cases {
            assert_eq!(host.matches(&name(input)), host_matches, "host vs {input}");
            assert_eq!(
                domain.matches(&name(input)),
                domain_matches,
                "domain vs {input}"
            );
        }
        assert_eq!(domain.to_string(), ".example.com");
    }

    #[test]
    fn wildcard_pattern_is_rejected() {
        assert!(matches!(
            DomainPattern::parse("*.example.com"),
            Err(DomainError::Wildcard(_))
        ));
    }

    #[test]
    fn deny_wins_within_chain() {
        let chain = [name("www.shop.test"), name("cdn.tracker.test")];
        let verdict = |candidate: &DomainName| match candidate.as_str() {
            "www.shop.test" => Some(NameVerdict::Allow),
            "cdn.tracker.test" => Some(NameVerdict::Deny),
            _ => None,
        };
        assert_eq!(chain_verdict(&chain, verdict), Some(NameVerdict::Deny));
        assert_eq!(
            chain_verdict(&chain[..1], verdict),
            Some(NameVerdict::Allow)
        );
        assert_eq!(chain_verdict(&chain, |_| None), None);
    }
}
