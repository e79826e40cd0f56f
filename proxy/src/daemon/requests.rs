//! The control requests that change the daemon's state: decisions on pending requests, and
//! adding, changing, removing and expiring rules.

use std::time::SystemTime;

use tollgate_rules::{Connection, Lifetime, Rule, RuleId, RuleSet};
use tracing::{error, info};

use super::{RequestError, Shared, State};
use crate::{
    decision::{self, Decision},
    expiry::Expiry,
    holding::{Verdict, unix_ms},
    protocol::{DecidedBy, ErrorCode, NewRule, PendingInfo, Response, RuleInfo},
};

impl Shared {
    /// Returns every rule in precedence order, with its expiry.
    pub fn rules(&self) -> Vec<RuleInfo> {
        let state = self.lock();
        state
            .rules
            .iter()
            .map(|rule| state.rule_info(rule))
            .collect()
    }

    /// Settles the pending request `decision.id`, adding a rule for it unless its lifetime is
    /// once. A stored rule is on disk before this returns. A decision with a wider scope than
    /// the request's own destination also settles the other pending requests it covers.
    pub fn decide(&self, decision: Decision) -> Result<Response, RequestError> {
        let mut state = self.lock();
        let id = decision.id;
        let Some(info) = state.pending.list().into_iter().find(|info| info.id == id) else {
            return Err((
                ErrorCode::NotFound,
                format!("no pending request with id {id}; list them with `tollgate pending`"),
            ));
        };
        let now = unix_ms(SystemTime::now());
        let expiry = decision::expiry_for(&info, &decision, now)?;
        let rule = decision::rule_for_pending(&info, &decision, state.rules.next_id())?;
        let added = match decision.lifetime {
            Lifetime::Once => None,
            _ => {
                self.add_rule_locked(&mut state, rule.clone(), expiry)?;
                Some(state.rule_info(&rule))
            }
        };

        let verdict = Verdict {
            action: decision.action,
            by: DecidedBy::User,
        };
        let mut settled = match state.pending.take(id) {
            Some(group) => group.settle(verdict),
            None => 0,
        };
        if added.is_none() && decision.is_wide() {
            // A wide "once" adds no rule but settles the whole burst it covers.
            settled += settle_covered(&mut state, rule, verdict);
        }
        settled += settle_decided(&mut state);
        info!(pending = id, action = %decision.action, lifetime = %decision.lifetime,
            scope = ?decision.scope, port = ?decision.port, settled, "pending request decided");
        Ok(Response::Decided {
            settled,
            rule: added,
        })
    }

    /// Adds a rule from a client and settles the pending requests it decides.
    pub fn add_rule(&self, new: NewRule) -> Result<Response, RequestError> {
        if new.lifetime == Lifetime::Once {
            return Err((
                ErrorCode::Invalid,
                "a rule cannot have lifetime once; use until_restart or forever".into(),
            ));
        }
        let mut state = self.lock();
        let rule = Rule {
            id: state.rules.next_id(),
            subject: new.subject,
            destination: new.destination,
            action: new.action,
            lifetime: new.lifetime,
            enabled: true,
            note: new.note,
            created_unix: unix_ms(SystemTime::now()) / 1000,
        };
        self.add_rule_locked(&mut state, rule.clone(), None)?;
        let settled = settle_decided(&mut state);
        info!(rule = %rule.id, action = %rule.action, lifetime = %rule.lifetime, "rule added");
        Ok(Response::RuleAdded { rule, settled })
    }

    /// Removes a rule, from the store too when it is stored.
    pub fn remove_rule(&self, id: RuleId) -> Result<Response, RequestError> {
        let mut state = self.lock();
        let rule = state.existing_rule(id)?;
        if rule.lifetime == Lifetime::Forever {
            self.unstore(id)?;
        }
        state.rules.remove(id);
        state.expiries.remove(&id);
        info!(rule = %id, "rule removed");
        Ok(Response::RuleRemoved { id })
    }

    /// Enables or disables rule `id` or changes its lifetime, storing or unstoring it as the
    /// new lifetime requires. Enabling a rule settles the pending requests it decides.
    pub fn update_rule(
        &self,
        id: RuleId,
        enabled: Option<bool>,
        lifetime: Option<Lifetime>,
        expires_after_secs: Option<u64>,
    ) -> Result<Response, RequestError> {
        let mut state = self.lock();
        let old = state.existing_rule(id)?;
        let mut rule = old.clone();
        rule.enabled = enabled.unwrap_or(old.enabled);
        rule.lifetime = lifetime.unwrap_or(old.lifetime);
        if rule.lifetime == Lifetime::Once {
            return Err((
                ErrorCode::Invalid,
                "a rule cannot have lifetime once; use until_restart or forever".into(),
            ));
        }
        let now = unix_ms(SystemTime::now());
        let deadline = decision::expiry_after(rule.lifetime, expires_after_secs, now)?;

        if rule.lifetime == Lifetime::Forever {
            self.store_rule(&rule)?;
        } else if old.lifetime == Lifetime::Forever {
            self.unstore(id)?;
        }
        if lifetime.is_some() {
            state.expiries.remove(&id);
        }
        if let Some(deadline) = deadline {
            state.expiries.insert(id, deadline);
        }
        state.rules.insert(rule.clone());
        let settled = settle_decided(&mut state);
        info!(rule = %id, enabled = rule.enabled, lifetime = %rule.lifetime, settled,
            "rule updated");
        Ok(Response::RuleUpdated {
            rule: state.rule_info(&rule),
        })
    }

    /// Removes the rules whose expiry is due and returns their ids.
    pub fn expire_rules(&self) -> Vec<RuleId> {
        let now = unix_ms(SystemTime::now());
        let mut state = self.lock();
        let due: Vec<RuleId> = state
            .expiries
            .iter()
            .filter(|(_, expiry)| expiry.is_due(now))
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            state.expiries.remove(id);
            state.rules.remove(*id);
            info!(rule = %id, "rule expired");
        }
        due
    }

    fn add_rule_locked(
        &self,
        state: &mut State,
        rule: Rule,
        expiry: Option<Expiry>,
    ) -> Result<(), RequestError> {
        if rule.lifetime == Lifetime::Forever {
            self.store_rule(&rule)?;
        }
        if let Some(expiry) = expiry {
            state.expiries.insert(rule.id, expiry);
        }
        state.rules.insert(rule);
        Ok(())
    }

    fn store_rule(&self, rule: &Rule) -> Result<(), RequestError> {
        self.store.insert(rule).map_err(|err| {
            error!(rule = %rule.id, error = %err, "failed to store rule");
            (ErrorCode::Internal, format!("failed to store rule: {err}"))
        })
    }

    fn unstore(&self, id: RuleId) -> Result<(), RequestError> {
        self.store.remove(id).map(drop).map_err(|err| {
            error!(rule = %id, error = %err, "failed to remove stored rule");
            (
                ErrorCode::Internal,
                format!("failed to remove rule {id}: {err}"),
            )
        })
    }
}

impl State {
    fn rule_info(&self, rule: &Rule) -> RuleInfo {
        let expiry = self.expiries.get(&rule.id);
        RuleInfo {
            rule: rule.clone(),
            expires_unix_ms: expiry.and_then(Expiry::deadline_unix_ms),
            until_exit_of: expiry.and_then(Expiry::pid),
        }
    }

    fn existing_rule(&self, id: RuleId) -> Result<Rule, RequestError> {
        self.rules.get(id).cloned().ok_or_else(|| {
            (
                ErrorCode::NotFound,
                format!("no rule with id {id}; list them with `tollgate rules list`"),
            )
        })
    }
}

/// Settles every pending request that the current rules decide. Returns the number of
/// connections settled.
pub(super) fn settle_decided(state: &mut State) -> usize {
    let State { rules, pending, .. } = state;
    let mut verdicts = Vec::new();
    let groups = pending.take_matching(|info| match rules.decide(&connection_of(info)) {
        Some(rule) => {
            verdicts.push(Verdict {
                action: rule.action,
                by: DecidedBy::Rule { rule: rule.id },
            });
            true
        }
        None => false,
    });
    groups
        .into_iter()
        .zip(verdicts)
        .map(|(group, verdict)| group.settle(verdict))
        .sum()
}

/// Settles with `verdict` every pending request that `rule` alone would match.
fn settle_covered(state: &mut State, rule: Rule, verdict: Verdict) -> usize {
    let single = RuleSet::from_rules(vec![rule]);
    let groups = state
        .pending
        .take_matching(|info| single.decide(&connection_of(info)).is_some());
    groups.into_iter().map(|group| group.settle(verdict)).sum()
}

fn connection_of(info: &PendingInfo) -> Connection<'_> {
    Connection {
        executable: info
            .process
            .as_ref()
            .and_then(|process| process.executable.as_deref()),
        ip: info.destination.ip(),
        port: info.destination.port(),
        protocol: info.protocol,
    }
}
