//! The connections the daemon has seen: those in progress with live byte counts, and a short
//! history of ended ones, for `list_connections` and the monitor.
//!
//! The table follows the events the daemon emits for every TCP connection and UDP flow, so a
//! flow is tracked from its verdict to its `closed` event, or only at its verdict when denied.
//! Held connections are listed from the pending table instead.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tollgate_rules::Action;

use crate::protocol::{ConnectionInfo, ConnectionState, Event, EventKind};

/// Number of ended connections kept for `list_connections`.
pub const ENDED_HISTORY: usize = 256;

/// Byte counters of one relayed connection, shared with its relay task.
#[derive(Debug, Clone, Default)]
pub struct ByteCounters {
    /// Bytes read from the client, sent to the destination.
    pub up: Arc<AtomicU64>,
    /// Bytes read from the destination, sent to the client.
    pub down: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Tracked {
    info: ConnectionInfo,
    bytes: ByteCounters,
}

impl Tracked {
    fn snapshot(&self) -> ConnectionInfo {
        let mut info = self.info.clone();
        info.bytes_up = self.bytes.up.load(Ordering::Relaxed);
        info.bytes_down = self.bytes.down.load(Ordering::Relaxed);
        info
    }
}

/// Connections in progress, by id, and the most recently ended ones.
#[derive(Debug, Default)]
pub struct ConnectionTable {
    open: BTreeMap<u64, Tracked>,
    ended: VecDeque<ConnectionInfo>,
}

impl ConnectionTable {
    /// Creates an empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Updates the table with an event of a connection. Held connections are not tracked:
    /// the pending table lists them, so holding many costs no memory here.
    pub fn observe(&mut self, event: &Event) {
        match &event.kind {
            EventKind::Held { .. } => {}
            EventKind::Decided { action, by, .. } => {
                let tracked = self
                    .open
                    .entry(event.connection)
                    .or_insert_with(|| Tracked {
                        info: ConnectionInfo::from_event(event, ConnectionState::Allowed),
                        bytes: ByteCounters::default(),
                    });
                // A name learned from the first bytes arrives with the verdict.
                if event.host.is_some() {
                    tracked.info.host.clone_from(&event.host);
                    tracked.info.name_source = event.name_source;
                }
                tracked.info.state = match action {
                    Action::Allow => ConnectionState::Allowed,
                    Action::Deny => ConnectionState::Denied,
                };
                tracked.info.decided_by = Some(*by);
                if *action == Action::Deny {
                    self.end(event.connection, event.time_unix_ms, None, None);
                }
            }
            EventKind::Closed {
                bytes_up,
                bytes_down,
                error,
            } => {
                self.end(
                    event.connection,
                    event.time_unix_ms,
                    Some((*bytes_up, *bytes_down)),
                    error.clone(),
                );
            }
        }
    }

    /// Returns the counters a relay adds to for `connection`. A connection that is not tracked
    /// gets counters that are not listed.
    pub fn counters(&self, connection: u64) -> ByteCounters {
        self.open
            .get(&connection)
            .map(|tracked| tracked.bytes.clone())
            .unwrap_or_default()
    }

    /// Moves `connection` to the history of ended connections, dropping the oldest entry when
    /// the history is full. `bytes` are the final counts when the relay reported them.
    fn end(
        &mut self,
        connection: u64,
        ended_unix_ms: u64,
        bytes: Option<(u64, u64)>,
        error: Option<String>,
    ) {
        let Some(tracked) = self.open.remove(&connection) else {
            return;
        };
        let mut info = tracked.snapshot();
        if let Some((up, down)) = bytes {
            // The relay's own totals include bytes it counted after the last snapshot.
            info.bytes_up = info.bytes_up.max(up);
            info.bytes_down = info.bytes_down.max(down);
        }
        info.ended_unix_ms = Some(ended_unix_ms);
        info.pending_id = None;
        info.error = error;
        if self.ended.len() == ENDED_HISTORY {
            self.ended.pop_front();
        }
        self.ended.push_back(info);
    }

    /// Returns the connections in progress, then the ended ones, each oldest first.
    pub fn list(&self) -> Vec<ConnectionInfo> {
        let open = self.open.values().map(Tracked::snapshot);
        open.chain(self.ended.iter().cloned()).collect()
    }

    /// Returns the number of connections in progress.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use tollgate_rules::{Protocol, RuleId};

    use super::*;
    use crate::protocol::{DecidedBy, NameSource};

    fn event(connection: u64, time_unix_ms: u64, kind: EventKind) -> Event {
        Event {
            time_unix_ms,
            connection,
            process: None,
            source: "10.0.0.2:40000".parse().unwrap(),
            destination: "203.0.113.10:80".parse().unwrap(),
            host: None,
            name_source: NameSource::None,
            protocol: Protocol::Tcp,
            kind,
        }
    }

    fn decided(action: Action, by: DecidedBy) -> EventKind {
        EventKind::Decided {
            action,
            by,
            in_kernel: false,
        }
    }

    #[test]
    fn list_shows_live_byte_counts() {
        let mut table = ConnectionTable::new();
        let by = DecidedBy::Rule { rule: RuleId(4) };
        let allowed = event(1, 10, decided(Action::Allow, by));
        table.observe(&allowed);
        let bytes = table.counters(1);
        bytes.up.fetch_add(10, Ordering::Relaxed);
        bytes.down.fetch_add(2000, Ordering::Relaxed);
        let listed = table.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, ConnectionState::Allowed);
        assert_eq!(listed[0].decided_by, Some(by));
        assert_eq!((listed[0].bytes_up, listed[0].bytes_down), (10, 2000));
        assert_eq!(listed[0].ended_unix_ms, None);
        assert_eq!(listed[0].started_unix_ms, 10);
    }

    #[test]
    fn denied_connection_ends_at_verdict() {
        let mut table = ConnectionTable::new();
        table.observe(&event(1, 5, EventKind::Held { pending_id: 9 }));
        assert!(table.list().is_empty(), "held connections are not tracked");
        table.observe(&event(1, 50, decided(Action::Deny, DecidedBy::User)));
        let listed = table.list();
        assert_eq!(table.open_count(), 0);
        assert_eq!(listed[0].state, ConnectionState::Denied);
        assert_eq!(listed[0].pending_id, None);
        assert_eq!(listed[0].ended_unix_ms, Some(50));
    }

    #[test]
    fn closed_event_keeps_relay_totals() {
        let mut table = ConnectionTable::new();
        table.observe(&event(1, 5, decided(Action::Allow, DecidedBy::User)));
        let closed = EventKind::Closed {
            bytes_up: 7,
            bytes_down: 9,
            error: Some("relay failed".into()),
        };
        table.observe(&event(1, 6, closed));
        let listed = table.list();
        assert_eq!((listed[0].bytes_up, listed[0].bytes_down), (7, 9));
        assert_eq!(listed[0].error.as_deref(), Some("relay failed"));
    }

    #[test]
    fn observe_updates_name_from_later_event() {
        let mut table = ConnectionTable::new();
        let mut named = event(1, 6, decided(Action::Allow, DecidedBy::User));
        named.host = Some("example.test".into());
        named.name_source = NameSource::Tls;
        table.observe(&named);
        let listed = table.list();
        assert_eq!(listed[0].host.as_deref(), Some("example.test"));
        assert_eq!(listed[0].name_source, NameSource::Tls);
    }

    #[test]
    fn history_keeps_newest_ended() {
        let mut table = ConnectionTable::new();
        let total = ENDED_HISTORY as u64 + 5;
        for connection in 1..=total {
            table.observe(&event(
                connection,
                connection,
                decided(Action::Deny, DecidedBy::User),
            ));
        }
        let listed = table.list();
        assert_eq!(listed.len(), ENDED_HISTORY);
        assert_eq!(listed[0].connection, 6);
        assert_eq!(listed.last().unwrap().connection, total);
    }
}
