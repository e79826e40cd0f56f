//! Summaries of the flow log: per process, its destinations with flow counts, bytes and
//! verdicts, and the flows a policy does not allow. Used by the daemon at exit and by
//! `tollgate report`.

use std::{collections::BTreeMap, fmt};

use crate::{audit::FlowRecord, policy::Policy, protocol::Expected};

/// Flow counts per process and destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    processes: BTreeMap<String, BTreeMap<String, Totals>>,
}

/// Counts of one destination of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Number of flows.
    pub flows: u64,
    /// Bytes sent to the destination.
    pub bytes_up: u64,
    /// Bytes received from the destination.
    pub bytes_down: u64,
    /// Flows allowed (or that would be allowed).
    pub allow: u64,
    /// Flows denied (or that would be denied).
    pub deny: u64,
    /// Flows no rule decides, which interactive mode would prompt for.
    pub prompt: u64,
}

impl Totals {
    fn add(&mut self, other: &Self) {
        self.flows += other.flows;
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        self.allow += other.allow;
        self.deny += other.deny;
        self.prompt += other.prompt;
    }
}

impl Summary {
    /// Builds the summary of `records`.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a FlowRecord>) -> Self {
        let mut summary = Self::default();
        for record in records {
            summary.add(record);
        }
        summary
    }

    /// Counts one flow.
    pub fn add(&mut self, record: &FlowRecord) {
        let totals = self
            .processes
            .entry(process_label(record))
            .or_default()
            .entry(destination_label(record))
            .or_default();
        totals.flows += 1;
        totals.bytes_up += record.bytes_up;
        totals.bytes_down += record.bytes_down;
        match record.effective_verdict() {
            Expected::Allow => totals.allow += 1,
            Expected::Deny => totals.deny += 1,
            Expected::Prompt => totals.prompt += 1,
        }
    }

    /// Returns the number of flows counted.
    pub fn flows(&self) -> u64 {
        self.processes
            .values()
            .flat_map(BTreeMap::values)
            .map(|totals| totals.flows)
            .sum()
    }

    /// Returns the totals of `destination` for the process labelled `process`.
    pub fn totals(&self, process: &str, destination: &str) -> Option<Totals> {
        self.processes.get(process)?.get(destination).copied()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} flow(s) from {} process(es)",
            self.flows(),
            self.processes.len()
        )?;
        for (process, destinations) in &self.processes {
            let mut total = Totals::default();
            destinations.values().for_each(|totals| total.add(totals));
            writeln!(f, "\n{process}: {}", describe(&total))?;
            for (destination, totals) in destinations {
                writeln!(f, "  {destination:<32} {}", describe(totals))?;
            }
        }
        Ok(())
    }
}

fn describe(totals: &Totals) -> String {
    let mut verdicts = Vec::new();
    for (count, name) in [
        (totals.allow, "allow"),
        (totals.deny, "deny"),
        (totals.prompt, "prompt"),
    ] {
        if count > 0 {
            verdicts.push(format!("{count} {name}"));
        }
    }
    format!(
        "{} flow(s), {} B up, {} B down ({})",
        totals.flows,
        totals.bytes_up,
        totals.bytes_down,
        verdicts.join(", ")
    )
}

/// Returns the label a summary files `record`'s process under: its executable, with the
/// script an interpreter runs and the cgroup id when known.
pub fn process_label(record: &FlowRecord) -> String {
    let Some(process) = &record.process else {
        return "unknown process".to_owned();
    };
    let mut label = match &process.executable {
        Some(path) => path.display().to_string(),
        None => format!("{} (executable unknown)", process.comm),
    };
    if let Some(script) = &process.script {
        label.push_str(&format!(" running {}", script.display()));
    }
    if process.cgroup_id != 0 {
        label.push_str(&format!(" [cgroup {}]", process.cgroup_id));
    }
    label
}

/// Returns the label a summary files `record`'s destination under, such as
/// `203.0.113.10:80/tcp` or `example.com (203.0.113.10):443/tcp`.
pub fn destination_label(record: &FlowRecord) -> String {
    let address = match record.ip {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    match &record.host {
        Some(host) => format!("{host} ({address}):{}/{}", record.port, record.protocol),
        None => format!("{address}:{}/{}", record.port, record.protocol),
    }
}

/// A flow of the log that the policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Process label, as in the summary.
    pub process: String,
    /// Destination label, as in the summary.
    pub destination: String,
    /// Reason the policy denies it.
    pub reason: String,
}

/// Returns the flows of `records` that `policy` does not allow, identical ones once.
pub fn violations(records: &[FlowRecord], policy: &Policy) -> Vec<Violation> {
    let mut found: Vec<Violation> = Vec::new();
    for record in records {
        let Err(denial) = policy.check(&record.facts()) else {
            continue;
        };
        let violation = Violation {
            process: process_label(record),
            destination: destination_label(record),
            reason: denial.to_string(),
        };
        if !found.contains(&violation) {
            found.push(violation);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tollgate_rules::{Action, Protocol};

    use super::*;
    use crate::protocol::ProcessInfo;

    fn record(executable: &str, ip: &str, bytes_down: u64, expected: Expected) -> FlowRecord {
        FlowRecord {
            time_unix_ms: 0,
            connection: 1,
            process: Some(ProcessInfo {
                pid: 10,
                uid: 0,
                comm: "curl".into(),
                executable: Some(PathBuf::from(executable)),
                gid: 0,
                user: None,
                ppid: None,
                parent_executable: None,
                script: None,
                cgroup_id: 0,
                sha256: None,
                command_line: None,
                start_time: None,
            }),
            source: "10.77.0.2:40000".parse().unwrap(),
            ip: ip.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            host: None,
            name_source: None,
            verdict: Action::Allow,
            expected: Some(expected),
            reason: None,
            bytes_up: 5,
            bytes_down,
            closed: true,
            error: None,
        }
    }

    #[test]
    fn summary_groups_by_process_and_destination() {
        let records = [
            record("/usr/bin/curl", "203.0.113.10", 100, Expected::Prompt),
            record("/usr/bin/curl", "203.0.113.10", 50, Expected::Allow),
            record("/usr/bin/python3", "2001:db8::10", 7, Expected::Deny),
        ];
        let summary = Summary::from_records(&records);
        assert_eq!(summary.flows(), 3);
        let curl = summary
            .totals("/usr/bin/curl", "203.0.113.10:80/tcp")
            .unwrap();
        assert_eq!(curl.flows, 2);
        assert_eq!(curl.bytes_down, 150);
        assert_eq!(curl.bytes_up, 10);
        assert_eq!((curl.allow, curl.prompt), (1, 1));
        let python = summary
            .totals("/usr/bin/python3", "[2001:db8::10]:80/tcp")
            .unwrap();
        assert_eq!(python.deny, 1);
        let text = summary.to_string();
        assert!(text.starts_with("3 flow(s) from 2 process(es)"), "{text}");
    }

    #[test]
    fn violations_are_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            "[[allow]]\nexecutables = [\"/usr/bin/curl\"]\nnetworks = [\"203.0.113.10\"]\n",
        )
        .unwrap();
        let policy = Policy::load(&path).unwrap();
        let records = [
            record("/usr/bin/curl", "203.0.113.10", 1, Expected::Allow),
            record("/usr/bin/curl", "203.0.113.20", 1, Expected::Allow),
            record("/usr/bin/curl", "203.0.113.20", 1, Expected::Allow),
        ];
        let found = violations(&records, &policy);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].destination, "203.0.113.20:80/tcp");
        assert!(found[0].reason.contains("203.0.113.20"), "{found:#?}");
    }
}
