//! The precedence table of `RULES.md`, row by row. Each test sets up rules that tie on every
//! earlier step and differ at one step. It checks the winner in every insertion order, with the
//! index, with a scan of all rules, and in the explanation.

use std::net::IpAddr;

use tollgate_rules::{
    Action, Clock, ConnectionFacts, Destination, Lifetime, Protocol, Rule, RuleId, RuleSet, Step,
    Subject,
};

const CURL: &str = "/usr/bin/curl";
const NOW: Clock = Clock {
    unix_ms: 1_700_000_000_000,
    boottime_ms: 1_000_000,
};

fn rule(id: u64, subject: Subject, destination: &str, action: Action) -> Rule {
    Rule::new(
        RuleId(id),
        subject,
        parse_destination(destination),
        action,
        Lifetime::Forever,
    )
}

/// Parses `ADDRESS [PORT [PROTOCOL]]`, each part optional from the right.
fn parse_destination(text: &str) -> Destination {
    let mut parts = text.split_whitespace();
    let mut destination = Destination::any();
    if let Some(address) = parts.next() {
        destination.address = address.parse().expect("test address parses");
    }
    if let Some(port) = parts.next() {
        destination.port = port.parse().expect("test port parses");
    }
    if let Some(protocol) = parts.next() {
        destination.protocol = protocol.parse().expect("test protocol parses");
    }
    destination
}

fn executable(text: &str) -> Subject {
    Subject {
        executable: Some(text.parse().expect("test executable parses")),
        ..Subject::any()
    }
}

fn connection(executable: Option<&str>, ip: &str, port: u16) -> ConnectionFacts {
    let ip: IpAddr = ip.parse().expect("test IP parses");
    let mut facts = ConnectionFacts::to(ip, port, Protocol::Tcp);
    facts.executable = executable.map(Into::into);
    facts
}

/// Asserts that rule `winner` decides `facts` in any insertion order, by index and by scan,
/// and that the explanation names it and beats rule `loser` at `step`.
fn assert_wins(rules: &[Rule], facts: &ConnectionFacts, winner: u64, loser: u64, step: Step) {
    let connection = facts.as_connection();
    let forward = RuleSet::from_rules(rules.to_vec());
    let backward = RuleSet::from_rules(rules.iter().rev().cloned());
    for (name, set) in [("forward", &forward), ("backward", &backward)] {
        let decided = set.decide(&connection, &NOW).map(|rule| rule.id.0);
        assert_eq!(decided, Some(winner), "{name} insertion, index");
        let scanned = set.decide_by_scan(&connection, &NOW).map(|rule| rule.id.0);
        assert_eq!(scanned, Some(winner), "{name} insertion, scan");
    }

    let explanation = forward.explain(&connection, &NOW);
    assert_eq!(explanation.winner, Some(RuleId(winner)), "{explanation:#?}");
    let contest = explanation
        .beaten
        .iter()
        .find(|contest| contest.loser == RuleId(loser))
        .unwrap_or_else(|| panic!("rule {loser} is not listed as beaten: {explanation:#?}"));
    assert_eq!(contest.step, step, "{contest:#?}");
}

#[test]
fn step_1_priority_beats_everything_else() {
    let mut exception = rule(1, Subject::any(), "any", Action::Allow);
    exception.priority = true;
    let specific = rule(2, executable(CURL), "192.0.2.7 443 tcp", Action::Deny);

    let facts = connection(Some(CURL), "192.0.2.7", 443);

    assert_wins(&[exception, specific], &facts, 1, 2, Step::Priority);
}

#[test]
fn step_2_sha256_beats_path() {
    let digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let by_digest = Subject {
        sha256: Some(digest.parse().unwrap()),
        ..Subject::any()
    };
    let rules = [
        rule(1, by_digest, "any", Action::Allow),
        rule(2, executable(CURL), "192.0.2.7", Action::Deny),
    ];
    let mut facts = connection(Some(CURL), "192.0.2.7", 443);
    facts.sha256 = Some(digest.parse().unwrap());

    assert_wins(&rules, &facts, 1, 2, Step::Executable);
}

#[test]
fn step_2_path_beats_glob() {
    let rules = [
        rule(1, executable("/usr/bin/*"), "192.0.2.7", Action::Deny),
        rule(2, executable(CURL), "any", Action::Allow),
    ];

    assert_wins(
        &rules,
        &connection(Some(CURL), "192.0.2.7", 443),
        2,
        1,
        Step::Executable,
    );
}

#[test]
fn step_2_glob_beats_no_executable() {
    let rules = [
        rule(1, Subject::any(), "192.0.2.7", Action::Deny),
        rule(2, executable("/usr/bin/*"), "any", Action::Allow),
    ];

    assert_wins(
        &rules,
        &connection(Some(CURL), "192.0.2.7", 443),
        2,
        1,
        Step::Executable,
    );
}

#[test]
fn step_3_longer_glob_wins() {
    let rules = [
        rule(1, executable("/opt/**"), "192.0.2.7", Action::Deny),
        rule(2, executable("/opt/app/**"), "any", Action::Allow),
    ];
    let facts = connection(Some("/opt/app/bin/run"), "192.0.2.7", 443);

    assert_wins(&rules, &facts, 2, 1, Step::GlobLength);
}

#[test]
fn step_4_parent_condition_wins() {
    let mut curl_via_bash = executable(CURL);
    curl_via_bash.parent = Some("/usr/bin/bash".parse().unwrap());
    let rules = [
        rule(1, executable(CURL), "192.0.2.7", Action::Allow),
        rule(2, curl_via_bash, "any", Action::Deny),
    ];
    let mut facts = connection(Some(CURL), "192.0.2.7", 443);
    facts.parent_executable = Some("/usr/bin/bash".into());

    assert_wins(&rules, &facts, 2, 1, Step::SubjectConditions);

    // From another parent, only rule 1 matches.
    facts.parent_executable = Some("/usr/bin/zsh".into());
    let set = RuleSet::from_rules(rules.to_vec());
    let decided = set.decide(&facts.as_connection(), &NOW).map(|rule| rule.id);
    assert_eq!(decided, Some(RuleId(1)));
}

#[test]
fn step_4_user_and_command_count() {
    let as_alice = Subject {
        user: Some("alice".parse().unwrap()),
        ..Subject::any()
    };
    let mut script_as_alice = as_alice.clone();
    script_as_alice.command = Some(tollgate_rules::CommandMatch::Script("/opt/sync.py".into()));
    let rules = [
        rule(1, Subject::any(), "192.0.2.7", Action::Allow),
        rule(2, as_alice, "192.0.2.0/24", Action::Deny),
        rule(3, script_as_alice, "any", Action::Allow),
    ];
    let mut facts = connection(Some("/usr/bin/python3"), "192.0.2.7", 443);
    facts.user = Some("alice".into());
    facts.uid = Some(1000);

    assert_wins(&rules[..2], &facts, 2, 1, Step::SubjectConditions);

    facts.script = Some("/opt/sync.py".into());
    assert_wins(&rules, &facts, 3, 2, Step::SubjectConditions);
}

#[test]
fn step_5_address_kinds_in_order() {
    let rules = [
        rule(1, Subject::any(), "any", Action::Deny),
        rule(2, Subject::any(), "scope:internet", Action::Allow),
        rule(3, Subject::any(), "192.0.2.0/24", Action::Deny),
        rule(4, Subject::any(), "*.example.com", Action::Allow),
        rule(5, Subject::any(), "www.example.com", Action::Deny),
        rule(6, Subject::any(), "192.0.2.7", Action::Allow),
    ];
    let mut facts = connection(None, "192.0.2.7", 443);
    facts.hosts = vec!["www.example.com".into()];

    for winner in (2..=6).rev() {
        let count = winner as usize;
        assert_wins(
            &rules[..count],
            &facts,
            winner,
            winner - 1,
            Step::AddressKind,
        );
    }
}

#[test]
fn step_6_more_domain_labels_win() {
    let rules = [
        rule(1, Subject::any(), "*.example.com", Action::Deny),
        rule(2, Subject::any(), "*.cdn.example.com", Action::Allow),
    ];
    let mut facts = connection(None, "192.0.2.7", 443);
    facts.hosts = vec!["img.cdn.example.com".into()];

    assert_wins(&rules, &facts, 2, 1, Step::AddressLength);
}

#[test]
fn step_6_longer_prefix_wins_on_ipv6_scale() {
    // ::ffff:10.0.0.0/104 covers 10.0.0.0/8, so it ranks as /104 and loses to the IPv4 /16,
    // which ranks as /112.
    let rules = [
        rule(1, Subject::any(), "::ffff:10.0.0.0/104", Action::Deny),
        rule(2, Subject::any(), "10.1.0.0/16", Action::Allow),
        rule(3, Subject::any(), "::ffff:10.1.2.0/120", Action::Deny),
    ];
    let facts = connection(None, "10.1.2.3", 80);

    assert_wins(&rules[..2], &facts, 2, 1, Step::AddressLength);
    assert_wins(&rules, &facts, 3, 2, Step::AddressLength);
}

#[test]
fn step_7_fewer_ports_win() {
    let rules = [
        rule(1, Subject::any(), "192.0.2.7 any", Action::Deny),
        rule(2, Subject::any(), "192.0.2.7 1-1000", Action::Allow),
        rule(3, Subject::any(), "192.0.2.7 443,8443", Action::Deny),
        rule(4, Subject::any(), "192.0.2.7 443", Action::Allow),
    ];
    let facts = connection(None, "192.0.2.7", 443);

    for winner in (2..=4).rev() {
        let count = winner as usize;
        assert_wins(&rules[..count], &facts, winner, winner - 1, Step::Ports);
    }
}

#[test]
fn step_8_named_protocol_wins() {
    let rules = [
        rule(1, Subject::any(), "any 53 any", Action::Deny),
        rule(2, Subject::any(), "any 53 tcp", Action::Allow),
    ];

    assert_wins(
        &rules,
        &connection(None, "192.0.2.1", 53),
        2,
        1,
        Step::Protocol,
    );
}

#[test]
fn step_9_deny_beats_allow() {
    let rules = [
        rule(1, executable(CURL), "10.0.0.0/8", Action::Allow),
        rule(2, executable(CURL), "10.0.0.0/8", Action::Deny),
    ];

    assert_wins(
        &rules,
        &connection(Some(CURL), "10.0.0.1", 80),
        2,
        1,
        Step::Action,
    );
}

#[test]
fn step_10_lower_id_wins() {
    let rules = [
        rule(7, Subject::any(), "10.0.0.0/8", Action::Allow),
        rule(3, Subject::any(), "10.0.0.0/8", Action::Allow),
        rule(5, Subject::any(), "10.0.0.0/8", Action::Allow),
    ];

    assert_wins(&rules, &connection(None, "10.0.0.1", 80), 3, 5, Step::Id);
}

/// The example rules and connections of `RULES.md`.
#[test]
fn documented_examples_pick_listed_winners() {
    let mut curl_via_bash = executable(CURL);
    curl_via_bash.parent = Some("/usr/bin/bash".parse().unwrap());
    let mut exception = rule(8, Subject::any(), "192.0.2.53 53", Action::Allow);
    exception.priority = true;
    let rules = [
        rule(1, Subject::any(), "any", Action::Deny),
        rule(2, executable(CURL), "any", Action::Allow),
        rule(3, Subject::any(), "10.0.0.0/8", Action::Allow),
        rule(4, Subject::any(), "10.1.2.3 22 tcp", Action::Deny),
        rule(5, executable(CURL), "192.0.2.0/24 443 tcp", Action::Deny),
        rule(6, curl_via_bash, "*.example.com", Action::Deny),
        rule(
            7,
            executable("/opt/app/*"),
            "scope:local-network",
            Action::Allow,
        ),
        exception,
    ];
    let set = RuleSet::from_rules(rules.to_vec());
    let decide = |facts: &ConnectionFacts| {
        set.decide(&facts.as_connection(), &NOW)
            .map(|rule| rule.id.0)
    };
    let ssh = Some("/usr/bin/ssh");

    assert_eq!(decide(&connection(ssh, "10.1.2.3", 22)), Some(4));
    assert_eq!(decide(&connection(ssh, "10.9.9.9", 22)), Some(3));
    assert_eq!(decide(&connection(Some(CURL), "10.1.2.3", 22)), Some(2));
    assert_eq!(decide(&connection(Some(CURL), "192.0.2.7", 443)), Some(5));
    let mut dns = connection(None, "198.51.100.1", 53);
    dns.protocol = Protocol::Udp;
    assert_eq!(decide(&dns), Some(1));
    assert_eq!(decide(&connection(ssh, "::ffff:10.1.2.3", 22)), Some(4));

    let mut scripted = connection(Some(CURL), "203.0.113.5", 443);
    scripted.parent_executable = Some("/usr/bin/bash".into());
    scripted.hosts = vec!["api.example.com".into()];
    assert_eq!(decide(&scripted), Some(6));
    scripted.parent_executable = None;
    assert_eq!(decide(&scripted), Some(2));

    assert_eq!(
        decide(&connection(Some("/opt/app/run"), "192.168.1.5", 80)),
        Some(7)
    );
    assert_eq!(
        decide(&connection(Some("/opt/app/run"), "203.0.113.5", 80)),
        Some(1)
    );
    assert_eq!(decide(&connection(Some(CURL), "192.0.2.53", 53)), Some(8));
}
