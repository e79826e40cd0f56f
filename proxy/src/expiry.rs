//! Conditions that remove an until-restart rule before the daemon stops: a deadline, or the
//! exit of the process the rule was made for.

use std::fs;

/// When the daemon removes a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// At this time, in milliseconds since the Unix epoch.
    At {
        /// The deadline.
        unix_ms: u64,
    },
    /// When this process exits.
    ProcessExit {
        /// The process id.
        pid: u32,
        /// The process's start time in clock ticks after boot, which tells a reused pid apart;
        /// `None` when the process was already gone.
        start_ticks: Option<u64>,
    },
}

impl Expiry {
    /// Returns an expiry at the exit of process `pid` as it runs now.
    pub fn process_exit(pid: u32) -> Self {
        Self::ProcessExit {
            pid,
            start_ticks: process_start_ticks(pid),
        }
    }

    /// Returns whether the rule should be removed at `now_unix_ms`.
    pub fn is_due(&self, now_unix_ms: u64) -> bool {
        match *self {
            Self::At { unix_ms } => now_unix_ms >= unix_ms,
            Self::ProcessExit { pid, start_ticks } => {
                start_ticks.is_none() || process_start_ticks(pid) != start_ticks
            }
        }
    }

    /// Returns the deadline, for an expiry at a time.
    pub fn deadline_unix_ms(&self) -> Option<u64> {
        match *self {
            Self::At { unix_ms } => Some(unix_ms),
            Self::ProcessExit { .. } => None,
        }
    }

    /// Returns the process id, for an expiry at a process's exit.
    pub fn pid(&self) -> Option<u32> {
        match *self {
            Self::At { .. } => None,
            Self::ProcessExit { pid, .. } => Some(pid),
        }
    }
}

/// Reads field 22 (`starttime`) of `/proc/PID/stat`, or returns `None` when the process does
/// not exist.
fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may contain spaces and parentheses, so the fields are
    // counted from the last closing parenthesis, after which field 3 starts.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn deadline_is_due_at_its_time() {
        let expiry = Expiry::At { unix_ms: 1000 };
        assert!(!expiry.is_due(999));
        assert!(expiry.is_due(1000));
    }

    #[test]
    fn process_exit_is_due_after_exit() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let expiry = Expiry::process_exit(child.id());
        assert!(!expiry.is_due(0));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(expiry.is_due(0));
    }

    #[test]
    fn own_process_has_start_time() {
        assert!(process_start_ticks(std::process::id()).is_some());
        assert!(!Expiry::process_exit(std::process::id()).is_due(0));
    }
}
