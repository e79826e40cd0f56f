//! Host and domain names as rules store them: lowercase ASCII, without a trailing dot.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// A DNS name in canonical form: lowercase ASCII labels separated by dots, without a trailing
/// dot.
///
/// Each label has 1 to 63 letters, digits, `-` or `_`, and the whole name at most 253
/// characters. Parsing lowercases the name and drops one trailing dot. Internationalized names
/// must be given in their ASCII (`xn--`) form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    /// Returns the name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the number of labels: 2 for `example.com`.
    pub fn label_count(&self) -> usize {
        self.0.split('.').count()
    }

    /// Returns whether `name` is this name or one of its subdomains. `name` must be in canonical
    /// form.
    pub fn covers(&self, name: &str) -> bool {
        match name.strip_suffix(self.0.as_str()) {
            Some("") => true,
            Some(rest) => rest.ends_with('.'),
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
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ParseError::new("name", s, reason);
        let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        if name.is_empty() || name.len() > 253 {
            return Err(invalid("a name has 1 to 253 characters"));
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(invalid("each label between dots has 1 to 63 characters"));
            }
            let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            if !label.chars().all(valid) {
                return Err(invalid(
                    "a label has only letters, digits, - and _ (use the xn-- form of other names)",
                ));
            }
        }
        Ok(Self(name))
    }
}

impl TryFrom<String> for DomainName {
    type Error = ParseError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<DomainName> for String {
    fn from(name: DomainName) -> Self {
        name.0
    }
}

/// Returns `name` in the canonical form of [`DomainName`] (lowercase, no trailing dot) without
/// checking its characters.
pub fn canonical_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> DomainName {
        text.parse().expect("test name parses")
    }

    #[test]
    fn name_is_lowercased_without_trailing_dot() {
        assert_eq!(name("WWW.Example.COM.").as_str(), "www.example.com");
        assert_eq!(name("localhost").label_count(), 1);
        assert_eq!(name("a.b.example.com").label_count(), 4);
    }

    #[test]
    fn name_rejects_invalid_text() {
        for text in [
            "",
            ".",
            "a..b",
            ".example.com",
            "exa mple.com",
            "ex*ample.com",
            "bücher.example",
            &"a".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
        ] {
            let error = text.parse::<DomainName>().unwrap_err();
            assert_eq!(error.field, "name", "{text}");
        }
    }

    #[test]
    fn domain_covers_itself_and_subdomains() {
        let domain = name("example.com");

        assert!(domain.covers("example.com"));
        assert!(domain.covers("www.example.com"));
        assert!(domain.covers("a.b.example.com"));
        assert!(!domain.covers("badexample.com"));
        assert!(!domain.covers("example.org"));
        assert!(!domain.covers("com"));
    }

    #[test]
    fn canonical_name_lowercases() {
        assert_eq!(canonical_name("Example.COM."), "example.com");
    }
}
