//! The connections the daemon has seen: those in progress with live byte counts, and a short
//! history of ended ones, for `list_connections`.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tollgate_rules::Action;

use crate::protocol::{ConnectionInfo, ConnectionState, DecidedBy};

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

    /// Starts tracking a connection and returns the counters its relay adds to.
    pub fn open(&mut self, info: ConnectionInfo) -> ByteCounters {
        let bytes = ByteCounters::default();
        let tracked = Tracked {
            info,
            bytes: bytes.clone(),
        };
        self.open.insert(tracked.info.connection, tracked);
        bytes
    }

    /// Records that `connection` is held by pending request `pending_id`.
    pub fn hold(&mut self, connection: u64, pending_id: u64) {
        if let Some(tracked) = self.open.get_mut(&connection) {
            tracked.info.state = ConnectionState::Pending;
            tracked.info.pending_id = Some(pending_id);
        }
    }

    /// Records the verdict applied to `connection`.
    pub fn decide(&mut self, connection: u64, action: Action, by: DecidedBy) {
        if let Some(tracked) = self.open.get_mut(&connection) {
            tracked.info.state = match action {
                Action::Allow => ConnectionState::Allowed,
                Action::Deny => ConnectionState::Denied,
            };
            tracked.info.pending_id = None;
            tracked.info.decided_by = Some(by);
        }
    }

    /// Moves `connection` to the history of ended connections, dropping the oldest entry when
    /// the history is full.
    pub fn end(&mut self, connection: u64, ended_unix_ms: u64, error: Option<String>) {
        let Some(tracked) = self.open.remove(&connection) else {
            return;
        };
        let mut info = tracked.snapshot();
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
}

#[cfg(test)]
mod tests {
    use tollgate_rules::{Protocol, RuleId};

    use super::*;

    fn info(connection: u64) -> ConnectionInfo {
        ConnectionInfo {
            connection,
            process: None,
            source: "10.0.0.2:40000".parse().unwrap(),
            destination: "203.0.113.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            domain: None,
            state: ConnectionState::Pending,
            pending_id: None,
            decided_by: None,
            started_unix_ms: 1,
            ended_unix_ms: None,
            bytes_up: 0,
            bytes_down: 0,
            error: None,
        }
    }

    #[test]
    fn list_shows_live_byte_counts() {
        let mut table = ConnectionTable::new();
        let bytes = table.open(info(1));
        table.decide(1, Action::Allow, DecidedBy::Rule { rule: RuleId(4) });
        bytes.up.fetch_add(10, Ordering::Relaxed);
        bytes.down.fetch_add(2000, Ordering::Relaxed);
        let listed = table.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, ConnectionState::Allowed);
        assert_eq!(
            listed[0].decided_by,
            Some(DecidedBy::Rule { rule: RuleId(4) })
        );
        assert_eq!((listed[0].bytes_up, listed[0].bytes_down), (10, 2000));
        assert_eq!(listed[0].ended_unix_ms, None);
    }

    #[test]
    fn hold_then_deny_then_end() {
        let mut table = ConnectionTable::new();
        table.open(info(1));
        table.hold(1, 9);
        assert_eq!(table.list()[0].pending_id, Some(9));
        table.decide(1, Action::Deny, DecidedBy::User);
        table.end(1, 50, None);
        let listed = table.list();
        assert_eq!(listed[0].state, ConnectionState::Denied);
        assert_eq!(listed[0].pending_id, None);
        assert_eq!(listed[0].ended_unix_ms, Some(50));
    }

    #[test]
    fn history_keeps_newest_ended() {
        let mut table = ConnectionTable::new();
        let total = ENDED_HISTORY as u64 + 5;
        for connection in 1..=total {
            table.open(info(connection));
            table.end(connection, connection, None);
        }
        let listed = table.list();
        assert_eq!(listed.len(), ENDED_HISTORY);
        assert_eq!(listed[0].connection, 6);
        assert_eq!(listed.last().unwrap().connection, total);
    }
}
