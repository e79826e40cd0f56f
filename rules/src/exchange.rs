//! The export file: a JSON document that carries rules between daemons and back.
//!
//! ```json
//! {"format": "tollgate-rules", "version": 1, "rules": [ {"id": 1, ...}, ... ]}
//! ```
//!
//! Each rule has the JSON shape of [`Rule`]. Exporting and importing the result gives the
//! same rules, field by field. Importing checks every rule before any is applied, and an
//! error names the rule's position in the file (from 1) and the field.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::model::{Rule, RuleId, lifetime::Lifetime};

/// The `format` value of an export file.
pub const EXPORT_FORMAT: &str = "tollgate-rules";

/// The `version` of the export format that this build writes and reads.
pub const EXPORT_VERSION: u32 = 1;

/// The top level of an export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// Always [`EXPORT_VERSION`].
    pub version: u32,
    /// The rules, in id order.
    pub rules: Vec<Rule>,
}

/// Returns the export file of `rules` as pretty-printed JSON, rules in id order.
///
/// Fails only for a path that is not UTF-8, which JSON cannot carry.
pub fn export_rules<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
) -> Result<String, serde_json::Error> {
    let mut rules: Vec<Rule> = rules.into_iter().cloned().collect();
    rules.sort_by_key(|rule| rule.id);
    let file = RuleFile {
        format: EXPORT_FORMAT.to_owned(),
        version: EXPORT_VERSION,
        rules,
    };
    let mut text = serde_json::to_string_pretty(&file)?;
    text.push('\n');
    Ok(text)
}

/// Parses an export file and checks every rule, returning the rules only if all are valid.
pub fn parse_rule_file(text: &str) -> Result<Vec<Rule>, ImportError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(ImportError::Syntax)?;
    let format = value.get("format").and_then(|format| format.as_str());
    if format != Some(EXPORT_FORMAT) {
        return Err(ImportError::NotRuleFile);
    }
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(version) if version == u64::from(EXPORT_VERSION) => {}
        found => return Err(ImportError::Version { found }),
    }
    if let Some(serde_json::Value::Object(fields)) = Some(&value)
        && let Some(unknown) = fields
            .keys()
            .find(|key| !matches!(key.as_str(), "format" | "version" | "rules"))
    {
        return Err(ImportError::UnknownField(unknown.clone()));
    }
    let Some(serde_json::Value::Array(items)) = value.get("rules") else {
        return Err(ImportError::NoRules);
    };

    let rules = items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_rule(index + 1, item))
        .collect::<Result<Vec<Rule>, ImportError>>()?;
    check_rules(&rules)?;
    Ok(rules)
}

/// Checks rules to import: none may have lifetime once, and no two may share an id.
pub fn check_rules(rules: &[Rule]) -> Result<(), ImportError> {
    let mut ids = HashSet::new();
    for (index, rule) in rules.iter().enumerate() {
        let position = index + 1;
        if rule.lifetime == Lifetime::Once {
            return Err(invalid(
                position,
                Some(rule.id),
                "lifetime",
                "a rule cannot have lifetime once",
            ));
        }
        if !ids.insert(rule.id) {
            return Err(invalid(
                position,
                Some(rule.id),
                "id",
                format!("id {} appears twice in the file", rule.id),
            ));
        }
    }
    Ok(())
}

fn parse_rule(position: usize, item: &serde_json::Value) -> Result<Rule, ImportError> {
    let id = item
        .get("id")
        .and_then(serde_json::Value::as_u64)
        .map(RuleId);
    serde_path_to_error::deserialize(item).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { "rule".to_owned() } else { path };
        invalid(position, id, &field, error.into_inner().to_string())
    })
}

fn invalid(
    position: usize,
    id: Option<RuleId>,
    field: &str,
    message: impl Into<String>,
) -> ImportError {
    ImportError::InvalidRule {
        position,
        id,
        field: field.to_owned(),
        message: message.into(),
    }
}

/// A rule file that cannot be imported. Nothing of it is applied.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The text is not JSON.
    #[error("the rule file is not valid JSON")]
    Syntax(#[source] serde_json::Error),
    /// The JSON lacks `"format": "tollgate-rules"`.
    #[error("the file is not a Tollgate rule export: \"format\" must be \"{EXPORT_FORMAT}\"")]
    NotRuleFile,
    /// The format version is missing or not one this build reads.
    #[error(
        "the rule file has version {}, but this build reads only version {EXPORT_VERSION}",
        .found.map_or("none".to_owned(), |version| version.to_string())
    )]
    Version {
        /// The version found.
        found: Option<u64>,
    },
    /// The top level has a field other than format, version and rules.
    #[error("the rule file has an unknown field `{0}`")]
    UnknownField(String),
    /// The `rules` list is missing.
    #[error("the rule file has no \"rules\" list")]
    NoRules,
    /// One rule is invalid.
    #[error(
        "rule {position}{} in the file is invalid: field `{field}`: {message}",
        .id.map_or(String::new(), |id| format!(" (id {id})"))
    )]
    InvalidRule {
        /// Position of the rule in the file, from 1.
        position: usize,
        /// Its id, when it has a valid one.
        id: Option<RuleId>,
        /// Path of the invalid field, such as `destination.port`.
        field: String,
        /// The problem with the field.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Destination, subject::Subject};

    fn sample_rules() -> Vec<Rule> {
        let mut first = Rule::new(
            RuleId(1),
            Subject::executable("/usr/bin/curl"),
            Destination {
                address: "*.example.com".parse().unwrap(),
                port: "80,443".parse().unwrap(),
                protocol: "tcp".parse().unwrap(),
            },
            Action::Allow,
            Lifetime::Forever,
        );
        first.note = "web".into();
        first.hits = 4;
        first.last_hit_unix_ms = Some(1_700_000_000_123);
        let mut second = Rule::new(
            RuleId(7),
            Subject {
                executable: Some("/opt/app/*".parse().unwrap()),
                parent: Some("/usr/bin/bash".parse().unwrap()),
                user: Some("alice".parse().unwrap()),
                ..Subject::any()
            },
            Destination {
                address: "10.0.0.0/8".parse().unwrap(),
                ..Destination::any()
            },
            Action::Deny,
            Lifetime::For {
                secs: 60,
                expires_boottime_ms: 99_000,
            },
        );
        second.priority = true;
        second.enabled = false;
        vec![second, first]
    }

    #[test]
    fn export_then_import_is_exact() {
        let rules = sample_rules();

        let text = export_rules(&rules).unwrap();
        let imported = parse_rule_file(&text).unwrap();

        let mut expected = rules;
        expected.sort_by_key(|rule| rule.id);
        assert_eq!(imported, expected);
        assert_eq!(export_rules(&imported).unwrap(), text);
    }

    #[test]
    fn invalid_rule_names_position_and_field() {
        let text = r#"{"format":"tollgate-rules","version":1,"rules":[
            {"id":1,"action":"allow","lifetime":"forever","destination":{"port":{"list":[0]}}}]}"#;

        let error = parse_rule_file(text).unwrap_err();

        let message = error.to_string();
        assert!(
            matches!(&error, ImportError::InvalidRule { position: 1, id: Some(RuleId(1)), field, .. } if field == "destination.port"),
            "{message}"
        );
        assert!(message.contains("rule 1 (id 1)"), "{message}");
    }

    #[test]
    fn unknown_rule_field_is_named() {
        let text = r#"{"format":"tollgate-rules","version":1,"rules":[
            {"id":1,"action":"allow","lifetime":"forever"},
            {"id":2,"action":"deny","lifetime":"forever","subject":{"exe":"/x"}}]}"#;

        let error = parse_rule_file(text).unwrap_err();

        let message = error.to_string();
        assert!(message.contains("rule 2 (id 2)"), "{message}");
        assert!(message.contains("subject"), "{message}");
        assert!(message.contains("exe"), "{message}");
    }

    #[test]
    fn once_and_duplicate_ids_are_rejected() {
        let once = r#"{"format":"tollgate-rules","version":1,"rules":[
            {"id":1,"action":"allow","lifetime":"once"}]}"#;
        let twice = r#"{"format":"tollgate-rules","version":1,"rules":[
            {"id":1,"action":"allow","lifetime":"forever"},
            {"id":1,"action":"deny","lifetime":"forever"}]}"#;

        let error = parse_rule_file(once).unwrap_err();
        assert!(
            matches!(&error, ImportError::InvalidRule { position: 1, field, .. } if field == "lifetime"),
            "{error}"
        );
        let error = parse_rule_file(twice).unwrap_err();
        assert!(
            matches!(&error, ImportError::InvalidRule { position: 2, field, .. } if field == "id"),
            "{error}"
        );
    }

    #[test]
    fn wrong_files_are_rejected() {
        assert!(matches!(parse_rule_file("{"), Err(ImportError::Syntax(_))));
        assert!(matches!(
            parse_rule_file(r#"{"rules":[]}"#),
            Err(ImportError::NotRuleFile)
        ));
        assert!(matches!(
            parse_rule_file(r#"{"format":"tollgate-rules","version":2,"rules":[]}"#),
            Err(ImportError::Version { found: Some(2) })
        ));
        assert!(matches!(
            parse_rule_file(r#"{"format":"tollgate-rules","version":1}"#),
            Err(ImportError::NoRules)
        ));
        assert!(matches!(
            parse_rule_file(r#"{"format":"tollgate-rules","version":1,"rules":[],"x":1}"#),
            Err(ImportError::UnknownField(_))
        ));
    }
}
