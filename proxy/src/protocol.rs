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
        /// How long the decision lasts.
        lifetime: Lifetime,
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
        rule: Option<Rule>,
    },
    /// Reply to [`Request::ListRules`].
    Rules {
        /// Every rule, in precedence order.
        rules: Vec<Rule>,
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
    /// Whether the kernel applies rule verdicts at `connect()` (the fast path).
    #[serde(default)]
    pub fast_path: bool,
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
}
