//! Rule matching: picks the rule that decides a connection, without I/O or a clock.
//!
//! A rule matches a connection when its subject, address, port and protocol all match. IPv4
//! addresses and their IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) are the same destination on
//! both sides. Disabled rules never match.
//!
//! When several enabled rules match, the first difference in this table decides:
//!
//! | step | criterion   | wins                                                         |
//! |------|-------------|--------------------------------------------------------------|
//! | 1    | subject     | an executable over `any`                                     |
//! | 2    | address     | an IP address, then the longer network prefix, then `any`    |
//! | 3    | port        | one port over `any`                                          |
//! | 4    | protocol    | `tcp` or `udp` over `any`                                    |
//! | 5    | action      | `deny` over `allow`                                          |
//! | 6    | rule id     | the lower id                                                 |
//!
//! Step 2 compares IPv4 prefixes on the IPv6 scale of mapped addresses, so an IPv4 `/p` counts
//! as `/(96 + p)`. The winner never depends on the order in which rules were inserted.

use std::{cmp::Reverse, collections::BTreeMap, net::IpAddr, path::Path};

use crate::model::{
    Action, AddressMatch, Cidr, MAPPED_IPV4_PREFIX, PortMatch, Protocol, ProtocolMatch, Rule,
    RuleId, Subject,
};

/// An outbound connection to decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection<'a> {
    /// Executable of the connecting process, or `None` if the process is unknown.
    pub executable: Option<&'a Path>,
    /// Destination address.
    pub ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// Rules kept in precedence order, so that the first enabled match decides a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// Sorted by [`Precedence`], winner first. Rule ids are unique.
    rules: Vec<Rule>,
}

impl RuleSet {
    /// Creates an empty rule set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a rule set from `rules`. Of several rules with the same id, the last one is kept.
    pub fn from_rules(rules: Vec<Rule>) -> Self {
        let by_id: BTreeMap<RuleId, Rule> = rules.into_iter().map(|rule| (rule.id, rule)).collect();
        let mut rules: Vec<Rule> = by_id.into_values().collect();
        rules.sort_by_key(Precedence::of);
        Self { rules }
    }

    /// Inserts `rule` under its own id and returns the rule it replaced, if that id was taken.
    ///
    /// Takes time linear in the number of rules.
    pub fn insert(&mut self, rule: Rule) -> Option<Rule> {
        let replaced = self.remove(rule.id);
        let key = Precedence::of(&rule);
        let index = self
            .rules
            .partition_point(|existing| Precedence::of(existing) < key);
        self.rules.insert(index, rule);
        replaced
    }

    /// Removes the rule with this id and returns it.
    pub fn remove(&mut self, id: RuleId) -> Option<Rule> {
        let index = self.rules.iter().position(|rule| rule.id == id)?;
        Some(self.rules.remove(index))
    }

    /// Returns the rule with this id.
    pub fn get(&self, id: RuleId) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.id == id)
    }

    /// Returns one more than the highest id in the set, or 1 for an empty set.
    ///
    /// NOTE: if the set contains `RuleId(u64::MAX)`, this returns that id again.
    pub fn next_id(&self) -> RuleId {
        let max_id = self.rules.iter().map(|rule| rule.id.0).max().unwrap_or(0);
        RuleId(max_id.saturating_add(1))
    }

    /// Returns an iterator over the rules, disabled ones included, in precedence order.
    pub fn iter(&self) -> std::slice::Iter<'_, Rule> {
        self.rules.iter()
    }

    /// Returns the number of rules, disabled ones included.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Returns whether the set has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Returns the enabled rule that decides `connection`, or `None` if no enabled rule matches.
    ///
    /// Scans the rules in precedence order, so it takes time linear in the number of rules.
    pub fn decide(&self, connection: &Connection<'_>) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|rule| rule.enabled && rule_matches(rule, connection))
    }
}

impl<'a> IntoIterator for &'a RuleSet {
    type Item = &'a Rule;
    type IntoIter = std::slice::Iter<'a, Rule>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Sort key of a rule. The rule with the smaller key wins. The fields follow the steps of the
/// precedence table in the module docs, and `Reverse` puts the more specific value first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    subject: Reverse<u8>,
    address: Reverse<u8>,
    port: Reverse<u8>,
    protocol: Reverse<u8>,
    action: u8,
    id: RuleId,
}

impl Precedence {
    fn of(rule: &Rule) -> Self {
        let destination = &rule.destination;
        Self {
            subject: Reverse(subject_specificity(&rule.subject)),
            address: Reverse(address_specificity(&destination.address)),
            port: Reverse(port_specificity(destination.port)),
            protocol: Reverse(protocol_specificity(destination.protocol)),
            action: action_rank(rule.action),
            id: rule.id,
        }
    }
}

fn subject_specificity(subject: &Subject) -> u8 {
    match subject {
        Subject::Any => 0,
        Subject::Executable(_) => 1,
    }
}

/// Ranks `any` as 0, a network as 1 plus its prefix length on the IPv6 scale (1 to 129), and
/// an IP address as 130.
fn address_specificity(address: &AddressMatch) -> u8 {
    match address {
        AddressMatch::Any => 0,
        AddressMatch::Cidr(cidr) => 1 + ipv6_scale_prefix(cidr),
        AddressMatch::Ip(_) => 130,
    }
}

/// Returns the prefix length of `cidr` counted in IPv6 bits, where IPv4 `/p` is `/(96 + p)`.
/// An out-of-range prefix counts as the full address length.
fn ipv6_scale_prefix(cidr: &Cidr) -> u8 {
    match cidr.addr {
        IpAddr::V4(_) => MAPPED_IPV4_PREFIX + cidr.prefix.min(32),
        IpAddr::V6(_) => cidr.prefix.min(128),
    }
}

fn port_specificity(port: PortMatch) -> u8 {
    match port {
        PortMatch::Any => 0,
        PortMatch::Port(_) => 1,
    }
}

fn protocol_specificity(protocol: ProtocolMatch) -> u8 {
    match protocol {
        ProtocolMatch::Any => 0,
        ProtocolMatch::Tcp | ProtocolMatch::Udp => 1,
    }
}

/// Ranks deny before allow.
fn action_rank(action: Action) -> u8 {
    match action {
        Action::Deny => 0,
        Action::Allow => 1,
    }
}

/// Returns whether every condition of `rule` holds for `connection`. Ignores `rule.enabled`.
fn rule_matches(rule: &Rule, connection: &Connection<'_>) -> bool {
    let destination = &rule.destination;
    subject_matches(&rule.subject, connection.executable)
        && address_matches(&destination.address, connection.ip)
        && port_matches(destination.port, connection.port)
        && protocol_matches(destination.protocol, connection.protocol)
}

fn subject_matches(subject: &Subject, executable: Option<&Path>) -> bool {
    match subject {
        Subject::Any => true,
        Subject::Executable(path) => executable == Some(path.as_path()),
    }
}

/// Compares addresses after turning IPv4-mapped IPv6 addresses into IPv4, on both sides.
fn address_matches(address: &AddressMatch, ip: IpAddr) -> bool {
    match address {
        AddressMatch::Any => true,
        AddressMatch::Ip(rule_ip) => rule_ip.to_canonical() == ip.to_canonical(),
        AddressMatch::Cidr(cidr) => cidr.contains(ip),
    }
}

fn port_matches(rule_port: PortMatch, port: u16) -> bool {
    match rule_port {
        PortMatch::Any => true,
        PortMatch::Port(rule_port) => rule_port == port,
    }
}

fn protocol_matches(rule_protocol: ProtocolMatch, protocol: Protocol) -> bool {
    match rule_protocol {
        ProtocolMatch::Any => true,
        ProtocolMatch::Tcp => protocol == Protocol::Tcp,
        ProtocolMatch::Udp => protocol == Protocol::Udp,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::{Destination, Lifetime};

    const CURL: &str = "/usr/bin/curl";
    const FIREFOX: &str = "/usr/lib/firefox/firefox";

    fn rule(id: u64, subject: Subject, destination: Destination, action: Action) -> Rule {
        Rule {
            id: RuleId(id),
            subject,
            destination,
            action,
            lifetime: Lifetime::Forever,
            enabled: true,
            note: String::new(),
            created_unix: 0,
        }
    }

    fn executable(path: &str) -> Subject {
        Subject::Executable(PathBuf::from(path))
    }

    fn to_address(address: &str) -> Destination {
        Destination {
            address: address.parse().expect("test address parses"),
            ..Destination::any()
        }
    }

    fn destination(address: &str, port: &str, protocol: &str) -> Destination {
        Destination {
            address: address.parse().expect("test address parses"),
            port: port.parse().expect("test port parses"),
            protocol: protocol.parse().expect("test protocol parses"),
        }
    }

    fn connection<'a>(executable: Option<&'a str>, ip: &str, port: u16) -> Connection<'a> {
        Connection {
            executable: executable.map(Path::new),
            ip: ip.parse().expect("test IP parses"),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn decided_id(set: &RuleSet, connection: &Connection<'_>) -> Option<u64> {
        set.decide(connection).map(|rule| rule.id.0)
    }

    /// Asserts that every insertion order of `rules` makes rule `winner` decide `connection`.
    fn assert_winner_in_any_order(rules: &[Rule], connection: &Connection<'_>, winner: u64) {
        let mut forward = RuleSet::new();
        let mut backward = RuleSet::new();
        for rule in rules {
            forward.insert(rule.clone());
        }
        for rule in rules.iter().rev() {
            backward.insert(rule.clone());
        }
        let from_rules = RuleSet::from_rules(rules.to_vec());

        assert_eq!(
            decided_id(&forward, connection),
            Some(winner),
            "forward insertion"
        );
        assert_eq!(
            decided_id(&backward, connection),
            Some(winner),
            "reverse insertion"
        );
        assert_eq!(
            decided_id(&from_rules, connection),
            Some(winner),
            "from_rules"
        );
    }

    // One test per row of the precedence table in the module docs.

    #[test]
    fn executable_subject_beats_any_subject() {
        let rules = [
            rule(
                1,
                Subject::Any,
                destination("10.0.0.1", "443", "tcp"),
                Action::Deny,
            ),
            rule(2, executable(CURL), Destination::any(), Action::Allow),
        ];

        assert_winner_in_any_order(&rules, &connection(Some(CURL), "10.0.0.1", 443), 2);
    }

    #[test]
    fn address_ip_beats_network_beats_any() {
        let rules = [
            rule(1, Subject::Any, Destination::any(), Action::Deny),
            rule(2, Subject::Any, to_address("10.0.0.0/8"), Action::Deny),
            rule(3, Subject::Any, to_address("10.1.0.0/16"), Action::Deny),
            rule(4, Subject::Any, to_address("10.1.2.3"), Action::Allow),
        ];
        let target = connection(None, "10.1.2.3", 80);

        assert_winner_in_any_order(&rules, &target, 4);
        assert_winner_in_any_order(&rules[..3], &target, 3);
        assert_winner_in_any_order(&rules[..2], &target, 2);
        assert_winner_in_any_order(&rules[..1], &target, 1);
    }

    #[test]
    fn address_prefix_uses_ipv6_scale() {
        // ::ffff:10.0.0.0/104 covers 10.0.0.0/8, so it ranks as /104 and loses to the IPv4 /16,
        // which ranks as /112. The mapped /120 ranks above both.
        let rules = [
            rule(
                1,
                Subject::Any,
                to_address("::ffff:10.0.0.0/104"),
                Action::Deny,
            ),
            rule(2, Subject::Any, to_address("10.1.0.0/16"), Action::Allow),
            rule(
                3,
                Subject::Any,
                to_address("::ffff:10.1.2.0/120"),
                Action::Allow,
            ),
        ];
        let target = connection(None, "10.1.2.3", 80);

        assert_winner_in_any_order(&rules[..2], &target, 2);
        assert_winner_in_any_order(&rules, &target, 3);
    }

    #[test]
    fn address_beats_port_and_protocol() {
        let rules = [
            rule(
                1,
                Subject::Any,
                destination("any", "443", "tcp"),
                Action::Deny,
            ),
            rule(
                2,
                Subject::Any,
                destination("10.0.0.0/8", "any", "any"),
                Action::Allow,
            ),
        ];

        assert_winner_in_any_order(&rules, &connection(None, "10.0.0.1", 443), 2);
    }

    #[test]
    fn port_beats_any_port() {
        let rules = [
            rule(
                1,
                Subject::Any,
                destination("10.0.0.0/8", "any", "tcp"),
                Action::Deny,
            ),
            rule(
                2,
                Subject::Any,
                destination("10.0.0.0/8", "443", "any"),
                Action::Allow,
            ),
        ];

        assert_winner_in_any_order(&rules, &connection(None, "10.0.0.1", 443), 2);
    }

    #[test]
    fn protocol_beats_any_protocol() {
        let rules = [
            rule(
                1,
                Subject::Any,
                destination("any", "53", "any"),
                Action::Deny,
            ),
            rule(
                2,
                Subject::Any,
                destination("any", "53", "tcp"),
                Action::Allow,
            ),
        ];

        assert_winner_in_any_order(&rules, &connection(None, "192.0.2.1", 53), 2);
    }

    #[test]
    fn deny_beats_allow_at_equal_specificity() {
        let rules = [
            rule(1, executable(CURL), to_address("10.0.0.0/8"), Action::Allow),
            rule(2, executable(CURL), to_address("10.0.0.0/8"), Action::Deny),
        ];

        assert_winner_in_any_order(&rules, &connection(Some(CURL), "10.0.0.1", 80), 2);
    }

    #[test]
    fn lowest_id_breaks_remaining_tie() {
        let rules = [
            rule(7, Subject::Any, to_address("10.0.0.0/8"), Action::Allow),
            rule(3, Subject::Any, to_address("10.0.0.0/8"), Action::Allow),
            rule(5, Subject::Any, to_address("10.0.0.0/8"), Action::Allow),
        ];

        assert_winner_in_any_order(&rules, &connection(None, "10.0.0.1", 80), 3);
    }

    /// The example rules and connections of RULES.md.
    #[test]
    fn documented_examples_pick_listed_winners() {
        let rules = [
            rule(1, Subject::Any, Destination::any(), Action::Deny),
            rule(2, executable(CURL), Destination::any(), Action::Allow),
            rule(3, Subject::Any, to_address("10.0.0.0/8"), Action::Allow),
            rule(
                4,
                Subject::Any,
                destination("10.1.2.3", "22", "tcp"),
                Action::Deny,
            ),
            rule(
                5,
                executable(CURL),
                destination("192.0.2.0/24", "443", "tcp"),
                Action::Deny,
            ),
        ];
        let ssh = Some("/usr/bin/ssh");
        let mut dns_query = connection(None, "198.51.100.1", 53);
        dns_query.protocol = Protocol::Udp;

        assert_winner_in_any_order(&rules, &connection(ssh, "10.1.2.3", 22), 4);
        assert_winner_in_any_order(&rules, &connection(ssh, "10.9.9.9", 22), 3);
        assert_winner_in_any_order(&rules, &connection(Some(CURL), "10.1.2.3", 22), 2);
        assert_winner_in_any_order(&rules, &connection(Some(CURL), "192.0.2.7", 443), 5);
        assert_winner_in_any_order(&rules, &dns_query, 1);
        assert_winner_in_any_order(&rules, &connection(ssh, "::ffff:10.1.2.3", 22), 4);
    }

    // Matching.

    #[test]
    fn unknown_process_matches_only_any() {
        let mut set = RuleSet::new();
        set.insert(rule(1, executable(CURL), Destination::any(), Action::Allow));

        assert_eq!(decided_id(&set, &connection(None, "10.0.0.1", 80)), None);

        set.insert(rule(2, Subject::Any, Destination::any(), Action::Deny));

        assert_eq!(decided_id(&set, &connection(None, "10.0.0.1", 80)), Some(2));
    }

    #[test]
    fn executable_must_match_exactly() {
        let mut set = RuleSet::new();
        set.insert(rule(1, executable(CURL), Destination::any(), Action::Allow));

        assert_eq!(
            decided_id(&set, &connection(Some(CURL), "10.0.0.1", 80)),
            Some(1)
        );
        assert_eq!(
            decided_id(&set, &connection(Some(FIREFOX), "10.0.0.1", 80)),
            None
        );
        assert_eq!(
            decided_id(&set, &connection(Some("/usr/bin/curl2"), "10.0.0.1", 80)),
            None
        );
    }

    #[test]
    fn ipv4_rule_matches_mapped_ipv6() {
        let mut set = RuleSet::new();
        set.insert(rule(1, Subject::Any, to_address("10.0.0.1"), Action::Deny));

        assert_eq!(decided_id(&set, &connection(None, "10.0.0.1", 80)), Some(1));
        assert_eq!(
            decided_id(&set, &connection(None, "::ffff:10.0.0.1", 80)),
            Some(1)
        );
        assert_eq!(
            decided_id(&set, &connection(None, "::ffff:10.0.0.2", 80)),
            None
        );
        assert_eq!(decided_id(&set, &connection(None, "::a00:1", 80)), None);
    }

    #[test]
    fn mapped_ipv6_rule_matches_ipv4() {
        let mut set = RuleSet::new();
        set.insert(rule(
            1,
            Subject::Any,
            to_address("::ffff:10.0.0.1"),
            Action::Deny,
        ));

        assert_eq!(decided_id(&set, &connection(None, "10.0.0.1", 80)), Some(1));
        assert_eq!(
            decided_id(&set, &connection(None, "::ffff:10.0.0.1", 80)),
            Some(1)
        );
        assert_eq!(decided_id(&set, &connection(None, "10.0.0.2", 80)), None);
    }

    #[test]
    fn ipv4_network_matches_mapped_ipv6() {
        let mut set = RuleSet::new();
        set.insert(rule(
            1,
            Subject::Any,
            to_address("10.0.0.0/8"),
            Action::Deny,
        ));

        assert_eq!(
            decided_id(&set, &connection(None, "10.255.0.1", 80)),
            Some(1)
        );
        assert_eq!(
            decided_id(&set, &connection(None, "::ffff:10.255.0.1", 80)),
            Some(1)
        );
        assert_eq!(decided_id(&set, &connection(None, "11.0.0.1", 80)), None);
        assert_eq!(
            decided_id(&set, &connection(None, "::ffff:11.0.0.1", 80)),
            None
        );
    }

    #[test]
    fn ipv6_network_matches_by_prefix() {
        let mut set = RuleSet::new();
        set.insert(rule(
            1,
            Subject::Any,
            to_address("2001:db8::/32"),
            Action::Deny,
        ));

        assert_eq!(
            decided_id(&set, &connection(None, "2001:db8:1::1", 443)),
            Some(1)
        );
        assert_eq!(
            decided_id(&set, &connection(None, "2001:db9::1", 443)),
            None
        );
        assert_eq!(decided_id(&set, &connection(None, "10.0.0.1", 443)), None);
    }

    #[test]
    fn ipv6_default_route_skips_ipv4() {
        let mut set = RuleSet::new();
        set.insert(rule(1, Subject::Any, to_address("::/0"), Action::Deny));

        assert_eq!(
            decided_id(&set, &connection(None, "2001:db8::1", 443)),
            Some(1)
        );
        assert_eq!(decided_id(&set, &connection(None, "10.0.0.1", 443)), None);
        assert_eq!(
            decided_id(&set, &connection(None, "::ffff:10.0.0.1", 443)),
            None
        );
    }

    #[test]
    fn port_and_protocol_must_match() {
        let mut set = RuleSet::new();
        set.insert(rule(
            1,
            Subject::Any,
            destination("any", "53", "udp"),
            Action::Allow,
        ));
        let mut query = connection(None, "192.0.2.1", 53);

        query.protocol = Protocol::Udp;
        assert_eq!(decided_id(&set, &query), Some(1));

        query.protocol = Protocol::Tcp;
        assert_eq!(decided_id(&set, &query), None);

        query.protocol = Protocol::Udp;
        query.port = 54;
        assert_eq!(decided_id(&set, &query), None);
    }

    #[test]
    fn disabled_rule_never_decides() {
        let mut disabled = rule(1, executable(CURL), Destination::any(), Action::Deny);
        disabled.enabled = false;
        let set = RuleSet::from_rules(vec![
            disabled,
            rule(2, Subject::Any, Destination::any(), Action::Allow),
        ]);

        assert_eq!(
            decided_id(&set, &connection(Some(CURL), "10.0.0.1", 80)),
            Some(2)
        );
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn empty_set_decides_nothing() {
        let set = RuleSet::new();

        assert_eq!(
            decided_id(&set, &connection(Some(CURL), "10.0.0.1", 80)),
            None
        );
    }

    // Rule set bookkeeping.

    #[test]
    fn insert_replaces_rule_with_same_id() {
        let mut set = RuleSet::new();
        let first = rule(1, Subject::Any, Destination::any(), Action::Allow);
        let second = rule(1, executable(CURL), Destination::any(), Action::Deny);

        assert_eq!(set.insert(first.clone()), None);
        assert_eq!(set.insert(second.clone()), Some(first));
        assert_eq!(set.len(), 1);
        assert_eq!(set.get(RuleId(1)), Some(&second));
    }

    #[test]
    fn remove_and_get_by_id() {
        let mut set = RuleSet::from_rules(vec![
            rule(1, Subject::Any, Destination::any(), Action::Allow),
            rule(2, executable(CURL), Destination::any(), Action::Deny),
        ]);

        let removed = set.remove(RuleId(2)).expect("rule 2 is present");

        assert_eq!(removed.id, RuleId(2));
        assert_eq!(set.get(RuleId(2)), None);
        assert_eq!(set.remove(RuleId(2)), None);
        assert_eq!(set.get(RuleId(1)).map(|rule| rule.id), Some(RuleId(1)));
        assert_eq!(set.len(), 1);
        assert!(!set.is_empty());
        assert_eq!(
            decided_id(&set, &connection(Some(CURL), "10.0.0.1", 80)),
            Some(1)
        );
    }

    #[test]
    fn next_id_follows_max_id() {
        let mut set = RuleSet::new();
        assert_eq!(set.next_id(), RuleId(1));
        assert!(set.is_empty());

        set.insert(rule(5, Subject::Any, Destination::any(), Action::Allow));
        set.insert(rule(2, Subject::Any, Destination::any(), Action::Allow));
        assert_eq!(set.next_id(), RuleId(6));

        set.remove(RuleId(5));
        assert_eq!(set.next_id(), RuleId(3));
    }

    #[test]
    fn from_rules_keeps_last_duplicate() {
        let set = RuleSet::from_rules(vec![
            rule(1, Subject::Any, Destination::any(), Action::Allow),
            rule(1, Subject::Any, Destination::any(), Action::Deny),
        ]);

        assert_eq!(set.len(), 1);
        assert_eq!(
            set.get(RuleId(1)).map(|rule| rule.action),
            Some(Action::Deny)
        );
    }

    #[test]
    fn iter_yields_precedence_order() {
        let set = RuleSet::from_rules(vec![
            rule(1, Subject::Any, Destination::any(), Action::Allow),
            rule(2, Subject::Any, to_address("10.0.0.0/8"), Action::Allow),
            rule(3, executable(CURL), Destination::any(), Action::Allow),
            rule(4, Subject::Any, to_address("10.0.0.1"), Action::Allow),
        ]);

        let ids: Vec<u64> = set.iter().map(|rule| rule.id.0).collect();
        assert_eq!(ids, [3, 4, 2, 1]);

        let ids_by_ref: Vec<u64> = (&set).into_iter().map(|rule| rule.id.0).collect();
        assert_eq!(ids_by_ref, ids);
    }
}
