//! Property tests: the indexed lookup of `RuleSet::decide` agrees with a naive reference that
//! checks every rule on its own, on random rule sets, random edits and random connections.

use std::{net::IpAddr, path::Path};

use proptest::prelude::*;
use tollgate_rules::{
    Action, AddressMatch, Clock, CommandMatch, ConnectionFacts, Destination, ExecutableMatch,
    Lifetime, PortMatch, Protocol, ProtocolMatch, Rule, RuleId, RuleSet, Scope, Subject, UserMatch,
    precedence,
};

const NOW: Clock = Clock {
    unix_ms: 1_700_000_000_000,
    boottime_ms: 50_000,
};

const EXECUTABLES: &[&str] = &[
    "/usr/bin/curl",
    "/usr/bin/wget",
    "/usr/bin/bash",
    "/opt/app/run",
    "/opt/app/bin/x",
];
const EXECUTABLE_CONDITIONS: &[&str] = &[
    "/usr/bin/curl",
    "/opt/app/run",
    "/opt/app/*",
    "/opt/**",
    "/usr/bin/*",
    "/usr/bin/*sh",
    "/opt/app/bin/x",
    // Ties with /opt/app/* on glob length, and both match /opt/app/run.
    "/opt/*/run",
];
const DIGESTS: &[&str] = &[
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
];
const IPS: &[&str] = &[
    "10.0.0.1",
    "10.0.0.2",
    "10.1.2.3",
    "192.168.1.1",
    "127.0.0.1",
    "203.0.113.10",
    "2001:db8::1",
    "2001:db8:1::5",
    "::ffff:10.0.0.1",
    "::1",
];
const NETWORKS: &[&str] = &[
    "10.0.0.0/8",
    "10.0.0.0/24",
    "10.1.0.0/16",
    "::ffff:10.0.0.0/104",
    "2001:db8::/32",
    "2001:db8::/48",
    "0.0.0.0/0",
    "::/0",
    "203.0.113.0/24",
];
const NAMES: &[&str] = &[
    "example.com",
    "a.example.com",
    "b.a.example.com",
    "com",
    "test",
    "x.test",
];
const PORTS: &[u16] = &[22, 53, 80, 443, 8080];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(items)
}

fn executable_condition() -> impl Strategy<Value = ExecutableMatch> {
    pick(EXECUTABLE_CONDITIONS).prop_map(|text| text.parse().unwrap())
}

fn subject() -> impl Strategy<Value = Subject> {
    (
        prop::option::weighted(0.5, executable_condition()),
        prop::option::weighted(0.15, pick(DIGESTS).prop_map(|text| text.parse().unwrap())),
        prop::option::weighted(
            0.2,
            prop_oneof![
                prop::sample::select(vec![0u32, 1000]).prop_map(UserMatch::Uid),
                pick(&["alice", "bob"]).prop_map(|name| UserMatch::Name(name.to_owned())),
            ],
        ),
        prop::option::weighted(
            0.15,
            prop_oneof![
                Just(CommandMatch::Script("/opt/sync.py".into())),
                Just(CommandMatch::Line("python3 *".parse().unwrap())),
            ],
        ),
        prop::option::weighted(0.2, executable_condition()),
    )
        .prop_map(|(executable, sha256, user, command, parent)| Subject {
            executable,
            sha256,
            user,
            command,
            parent,
        })
}

fn address() -> impl Strategy<Value = AddressMatch> {
    prop_oneof![
        Just(AddressMatch::Any),
        pick(IPS).prop_map(|ip| AddressMatch::Ip(ip.parse().unwrap())),
        pick(NETWORKS).prop_map(|net| AddressMatch::Cidr(net.parse().unwrap())),
        pick(NAMES).prop_map(|name| AddressMatch::Host(name.parse().unwrap())),
        pick(NAMES).prop_map(|name| AddressMatch::Domain(name.parse().unwrap())),
        pick(&Scope::ALL).prop_map(AddressMatch::Scope),
    ]
}

fn port() -> impl Strategy<Value = PortMatch> {
    prop_oneof![
        Just(PortMatch::Any),
        pick(PORTS).prop_map(PortMatch::Port),
        Just(PortMatch::List(vec![80, 443])),
        Just(PortMatch::Range {
            first: 1,
            last: 1024
        }),
    ]
}

fn lifetime() -> impl Strategy<Value = Lifetime> {
    prop_oneof![
        4 => Just(Lifetime::Forever),
        1 => Just(Lifetime::UntilRestart),
        1 => (0u64..100_000).prop_map(|expires_boottime_ms| Lifetime::For {
            secs: 1,
            expires_boottime_ms,
        }),
        1 => (NOW.unix_ms - 10..NOW.unix_ms + 10).prop_map(|unix_ms| Lifetime::Until { unix_ms }),
    ]
}

fn rule_fields() -> impl Strategy<Value = Rule> {
    (
        subject(),
        address(),
        port(),
        pick(&[ProtocolMatch::Any, ProtocolMatch::Tcp, ProtocolMatch::Udp]),
        pick(&[Action::Allow, Action::Deny]),
        lifetime(),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.85),
    )
        .prop_map(
            |(subject, address, port, protocol, action, lifetime, priority, enabled)| {
                let destination = Destination {
                    address,
                    port,
                    protocol,
                };
                let mut rule = Rule::new(RuleId(0), subject, destination, action, lifetime);
                rule.priority = priority;
                rule.enabled = enabled;
                rule
            },
        )
}

fn rules(max: usize) -> impl Strategy<Value = Vec<Rule>> {
    prop::collection::vec(rule_fields(), 0..max).prop_map(|mut rules| {
        for (index, rule) in rules.iter_mut().enumerate() {
            rule.id = RuleId(index as u64 + 1);
        }
        rules
    })
}

fn connection() -> impl Strategy<Value = ConnectionFacts> {
    (
        prop::option::weighted(0.8, pick(EXECUTABLES)),
        prop::option::weighted(0.3, pick(DIGESTS)),
        prop::option::weighted(0.5, prop::sample::select(vec![0u32, 1000])),
        prop::option::weighted(0.5, pick(&["alice", "bob"])),
        prop::option::weighted(0.3, pick(&["python3 /opt/sync.py", "curl -s x"])),
        prop::option::weighted(0.3, Just("/opt/sync.py")),
        prop::option::weighted(0.5, pick(EXECUTABLES)),
        prop::collection::vec(pick(NAMES), 0..3),
        (
            pick(IPS),
            pick(PORTS),
            pick(&[Protocol::Tcp, Protocol::Udp]),
        ),
    )
        .prop_map(
            |(executable, sha256, uid, user, line, script, parent, hosts, (ip, port, protocol))| {
                let mut facts = ConnectionFacts::to(ip.parse().unwrap(), port, protocol);
                facts.executable = executable.map(Into::into);
                facts.sha256 = sha256.map(|digest| digest.parse().unwrap());
                facts.uid = uid;
                facts.user = user.map(Into::into);
                facts.command_line = line.map(Into::into);
                facts.script = script.map(Into::into);
                facts.parent_executable = parent.map(Into::into);
                facts.hosts = hosts.into_iter().map(Into::into).collect();
                facts
            },
        )
}

/// Returns the winner by the reference method: checks each rule's conditions directly and
/// keeps the best by precedence.
fn reference<'a>(rules: &'a [Rule], facts: &ConnectionFacts) -> Option<&'a Rule> {
    rules
        .iter()
        .filter(|rule| reference_matches(rule, facts))
        .min_by(|a, b| precedence::compare(a, b))
}

fn reference_matches(rule: &Rule, facts: &ConnectionFacts) -> bool {
    let in_force = match rule.lifetime {
        Lifetime::For {
            expires_boottime_ms,
            ..
        } => NOW.boottime_ms < expires_boottime_ms,
        Lifetime::Until { unix_ms } => NOW.unix_ms < unix_ms,
        _ => true,
    };
    rule.enabled
        && in_force
        && subject_holds(&rule.subject, facts)
        && address_holds(&rule.destination.address, facts)
        && port_holds(&rule.destination.port, facts.port)
        && match rule.destination.protocol {
            ProtocolMatch::Any => true,
            ProtocolMatch::Tcp => facts.protocol == Protocol::Tcp,
            ProtocolMatch::Udp => facts.protocol == Protocol::Udp,
        }
}

fn executable_holds(condition: &ExecutableMatch, path: Option<&Path>) -> bool {
    let Some(path) = path else {
        return false;
    };
    match condition {
        ExecutableMatch::Path(expected) => expected.as_os_str() == path.as_os_str(),
        ExecutableMatch::Glob(glob) => glob.is_match(path),
    }
}

fn subject_holds(subject: &Subject, facts: &ConnectionFacts) -> bool {
    let executable = subject.executable.as_ref();
    let parent = subject.parent.as_ref();
    executable.is_none_or(|condition| executable_holds(condition, facts.executable.as_deref()))
        && parent
            .is_none_or(|condition| executable_holds(condition, facts.parent_executable.as_deref()))
        && subject
            .sha256
            .is_none_or(|digest| facts.sha256 == Some(digest))
        && subject.user.as_ref().is_none_or(|user| match user {
            UserMatch::Uid(uid) => facts.uid == Some(*uid),
            UserMatch::Name(name) => facts.user.as_ref() == Some(name),
        })
        && subject
            .command
            .as_ref()
            .is_none_or(|command| match command {
                CommandMatch::Script(script) => facts.script.as_ref() == Some(script),
                CommandMatch::Line(glob) => facts
                    .command_line
                    .as_deref()
                    .is_some_and(|line| glob.is_match(line)),
            })
}

fn address_holds(address: &AddressMatch, facts: &ConnectionFacts) -> bool {
    let ip = facts.ip.to_canonical();
    match address {
        AddressMatch::Any => true,
        AddressMatch::Ip(expected) => expected.to_canonical() == ip,
        AddressMatch::Cidr(cidr) => {
            let network = cidr.to_canonical();
            match (network.addr(), ip) {
                (IpAddr::V4(net), IpAddr::V4(ip)) => {
                    let bits = 32 - u32::from(network.prefix());
                    net.to_bits().checked_shr(bits) == ip.to_bits().checked_shr(bits)
                }
                (IpAddr::V6(net), IpAddr::V6(ip)) => {
                    let bits = 128 - u32::from(network.prefix());
                    net.to_bits().checked_shr(bits) == ip.to_bits().checked_shr(bits)
                }
                _ => false,
            }
        }
        AddressMatch::Host(name) => facts.hosts.iter().any(|host| host == name.as_str()),
        AddressMatch::Domain(domain) => facts.hosts.iter().any(|host| {
            host == domain.as_str() || host.ends_with(&format!(".{}", domain.as_str()))
        }),
        AddressMatch::Scope(scope) => Scope::of(ip) == *scope,
    }
}

fn port_holds(condition: &PortMatch, port: u16) -> bool {
    match condition {
        PortMatch::Any => true,
        PortMatch::Port(expected) => *expected == port,
        PortMatch::List(ports) => ports.contains(&port),
        PortMatch::Range { first, last } => *first <= port && port <= *last,
    }
}

fn decided(set: &RuleSet, facts: &ConnectionFacts) -> Option<RuleId> {
    set.decide(&facts.as_connection(), &NOW).map(|rule| rule.id)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn index_agrees_with_reference(
        rules in rules(60),
        connections in prop::collection::vec(connection(), 1..20),
    ) {
        let set = RuleSet::from_rules(rules.clone());
        for facts in &connections {
            let expected = reference(&rules, facts).map(|rule| rule.id);
            prop_assert_eq!(decided(&set, facts), expected, "connection {:?}", facts);
            let scanned = set.decide_by_scan(&facts.as_connection(), &NOW).map(|rule| rule.id);
            prop_assert_eq!(scanned, expected);
            let explained = set.explain(&facts.as_connection(), &NOW).winner;
            prop_assert_eq!(explained, expected);
        }
    }

    #[test]
    fn index_agrees_after_edits(
        rules in rules(60),
        removals in prop::collection::vec(1u64..60, 0..30),
        replacements in prop::collection::vec((1u64..60, rule_fields()), 0..20),
        connections in prop::collection::vec(connection(), 1..20),
    ) {
        let mut set = RuleSet::from_rules(rules.clone());
        let mut kept: Vec<Rule> = rules;
        for id in removals {
            set.remove(RuleId(id));
            kept.retain(|rule| rule.id != RuleId(id));
        }
        for (id, mut rule) in replacements {
            rule.id = RuleId(id);
            set.insert(rule.clone());
            kept.retain(|existing| existing.id != RuleId(id));
            kept.push(rule);
        }
        prop_assert_eq!(set.len(), kept.len());
        for facts in &connections {
            let expected = reference(&kept, facts).map(|rule| rule.id);
            prop_assert_eq!(decided(&set, facts), expected, "connection {:?}", facts);
        }
    }
}
