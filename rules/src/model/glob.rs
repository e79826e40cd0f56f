//! Glob patterns: for executable paths (`/opt/app/*`) and for command lines (`python3 *`).

use std::{fmt, hash, path::Path, str::FromStr};

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// A glob pattern for absolute paths, such as `/opt/app/*` or `/usr/lib/**/firefox`.
///
/// `*` and `?` match within one path component, `**` matches any number of components,
/// `[abc]` matches one of the characters and `{a,b}` one of the alternatives (globset
/// syntax). Serialized as the pattern text.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathGlob(Pattern);

impl PathGlob {
    /// Returns the pattern text.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// Returns whether `path` matches the pattern.
    pub fn is_match(&self, path: &Path) -> bool {
        self.0.matcher.is_match(path)
    }

    /// Returns the number of literal characters of the pattern (those outside `[...]` and
    /// `{...}` other than `*` and `?`). More literal characters make a glob more specific.
    pub fn literal_len(&self) -> usize {
        self.0.literal_len
    }

    /// Returns the pattern up to and including the last `/` before its first special character:
    /// every matching path starts with this directory.
    pub fn literal_dir(&self) -> &str {
        let text = self.as_str();
        let special = text.find(is_special).unwrap_or(text.len());
        let end = text[..special].rfind('/').map_or(0, |slash| slash + 1);
        &text[..end]
    }

    /// Returns whether `text` contains a glob special character, so that it is a pattern
    /// rather than a plain path.
    pub fn is_pattern(text: &str) -> bool {
        text.contains(is_special)
    }
}

impl FromStr for PathGlob {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.starts_with('/') {
            return Err(ParseError::new(
                "glob",
                s,
                "an executable glob is an absolute path pattern such as /opt/app/*",
            ));
        }
        Pattern::compile(s, true).map(Self)
    }
}

/// A glob pattern for a whole command line, such as `python3 */backup.py *`.
///
/// The command line is the program's arguments joined with single spaces. Here `*` also
/// matches `/`. Serialized as the pattern text.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TextGlob(Pattern);

impl TextGlob {
    /// Returns the pattern text.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// Returns whether `text` matches the pattern.
    pub fn is_match(&self, text: &str) -> bool {
        self.0.matcher.is_match(text)
    }
}

impl FromStr for TextGlob {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::compile(s, false).map(Self)
    }
}

/// A compiled pattern with its text.
#[derive(Clone)]
struct Pattern {
    text: String,
    matcher: GlobMatcher,
    literal_len: usize,
}

impl Pattern {
    fn compile(text: &str, literal_separator: bool) -> Result<Self, ParseError> {
        if text.is_empty() {
            return Err(ParseError::new("glob", text, "a pattern cannot be empty"));
        }
        let glob = GlobBuilder::new(text)
            .literal_separator(literal_separator)
            .backslash_escape(true)
            .build()
            .map_err(|error| ParseError::new("glob", text, error.kind().to_string()))?;
        Ok(Self {
            text: text.to_owned(),
            matcher: glob.compile_matcher(),
            literal_len: literal_len(text),
        })
    }
}

/// Counts the characters outside `[...]` and `{...}` that are not `*` or `?`.
fn literal_len(text: &str) -> usize {
    let mut depth = 0usize;
    let mut count = 0;
    for c in text.chars() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            '*' | '?' => {}
            _ if depth == 0 => count += 1,
            _ => {}
        }
    }
    count
}

fn is_special(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\')
}

macro_rules! pattern_traits {
    ($type:ty) => {
        impl PartialEq for $type {
            fn eq(&self, other: &Self) -> bool {
                self.0.text == other.0.text
            }
        }

        impl Eq for $type {}

        impl hash::Hash for $type {
            fn hash<H: hash::Hasher>(&self, state: &mut H) {
                self.0.text.hash(state);
            }
        }

        impl fmt::Debug for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($type), self.0.text)
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0.text)
            }
        }

        impl TryFrom<String> for $type {
            type Error = ParseError;

            fn try_from(text: String) -> Result<Self, Self::Error> {
                text.parse()
            }
        }

        impl From<$type> for String {
            fn from(glob: $type) -> Self {
                glob.0.text
            }
        }
    };
}

pattern_traits!(PathGlob);
pattern_traits!(TextGlob);

#[cfg(test)]
mod tests {
    use super::*;

    fn path_glob(text: &str) -> PathGlob {
        text.parse().expect("test glob parses")
    }

    #[test]
    fn path_glob_star_stays_in_component() {
        let glob = path_glob("/opt/app/*");

        assert!(glob.is_match(Path::new("/opt/app/run")));
        assert!(!glob.is_match(Path::new("/opt/app/bin/run")));
        assert!(!glob.is_match(Path::new("/opt/application")));
        assert!(path_glob("/opt/**/run").is_match(Path::new("/opt/app/bin/run")));
        assert!(path_glob("/usr/bin/python3.[0-9]*").is_match(Path::new("/usr/bin/python3.12")));
    }

    #[test]
    fn path_glob_must_be_absolute() {
        let error = "opt/*".parse::<PathGlob>().unwrap_err();

        assert_eq!(error.field, "glob");
        assert!("/opt/[".parse::<PathGlob>().is_err());
        assert!("".parse::<TextGlob>().is_err());
    }

    #[test]
    fn path_glob_literal_dir_and_len() {
        assert_eq!(path_glob("/opt/app/*").literal_dir(), "/opt/app/");
        assert_eq!(path_glob("/opt/ap*/x").literal_dir(), "/opt/");
        assert_eq!(path_glob("/*").literal_dir(), "/");
        assert_eq!(path_glob("/opt/app/*").literal_len(), 9);
        assert_eq!(path_glob("/opt/[ab]pp/*").literal_len(), 8);
        assert_eq!(path_glob("/opt/{a,b}/?").literal_len(), 6);
    }

    #[test]
    fn text_glob_star_crosses_slashes() {
        let glob: TextGlob = "python3 */backup.py*".parse().unwrap();

        assert!(glob.is_match("python3 /opt/tools/backup.py --full"));
        assert!(!glob.is_match("python2 /opt/tools/backup.py"));
    }

    #[test]
    fn is_pattern_detects_special_characters() {
        assert!(PathGlob::is_pattern("/opt/*"));
        assert!(PathGlob::is_pattern("/opt/[ab]"));
        assert!(!PathGlob::is_pattern("/usr/bin/curl"));
    }

    #[test]
    fn glob_serializes_as_text() {
        let glob = path_glob("/opt/app/*");

        let json = serde_json::to_string(&glob).unwrap();

        assert_eq!(json, r#""/opt/app/*""#);
        assert_eq!(serde_json::from_str::<PathGlob>(&json).unwrap(), glob);
        assert!(serde_json::from_str::<PathGlob>(r#""relative/*""#).is_err());
    }
}
