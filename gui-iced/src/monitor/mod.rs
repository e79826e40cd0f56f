//! The monitor: a live list of connections by process, then domain, with search, a state
//! filter, and allow and deny buttons.

pub mod view;

use std::collections::BTreeMap;

use tollgate_proxy::protocol::{
    ConnectionInfo, ConnectionState, DecidedBy, Event, EventKind, NewRule, Request,
};
use tollgate_rules::{Action, AddressMatch, Destination, LifetimeSpec, PortMatch, Subject};

use crate::format;

/// Filter on connection state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StateFilter {
    /// Every connection.
    #[default]
    All,
    /// Connections waiting for a decision.
    Pending,
    /// Allowed connections.
    Allowed,
    /// Denied connections.
    Denied,
}

impl StateFilter {
    /// Every filter, in the order the monitor shows them.
    pub const ALL: [Self; 4] = [Self::All, Self::Pending, Self::Allowed, Self::Denied];

    /// Returns the filter's label.
    pub fn label(self) -> &'static str {
        match self {
            Self::All => "All",
            Self::Pending => "Pending",
            Self::Allowed => "Allowed",
            Self::Denied => "Denied",
        }
    }

    fn admits(self, state: ConnectionState) -> bool {
        match self {
            Self::All => true,
            Self::Pending => state == ConnectionState::Pending,
            Self::Allowed => state == ConnectionState::Allowed,
            Self::Denied => state == ConnectionState::Denied,
        }
    }
}

/// A change a person makes in the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorMessage {
    /// Changes the search text.
    Search(String),
    /// Selects a state filter.
    Filter(StateFilter),
    /// Allows or denies a connection by its id: a pending one once, any other by a rule that
    /// lasts forever.
    Decide(u64, Action),
    /// Opens the rules window.
    OpenRules,
}

/// Connections as the daemon last reported them, and the search and filter over them.
#[derive(Debug, Default)]
pub struct Monitor {
    /// Connections as the daemon last listed them, updated by events in between.
    pub connections: Vec<ConnectionInfo>,
    /// Text that listed connections must contain.
    pub search: String,
    /// State that listed connections must have.
    pub filter: StateFilter,
}

/// Connections of one process, by domain or address.
#[derive(Debug)]
pub struct ProcessGroup<'a> {
    /// The process as one line.
    pub title: String,
    /// The destinations, each with its connections, newest last.
    pub destinations: Vec<(String, Vec<&'a ConnectionInfo>)>,
}

impl Monitor {
    /// Applies a change and returns the requests to send to the daemon.
    pub fn update(&mut self, message: MonitorMessage) -> Vec<Request> {
        match message {
            MonitorMessage::Search(search) => self.search = search,
            MonitorMessage::Filter(filter) => self.filter = filter,
            MonitorMessage::Decide(connection, action) => {
                return self.decide(connection, action).into_iter().collect();
            }
            // The application opens the window.
            MonitorMessage::OpenRules => {}
        }
        Vec::new()
    }

    /// Applies a connection event, so that the list changes before the next full listing.
    pub fn apply(&mut self, event: &Event) {
        let existing = self
            .connections
            .iter_mut()
            .find(|info| info.connection == event.connection);
        let Some(info) = existing else {
            if let EventKind::Held { pending_id } = event.kind {
                self.connections.push(held(event, pending_id));
            }
            return;
        };
        match &event.kind {
            EventKind::Held { pending_id } => info.pending_id = Some(*pending_id),
            EventKind::Decided { action, by, .. } => {
                info.state = state_of(*action);
                info.decided_by = Some(*by);
                info.pending_id = None;
            }
            EventKind::Closed {
                bytes_up,
                bytes_down,
                error,
            } => {
                info.bytes_up = *bytes_up;
                info.bytes_down = *bytes_down;
                info.error.clone_from(error);
                info.ended_unix_ms = Some(event.time_unix_ms);
            }
        }
    }

    /// Returns the listed connections grouped by process, then by domain or address.
    pub fn groups(&self) -> Vec<ProcessGroup<'_>> {
        let mut processes: BTreeMap<String, BTreeMap<String, Vec<&ConnectionInfo>>> =
            BTreeMap::new();
        for info in self.connections.iter().filter(|info| self.shows(info)) {
            let process = format::process(info.process.as_ref());
            processes
                .entry(process)
                .or_default()
                .entry(destination_title(info))
                .or_default()
                .push(info);
        }
        processes
            .into_iter()
            .map(|(title, destinations)| ProcessGroup {
                title,
                destinations: destinations.into_iter().collect(),
            })
            .collect()
    }

    fn shows(&self, info: &ConnectionInfo) -> bool {
        if !self.filter.admits(info.state) {
            return false;
        }
        let search = self.search.trim().to_lowercase();
        search.is_empty() || searchable_text(info).to_lowercase().contains(&search)
    }

    fn decide(&self, connection: u64, action: Action) -> Option<Request> {
        let info = self
            .connections
            .iter()
            .find(|info| info.connection == connection)?;
        if let Some(id) = info.pending_id {
            return Some(Request::decide(id, action, LifetimeSpec::Once));
        }
        Some(Request::AddRule {
            rule: Box::new(rule_for(info, action)),
        })
    }
}

/// Returns the title a connection is grouped under: its host name, else its address.
pub fn destination_title(info: &ConnectionInfo) -> String {
    match &info.host {
        Some(host) => host.clone(),
        None => info.destination.ip().to_string(),
    }
}

/// Returns the state as a word, with who decided.
pub fn state_text(info: &ConnectionInfo) -> String {
    let state = match info.state {
        ConnectionState::Pending => return "pending".to_owned(),
        ConnectionState::Allowed => "allowed",
        ConnectionState::Denied => "denied",
    };
    match info.decided_by {
        Some(DecidedBy::Rule { rule }) => format!("{state} by rule {rule}"),
        Some(DecidedBy::User) => format!("{state} by you"),
        Some(DecidedBy::Timeout) => format!("{state} by timeout"),
        Some(DecidedBy::Limit) => format!("{state} at the held-connection limit"),
        Some(DecidedBy::Audit { .. }) => format!("{state} in audit mode"),
        Some(DecidedBy::Policy { entry: Some(entry) }) => {
            format!("{state} by policy entry {entry}")
        }
        Some(DecidedBy::Policy { entry: None }) => format!("{state} by policy"),
        None => state.to_owned(),
    }
}

fn searchable_text(info: &ConnectionInfo) -> String {
    format!(
        "{} {} {} {}",
        format::process(info.process.as_ref()),
        info.host.as_deref().unwrap_or_default(),
        info.destination,
        state_text(info),
    )
}

fn state_of(action: Action) -> ConnectionState {
    match action {
        Action::Allow => ConnectionState::Allowed,
        Action::Deny => ConnectionState::Denied,
    }
}

fn held(event: &Event, pending_id: u64) -> ConnectionInfo {
    let mut info = ConnectionInfo::from_event(event, ConnectionState::Pending);
    info.pending_id = Some(pending_id);
    info
}

/// Returns a rule for the connection's executable (any process when unknown), host name (its
/// address when no name is known), port and protocol, lasting forever.
fn rule_for(info: &ConnectionInfo, action: Action) -> NewRule {
    let subject = match info.process.as_ref().and_then(|p| p.executable.clone()) {
        Some(path) => Subject::executable(path),
        None => Subject::any(),
    };
    let address = match info.host.as_deref().and_then(|host| host.parse().ok()) {
        Some(host) => AddressMatch::Host(host),
        None => AddressMatch::Ip(info.destination.ip()),
    };
    NewRule {
        subject,
        destination: Destination {
            address,
            port: PortMatch::Port(info.destination.port()),
            protocol: info.protocol.into(),
        },
        action,
        lifetime: LifetimeSpec::Forever,
        priority: false,
        enabled: true,
        note: "made in the monitor".to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tollgate_proxy::protocol::NameSource;
    use tollgate_rules::{Protocol, RuleId};

    use super::*;

    pub(crate) fn connection(id: u64, state: ConnectionState, destination: &str) -> ConnectionInfo {
        ConnectionInfo {
            connection: id,
            process: None,
            source: "10.77.0.2:40000".parse().unwrap(),
            destination: destination.parse().unwrap(),
            host: None,
            name_source: NameSource::None,
            protocol: Protocol::Tcp,
            state,
            pending_id: (state == ConnectionState::Pending).then_some(id + 100),
            decided_by: None,
            started_unix_ms: 0,
            ended_unix_ms: None,
            bytes_up: 0,
            bytes_down: 0,
            error: None,
        }
    }

    fn monitor() -> Monitor {
        let mut allowed = connection(2, ConnectionState::Allowed, "203.0.113.20:80");
        allowed.decided_by = Some(DecidedBy::Rule { rule: RuleId(3) });
        Monitor {
            connections: vec![
                connection(1, ConnectionState::Pending, "203.0.113.10:80"),
                allowed,
                connection(3, ConnectionState::Denied, "203.0.113.10:443"),
            ],
            ..Monitor::default()
        }
    }

    #[test]
    fn groups_by_process_then_destination() {
        let monitor = monitor();
        let groups = monitor.groups();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].title, format::UNKNOWN_PROCESS);
        let titles: Vec<&str> = groups[0]
            .destinations
            .iter()
            .map(|(title, _)| title.as_str())
            .collect();
        assert_eq!(titles, ["203.0.113.10", "203.0.113.20"]);
        assert_eq!(groups[0].destinations[0].1.len(), 2);
    }

    #[test]
    fn filter_and_search_narrow_list() {
        let mut monitor = monitor();
        monitor.update(MonitorMessage::Filter(StateFilter::Denied));
        let groups = monitor.groups();
        assert_eq!(groups[0].destinations[0].1[0].connection, 3);

        monitor.update(MonitorMessage::Filter(StateFilter::All));
        monitor.update(MonitorMessage::Search("RULE 3".into()));
        let groups = monitor.groups();
        assert_eq!(groups[0].destinations.len(), 1);
        assert_eq!(groups[0].destinations[0].1[0].connection, 2);
    }

    #[test]
    fn decide_pending_once_and_others_by_rule() {
        let mut monitor = monitor();
        let pending = monitor.update(MonitorMessage::Decide(1, Action::Allow));
        assert_eq!(
            pending,
            vec![Request::decide(101, Action::Allow, LifetimeSpec::Once)]
        );
        let ended = monitor.update(MonitorMessage::Decide(2, Action::Deny));
        let [Request::AddRule { rule }] = ended.as_slice() else {
            panic!("expected one add_rule request, got {ended:?}");
        };
        assert_eq!(rule.action, Action::Deny);
        assert_eq!(
            rule.destination.address,
            AddressMatch::Ip("203.0.113.20".parse().unwrap())
        );
        assert_eq!(rule.destination.port, PortMatch::Port(80));
    }

    #[test]
    fn events_update_between_listings() {
        let mut monitor = Monitor::default();
        let mut event = Event {
            time_unix_ms: 5,
            connection: 9,
            process: None,
            source: "10.77.0.2:40000".parse().unwrap(),
            destination: "203.0.113.10:80".parse().unwrap(),
            host: None,
            name_source: NameSource::None,
            protocol: Protocol::Tcp,
            kind: EventKind::Held { pending_id: 4 },
        };
        monitor.apply(&event);
        assert_eq!(monitor.connections[0].state, ConnectionState::Pending);
        event.kind = EventKind::Decided {
            action: Action::Allow,
            by: DecidedBy::User,
            in_kernel: false,
        };
        monitor.apply(&event);
        event.kind = EventKind::Closed {
            bytes_up: 10,
            bytes_down: 20,
            error: None,
        };
        monitor.apply(&event);
        let info = &monitor.connections[0];
        assert_eq!(state_text(info), "allowed by you");
        assert_eq!((info.bytes_up, info.bytes_down), (10, 20));
        assert_eq!(info.ended_unix_ms, Some(5));
    }
}
