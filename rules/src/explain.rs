//! Explanations: which rule decides a connection and why it beats the other matching rules.

use serde::{Deserialize, Serialize};

use crate::{
    connection::Connection,
    matching::{address_matches, subject_matches},
    model::{Action, Rule, RuleId, lifetime::Clock},
    precedence::{self, Step},
    ruleset::RuleSet,
};

/// The reasons for a connection's verdict: the deciding rule and the rules it beats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The deciding rule, or `None` when the connection would be held for a prompt.
    pub winner: Option<RuleId>,
    /// The action of the deciding rule.
    pub action: Option<Action>,
    /// Every other rule in force that matches, in precedence order, with the step at which
    /// the winner beats it.
    pub beaten: Vec<Contest>,
    /// Rules whose conditions match but that are disabled or whose lifetime has ended.
    pub inactive: Vec<Inactive>,
}

/// The comparison of the winner with one other matching rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contest {
    /// The rule that lost.
    pub loser: RuleId,
    /// Its action.
    pub action: Action,
    /// The first step of the precedence table at which the two rules differ.
    pub step: Step,
    /// The reason the winner is better at that step.
    pub reason: String,
}

/// A rule that would match if it were in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inactive {
    /// The rule.
    pub id: RuleId,
    /// Why it is not in force: `disabled` or `expired`.
    pub reason: String,
}

impl RuleSet {
    /// Explains which rule decides `connection` at `now`, comparing the winner with every other
    /// matching rule. Takes time linear in the number of rules.
    pub fn explain(&self, connection: &Connection<'_>, now: &Clock) -> Explanation {
        let mut active: Vec<&Rule> = Vec::new();
        let mut inactive = Vec::new();
        for rule in self.iter().filter(|rule| conditions_hold(rule, connection)) {
            if !rule.enabled {
                inactive.push(Inactive {
                    id: rule.id,
                    reason: "disabled".to_owned(),
                });
            } else if rule.lifetime.is_expired(now) {
                inactive.push(Inactive {
                    id: rule.id,
                    reason: "expired".to_owned(),
                });
            } else {
                active.push(rule);
            }
        }
        active.sort_by(|a, b| precedence::compare(a, b));

        let Some((winner, others)) = active.split_first() else {
            return Explanation {
                winner: None,
                action: None,
                beaten: Vec::new(),
                inactive,
            };
        };
        let beaten = others.iter().map(|loser| contest(winner, loser)).collect();
        Explanation {
            winner: Some(winner.id),
            action: Some(winner.action),
            beaten,
            inactive,
        }
    }
}

fn contest(winner: &Rule, loser: &Rule) -> Contest {
    let step = precedence::deciding_step(winner, loser);
    Contest {
        loser: loser.id,
        action: loser.action,
        step,
        reason: step.reason(winner, loser),
    }
}

fn conditions_hold(rule: &Rule, connection: &Connection<'_>) -> bool {
    subject_matches(&rule.subject, connection, false)
        && address_matches(&rule.destination.address, connection)
        && rule.destination.port.contains(connection.port)
        && rule.destination.protocol.contains(connection.protocol)
}
