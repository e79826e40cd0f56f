//! Pending requests: held connections waiting for a decision, grouped so that identical ones
//! (same process, destination and protocol) are settled by one answer.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::SystemTime,
};

use tokio::sync::oneshot;
use tollgate_rules::{Action, Protocol};

use crate::protocol::{
    ConnectionInfo, ConnectionState, DecidedBy, NameSource, PendingInfo, ProcessInfo,
};

/// The decision delivered to a held connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Action applied to the connection.
    pub action: Action,
    /// Who decided.
    pub by: DecidedBy,
}

/// A connection waiting for its verdict.
#[derive(Debug)]
pub struct HeldConnection {
    /// Connection identifier.
    pub connection: u64,
    /// Sender half of the channel the connection task waits on.
    pub responder: oneshot::Sender<Verdict>,
    /// Client address.
    pub source: SocketAddr,
    /// When the connection arrived, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
}

/// The facts that make two connections identical for grouping. The host name is one of them,
/// so two names served from one address are asked about separately.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    process: Option<(u32, Option<PathBuf>)>,
    destination: SocketAddr,
    host: Option<String>,
    protocol: Protocol,
}

/// A pending request and the connections it holds.
#[derive(Debug)]
pub struct PendingGroup {
    /// The request as clients see it: id, process, destination and count.
    pub info: PendingInfo,
    /// The held connections.
    pub connections: Vec<HeldConnection>,
}

impl PendingGroup {
    /// Sends `verdict` to every held connection and returns how many there were. Connections
    /// whose task has already ended are counted too, since they were settled all the same.
    pub fn settle(self, verdict: Verdict) -> usize {
        let count = self.connections.len();
        for held in self.connections {
            // A closed receiver means the connection already gave up; nothing is left to do.
            let _ = held.responder.send(verdict);
        }
        count
    }
}

/// All pending requests, keyed by id.
#[derive(Debug, Default)]
pub struct PendingTable {
    next_id: u64,
    groups: BTreeMap<u64, PendingGroup>,
    index: HashMap<GroupKey, u64>,
    /// Connections held across all groups, kept so the limit check needs no sum.
    held: usize,
    /// Requests whose last connection moved to another request when it was named, with the
    /// request it moved to, so that a decision on the old id still reaches it.
    moved: HashMap<u64, u64>,
}

/// A connection to hold, as [`PendingTable::hold`] takes it.
#[derive(Debug)]
pub struct NewHold {
    /// Connection identifier.
    pub connection: u64,
    /// The process, when known.
    pub process: Option<Arc<ProcessInfo>>,
    /// Client address.
    pub source: SocketAddr,
    /// Original destination.
    pub destination: SocketAddr,
    /// Host name of the destination, when known.
    pub host: Option<String>,
    /// The way `host` was learned.
    pub name_source: NameSource,
    /// Transport protocol.
    pub protocol: Protocol,
    /// When the connection arrived.
    pub started: SystemTime,
}

impl PendingTable {
    /// Creates an empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection to the pending request of identical connections, creating the request
    /// if there is none. Returns the request id and whether the request is new.
    pub fn hold(&mut self, hold: NewHold, responder: oneshot::Sender<Verdict>) -> (u64, bool) {
        let key = GroupKey {
            process: hold
                .process
                .as_ref()
                .map(|process| (process.pid, process.executable.clone())),
            destination: hold.destination,
            host: hold.host.clone(),
            protocol: hold.protocol,
        };
        let held = HeldConnection {
            connection: hold.connection,
            responder,
            source: hold.source,
            started_unix_ms: unix_ms(hold.started),
        };
        if let Some(id) = self.index.get(&key)
            && let Some(group) = self.groups.get_mut(id)
        {
            group.connections.push(held);
            group.info.connections = group.connections.len();
            self.held += 1;
            return (*id, false);
        }

        self.next_id += 1;
        let id = self.next_id;
        let info = PendingInfo {
            id,
            process: hold.process.as_deref().cloned(),
            source: hold.source,
            destination: hold.destination,
            host: hold.host,
            name_source: hold.name_source,
            protocol: hold.protocol,
            started_unix_ms: unix_ms(hold.started),
            connections: 1,
        };
        self.groups.insert(
            id,
            PendingGroup {
                info,
                connections: vec![held],
            },
        );
        self.index.insert(key, id);
        self.held += 1;
        (id, true)
    }

    /// Removes the pending request `id` so its connections can be settled.
    pub fn take(&mut self, id: u64) -> Option<PendingGroup> {
        let group = self.groups.remove(&id)?;
        self.index.retain(|_, value| *value != id);
        self.held -= group.connections.len();
        Some(group)
    }

    /// Removes every pending request for which `predicate` holds.
    pub fn take_matching(
        &mut self,
        mut predicate: impl FnMut(&PendingInfo) -> bool,
    ) -> Vec<PendingGroup> {
        let ids: Vec<u64> = self
            .groups
            .values()
            .filter(|group| predicate(&group.info))
            .map(|group| group.info.id)
            .collect();
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// Removes one connection from request `id`, for a connection whose prompt timed out or whose
    /// client went away. Returns `None` when a verdict already took it. Removes the request when
    /// it holds no connection any more.
    pub fn release(&mut self, id: u64, connection: u64) -> Option<HeldConnection> {
        let group = self.groups.get_mut(&id)?;
        let position = group
            .connections
            .iter()
            .position(|held| held.connection == connection)?;
        let held = group.connections.swap_remove(position);
        group.info.connections = group.connections.len();
        self.held -= 1;
        if group.connections.is_empty() {
            self.take(id);
        }
        Some(held)
    }

    /// Records that the connections of request `from` moved to request `to`, when `from` no
    /// longer exists.
    pub fn forward(&mut self, from: u64, to: u64) {
        if from == to || self.groups.contains_key(&from) {
            return;
        }
        // Forwards to requests that ended are of no use any more.
        let groups = &self.groups;
        self.moved.retain(|_, target| groups.contains_key(target));
        self.moved.insert(from, to);
    }

    /// Returns the id that request `id` is known by now: itself, or the request its
    /// connections moved to.
    pub fn current_id(&self, id: u64) -> u64 {
        let mut current = id;
        // Each move goes to a newer request, so the chain ends; the bound is a safeguard.
        for _ in 0..8 {
            match self.moved.get(&current) {
                Some(next) if !self.groups.contains_key(&current) => current = *next,
                _ => break,
            }
        }
        current
    }

    /// Returns the pending requests, oldest first.
    pub fn list(&self) -> Vec<PendingInfo> {
        self.groups
            .values()
            .map(|group| group.info.clone())
            .collect()
    }

    /// Returns each held connection as the connection list shows it, oldest request first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let mut listed = Vec::with_capacity(self.held);
        for group in self.groups.values() {
            let info = &group.info;
            for held in &group.connections {
                listed.push(ConnectionInfo {
                    connection: held.connection,
                    process: info.process.clone(),
                    source: held.source,
                    destination: info.destination,
                    host: info.host.clone(),
                    name_source: info.name_source,
                    protocol: info.protocol,
                    state: ConnectionState::Pending,
                    pending_id: Some(info.id),
                    decided_by: None,
                    started_unix_ms: held.started_unix_ms,
                    ended_unix_ms: None,
                    bytes_up: 0,
                    bytes_down: 0,
                    error: None,
                });
            }
        }
        listed
    }

    /// Returns the number of pending requests.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Returns whether no request is pending.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Returns the number of held connections across all requests.
    pub fn held_connections(&self) -> usize {
        self.groups
            .values()
            .map(|group| group.connections.len())
            .sum()
    }
}

/// Converts a time to milliseconds since the Unix epoch; times before it count as 0.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_hold(connection: u64, pid: Option<u32>, port: u16) -> NewHold {
        NewHold {
            connection,
            process: pid.map(|pid| {
                Arc::new(ProcessInfo {
                    gid: 0,
                    user: None,
                    ppid: None,
                    parent_executable: None,
                    script: None,
                    cgroup_id: 0,
                    sha256: None,
                    command_line: None,
                    pid,
                    uid: 0,
                    comm: "curl".into(),
                    executable: Some("/usr/bin/curl".into()),
                    start_time: None,
                })
            }),
            source: "10.0.0.2:40000".parse().unwrap(),
            destination: SocketAddr::new("203.0.113.10".parse().unwrap(), port),
            host: None,
            name_source: NameSource::None,
            protocol: Protocol::Tcp,
            started: SystemTime::now(),
        }
    }

    fn hold(table: &mut PendingTable, hold: NewHold) -> (u64, bool, oneshot::Receiver<Verdict>) {
        let (sender, receiver) = oneshot::channel();
        let (id, new) = table.hold(hold, sender);
        (id, new, receiver)
    }

    const ALLOW: Verdict = Verdict {
        action: Action::Allow,
        by: DecidedBy::User,
    };

    #[test]
    fn identical_connections_share_request() {
        let mut table = PendingTable::new();
        let (first, first_new, _a) = hold(&mut table, new_hold(1, Some(7), 80));
        let (second, second_new, _b) = hold(&mut table, new_hold(2, Some(7), 80));
        assert!(first_new);
        assert!(!second_new);
        assert_eq!(first, second);
        assert_eq!(table.len(), 1);
        assert_eq!(table.held_connections(), 2);
        assert_eq!(table.list()[0].connections, 2);
    }

    #[test]
    fn different_port_or_process_is_separate() {
        let mut table = PendingTable::new();
        let (a, _, _ra) = hold(&mut table, new_hold(1, Some(7), 80));
        let (b, _, _rb) = hold(&mut table, new_hold(2, Some(7), 443));
        let (c, _, _rc) = hold(&mut table, new_hold(3, Some(8), 80));
        let (d, _, _rd) = hold(&mut table, new_hold(4, None, 80));
        assert_eq!(table.len(), 4);
        assert!(a != b && b != c && c != d && a != c && a != d);
    }

    #[test]
    fn different_host_is_separate() {
        let mut table = PendingTable::new();
        let mut blog = new_hold(1, Some(7), 80);
        blog.host = Some("blog.test".into());
        let mut shop = new_hold(2, Some(7), 80);
        shop.host = Some("shop.test".into());
        let (first, _, _a) = hold(&mut table, blog);
        let (second, _, _b) = hold(&mut table, shop);
        assert_ne!(first, second);
        assert_eq!(table.list()[1].host.as_deref(), Some("shop.test"));
    }

    #[test]
    fn settle_reaches_every_connection() {
        let mut table = PendingTable::new();
        let (id, _, mut first) = hold(&mut table, new_hold(1, None, 80));
        let (_, _, mut second) = hold(&mut table, new_hold(2, None, 80));
        let group = table.take(id).unwrap();
        assert_eq!(group.settle(ALLOW), 2);
        assert_eq!(first.try_recv().unwrap(), ALLOW);
        assert_eq!(second.try_recv().unwrap(), ALLOW);
        assert!(table.is_empty());
    }

    #[test]
    fn new_request_after_take() {
        let mut table = PendingTable::new();
        let (id, _, _first) = hold(&mut table, new_hold(1, None, 80));
        table.take(id).unwrap();
        let (next, new, _second) = hold(&mut table, new_hold(2, None, 80));
        assert!(new);
        assert_ne!(id, next);
    }

    #[test]
    fn release_removes_one_connection() {
        let mut table = PendingTable::new();
        let (id, _, _first) = hold(&mut table, new_hold(1, None, 80));
        let (_, _, _second) = hold(&mut table, new_hold(2, None, 80));
        assert!(table.release(id, 1).is_some());
        assert_eq!(table.held_connections(), 1);
        assert!(table.release(id, 1).is_none());
        assert!(table.release(id, 2).is_some());
        assert!(table.is_empty());
    }

    #[test]
    fn take_unknown_id_is_none() {
        let mut table = PendingTable::new();
        assert!(table.take(42).is_none());
    }

    #[test]
    fn take_matching_selects_requests() {
        let mut table = PendingTable::new();
        let (_, _, _a) = hold(&mut table, new_hold(1, None, 80));
        let (_, _, _b) = hold(&mut table, new_hold(2, None, 443));
        let taken = table.take_matching(|info| info.destination.port() == 443);
        assert_eq!(taken.len(), 1);
        assert_eq!(table.len(), 1);
        assert_eq!(table.list()[0].destination.port(), 80);
    }
}
