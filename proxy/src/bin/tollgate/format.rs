//! Human-readable text for rules, processes and events.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_proxy::protocol::{DecidedBy, Event, EventKind, NameSource, ProcessInfo};
use tollgate_rules::{Lifetime, Rule};

/// Returns one line describing what a rule matches: subject, destination and flags.
pub fn describe_rule(rule: &Rule) -> String {
    let mut text = format!("{} -> {}", rule.subject, rule.destination);
    if rule.priority {
        text.push_str(" [priority]");
    }
    if !rule.enabled {
        text.push_str(" (disabled)");
    }
    if !rule.note.is_empty() {
        text.push_str(&format!(" # {}", rule.note));
    }
    text
}

/// Returns a rule's lifetime as a short word or phrase.
pub fn describe_lifetime(lifetime: &Lifetime) -> String {
    match lifetime {
        Lifetime::UntilExit(process) => format!("until-exit {}", process.pid),
        Lifetime::For { secs, .. } => format!(
            "for {}",
            humantime::format_duration(Duration::from_secs(*secs))
        ),
        Lifetime::Until { unix_ms } => format!("until {}", format_time(*unix_ms)),
        other => other.to_string(),
    }
}

/// Returns a time in milliseconds since the Unix epoch in RFC 3339 form, to the second.
pub fn format_time(unix_ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Returns how long ago a time in milliseconds since the Unix epoch was, in whole seconds.
pub fn age_secs(unix_ms: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    now.saturating_sub(unix_ms) / 1000
}

/// Returns the process of a connection as its executable or command name and pid.
pub fn describe_process(process: Option<&ProcessInfo>) -> String {
    match process {
        None => "unknown process".to_owned(),
        Some(process) => match &process.executable {
            Some(path) => format!("{} [{}]", path.display(), process.pid),
            None => format!("{} [{}]", process.comm, process.pid),
        },
    }
}

/// Returns one line describing a connection event.
pub fn describe_event(event: &Event) -> String {
    let process = describe_process(event.process.as_ref());
    let host = match &event.host {
        Some(host) => format!(" {host} ({})", event.name_source),
        None => String::new(),
    };
    let flow = format!(
        "#{} {} {} -> {}{host}",
        event.connection, event.protocol, event.source, event.destination
    );
    match &event.kind {
        EventKind::Held { pending_id } => {
            format!("held     {flow} by {process} (pending {pending_id})")
        }
        EventKind::Decided {
            action,
            by,
            in_kernel,
        } => {
            let by = match by {
                DecidedBy::Rule { rule } => format!("rule {rule}"),
                DecidedBy::User => "user".to_owned(),
                DecidedBy::Timeout => "timeout".to_owned(),
                DecidedBy::Limit => "held-connection limit".to_owned(),
                DecidedBy::Audit { expected } => format!("audit, expected {expected}"),
                DecidedBy::Policy { entry: Some(entry) } => format!("policy entry {entry}"),
                DecidedBy::Policy { entry: None } => "policy".to_owned(),
            };
            let place = if *in_kernel { ", in the kernel" } else { "" };
            format!("{action:<8} {flow} by {process} ({by}{place})")
        }
        EventKind::Closed {
            bytes_up,
            bytes_down,
            error,
        } => match error {
            None => format!("closed   {flow} up {bytes_up} B, down {bytes_down} B"),
            Some(error) => format!("closed   {flow}: {error}"),
        },
    }
}

/// Formats a host name with how it was learned, such as `example.com (dns)`, or `-`.
pub fn describe_host(host: Option<&str>, source: NameSource) -> String {
    match host {
        Some(host) => format!("{host} ({source})"),
        None => "-".to_owned(),
    }
}
