//! Precedence: which of several matching rules decides a connection.
//!
//! Rules are compared step by step, and the first step where they differ decides. The table
//! is documented with examples in `RULES.md`:
//!
//! | step | compares            | the winner has                                               |
//! |------|---------------------|--------------------------------------------------------------|
//! | 1    | priority            | the priority mark, over none                                 |
//! | 2    | executable          | a SHA-256 digest, then an exact path, then a glob, then none |
//! | 3    | glob length         | more literal characters in its executable glob               |
//! | 4    | subject conditions  | more subject conditions set                                  |
//! | 5    | address kind        | IP, then host, then domain, then network, then scope, then any |
//! | 6    | address length      | more domain labels, or a longer network prefix               |
//! | 7    | ports               | fewer ports                                                  |
//! | 8    | protocol            | `tcp` or `udp`, over `any`                                   |
//! | 9    | action              | `deny`, over `allow`                                         |
//! | 10   | rule id             | the lower id                                                 |

use std::{cmp::Reverse, fmt};

use serde::{Deserialize, Serialize};

use crate::model::{
    Action, ProtocolMatch, Rule, RuleId,
    address::AddressMatch,
    subject::{ExecutableMatch, Subject},
};

/// One step of the precedence table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Step 1: the priority mark.
    Priority,
    /// Step 2: the strongest executable condition.
    Executable,
    /// Step 3: literal characters of executable globs.
    GlobLength,
    /// Step 4: the number of subject conditions.
    SubjectConditions,
    /// Step 5: the kind of address condition.
    AddressKind,
    /// Step 6: domain labels or network prefix length.
    AddressLength,
    /// Step 7: the number of ports.
    Ports,
    /// Step 8: the protocol condition.
    Protocol,
    /// Step 9: the action.
    Action,
    /// Step 10: the rule id.
    Id,
}

impl Step {
    /// Returns the step's number in the precedence table, from 1 to 10.
    pub fn number(self) -> u8 {
        self as u8 + 1
    }

    /// Returns a sentence on why `winner` beats `loser` at this step.
    pub fn reason(self, winner: &Rule, loser: &Rule) -> String {
        match self {
            Self::Priority => "it has the priority mark".to_owned(),
            Self::Executable => format!(
                "its executable condition ({}) is stronger than {}",
                executable_kind(&winner.subject),
                executable_kind(&loser.subject)
            ),
            Self::GlobLength => "its executable glob has more literal characters".to_owned(),
            Self::SubjectConditions => format!(
                "it sets {} subject conditions, the other rule {}",
                condition_count(&winner.subject),
                condition_count(&loser.subject)
            ),
            Self::AddressKind => format!(
                "its address ({}) is more specific than {}",
                address_kind(&winner.destination.address),
                address_kind(&loser.destination.address)
            ),
            Self::AddressLength => format!(
                "{} is narrower than {}",
                winner.destination.address, loser.destination.address
            ),
            Self::Ports => format!(
                "it covers {} port(s), the other rule {}",
                winner.destination.port.port_count(),
                loser.destination.port.port_count()
            ),
            Self::Protocol => format!(
                "it names protocol {}, the other rule any",
                winner.destination.protocol
            ),
            Self::Action => "deny beats allow at equal specificity".to_owned(),
            Self::Id => "it is older (lower id) and otherwise equal".to_owned(),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Priority => "priority",
            Self::Executable => "executable",
            Self::GlobLength => "glob length",
            Self::SubjectConditions => "subject conditions",
            Self::AddressKind => "address kind",
            Self::AddressLength => "address length",
            Self::Ports => "ports",
            Self::Protocol => "protocol",
            Self::Action => "action",
            Self::Id => "rule id",
        })
    }
}

/// Returns how `a` and `b` compare: `Less` when `a` wins.
pub fn compare(a: &Rule, b: &Rule) -> std::cmp::Ordering {
    Precedence::of(a).cmp(&Precedence::of(b))
}

/// Returns the first step of the precedence table at which `a` and `b` differ. Two rules
/// always differ at step 10 unless they have the same id.
pub fn deciding_step(a: &Rule, b: &Rule) -> Step {
    Precedence::of(a).first_difference(&Precedence::of(b))
}

/// The part of the sort key that depends on the subject only: steps 1 to 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SubjectRank {
    priority: Reverse<bool>,
    executable: Reverse<u8>,
    glob_length: Reverse<usize>,
    conditions: Reverse<u8>,
}

impl SubjectRank {
    pub(crate) fn of(rule: &Rule) -> Self {
        let subject = &rule.subject;
        let glob_length = match (&subject.sha256, &subject.executable) {
            (None, Some(ExecutableMatch::Glob(glob))) => glob.literal_len(),
            _ => 0,
        };
        Self {
            priority: Reverse(rule.priority),
            executable: Reverse(executable_rank(subject)),
            glob_length: Reverse(glob_length),
            conditions: Reverse(condition_count(subject)),
        }
    }
}

/// Sort key of a rule: the rule with the smaller key wins. The fields follow the steps of the
/// precedence table, and `Reverse` puts the more specific value first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Precedence {
    pub(crate) subject: SubjectRank,
    address_kind: Reverse<u8>,
    address_length: Reverse<u8>,
    ports: u32,
    protocol: Reverse<u8>,
    action: u8,
    id: RuleId,
}

impl Precedence {
    pub(crate) fn of(rule: &Rule) -> Self {
        let destination = &rule.destination;
        Self {
            subject: SubjectRank::of(rule),
            address_kind: Reverse(address_kind_rank(&destination.address)),
            address_length: Reverse(address_length(&destination.address)),
            ports: destination.port.port_count(),
            protocol: Reverse(u8::from(destination.protocol != ProtocolMatch::Any)),
            action: match rule.action {
                Action::Deny => 0,
                Action::Allow => 1,
            },
            id: rule.id,
        }
    }

    fn first_difference(&self, other: &Self) -> Step {
        let (a, b) = (&self.subject, &other.subject);
        let steps = [
            (a.priority != b.priority, Step::Priority),
            (a.executable != b.executable, Step::Executable),
            (a.glob_length != b.glob_length, Step::GlobLength),
            (a.conditions != b.conditions, Step::SubjectConditions),
            (self.address_kind != other.address_kind, Step::AddressKind),
            (
                self.address_length != other.address_length,
                Step::AddressLength,
            ),
            (self.ports != other.ports, Step::Ports),
            (self.protocol != other.protocol, Step::Protocol),
            (self.action != other.action, Step::Action),
        ];
        steps
            .into_iter()
            .find_map(|(differs, step)| differs.then_some(step))
            .unwrap_or(Step::Id)
    }
}

/// Ranks the strongest executable condition: SHA-256 3, path 2, glob 1, none 0.
fn executable_rank(subject: &Subject) -> u8 {
    match (&subject.sha256, &subject.executable) {
        (Some(_), _) => 3,
        (None, Some(ExecutableMatch::Path(_))) => 2,
        (None, Some(ExecutableMatch::Glob(_))) => 1,
        (None, None) => 0,
    }
}

fn executable_kind(subject: &Subject) -> &'static str {
    match executable_rank(subject) {
        3 => "a SHA-256 digest",
        2 => "an executable path",
        1 => "an executable glob",
        _ => "no executable condition",
    }
}

fn condition_count(subject: &Subject) -> u8 {
    let conditions = [
        subject.executable.is_some(),
        subject.sha256.is_some(),
        subject.user.is_some(),
        subject.command.is_some(),
        subject.parent.is_some(),
    ];
    conditions.into_iter().map(u8::from).sum()
}

/// Ranks address kinds: IP 5, host 4, domain 3, network 2, scope 1, any 0.
pub(crate) fn address_kind_rank(address: &AddressMatch) -> u8 {
    match address {
        AddressMatch::Ip(_) => 5,
        AddressMatch::Host(_) => 4,
        AddressMatch::Domain(_) => 3,
        AddressMatch::Cidr(_) => 2,
        AddressMatch::Scope(_) => 1,
        AddressMatch::Any => 0,
    }
}

fn address_kind(address: &AddressMatch) -> &'static str {
    match address {
        AddressMatch::Ip(_) => "an IP address",
        AddressMatch::Host(_) => "a host name",
        AddressMatch::Domain(_) => "a domain",
        AddressMatch::Cidr(_) => "a network",
        AddressMatch::Scope(_) => "a scope",
        AddressMatch::Any => "any address",
    }
}

/// Returns the label count of a domain, or the prefix length of a network on the IPv6 scale
/// (IPv4 `/p` counts as `/(96 + p)`); 0 for other kinds.
fn address_length(address: &AddressMatch) -> u8 {
    match address {
        AddressMatch::Domain(name) => u8::try_from(name.label_count()).unwrap_or(u8::MAX),
        AddressMatch::Cidr(cidr) => cidr.to_canonical().ipv6_scale_prefix(),
        _ => 0,
    }
}
