//! Control requests that read or change rules: decisions on pending requests, adding, editing,
//! removing and importing rules, listing them and explaining a verdict.

use std::net::SocketAddr;

use tollgate_rules::{
    AddressMatch, Clock, ConnectionFacts, Destination, DomainName, Lifetime, LifetimeSpec,
    PortMatch, ProcessStart, Protocol, Rule, RuleId, Subject, exchange,
};
use tracing::{error, info};

use super::{RequestError, Shared, State};
use crate::{
    clock,
    holding::Verdict,
    process::process_start,
    protocol::{
        DecidedBy, ErrorCode, NewRule, PendingInfo, PortScope, ProcessInfo, Response, RuleChanges,
        Scope,
    },
};

impl Shared {
    /// Returns every rule in precedence order, and the conflicts between them.
    pub fn rules(&self) -> Response {
        let state = self.lock();
        let rules = state.book.rules();
        Response::Rules {
            rules: rules.in_precedence_order().into_iter().cloned().collect(),
            conflicts: rules.conflicts(),
        }
    }

    /// Settles pending request `id` with `action`, adding a rule for it unless `lifetime` is
    /// once. A stored rule is on disk before this returns. `coverage` names the destinations
    /// and ports the decision covers. A once decision wider than the request's own host and
    /// port also settles the other pending requests of the same program that it covers.
    pub fn decide(
        &self,
        id: u64,
        action: tollgate_rules::Action,
        lifetime: LifetimeSpec,
        coverage: (Scope, PortScope),
    ) -> Result<Response, RequestError> {
        let mut state = self.lock();
        // The request may have moved to a new id when its connection was named meanwhile.
        let id = state.pending.current_id(id);
        let Some(info) = state.pending.list().into_iter().find(|info| info.id == id) else {
            return Err(not_found(format!(
                "no pending request with id {id}; list them with `tollgate pending`"
            )));
        };
        let now = clock::now();
        let destination = covered_destination(&info, coverage)?;
        let rule = match lifetime {
            LifetimeSpec::Once => None,
            _ => {
                let process = pending_process(&info, lifetime)?;
                let lifetime = resolve(lifetime, &now, process)?;
                let rule_id = state.book.rules().next_id();
                let rule = rule_for_pending(&info, destination.clone(), action, lifetime, rule_id);
                let rule = stamped(rule, now.unix_ms);
                add_rules(&mut state, vec![rule.clone()])?;
                self.rules_changed(&state);
                Some(rule)
            }
        };

        let verdict = Verdict {
            action,
            by: DecidedBy::User,
        };
        let mut settled = match state.pending.take(id) {
            Some(group) => group.settle(verdict),
            None => 0,
        };
        if rule.is_none() && coverage != (Scope::Host, PortScope::This) {
            // A wide once decision adds no rule but settles the burst it covers.
            let once = rule_for_pending(
                &info,
                destination,
                action,
                Lifetime::UntilRestart,
                RuleId(1),
            );
            settled += settle_covered(&mut state, once, verdict);
        }
        settled += settle_decided(&mut state);
        let (scope, port) = coverage;
        info!(pending = id, %action, %lifetime, ?scope, ?port, settled, "pending request decided");
        Ok(Response::Decided { settled, rule })
    }

    /// Adds a rule from a client and settles the pending requests it decides.
    pub fn add_rule(&self, new: Box<NewRule>) -> Result<Response, RequestError> {
        let now = clock::now();
        let lifetime = resolve(new.lifetime, &now, requested_process(new.lifetime)?)?;
        let mut state = self.lock();
        let mut rule = Rule::new(
            state.book.rules().next_id(),
            new.subject,
            new.destination,
            new.action,
            lifetime,
        );
        rule.priority = new.priority;
        rule.enabled = new.enabled;
        rule.note = new.note;
        rule.created_unix_ms = now.unix_ms;
        rule.updated_unix_ms = now.unix_ms;

        add_rules(&mut state, vec![rule.clone()])?;
        self.rules_changed(&state);
        let settled = settle_decided(&mut state);
        info!(rule = %rule.id, action = %rule.action, lifetime = %rule.lifetime, "rule added");
        Ok(Response::RuleAdded { rule, settled })
    }

    /// Changes fields of a rule and settles the pending requests it now decides.
    pub fn edit_rule(
        &self,
        id: RuleId,
        changes: Box<RuleChanges>,
    ) -> Result<Response, RequestError> {
        let now = clock::now();
        let lifetime = match changes.lifetime {
            Some(spec) => Some(resolve(spec, &now, requested_process(spec)?)?),
            None => None,
        };
        let mut state = self.lock();
        let mut rule = existing_rule(&state, id)?.clone();
        let RuleChanges {
            subject,
            destination,
            action,
            lifetime: _,
            priority,
            enabled,
            note,
        } = *changes;
        rule.subject = subject.unwrap_or(rule.subject);
        rule.destination = destination.unwrap_or(rule.destination);
        rule.action = action.unwrap_or(rule.action);
        rule.lifetime = lifetime.unwrap_or(rule.lifetime);
        rule.priority = priority.unwrap_or(rule.priority);
        rule.enabled = enabled.unwrap_or(rule.enabled);
        rule.note = note.unwrap_or(rule.note);
        rule.updated_unix_ms = now.unix_ms;

        state
            .book
            .replace(rule.clone())
            .map_err(|err| store_failed("change", &[id], &err))?;
        self.rules_changed(&state);
        let settled = settle_decided(&mut state);
        info!(rule = %id, enabled = rule.enabled, "rule changed");
        Ok(Response::RuleEdited { rule, settled })
    }

    /// Removes a rule, from the store too when it is stored.
    pub fn remove_rule(&self, id: RuleId) -> Result<Response, RequestError> {
        let mut state = self.lock();
        existing_rule(&state, id)?;
        state
            .book
            .remove_all(&[id])
            .map_err(|err| store_failed("remove", &[id], &err))?;
        self.rules_changed(&state);
        info!(rule = %id, "rule removed");
        Ok(Response::RuleRemoved { id })
    }

    /// Adds the rules of an export file, all or none, keeping their ids unless `new_ids`.
    pub fn import_rules(
        &self,
        mut rules: Vec<Rule>,
        new_ids: bool,
    ) -> Result<Response, RequestError> {
        exchange::check_rules(&rules).map_err(|err| invalid(err.to_string()))?;
        let mut state = self.lock();
        if new_ids {
            let first = state.book.rules().next_id().0;
            for (offset, rule) in rules.iter_mut().enumerate() {
                rule.id = RuleId(first.saturating_add(offset as u64));
            }
        } else if let Some((index, rule)) = rules
            .iter()
            .enumerate()
            .find(|(_, rule)| state.book.rules().contains(rule.id))
        {
            return Err(invalid(format!(
                "rule {} (id {}) in the file is invalid: field `id`: rule {} exists already; \
                 import with --new-ids or remove it first",
                index + 1,
                rule.id,
                rule.id
            )));
        }

        let ids: Vec<RuleId> = rules.iter().map(|rule| rule.id).collect();
        add_rules(&mut state, rules)?;
        self.rules_changed(&state);
        let settled = settle_decided(&mut state);
        info!(rules = ids.len(), settled, "rules imported");
        Ok(Response::RulesImported { ids, settled })
    }

    /// Explains which rule decides a connection with `facts` now.
    pub fn explain(&self, mut facts: ConnectionFacts) -> Response {
        facts.canonicalize();
        let state = self.lock();
        let rules = state.book.rules();
        let explanation = rules.explain(&facts.as_connection(), &clock::now());
        let named = explanation
            .winner
            .into_iter()
            .chain(explanation.beaten.iter().map(|contest| contest.loser))
            .chain(explanation.inactive.iter().map(|inactive| inactive.id));
        let rules = named.filter_map(|id| rules.get(id)).cloned().collect();
        Response::Explained { explanation, rules }
    }
}

/// Returns the facts the daemon has about a connection: the process facts when known, and
/// the destination.
pub(super) fn connection_facts(
    process: Option<&ProcessInfo>,
    destination: SocketAddr,
    protocol: Protocol,
) -> ConnectionFacts {
    let mut facts = ConnectionFacts::to(destination.ip(), destination.port(), protocol);
    if let Some(process) = process {
        facts.executable = process.executable.clone();
        facts.sha256 = process.sha256.as_deref().and_then(|hex| hex.parse().ok());
        facts.uid = Some(process.uid);
        facts.user = process.user.clone();
        facts.command_line = process.command_line.clone();
        facts.script = process.script.clone();
        facts.parent_executable = process.parent_executable.clone();
    }
    facts
}

/// Settles every pending request that the current rules decide and counts the hits. Returns
/// the number of connections settled.
pub(super) fn settle_decided(state: &mut State) -> usize {
    let State { book, pending } = state;
    let now = clock::now();
    let mut verdicts = Vec::new();
    let groups = pending.take_matching(|info| {
        let mut facts = connection_facts(info.process.as_ref(), info.destination, info.protocol);
        // NOTE: a pending request keeps its host name but not the CNAME chain, so a rule on a
        // CNAME target applies to it from the next connection on.
        facts.hosts.extend(info.host.clone());
        match book.decide(&facts, &now) {
            Some((rule, action)) => {
                verdicts.push((rule, action));
                true
            }
            None => false,
        }
    });
    let mut settled = 0;
    for (group, (rule, action)) in groups.into_iter().zip(verdicts) {
        let verdict = Verdict {
            action,
            by: DecidedBy::Rule { rule },
        };
        let connections = group.settle(verdict);
        book.record_hits(rule, connections, now.unix_ms);
        settled += connections;
    }
    settled
}

fn add_rules(state: &mut State, rules: Vec<Rule>) -> Result<(), RequestError> {
    let ids: Vec<RuleId> = rules.iter().map(|rule| rule.id).collect();
    state
        .book
        .add_all(rules)
        .map_err(|err| store_failed("store", &ids, &err))
}

fn existing_rule(state: &State, id: RuleId) -> Result<&Rule, RequestError> {
    state.book.rules().get(id).ok_or_else(|| {
        not_found(format!(
            "no rule with id {id}; list them with `tollgate rules list`"
        ))
    })
}

/// Returns the process that an until-exit lifetime from a client names.
fn requested_process(spec: LifetimeSpec) -> Result<Option<ProcessStart>, RequestError> {
    match spec {
        LifetimeSpec::UntilExit { pid: Some(pid) } => running_process(pid).map(Some),
        LifetimeSpec::UntilExit { pid: None } => Err(invalid(
            "lifetime until_exit needs the pid of a running process".into(),
        )),
        _ => Ok(None),
    }
}

/// Returns the process an until-exit decision on a pending request is tied to: the given pid,
/// or the process of the request.
fn pending_process(
    info: &PendingInfo,
    spec: LifetimeSpec,
) -> Result<Option<ProcessStart>, RequestError> {
    let LifetimeSpec::UntilExit { pid } = spec else {
        return Ok(None);
    };
    if let Some(pid) = pid {
        return running_process(pid).map(Some);
    }
    let Some(process) = &info.process else {
        return Err(invalid(format!(
            "the process of pending request {} is unknown, so a rule cannot last until it \
             exits; give a pid or another lifetime",
            info.id
        )));
    };
    match process.start_time {
        Some(start_time) => Ok(Some(ProcessStart {
            pid: process.pid,
            start_time,
        })),
        None => running_process(process.pid).map(Some),
    }
}

fn running_process(pid: u32) -> Result<ProcessStart, RequestError> {
    process_start(pid).map_err(|err| invalid(format!("no running process with pid {pid}: {err}")))
}

/// Maximum duration of a rule: 100 years. Longer ones are almost always mistakes, and their
/// deadlines would overflow the boot clock's milliseconds.
const MAX_DURATION_SECS: u64 = 100 * 365 * 24 * 3600;

/// Ties a requested lifetime to the clocks and the process.
fn resolve(
    spec: LifetimeSpec,
    now: &Clock,
    process: Option<ProcessStart>,
) -> Result<Lifetime, RequestError> {
    match spec {
        LifetimeSpec::Once => {
            return Err(invalid(
                "a rule cannot have lifetime once; once settles a pending request only".into(),
            ));
        }
        LifetimeSpec::For { secs: 0 } => {
            return Err(invalid(
                "a rule's duration must be at least 1 second".into(),
            ));
        }
        LifetimeSpec::For { secs } if secs > MAX_DURATION_SECS => {
            return Err(invalid(format!(
                "a rule's duration of {secs} seconds is longer than 100 years; \
                 use lifetime forever"
            )));
        }
        LifetimeSpec::Until { unix_ms } if unix_ms <= now.unix_ms => {
            return Err(invalid(format!(
                "the end time {unix_ms} ms is not in the future (now is {} ms)",
                now.unix_ms
            )));
        }
        _ => {}
    }
    spec.resolve(now, process)
        .ok_or_else(|| invalid("lifetime until_exit needs the pid of a running process".into()))
}

/// Returns the destination a decision on `info` covers: the scope's host, domain or any
/// address, the request's port or any port, and its protocol.
fn covered_destination(
    info: &PendingInfo,
    (scope, port): (Scope, PortScope),
) -> Result<Destination, RequestError> {
    let host = info
        .host
        .as_deref()
        .and_then(|host| host.parse::<DomainName>().ok());
    let address = match (scope, host) {
        (Scope::Host, Some(host)) => AddressMatch::Host(host),
        (Scope::Host, None) => AddressMatch::Ip(info.destination.ip()),
        (Scope::Domain, Some(host)) => AddressMatch::Domain(registrable_domain(&host)),
        (Scope::Domain, None) => {
            return Err(invalid(format!(
                "pending request {} has no known host name, so a decision cannot cover its domain; \
                 choose scope host or any_host",
                info.id
            )));
        }
        (Scope::AnyHost, _) => AddressMatch::Any,
    };
    let port = match port {
        PortScope::This => PortMatch::Port(info.destination.port()),
        PortScope::Any => PortMatch::Any,
    };
    Ok(Destination {
        address,
        port,
        protocol: info.protocol.into(),
    })
}

/// Returns the registrable domain of `host` by the public suffix list: `example.co.uk` for
/// `www.example.co.uk`. A host that is itself a public suffix, or a single label, is returned
/// as it is.
pub(super) fn registrable_domain(host: &DomainName) -> DomainName {
    psl::domain_str(host.as_str())
        .and_then(|domain| domain.parse().ok())
        .unwrap_or_else(|| host.clone())
}

/// Builds the rule that a decision on a pending request creates: this executable (or any
/// process when unknown) and the covered destination.
fn rule_for_pending(
    info: &PendingInfo,
    destination: Destination,
    action: tollgate_rules::Action,
    lifetime: Lifetime,
    id: RuleId,
) -> Rule {
    let subject = match info.process.as_ref().and_then(|p| p.executable.clone()) {
        Some(path) => Subject::executable(path),
        None => Subject::any(),
    };
    let mut rule = Rule::new(id, subject, destination, action, lifetime);
    rule.note = format!("answer to pending request {}", info.id);
    rule
}

fn stamped(mut rule: Rule, now_unix_ms: u64) -> Rule {
    rule.created_unix_ms = now_unix_ms;
    rule.updated_unix_ms = now_unix_ms;
    rule
}

/// Settles the pending requests that `rule` covers with `verdict`, without adding the rule.
fn settle_covered(state: &mut State, rule: Rule, verdict: Verdict) -> usize {
    let once = tollgate_rules::RuleSet::from_rules(vec![rule]);
    let now = clock::now();
    let groups = state.pending.take_matching(|info| {
        let mut facts = connection_facts(info.process.as_ref(), info.destination, info.protocol);
        facts.hosts.extend(info.host.clone());
        facts.canonicalize();
        once.decide(&facts.as_connection(), &now).is_some()
    });
    groups.into_iter().map(|group| group.settle(verdict)).sum()
}

fn store_failed(operation: &str, ids: &[RuleId], err: &tollgate_rules::StoreError) -> RequestError {
    error!(rules = ?ids, error = %err, "failed to {operation} rules in the rule store");
    (
        ErrorCode::Internal,
        format!("failed to {operation} rule(s) {ids:?}: {err}"),
    )
}

fn invalid(message: String) -> RequestError {
    (ErrorCode::Invalid, message)
}

fn not_found(message: String) -> RequestError {
    (ErrorCode::NotFound, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registrable(host: &str) -> String {
        registrable_domain(&host.parse().unwrap()).to_string()
    }

    #[test]
    fn resolve_rejects_century_long_duration() {
        let now = Clock {
            unix_ms: 1_800_000_000_000,
            boottime_ms: 1_000,
        };
        let (code, message) = resolve(LifetimeSpec::For { secs: u64::MAX }, &now, None)
            .expect_err("a duration of u64::MAX seconds is rejected");
        assert_eq!(code, ErrorCode::Invalid);
        assert!(message.contains("longer than 100 years"), "{message}");
        let hour = resolve(LifetimeSpec::For { secs: 3600 }, &now, None);
        assert!(hour.is_ok(), "{hour:?}");
    }

    #[test]
    fn registrable_domain_uses_suffix_list() {
        assert_eq!(registrable("www.cdn.example.com"), "example.com");
        assert_eq!(registrable("www.example.co.uk"), "example.co.uk");
        assert_eq!(registrable("a.b.example.test"), "example.test");
        assert_eq!(registrable("example.com"), "example.com");
        // A public suffix or a single label has no registrable domain, so it is kept as it is.
        assert_eq!(registrable("co.uk"), "co.uk");
        assert_eq!(registrable("localhost"), "localhost");
    }
}
