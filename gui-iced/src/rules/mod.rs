//! The rules window: every rule with a filter, and buttons to enable, disable, delete and
//! change the lifetime of each.

pub mod view;

use std::fmt;

use tollgate_proxy::protocol::{Request, RuleChanges};
use tollgate_rules::{Lifetime, LifetimeSpec, Rule, RuleId};

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

    /// Returns the choice that describes `rule`'s current lifetime.
    pub fn of(rule: &Rule) -> Option<Self> {
        match rule.lifetime {
            Lifetime::Forever => Some(Self::Forever),
            Lifetime::For {
                secs: HOUR_SECS, ..
            } => Some(Self::Hour),
            Lifetime::UntilRestart => Some(Self::UntilRestart),
            _ => None,
        }
    }

    /// Returns the lifetime to request, which starts when the daemon receives it.
    pub fn spec(self) -> LifetimeSpec {
        match self {
            Self::Hour => LifetimeSpec::For { secs: HOUR_SECS },
            Self::UntilRestart => LifetimeSpec::UntilRestart,
            Self::Forever => LifetimeSpec::Forever,
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
    pub rules: Vec<Rule>,
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
            RulesMessage::SetEnabled(id, enabled) => edit(
                id,
                RuleChanges {
                    enabled: Some(enabled),
                    ..RuleChanges::default()
                },
            ),
            RulesMessage::SetLifetime(id, lifetime) => edit(
                id,
                RuleChanges {
                    lifetime: Some(lifetime.spec()),
                    ..RuleChanges::default()
                },
            ),
            RulesMessage::Remove(id) => Request::RemoveRule { id },
        };
        vec![request]
    }

    /// Returns the rules whose description contains the filter text.
    pub fn listed(&self) -> Vec<&Rule> {
        let filter = self.filter.trim().to_lowercase();
        self.rules
            .iter()
            .filter(|rule| filter.is_empty() || describe(rule).to_lowercase().contains(&filter))
            .collect()
    }
}

fn edit(id: RuleId, changes: RuleChanges) -> Request {
    Request::EditRule {
        id,
        changes: Box::new(changes),
    }
}

/// Returns a rule as one line, such as `allow /usr/bin/curl -> 203.0.113.10 port 80 tcp`.
pub fn describe(rule: &Rule) -> String {
    let mut line = format!("{} {} -> {}", rule.action, rule.subject, rule.destination);
    if rule.priority {
        line.push_str(" [priority]");
    }
    if !rule.note.is_empty() {
        line.push_str(&format!(" ({})", rule.note));
    }
    line
}

#[cfg(test)]
pub(crate) mod tests {
    use tollgate_rules::{Action, Destination, PortMatch, Subject};

    use super::*;

    pub(crate) fn rule(id: u64, lifetime: Lifetime, port: u16) -> Rule {
        let destination = Destination {
            address: tollgate_rules::AddressMatch::Ip("203.0.113.10".parse().unwrap()),
            port: PortMatch::Port(port),
            protocol: tollgate_rules::ProtocolMatch::Tcp,
        };
        Rule::new(
            RuleId(id),
            Subject::any(),
            destination,
            Action::Allow,
            lifetime,
        )
    }

    #[test]
    fn changes_become_requests() {
        let mut view = RulesView::default();
        let id = RuleId(2);
        assert_eq!(
            view.update(RulesMessage::SetEnabled(id, false)),
            vec![edit(
                id,
                RuleChanges {
                    enabled: Some(false),
                    ..RuleChanges::default()
                }
            )]
        );
        assert_eq!(
            view.update(RulesMessage::SetLifetime(id, RuleLifetime::Hour)),
            vec![edit(
                id,
                RuleChanges {
                    lifetime: Some(LifetimeSpec::For { secs: HOUR_SECS }),
                    ..RuleChanges::default()
                }
            )]
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
                rule(1, Lifetime::Forever, 80),
                rule(2, Lifetime::UntilRestart, 443),
            ],
            ..RulesView::default()
        };
        view.update(RulesMessage::Filter("PORT 443".into()));
        let listed = view.listed();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, RuleId(2));
    }

    #[test]
    fn describe_names_every_part() {
        assert_eq!(
            describe(&rule(1, Lifetime::Forever, 80)),
            "allow any process -> 203.0.113.10 port 80 tcp"
        );
    }
}
