//! The error of a rule field that failed to parse from text.

/// A rule field that failed to parse from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {reason}")]
pub struct ParseError {
    /// The field being parsed.
    pub field: &'static str,
    /// The text that was rejected.
    pub value: String,
    /// What was expected instead.
    pub reason: String,
}

impl ParseError {
    pub(crate) fn new(field: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            field,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::Action;

    #[test]
    fn parse_error_names_field_and_value() {
        let error = "maybe".parse::<Action>().unwrap_err();

        assert_eq!(
            error.to_string(),
            r#"invalid action "maybe": expected allow or deny"#
        );
    }
}
