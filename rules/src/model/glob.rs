//! Glob patterns: for executable paths (`/opt/app/*`) and for command lines (`python3 *`).

use std::{fmt, hash, os::unix::ffi::OsStrExt, path::Path, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// A glob pattern for absolute paths, such as `/opt/app/*` or `/usr/lib/**/firefox`.
///
/// `*` and `?` match within one path component, `**` matches any characters across
/// components, `[abc]` or `[a-z]` one of the characters (`[!a-z]` one that is not), `{a,b}`
/// one of the alternatives, and `\` escapes the next character. Serialized as the pattern
/// text.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathGlob(Pattern);

impl PathGlob {
    /// Returns the pattern text.
    pub fn as_str(&self) -> &str {
        &self.0.0.text
    }

    /// Returns whether `path` matches the pattern. A path that is not UTF-8 never matches.
    pub fn is_match(&self, path: &Path) -> bool {
        std::str::from_utf8(path.as_os_str().as_bytes()).is_ok_and(|text| self.0.is_match(text))
    }

    /// Returns the number of literal characters of the pattern (those outside `[...]` and
    /// `{...}` other than `*` and `?`). More literal characters make a glob more specific.
    pub fn literal_len(&self) -> usize {
        self.0.0.literal_len
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
        &self.0.0.text
    }

    /// Returns whether `text` matches the pattern.
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl FromStr for TextGlob {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::compile(s, false).map(Self)
    }
}

/// A compiled pattern with its text, shared between clones.
#[derive(Clone)]
struct Pattern(Arc<CompiledPattern>);

struct CompiledPattern {
    text: String,
    /// For a pattern that is a literal followed by one `*` or `**`, the literal and whether
    /// the star crosses `/`: matched without the general algorithm.
    prefix_star: Option<(String, bool)>,
    /// One token list per alternative after expanding `{a,b}`.
    alternatives: Vec<Vec<Token>>,
    literal_len: usize,
    /// Whether `*` and `?` stop at `/`.
    literal_separator: bool,
}

/// One element of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: one character.
    One,
    /// `*`: any run of characters.
    Star,
    /// `**`: any run of characters, `/` included.
    DoubleStar,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Maximum pattern length and maximum number of alternatives after expanding braces, so that
/// a rule cannot make matching arbitrarily slow.
const MAX_PATTERN_LEN: usize = 4096;
const MAX_ALTERNATIVES: usize = 64;

impl Pattern {
    fn compile(text: &str, literal_separator: bool) -> Result<Self, ParseError> {
        let invalid = |reason: &str| ParseError::new("glob", text, reason);
        if text.is_empty() {
            return Err(invalid("a pattern cannot be empty"));
        }
        if text.len() > MAX_PATTERN_LEN {
            return Err(invalid("a pattern has at most 4096 bytes"));
        }
        let alternatives = expand_braces(text).map_err(|reason| invalid(&reason))?;
        let alternatives = alternatives
            .iter()
            .map(|alternative| tokenize(alternative))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| invalid(&reason))?;
        let prefix_star = prefix_star(&alternatives, literal_separator);
        Ok(Self(Arc::new(CompiledPattern {
            text: text.to_owned(),
            prefix_star,
            alternatives,
            literal_len: literal_len(text),
            literal_separator,
        })))
    }

    fn is_match(&self, text: &str) -> bool {
        let pattern = &self.0;
        if let Some((prefix, crosses)) = &pattern.prefix_star {
            return text
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| *crosses || !rest.contains('/'));
        }
        let chars: Vec<char> = text.chars().collect();
        pattern
            .alternatives
            .iter()
            .any(|tokens| match_tokens(tokens, &chars, pattern.literal_separator))
    }
}

/// Returns the literal and whether the star crosses `/`, for a single alternative that is
/// literals followed by one `*` or `**`.
fn prefix_star(alternatives: &[Vec<Token>], literal_separator: bool) -> Option<(String, bool)> {
    let [tokens] = alternatives else {
        return None;
    };
    let (last, literals) = tokens.split_last()?;
    let crosses = match last {
        Token::Star => !literal_separator,
        Token::DoubleStar => true,
        _ => return None,
    };
    let prefix = literals
        .iter()
        .map(|token| match token {
            Token::Literal(c) => Some(*c),
            _ => None,
        })
        .collect::<Option<String>>()?;
    Some((prefix, crosses))
}

/// Expands `{a,b}` groups into one pattern per combination. Groups do not nest.
fn expand_braces(text: &str) -> Result<Vec<String>, String> {
    let mut results = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let escaped = chars.next().ok_or("a pattern cannot end with \\")?;
                for result in &mut results {
                    result.push('\\');
                    result.push(escaped);
                }
            }
            '{' => {
                let mut group = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') => return Err("braces {...} cannot nest".to_owned()),
                        Some(c) => group.push(c),
                        None => return Err("unclosed brace {".to_owned()),
                    }
                }
                let options: Vec<&str> = group.split(',').collect();
                results = results
                    .iter()
                    .flat_map(|prefix| {
                        options
                            .iter()
                            .map(move |option| format!("{prefix}{option}"))
                    })
                    .collect();
                if results.len() > MAX_ALTERNATIVES {
                    return Err("braces expand to more than 64 alternatives".to_owned());
                }
            }
            '}' => return Err("unopened brace }".to_owned()),
            c => results.iter_mut().for_each(|result| result.push(c)),
        }
    }
    Ok(results)
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            '\\' => Token::Literal(chars.next().ok_or("a pattern cannot end with \\")?),
            '?' => Token::One,
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                Token::DoubleStar
            }
            '*' => Token::Star,
            '[' => class(&mut chars)?,
            ']' => return Err("unopened bracket ]".to_owned()),
            c => Token::Literal(c),
        };
        tokens.push(token);
    }
    Ok(tokens)
}

/// Parses a class after its `[`: `[abc]`, `[a-z]`, `[!a-z]` or `[^a-z]`.
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Token, String> {
    let negated = matches!(chars.peek(), Some('!' | '^'));
    if negated {
        chars.next();
    }
    let mut ranges = Vec::new();
    loop {
        let first = match chars.next() {
            Some(']') if !ranges.is_empty() => break,
            Some(c) => c,
            None => return Err("unclosed bracket [".to_owned()),
        };
        let mut lookahead = chars.clone();
        if lookahead.next() == Some('-') && lookahead.peek().is_some_and(|c| *c != ']') {
            chars.next();
            let last = chars.next().ok_or("unclosed bracket [")?;
            if last < first {
                return Err(format!("invalid range {first}-{last} in brackets"));
            }
            ranges.push((first, last));
        } else {
            ranges.push((first, first));
        }
    }
    Ok(Token::Class { negated, ranges })
}

/// Matches `text` against `tokens` in time proportional to their product: `reach[p]` is
/// whether the tokens so far can consume exactly the first `p` characters.
fn match_tokens(tokens: &[Token], text: &[char], literal_separator: bool) -> bool {
    let mut reach = vec![false; text.len() + 1];
    let mut next = vec![false; text.len() + 1];
    reach[0] = true;
    for token in tokens {
        next.fill(false);
        match token {
            Token::Star | Token::DoubleStar => {
                let crosses = *token == Token::DoubleStar || !literal_separator;
                let mut carry = false;
                for position in 0..=text.len() {
                    carry |= reach[position];
                    next[position] = carry;
                    if !crosses && text.get(position) == Some(&'/') {
                        carry = false;
                    }
                }
            }
            _ => {
                for (position, c) in text.iter().enumerate() {
                    next[position + 1] =
                        reach[position] && matches_one(token, *c, literal_separator);
                }
            }
        }
        if !next.contains(&true) {
            return false;
        }
        std::mem::swap(&mut reach, &mut next);
    }
    reach[text.len()]
}

/// Returns whether a single-character token matches `c`.
fn matches_one(token: &Token, c: char, literal_separator: bool) -> bool {
    match token {
        Token::Literal(expected) => c == *expected,
        Token::One => !(literal_separator && c == '/'),
        Token::Class { negated, ranges } => {
            let inside = ranges
                .iter()
                .any(|(first, last)| (*first..=*last).contains(&c));
            inside != *negated && !(literal_separator && c == '/')
        }
        Token::Star | Token::DoubleStar => false,
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
                self.0.0.text == other.0.0.text
            }
        }

        impl Eq for $type {}

        impl hash::Hash for $type {
            fn hash<H: hash::Hasher>(&self, state: &mut H) {
                self.0.0.text.hash(state);
            }
        }

        impl fmt::Debug for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($type), self.0.0.text)
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0.0.text)
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
                glob.0.0.text.clone()
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

    #[test]
    fn path_glob_classes_braces_and_escapes() {
        assert!(path_glob("/usr/bin/python3.[0-9]").is_match(Path::new("/usr/bin/python3.9")));
        assert!(!path_glob("/usr/bin/python3.[!0-9]").is_match(Path::new("/usr/bin/python3.9")));
        assert!(path_glob("/usr/bin/python3.[^0-9]").is_match(Path::new("/usr/bin/python3.x")));
        assert!(path_glob("/usr/bin/{curl,wget}").is_match(Path::new("/usr/bin/wget")));
        assert!(!path_glob("/usr/bin/{curl,wget}").is_match(Path::new("/usr/bin/ssh")));
        assert!(path_glob("/opt/a\\*b").is_match(Path::new("/opt/a*b")));
        assert!(!path_glob("/opt/a\\*b").is_match(Path::new("/opt/axb")));
        assert!(path_glob("/opt/[*]").is_match(Path::new("/opt/*")));
        assert!(!path_glob("/opt/?").is_match(Path::new("/opt/")));
        assert!(!path_glob("/opt?x").is_match(Path::new("/opt/x")));
    }

    #[test]
    fn path_glob_double_star_spans_components() {
        let glob = path_glob("/opt/**");

        assert!(glob.is_match(Path::new("/opt/a")));
        assert!(glob.is_match(Path::new("/opt/a/b/c")));
        assert!(!glob.is_match(Path::new("/opt")));
        assert!(!glob.is_match(Path::new("/optical/a")));
        assert!(path_glob("/**/bin/curl").is_match(Path::new("/usr/local/bin/curl")));
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for text in [
            "/opt/[",
            "/opt/[]",
            "/opt/{a",
            "/opt/a}",
            "/opt/{a,{b}}",
            "/opt/]",
            "/opt/a\\",
            "/opt/[z-a]",
        ] {
            let error = text.parse::<PathGlob>().unwrap_err();
            assert_eq!(error.field, "glob", "{text}");
        }
        let many_braces = "/{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}";
        assert!(many_braces.parse::<PathGlob>().is_err());
    }

    #[test]
    fn many_stars_match_quickly() {
        let glob: TextGlob = "*a*a*a*a*a*a*a*a*b".parse().unwrap();
        let text = "a".repeat(5000);

        let started = std::time::Instant::now();
        assert!(!glob.is_match(&text));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn non_utf8_path_never_matches() {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt};

        let path = Path::new(OsStr::from_bytes(b"/opt/app/\xff"));

        assert!(!path_glob("/opt/app/*").is_match(path));
    }
}
