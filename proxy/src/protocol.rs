//! The control protocol spoken over the daemon's Unix socket.
//!
//! Each message is one line of JSON. A client sends [`RequestEnvelope`]s; the daemon replies to
//! each with exactly one [`Response`], except that after [`Request::Watch`] it streams
//! [`Response::Event`] lines until the client disconnects. The full description with examples
//! is in `docs/control-protocol.md`.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};
use tollgate_rules::{Action, Destination, Lifetime, Protocol, Rule, RuleId, Subject};

/// Version of the protocol described here. A daemon rejects requests of any other version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Maximum length in bytes of one request line; longer lines are rejected and the client is
/// disconnected.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// One request line: the protocol version and the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// Protocol version the client speaks; must equal [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The request itself.
    #[serde(flatten)]
    pub request: Request,
}

impl Request {
    /// Returns a decision on pending request `id` that covers its own destination only, as the
    /// `tollgate allow` and `deny` commands make.
    pub fn decide(id: u64, action: Action, lifetime: Lifetime) -> Self {
        Self::Decide {
            id,
            action,
            lifetime,
            scope: Scope::Host,
            port: PortScope::This,
            expires_after_secs: None,
            until_process_exits: false,
        }
    }
}

/// Destinations a decision on a pending request covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The request's destination address.
    #[default]
    Host,
    /// The request's domain and its subdomains. The daemon rejects it as `invalid` until rules
    /// can match domains.
    Domain,
    /// Every destination address.
    AnyHost,
}

/// Ports a decision on a pending request covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortScope {
    /// The request's destination port.
    #[default]
    This,
    /// Every port.
    Any,
}

impl RequestEnvelope {
    /// Wraps a request in an envelope of the current protocol version.
    pub fn new(request: Request) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

/// A request from a client to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Asks for the daemon's status.
    Status,
    /// Lists the pending requests.
    ListPending,
    /// Settles a pending request, and with a lifetime other than once, adds a rule for it.
    ///
    /// A wider `scope` or `port` also settles the other pending requests that the wider
    /// decision covers, with lifetime once too.
    Decide {
        /// The pending request to settle.
        id: u64,
        /// Action applied to its connections.
        action: Action,
        /// How long the decision lasts.
        lifetime: Lifetime,
        /// Destinations the decision covers; the request's own address when absent.
        #[serde(default)]
        scope: Scope,
        /// Ports the decision covers; the request's own port when absent.
        #[serde(default)]
        port: PortScope,
        /// Seconds after which the rule is removed; only with lifetime `until_restart`.
        #[serde(default)]
        expires_after_secs: Option<u64>,
        /// Removes the rule when the requesting process exits; only with lifetime
        /// `until_restart` and a known process.
        #[serde(default)]
        until_process_exits: bool,
    },
    /// Lists the rules in force.
    ListRules,
    /// Adds a rule.
    AddRule {
        /// The rule to add; the daemon assigns its id.
        rule: NewRule,
    },
    /// Removes a rule.
    RemoveRule {
        /// The rule to remove.
        id: RuleId,
    },
    /// Enables or disables a rule, or changes its lifetime. Absent fields stay as they are.
    UpdateRule {
        /// The rule to change.
        id: RuleId,
        /// Whether the rule matches connections.
        #[serde(default)]
        enabled: Option<bool>,
        /// The new lifetime: `until_restart` or `forever`. A new lifetime drops any expiry.
        #[serde(default)]
        lifetime: Option<Lifetime>,
        /// Seconds from now after which the rule is removed; needs lifetime `until_restart`.
        #[serde(default)]
        expires_after_secs: Option<u64>,
    },
    /// Lists the connections in progress and the most recently ended ones.
    ListConnections,
    /// Streams connection events until the client disconnects.
    Watch,
}

/// A rule as a client submits it, before the daemon assigns an id and a creation time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    /// The processes the rule applies to.
    pub subject: Subject,
    /// The destinations the rule applies to.
    pub destination: Destination,
    /// Action applied to a matching connection.
    pub action: Action,
    /// How long the rule stays in force: `until_restart` or `forever`.
    pub lifetime: Lifetime,
    /// Free text attached to the rule.
    #[serde(default)]
    pub note: String,
}

/// The daemon's reply to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Reply to [`Request::Status`].
    Status(StatusInfo),
    /// Reply to [`Request::ListPending`].
    Pending {
        /// The pending requests, oldest first.
        requests: Vec<PendingInfo>,
    },
    /// Reply to [`Request::Decide`].
    Decided {
        /// Number of connections settled, including those of other pending requests that the new
        /// rule also matched.
        settled: usize,
        /// The rule created, when the lifetime was not once.
        rule: Option<RuleInfo>,
    },
    /// Reply to [`Request::ListRules`].
    Rules {
        /// Every rule, in precedence order.
        rules: Vec<RuleInfo>,
    },
    /// Reply to [`Request::AddRule`].
    RuleAdded {
        /// The rule as stored, with its id.
        rule: Rule,
        /// Number of pending connections the new rule settled.
        settled: usize,
    },
    /// Reply to [`Request::RemoveRule`].
    RuleRemoved {
        /// The rule that was removed.
        id: RuleId,
    },
    /// Reply to [`Request::UpdateRule`].
    RuleUpdated {
        /// The rule as it is now.
        rule: RuleInfo,
    },
    /// Reply to [`Request::ListConnections`].
    Connections {
        /// Connections in progress, then recently ended ones, each group oldest first.
        connections: Vec<ConnectionInfo>,
    },
    /// First reply to [`Request::Watch`]; events follow.
    Watching,
    /// A connection event, streamed after [`Response::Watching`].
    Event(Event),
    /// The request failed.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

/// Reason a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line was not valid JSON or not a known request; the daemon disconnects.
    Malformed,
    /// The request's protocol version is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// No pending request or rule has the given id.
    NotFound,
    /// The request is well-formed but its content is invalid.
    Invalid,
    /// The client's uid may not use the control socket; the daemon disconnects.
    Forbidden,
    /// The daemon failed to carry out the request.
    Internal,
}

/// The daemon's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Daemon version.
    pub version: String,
    /// Process id of the daemon.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Whether connections are being diverted to the daemon.
    pub intercepting: bool,
    /// Number of pending requests.
    pub pending_requests: usize,
    /// Number of connections held across all pending requests.
    pub held_connections: usize,
    /// Number of rules in force.
    pub rules: usize,
    /// Number of connections being relayed now.
    pub active_connections: usize,
    /// Seconds a connection waits for a decision before the default action applies.
    pub prompt_timeout_secs: u64,
    /// Action applied when no decision comes in time.
    pub default_action: Action,
}

/// Known facts about the process that opened a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process id (thread group id).
    pub pid: u32,
    /// User id the process ran as.
    pub uid: u32,
    /// Short command name from the kernel.
    pub comm: String,
    /// Executable path, when known.
    pub executable: Option<PathBuf>,
}

/// A rule with the daemon's expiry conditions for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// The rule.
    #[serde(flatten)]
    pub rule: Rule,
    /// Time at which the daemon removes the rule, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<u64>,
    /// Process id whose exit removes the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_exit_of: Option<u32>,
}

/// State of a connection's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Held, waiting for a decision.
    Pending,
    /// Allowed: relayed, or failed to reach its destination.
    Allowed,
    /// Denied and reset.
    Denied,
}

/// One diverted connection as [`Request::ListConnections`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Connection identifier, as in events.
    pub connection: u64,
    /// The process, or `None` when it is unknown.
    pub process: Option<ProcessInfo>,
    /// Source address.
    pub source: SocketAddr,
    /// Original destination.
    pub destination: SocketAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The domain name the program looked up for the destination address, when known; always
    /// absent until the daemon learns names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The verdict so far.
    pub state: ConnectionState,
    /// The pending request holding the connection, while it is pending.
    pub pending_id: Option<u64>,
    /// Origin of the verdict, once decided.
    pub decided_by: Option<DecidedBy>,
    /// Start of the connection, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// End of the connection, in milliseconds since the Unix epoch; `None` while it is open.
    pub ended_unix_ms: Option<u64>,
    /// Bytes relayed from the client to the destination so far.
    pub bytes_up: u64,
    /// Bytes relayed from the destination to the client so far.
    pub bytes_down: u64,
    /// Reason the relay failed, if it did.
    pub error: Option<String>,
}

/// A pending request: one or more identical held connections waiting for a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingInfo {
    /// Identifier to pass to [`Request::Decide`].
    pub id: u64,
    /// The process, or `None` when it is unknown.
    pub process: Option<ProcessInfo>,
    /// Source address of the first held connection.
    pub source: SocketAddr,
    /// The destination the program connected to.
    pub destination: SocketAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Start of the first held connection, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Number of connections held for this request.
    pub connections: usize,
    /// The domain name the program looked up for the destination address, when known.
    ///
    /// NOTE: the daemon does not learn names yet, so this is always absent for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Source of `domain`, such as `dns` for a name from a DNS response the resolver relayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_source: Option<String>,
}

/// A connection event streamed to watchers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Time of the event, in milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// Connection identifier, unique within one daemon run.
    pub connection: u64,
    /// The process, or `None` when it is unknown.
    pub process: Option<ProcessInfo>,
    /// Source address.
    pub source: SocketAddr,
    /// Original destination.
    pub destination: SocketAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Kind of connection event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The connection is held under a pending request.
    Held {
        /// The pending request that holds it.
        pending_id: u64,
    },
    /// A verdict was applied to the connection.
    Decided {
        /// The verdict.
        action: Action,
        /// Who decided.
        by: DecidedBy,
    },
    /// An allowed connection ended.
    Closed {
        /// Bytes sent from the client to the destination.
        bytes_up: u64,
        /// Bytes sent from the destination to the client.
        bytes_down: u64,
        /// Reason the relay failed, or `None` after a clean close.
        error: Option<String>,
    },
}

/// Source of a connection's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum DecidedBy {
    /// A rule matched.
    Rule {
        /// The matching rule.
        rule: RuleId,
    },
    /// A person decided the pending request.
    User,
    /// No decision came before the prompt timeout, so the default action applied.
    Timeout,
}
