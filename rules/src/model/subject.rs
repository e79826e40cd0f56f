//! Subjects: which processes a rule applies to.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::{
    error::ParseError,
    model::glob::{PathGlob, TextGlob},
};

/// The processes a rule applies to: every condition that is set must hold. A subject with no
/// condition is "any process" and also matches connections whose process is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Subject {
    /// The executable of the process, as a path or a glob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<ExecutableMatch>,
    /// The SHA-256 digest of the executable file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Digest>,
    /// The user the process runs as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserMatch>,
    /// The script an interpreter runs, or a pattern for the whole command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandMatch>,
    /// The executable of the parent process: `curl` via `bash`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ExecutableMatch>,
}

impl Subject {
    /// Returns the subject that matches every process.
    pub fn any() -> Self {
        Self::default()
    }

    /// Returns a subject that matches one executable path.
    pub fn executable(path: impl Into<PathBuf>) -> Self {
        Self {
            executable: Some(ExecutableMatch::Path(path.into())),
            ..Self::default()
        }
    }

    /// Returns whether no condition is set, so the subject matches every process.
    pub fn is_any(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            return f.write_str("any process");
        }
        let mut parts = Vec::new();
        if let Some(executable) = &self.executable {
            parts.push(executable.to_string());
        }
        if let Some(digest) = &self.sha256 {
            parts.push(format!("sha256 {digest}"));
        }
        if let Some(command) = &self.command {
            parts.push(command.to_string());
        }
        if let Some(parent) = &self.parent {
            parts.push(format!("via {parent}"));
        }
        if let Some(user) = &self.user {
            parts.push(format!("as user {user}"));
        }
        f.write_str(&parts.join(" "))
    }
}

/// An executable condition: one path or a glob over paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutableMatch {
    /// This absolute path exactly.
    Path(PathBuf),
    /// Every path the glob matches.
    Glob(PathGlob),
}

impl ExecutableMatch {
    /// Returns whether `path` satisfies the condition. Paths compare byte for byte, so
    /// `/usr/bin//curl` is not `/usr/bin/curl`; the kernel reports executables without such
    /// redundant parts.
    pub fn is_match(&self, path: &Path) -> bool {
        match self {
            Self::Path(expected) => expected.as_os_str() == path.as_os_str(),
            Self::Glob(glob) => glob.is_match(path),
        }
    }
}

impl fmt::Display for ExecutableMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => write!(f, "{}", path.display()),
            Self::Glob(glob) => write!(f, "{glob}"),
        }
    }
}

impl FromStr for ExecutableMatch {
    type Err = ParseError;

    /// Parses an absolute path, or a glob when the text has `*`, `?`, `[`, `{` or `\\`. Redundant
    /// `/` and `.` components of a path are dropped.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if PathGlob::is_pattern(s) {
            return s.parse().map(Self::Glob);
        }
        let path = PathBuf::from(s);
        if !path.is_absolute() {
            return Err(ParseError::new(
                "executable",
                s,
                "expected an absolute path or a glob such as /opt/app/*",
            ));
        }
        Ok(Self::Path(path.components().collect()))
    }
}

/// A user condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserMatch {
    /// A numeric user id.
    Uid(u32),
    /// A user name, compared with the name the daemon found for the process's uid.
    Name(String),
}

impl fmt::Display for UserMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(uid) => write!(f, "{uid}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

impl FromStr for UserMatch {
    type Err = ParseError;

    /// Parses a numeric uid or a user name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(uid) = s.parse() {
            return Ok(Self::Uid(uid));
        }
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$');
        if s.is_empty() || !s.chars().all(valid) {
            return Err(ParseError::new(
                "user",
                s,
                "expected a uid or a user name of letters, digits, _, -, . or $",
            ));
        }
        Ok(Self::Name(s.to_owned()))
    }
}

/// A condition on what the process runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandMatch {
    /// The script an interpreter (`python3`, `bash`, `node`) runs, as an absolute path.
    Script(PathBuf),
    /// A pattern for the command line: the arguments joined with single spaces.
    Line(TextGlob),
}

impl fmt::Display for CommandMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Script(path) => write!(f, "running {}", path.display()),
            Self::Line(glob) => write!(f, "with command line {glob:?}", glob = glob.as_str()),
        }
    }
}

/// A SHA-256 digest, written as 64 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest(pub [u8; 32]);

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Sha256Digest {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseError::new("sha256", s, "expected 64 hexadecimal digits");
        if s.len() != 64 || !s.is_ascii() {
            return Err(invalid());
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(s.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
        }
        Ok(Self(digest))
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = ParseError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Sha256Digest> for String {
    fn from(digest: Sha256Digest) -> Self {
        digest.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_match_parses_path_or_glob() {
        assert_eq!(
            "/usr/bin/curl".parse(),
            Ok(ExecutableMatch::Path(PathBuf::from("/usr/bin/curl")))
        );
        assert!(matches!(
            "/opt/app/*".parse::<ExecutableMatch>(),
            Ok(ExecutableMatch::Glob(_))
        ));

        let error = "curl".parse::<ExecutableMatch>().unwrap_err();
        assert_eq!(error.field, "executable");
    }

    #[test]
    fn user_match_parses_uid_or_name() {
        assert_eq!("1000".parse(), Ok(UserMatch::Uid(1000)));
        assert_eq!("alice".parse(), Ok(UserMatch::Name("alice".into())));
        assert!("al ice".parse::<UserMatch>().is_err());
        assert!("".parse::<UserMatch>().is_err());
    }

    #[test]
    fn sha256_round_trips_hex() {
        let text = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

        let digest: Sha256Digest = text.parse().unwrap();

        assert_eq!(digest.to_string(), text);
        assert_eq!(digest.0[0], 0xe3);
        assert!("e3b0".parse::<Sha256Digest>().is_err());
        assert!(text.replace('e', "g").parse::<Sha256Digest>().is_err());
        assert!(format!("{}é", &text[..62]).parse::<Sha256Digest>().is_err());
    }

    #[test]
    fn subject_serializes_only_set_conditions() {
        let mut subject = Subject::executable("/usr/bin/curl");
        subject.parent = Some("/usr/bin/bash".parse().unwrap());

        let json = serde_json::to_string(&subject).unwrap();

        assert_eq!(
            json,
            r#"{"executable":{"path":"/usr/bin/curl"},"parent":{"path":"/usr/bin/bash"}}"#
        );
        assert_eq!(serde_json::to_string(&Subject::any()).unwrap(), "{}");
        assert!(serde_json::from_str::<Subject>(r#"{"exe":"/x"}"#).is_err());
    }

    #[test]
    fn subject_displays_conditions() {
        let mut subject = Subject::executable("/usr/bin/curl");
        subject.parent = Some("/usr/bin/bash".parse().unwrap());
        subject.user = Some(UserMatch::Name("alice".into()));

        assert_eq!(
            subject.to_string(),
            "/usr/bin/curl via /usr/bin/bash as user alice"
        );
        assert_eq!(Subject::any().to_string(), "any process");
    }
}
