//! The control protocol spoken over the daemon's Unix socket.
//!
//! Each message is one line of JSON. A client sends [`RequestEnvelope`]s; the daemon replies to
//! each with exactly one [`Response`], except that after [`Request::Watch`] it streams
//! [`Response::Event`] lines until the client disconnects. The full description with examples
//! is in `docs/control-protocol.md`.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};
use tollgate_rules::{
    Action, Conflict, ConnectionFacts, Destination, Explanation, LifetimeSpec, Protocol, Rule,
    RuleId, Subject,
};

use crate::config::Mode;

/// Version of the protocol described here. A daemon rejects requests of any other version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Maximum length in bytes of one request line; longer lines are rejected and the client is
/// disconnected. An `import_rules` request carries a whole export in one line, and 16 MiB
/// holds about 40,000 rules of typical size.
pub const MAX_REQUEST_LINE: usize = 16 * 1024 * 1024;

/// One request line: the protocol version and the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// Protocol version the client speaks; must equal [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The request itself.
    #[serde(flatten)]
    pub request: Request,
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
    Decide {
        /// The pending request to settle.
        id: u64,
        /// Action applied to its connections.
        action: Action,
        /// How long the decision lasts. `until_exit` without a pid means the process of the
        /// pending request.
        lifetime: LifetimeSpec,
        /// Destinations the decision covers; the request's host when absent.
        #[serde(default)]
        scope: Scope,
        /// Ports the decision covers; the request's own port when absent.
        #[serde(default)]
        port: PortScope,
    },
    /// Lists the connections in progress and the most recently ended ones, with their byte
    /// counts and verdicts.
    ListConnections,
    /// Lists every rule and the conflicts between them.
    ListRules,
    /// Adds a rule.
    AddRule {
        /// The rule to add; the daemon assigns its id.
        rule: Box<NewRule>,
    },
    /// Changes fields of a rule.
    EditRule {
        /// The rule to change.
        id: RuleId,
        /// The new values; fields left out keep their value.
        changes: Box<RuleChanges>,
    },
    /// Removes a rule.
    RemoveRule {
        /// The rule to remove.
        id: RuleId,
    },
    /// Adds rules from an export file, all or none.
    ImportRules {
        /// The rules, as the export file has them.
        rules: Vec<Rule>,
        /// Whether to give the rules new ids instead of keeping theirs.
        #[serde(default)]
        new_ids: bool,
    },
    /// Explains which rule decides a connection.
    Explain {
        /// The facts of the connection.
        connection: Box<ConnectionFacts>,
    },
    /// Streams connection events until the client disconnects.
    Watch,
    /// Turns interception on or off without stopping the daemon. Off removes the nftables table
    /// and policy routes, so traffic passes unfiltered; on installs them again.
    SetInterception {
        /// Whether connections are diverted to the daemon.
        enabled: bool,
    },
}

impl Request {
    /// Returns a decision on pending request `id` that covers its own host and port, as the
    /// `tollgate allow` and `deny` commands make by default.
    pub fn decide(id: u64, action: Action, lifetime: LifetimeSpec) -> Self {
        Self::Decide {
            id,
            action,
            lifetime,
            scope: Scope::Host,
            port: PortScope::This,
        }
    }
}

/// Destinations a decision on a pending request covers. A decision with lifetime once and a
/// wider scope or port than the request's own settles the other pending requests of the same
/// program that it covers, without adding a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The request's host name when one is known, else its destination address.
    #[default]
    Host,
    /// The request's registrable domain (`example.com` for `www.cdn.example.com`) and all its
    /// subdomains; needs a known host name.
    Domain,
    /// Every destination.
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

/// A rule as a client submits it, before the daemon assigns an id and times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    /// The processes the rule applies to.
    #[serde(default)]
    pub subject: Subject,
    /// The destinations the rule applies to.
    #[serde(default)]
    pub destination: Destination,
    /// Action applied to a matching connection.
    pub action: Action,
    /// How long the rule stays in force; every lifetime except `once`.
    pub lifetime: LifetimeSpec,
    /// Whether the rule is an exception that beats rules without the mark.
    #[serde(default)]
    pub priority: bool,
    /// Whether the rule matches; a disabled rule is kept but ignored.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Free text attached to the rule.
    #[serde(default)]
    pub note: String,
}

fn enabled_by_default() -> bool {
    true
}

/// New values for fields of a rule. Fields that are `None` keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleChanges {
    /// New subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
    /// New destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// New action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// New lifetime, starting now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<LifetimeSpec>,
    /// New priority mark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<bool>,
    /// Enables or disables the rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// New note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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
        rule: Option<Rule>,
    },
    /// Reply to [`Request::ListRules`].
    Rules {
        /// Every rule, in precedence order.
        rules: Vec<Rule>,
        /// Enabled rules with the same conditions and different actions, with the winner.
        #[serde(default)]
        conflicts: Vec<Conflict>,
    },
    /// Reply to [`Request::AddRule`].
    RuleAdded {
        /// The rule as stored, with its id.
        rule: Rule,
        /// Number of pending connections the new rule settled.
        settled: usize,
    },
    /// Reply to [`Request::EditRule`].
    RuleEdited {
        /// The rule after the change.
        rule: Rule,
        /// Number of pending connections the changed rule settled.
        settled: usize,
    },
    /// Reply to [`Request::RemoveRule`].
    RuleRemoved {
        /// The rule that was removed.
        id: RuleId,
    },
    /// Reply to [`Request::ImportRules`].
    RulesImported {
        /// The ids of the imported rules, in the order of the request.
        ids: Vec<RuleId>,
        /// Number of pending connections the imported rules settled.
        settled: usize,
    },
    /// Reply to [`Request::Explain`].
    Explained {
        /// Which rule decides and why.
        explanation: Explanation,
        /// The rules the explanation names.
        rules: Vec<Rule>,
    },
    /// Reply to [`Request::ListConnections`].
    Connections {
        /// Connections in progress, then recently ended ones, each group oldest first.
        connections: Vec<ConnectionInfo>,
    },
    /// First reply to [`Request::Watch`]; events follow.
    Watching,
    /// Reply to [`Request::SetInterception`].
    Interception {
        /// Whether connections are diverted to the daemon now.
        enabled: bool,
    },
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
    /// The name map of the local resolver, or `None` when the resolver is disabled.
    #[serde(default)]
    pub names: Option<NameMapStatus>,
    /// How the daemon decides flows; absent from daemons older than the modes.
    #[serde(default)]
    pub mode: Mode,
    /// Whether the kernel applies rule verdicts at `connect()` (the fast path).
    #[serde(default)]
    pub fast_path: bool,
}

/// Counters of the local resolver's name map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameMapStatus {
    /// Mappings held now, per process and machine-wide together.
    pub entries: usize,
    /// Mappings evicted because the `dns.max_names` cap was reached.
    pub evictions: u64,
    /// Mappings dropped because their TTL and grace period had passed.
    pub expirations: u64,
}

/// Known facts about the process that opened a connection, captured in the kernel when it
/// connected or sent, so they stay known after the process exits.
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
    /// Group id the process ran as.
    #[serde(default)]
    pub gid: u32,
    /// Name of the user `uid`, when the user database has one.
    #[serde(default)]
    pub user: Option<String>,
    /// Parent process id, when known.
    #[serde(default)]
    pub ppid: Option<u32>,
    /// Executable path of the parent process, when known.
    #[serde(default)]
    pub parent_executable: Option<PathBuf>,
    /// Script an interpreter (python3, perl, sh, node...) runs, when the command line names
    /// one, so the script rather than the interpreter identifies the program.
    #[serde(default)]
    pub script: Option<PathBuf>,
    /// Id of the process's cgroup2 cgroup, which names its container or service.
    #[serde(default)]
    pub cgroup_id: u64,
    /// Lowercase hex SHA-256 of the executable the process runs, when it could be read.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Command line, arguments joined with single spaces, when the process still ran at
    /// lookup time.
    #[serde(default)]
    pub command_line: Option<String>,
    /// Start time in clock ticks after boot (field 22 of `/proc/PID/stat`), when known. It
    /// distinguishes this process from a later one with the same pid.
    #[serde(default)]
    pub start_time: Option<u64>,
}

/// State of a connection's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Held, waiting for a decision.
    Pending,
    /// Allowed: relayed, or failed to reach its destination.
    Allowed,
    /// Denied: reset, or its datagrams dropped.
    Denied,
}

/// One diverted connection or UDP flow as [`Request::ListConnections`] reports it.
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
    /// Host name of the destination, when one is known.
    pub host: Option<String>,
    /// The way `host` was learned.
    pub name_source: NameSource,
    /// Transport protocol.
    pub protocol: Protocol,
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

impl ConnectionInfo {
    /// Returns the connection an event is about, in `state`, started at the event's time and
    /// with no bytes relayed yet.
    pub fn from_event(event: &Event, state: ConnectionState) -> Self {
        Self {
            connection: event.connection,
            process: event.process.clone(),
            source: event.source,
            destination: event.destination,
            host: event.host.clone(),
            name_source: event.name_source,
            protocol: event.protocol,
            state,
            pending_id: None,
            decided_by: None,
            started_unix_ms: event.time_unix_ms,
            ended_unix_ms: None,
            bytes_up: 0,
            bytes_down: 0,
            error: None,
        }
    }
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
    /// Host name of the destination, when one is known.
    pub host: Option<String>,
    /// The way `host` was learned.
    pub name_source: NameSource,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Start of the first held connection, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Number of connections held for this request.
    pub connections: usize,
}

/// The way a connection's host name was learned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameSource {
    /// The same process resolved the name to this address through the local resolver. Until
    /// processes are known, "the same process" means the same client address.
    Dns,
    /// The process resolved no name to this address, so the name is the latest that any
    /// process resolved to it and may belong to another program.
    DnsMachine,
    /// The server name of the TLS ClientHello the program sent.
    Tls,
    /// The `Host` header of the HTTP request the program sent.
    Http,
    /// No name is known.
    #[default]
    None,
}

impl std::fmt::Display for NameSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Dns => "dns",
            Self::DnsMachine => "dns_machine",
            Self::Tls => "tls",
            Self::Http => "http",
            Self::None => "none",
        })
    }
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
    /// Host name of the destination, when one is known.
    pub host: Option<String>,
    /// The way `host` was learned.
    pub name_source: NameSource,
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
        /// Whether the kernel applied the verdict inside `connect()` or `sendmsg()`, so the
        /// connection never reached the proxy. Its bytes then pass without a relay, and a
        /// denied call failed with `EPERM`.
        #[serde(default)]
        in_kernel: bool,
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
    /// The daemon already held `max_held_connections` connections, so the default action
    /// applied at once.
    Limit,
    /// Audit mode allowed the flow; `expected` is what the policy or the rules would do.
    Audit {
        /// The verdict the flow would get outside audit mode.
        expected: Expected,
    },
    /// Enforce mode: the policy entry `entry` (from 1) allowed the flow, or none did.
    Policy {
        /// The matching allow entry, `None` for a denial.
        entry: Option<usize>,
    },
}

/// The verdict a flow would get from the policy or the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// A policy entry or a rule allows it.
    Allow,
    /// The policy or a rule denies it.
    Deny,
    /// No rule decides it, so interactive mode would hold it for a person.
    Prompt,
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Prompt => "prompt",
        })
    }
}
