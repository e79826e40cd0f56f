//! The conditions of one rule checked against one connection, without any index.

use crate::{
    connection::Connection,
    model::{
        Rule,
        address::{AddressMatch, Scope},
        lifetime::Clock,
        subject::{CommandMatch, Subject, UserMatch},
    },
};

/// Returns whether `rule` decides `connection` at `now` when no other rule is considered: it is
/// enabled, its lifetime has not ended, and every condition holds.
pub fn rule_matches(rule: &Rule, connection: &Connection<'_>, now: &Clock) -> bool {
    rule.enabled
        && !rule.lifetime.is_expired(now)
        && subject_matches(&rule.subject, connection, false)
        && address_matches(&rule.destination.address, connection)
        && rule.destination.port.contains(connection.port)
        && rule.destination.protocol.contains(connection.protocol)
}

/// Returns whether every condition of `subject` holds. With `skip_executable`, the executable
/// condition is taken as checked already.
pub(crate) fn subject_matches(
    subject: &Subject,
    connection: &Connection<'_>,
    skip_executable: bool,
) -> bool {
    let executable = skip_executable
        || subject.executable.as_ref().is_none_or(|expected| {
            connection
                .executable
                .is_some_and(|path| expected.is_match(path))
        });
    let sha256 = subject
        .sha256
        .as_ref()
        .is_none_or(|expected| connection.sha256 == Some(expected));
    let parent = subject.parent.as_ref().is_none_or(|expected| {
        connection
            .parent_executable
            .is_some_and(|path| expected.is_match(path))
    });
    executable
        && sha256
        && parent
        && subject
            .user
            .as_ref()
            .is_none_or(|user| user_matches(user, connection))
        && subject
            .command
            .as_ref()
            .is_none_or(|command| command_matches(command, connection))
}

fn user_matches(user: &UserMatch, connection: &Connection<'_>) -> bool {
    match user {
        UserMatch::Uid(uid) => connection.uid == Some(*uid),
        UserMatch::Name(name) => connection.user == Some(name.as_str()),
    }
}

fn command_matches(command: &CommandMatch, connection: &Connection<'_>) -> bool {
    match command {
        CommandMatch::Script(script) => connection.script == Some(script.as_path()),
        CommandMatch::Line(glob) => connection
            .command_line
            .is_some_and(|line| glob.is_match(line)),
    }
}

/// Returns whether the destination address condition holds. IPv4 addresses and their
/// IPv4-mapped IPv6 form are the same destination on both sides.
pub(crate) fn address_matches(address: &AddressMatch, connection: &Connection<'_>) -> bool {
    match address {
        AddressMatch::Any => true,
        AddressMatch::Ip(ip) => ip.to_canonical() == connection.ip.to_canonical(),
        AddressMatch::Cidr(cidr) => cidr.contains(connection.ip),
        AddressMatch::Host(name) => connection.hosts.iter().any(|host| host == name.as_str()),
        AddressMatch::Domain(domain) => connection.hosts.iter().any(|host| domain.covers(host)),
        AddressMatch::Scope(scope) => Scope::of(connection.ip) == *scope,
    }
}
