//! The flow log of audit and enforce mode: one JSON line per flow, written when the flow ends
//! or is denied, and a running [`Summary`] of them.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};
use tollgate_rules::{Action, Protocol};
use tracing::warn;

use crate::{
    policy::FlowFacts,
    protocol::{EventKind, Expected, NameSource, ProcessInfo},
    report::Summary,
};

/// One line of the flow log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// When the flow was decided, in milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// Connection identifier, unique within one daemon run.
    pub connection: u64,
    /// The process, or `None` when it is unknown.
    pub process: Option<ProcessInfo>,
    /// Source address.
    pub source: SocketAddr,
    /// Destination address.
    pub ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Domain name of the destination, when known.
    #[serde(default)]
    pub host: Option<String>,
    /// Source of the name (such as the DNS answer it came from), when `host` is set.
    #[serde(default)]
    pub name_source: Option<String>,
    /// The action applied to the flow.
    pub verdict: Action,
    /// The verdict the flow would get from the policy, or from the rules when there is no
    /// policy. `None` in interactive mode, where it is the applied verdict.
    #[serde(default)]
    pub expected: Option<Expected>,
    /// Reason the policy denies, or would deny, the flow.
    #[serde(default)]
    pub reason: Option<String>,
    /// Bytes sent from the client to the destination.
    pub bytes_up: u64,
    /// Bytes sent from the destination to the client.
    pub bytes_down: u64,
    /// `false` for a flow that was still open when the daemon stopped.
    #[serde(default = "yes")]
    pub closed: bool,
    /// Cause of a failed relay.
    #[serde(default)]
    pub error: Option<String>,
}

fn yes() -> bool {
    true
}

impl FlowRecord {
    /// Returns the facts a policy checks.
    pub fn facts(&self) -> FlowFacts<'_> {
        let process = self.process.as_ref();
        FlowFacts {
            executable: process.and_then(|process| process.executable.as_deref()),
            script: process.and_then(|process| process.script.as_deref()),
            host: self.host.as_deref(),
            ip: self.ip,
            port: self.port,
            protocol: self.protocol,
        }
    }

    /// Returns the verdict to count in summaries: the expected one when known, else the
    /// applied one.
    pub fn effective_verdict(&self) -> Expected {
        match (self.expected, self.verdict) {
            (Some(expected), _) => expected,
            (None, Action::Allow) => Expected::Allow,
            (None, Action::Deny) => Expected::Deny,
        }
    }
}

/// The open flow log of a running daemon.
pub struct FlowLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    /// Flows decided but not ended, by connection id.
    open: HashMap<u64, FlowRecord>,
    /// Expected verdict and reason of flows not decided yet, by connection id.
    expected: HashMap<u64, (Expected, Option<String>)>,
    summary: Summary,
    /// Whether a write failure was logged, so a full disk logs once.
    failing: bool,
}

/// The identity of a flow, as the daemon passes it to [`FlowLog::observe`].
pub struct FlowIdentity<'a> {
    /// Connection identifier.
    pub connection: u64,
    /// The process, when known.
    pub process: Option<&'a ProcessInfo>,
    /// Source address.
    pub source: SocketAddr,
    /// Original destination.
    pub destination: SocketAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Domain name of the destination, when known.
    pub host: Option<&'a str>,
    /// Source of `host`, such as the DNS answer it came from.
    pub name_source: NameSource,
}

impl FlowLog {
    /// Opens `path` for appending, creating it and its directory (mode 0600 for the file,
    /// since it names processes and destinations).
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                file,
                open: HashMap::new(),
                expected: HashMap::new(),
                summary: Summary::default(),
                failing: false,
            }),
        })
    }

    /// Returns the path of the log.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notes the verdict the policy or the rules would give flow `connection`, which the next
    /// decision event of the flow records.
    pub fn expect(&self, connection: u64, expected: Expected, reason: Option<String>) {
        self.lock().expected.insert(connection, (expected, reason));
    }

    /// Records a connection event: a decision opens the flow's record (a denial is written
    /// at once), and the end of a flow writes its record with the byte counts.
    pub fn observe(&self, flow: &FlowIdentity<'_>, kind: &EventKind, time_unix_ms: u64) {
        let mut inner = self.lock();
        match kind {
            EventKind::Held { .. } => {}
            EventKind::Decided { action, .. } => {
                let (expected, reason) = inner.expected.remove(&flow.connection).unzip();
                let record = FlowRecord {
                    time_unix_ms,
                    connection: flow.connection,
                    process: flow.process.cloned(),
                    source: flow.source,
                    ip: flow.destination.ip(),
                    port: flow.destination.port(),
                    protocol: flow.protocol,
                    host: flow.host.map(str::to_owned),
                    name_source: flow.host.is_some().then(|| flow.name_source.to_string()),
                    verdict: *action,
                    expected,
                    reason: reason.flatten(),
                    bytes_up: 0,
                    bytes_down: 0,
                    closed: true,
                    error: None,
                };
                match action {
                    Action::Deny => inner.write(&record),
                    Action::Allow => {
                        inner.open.insert(flow.connection, record);
                    }
                }
            }
            EventKind::Closed {
                bytes_up,
                bytes_down,
                error,
            } => {
                if let Some(mut record) = inner.open.remove(&flow.connection) {
                    record.bytes_up = *bytes_up;
                    record.bytes_down = *bytes_down;
                    record.error = error.clone();
                    inner.write(&record);
                }
            }
        }
    }

    /// Writes the records of flows still open, marked `closed: false`, and returns the summary
    /// of every flow recorded by this daemon run.
    pub fn finish(&self) -> Summary {
        let mut inner = self.lock();
        let mut open: Vec<FlowRecord> = inner.open.drain().map(|(_, record)| record).collect();
        open.sort_by_key(|record| record.connection);
        for mut record in open {
            record.closed = false;
            inner.write(&record);
        }
        inner.summary.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each critical section leaves the maps consistent, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn write(&mut self, record: &FlowRecord) {
        self.summary.add(record);
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(err) => {
                warn!(error = %err, "failed to encode flow record");
                return;
            }
        };
        line.push(b'\n');
        // One write per line on an O_APPEND file, so a reader never sees half a line unless
        // the disk fills.
        match self.file.write_all(&line) {
            Ok(()) => self.failing = false,
            Err(err) if !self.failing => {
                self.failing = true;
                warn!(error = %err, "failed to write flow log; records are lost until it works");
            }
            Err(_) => {}
        }
    }
}

/// Reads every record of the flow log at `path`. A line that is not a record (a partial last
/// line after a crash, say) is an error naming its line number.
pub fn read_records(path: &Path) -> anyhow::Result<Vec<FlowRecord>> {
    use anyhow::Context as _;

    let text = fs::read_to_string(path)
        .with_context(|| format!("failed to read flow log {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).with_context(|| {
                format!("invalid record on line {} of {}", index + 1, path.display())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(process: Option<&ProcessInfo>) -> FlowIdentity<'_> {
        FlowIdentity {
            connection: 7,
            process,
            source: "10.77.0.2:40000".parse().unwrap(),
            destination: "203.0.113.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            host: None,
            name_source: NameSource::None,
        }
    }

    fn decided(action: Action) -> EventKind {
        EventKind::Decided {
            action,
            by: crate::protocol::DecidedBy::User,
            in_kernel: false,
        }
    }

    #[test]
    fn allowed_flow_is_written_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/flows.jsonl");
        let log = FlowLog::open(&path).unwrap();
        log.expect(7, Expected::Prompt, None);
        log.observe(&identity(None), &decided(Action::Allow), 1);
        assert!(read_records(&path).unwrap().is_empty());

        let closed = EventKind::Closed {
            bytes_up: 10,
            bytes_down: 20,
            error: None,
        };
        log.observe(&identity(None), &closed, 2);
        let records = read_records(&path).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].bytes_up, 10);
        assert_eq!(records[0].bytes_down, 20);
        assert_eq!(records[0].expected, Some(Expected::Prompt));
        assert_eq!(records[0].host, None);
    }

    #[test]
    fn denied_flow_is_written_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let log = FlowLog::open(&path).unwrap();
        log.expect(7, Expected::Deny, Some("no entry".into()));
        log.observe(&identity(None), &decided(Action::Deny), 1);
        let records = read_records(&path).unwrap();
        assert_eq!(records[0].verdict, Action::Deny);
        assert_eq!(records[0].reason.as_deref(), Some("no entry"));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"host\":null"), "{text}");
        assert!(text.contains("\"name_source\":null"), "{text}");
    }

    #[test]
    fn named_flow_is_written_with_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let log = FlowLog::open(&path).unwrap();
        let flow = FlowIdentity {
            host: Some("blog.lab.test"),
            name_source: NameSource::Dns,
            ..identity(None)
        };
        log.observe(&flow, &decided(Action::Deny), 1);
        let records = read_records(&path).unwrap();
        assert_eq!(records[0].host.as_deref(), Some("blog.lab.test"));
        assert_eq!(records[0].name_source.as_deref(), Some("dns"));
    }

    #[test]
    fn finish_writes_open_flows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let log = FlowLog::open(&path).unwrap();
        log.observe(&identity(None), &decided(Action::Allow), 1);
        let summary = log.finish();
        let records = read_records(&path).unwrap();
        assert_eq!(records.len(), 1);
        assert!(!records[0].closed);
        assert_eq!(summary.flows(), 1);
    }
}
