//! The rules window: every rule with a filter, and buttons to enable, disable, delete and
//! change the lifetime of each.

pub mod view;

use std::fmt;

use tollgate_proxy::protocol::{Request, RuleInfo};
use tollgate_rules::{Lifetime, PortMatch, Rule, RuleId, Subject};

use crate::prompt::choice::HOUR_SECS;

/// A lifetime the rules window can give a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleLifetime {
    /// For one hour from now.
    Hour,
    /// Until the daemon restarts.
    UntilRestart,
    /// Stored for good.
    Forever,
}

impl RuleLifetime {
    /// Every choice, in the order the window shows them.
    pub const ALL: [Self; 3] = [Self::Hour, Self::UntilRestart, Self::Forever];

    /// Returns the choice that describes `info`'s current lifetime.
    pub fn of(info: &RuleInfo) -> Option<Self> {
        match (info.rule.lifetime, info.expires_unix_ms, info.until_exit_of) {
            (Lifetime::Forever, _, _) => Some(Self::Forever),
            (Lifetime::UntilRestart, Some(_), _) => Some(Self::Hour),
            (Lifetime::UntilRestart, None, None) => Some(Self::UntilRestart),
            _ => None,
        }
    }
}

impl fmt::Display for RuleLifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hour => "for an hour",
            Self::UntilRestart => "until restart",
            Self::Forever => "forever",
        })
    }
}

/// A change a person makes in the rules window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesMessage {
    /// Changes the filter text.
    Filter(String),
    /// Enables or disables a rule.
    SetEnabled(RuleId, bool),
    /// Changes a rule's lifetime.
    SetLifetime(RuleId, RuleLifetime),
    /// Deletes a rule.
    Remove(RuleId),
}

/// The rules the daemon last listed and the filter over them.
#[derive(Debug, Default)]
pub struct RulesView {
    /// Every rule, in precedence order.
    pub rules: Vec<RuleInfo>,
    /// Text that listed rules must contain.
    pub filter: String,
}

impl RulesView {
    /// Applies a change and returns the requests to send to the daemon.
    pub fn update(&mut self, message: RulesMessage) -> Vec<Request> {
        let request = match message {
            RulesMessage::Filter(filter) => {
                self.filter = filter;
                return Vec::new();
            }
            RulesMessage::SetEnabled(id, enabled) => Request::UpdateRule {
                id,
                enabled: Some(enabled),
                lifetime: None,
                expires_after_secs: None,
            },
            RulesMessage::SetLifetime(id, lifetime) => lifetime_request(id, lifetime),
            RulesMessage::Remove(id) => Request::RemoveRule { id },
        };
        vec![request]
    }

    /// Returns the rules whose description contains the filter text.
    pub fn listed(&self) -> Vec<&RuleInfo> {
        let filter = self.filter.trim().to_lowercase();
        self.rules
            .iter()
            .filter(|info| {
                filter.is_empty() || describe(&info.rule).to_lowercase().contains(&filter)
            })
            .collect()
    }
}

fn lifetime_request(id: RuleId, lifetime: RuleLifetime) -> Request {
    let (lifetime, expires_after_secs) = match lifetime {
        RuleLifetime::Hour => (Lifetime::UntilRestart, Some(HOUR_SECS)),
        RuleLifetime::UntilRestart => (Lifetime::UntilRestart, None),
        RuleLifetime::Forever => (Lifetime::Forever, None),
    };
    Request::UpdateRule {
        id,
        enabled: None,
        lifetime: Some(lifetime),
        expires_after_secs,
    }
}

/// Returns a rule as one line, such as `allow /usr/bin/curl to 203.0.113.10 port 80 tcp`.
pub fn describe(rule: &Rule) -> String {
    let subject = match &rule.subject {
        Subject::Any => "any process".to_owned(),
        Subject::Executable(path) => path.display().to_string(),
    };
    let destination = &rule.destination;
    let address = match destination.address {
        tollgate_rules::AddressMatch::Any => "any host".to_owned(),
        other => other.to_string(),
    };
    let port = match destination.port {
        PortMatch::Any => "any port".to_owned(),
        PortMatch::Port(port) => format!("port {port}"),
    };
    let mut line = format!(
        "{} {subject} to {address} {port} {}",
        rule.action, destination.protocol
    );
    if !rule.note.is_empty() {
        line.push_str(&format!(" ({})", rule.note));
    }
    line
}

#[cfg(test)]
pub(crate) mod tests {
    use tollgate_rules::{Action, Destination};

    use super::*;

    pub(crate) fn rule_info(id: u64, lifetime: Lifetime, port: u16) -> RuleInfo {
        RuleInfo {
            rule: Rule {
                id: RuleId(id),
                subject: Subject::Any,
                destination: Destination {
                    address: tollgate_rules::AddressMatch::Ip("203.0.113.10".parse().unwrap()),
                    port: PortMatch::Port(port),
                    protocol: tollgate_rules::ProtocolMatch::Tcp,
                },
                action: Action::Allow,
                lifetime,
                enabled: true,
                note: String::new(),
                created_unix: 0,
            },
            expires_unix_ms: None,
            until_exit_of: None,
        }
    }

    #[test]
    fn changes_become_requests() {
        let mut view = RulesView::default();
        let id = RuleId(2);
        assert_eq!(
            view.update(RulesMessage::SetEnabled(id, false)),
            vec![Request::UpdateRule {
                id,
                enabled: Some(false),
                lifetime: None,
                expires_after_secs: None
            }]
        );
        assert_eq!(
            view.update(RulesMessage::SetLifetime(id, RuleLifetime::Hour)),
            vec![Request::UpdateRule {
                id,
                enabled: None,
                lifetime: Some(Lifetime::UntilRestart),
                expires_after_secs: Some(HOUR_SECS)
            }]
        );
        assert_eq!(
            view.update(RulesMessage::Remove(id)),
            vec![Request::RemoveRule { id }]
        );
    }

    #[test]
    fn filter_matches_description() {
        let mut view = RulesView {
            rules: vec![
                rule_info(1, Lifetime::Forever, 80),
                rule_info(2, Lifetime::UntilRestart, 443),
            ],
            ..RulesView::default()
        };
        view.update(RulesMessage::Filter("PORT 443".into()));
        let listed = view.listed();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].rule.id, RuleId(2));
    }

    #[test]
    fn describe_names_every_part() {
        let info = rule_info(1, Lifetime::Forever, 80);
        assert_eq!(
            describe(&info.rule),
            "allow any process to 203.0.113.10 port 80 tcp"
        );
    }
}
