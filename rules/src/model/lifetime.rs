//! Lifetimes: how long a rule stays in force, and the clock readings that end it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The two clocks that rules expire by, read by the caller and passed to matching, so that
/// matching itself never reads a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clock {
    /// Wall-clock time in milliseconds since the Unix epoch (`CLOCK_REALTIME`).
    pub unix_ms: u64,
    /// Milliseconds since boot, counting time suspended (`CLOCK_BOOTTIME`).
    pub boottime_ms: u64,
}

/// One process, identified by its pid and its start time, so that a later process with the same
/// pid is another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessStart {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot: field 22 of `/proc/PID/stat`.
    pub start_time: u64,
}

/// How long a rule stays in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifetime {
    /// Settles the connections it was made for and is never kept as a rule.
    Once,
    /// Lasts until this process exits, and at most until the daemon stops.
    UntilExit(ProcessStart),
    /// Lasts until the daemon stops; kept in memory only.
    UntilRestart,
    /// Lasts `secs` seconds from its creation, counted on `CLOCK_BOOTTIME` so that time
    /// suspended counts. Stored; it ends at a reboot, because the boot clock starts again.
    For {
        /// The duration the rule was made with, in seconds.
        secs: u64,
        /// `CLOCK_BOOTTIME` reading, in milliseconds, at which the rule ends.
        expires_boottime_ms: u64,
    },
    /// Lasts until a wall-clock time. Stored.
    Until {
        /// End of the rule in milliseconds since the Unix epoch.
        unix_ms: u64,
    },
    /// Stored on disk and in force until removed.
    Forever,
}

impl Lifetime {
    /// Returns whether rules with this lifetime are kept in the rule store across restarts.
    pub fn is_stored(&self) -> bool {
        matches!(self, Self::For { .. } | Self::Until { .. } | Self::Forever)
    }

    /// Returns whether the lifetime has ended at `now`. A rule that lasts until a process exits
    /// never ends by the clock; the daemon removes it when the process is gone.
    pub fn is_expired(&self, now: &Clock) -> bool {
        match self {
            Self::For {
                expires_boottime_ms,
                ..
            } => now.boottime_ms >= *expires_boottime_ms,
            Self::Until { unix_ms } => now.unix_ms >= *unix_ms,
            Self::Once | Self::UntilExit(_) | Self::UntilRestart | Self::Forever => false,
        }
    }

    /// Returns the process whose exit ends the rule.
    pub fn process(&self) -> Option<ProcessStart> {
        match self {
            Self::UntilExit(process) => Some(*process),
            _ => None,
        }
    }
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Once => f.write_str("once"),
            Self::UntilExit(process) => write!(f, "until pid {} exits", process.pid),
            Self::UntilRestart => f.write_str("until-restart"),
            Self::For { secs, .. } => write!(f, "for {secs}s"),
            Self::Until { unix_ms } => write!(f, "until {unix_ms} ms"),
            Self::Forever => f.write_str("forever"),
        }
    }
}

/// A lifetime as a client requests it, before the daemon ties it to its clocks and to the
/// process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifetimeSpec {
    /// See [`Lifetime::Once`].
    Once,
    /// Until the process with this pid exits. A decision on a pending request may leave the
    /// pid out to mean the process that opened the connection.
    UntilExit {
        /// Process id; the daemon reads its start time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    /// See [`Lifetime::UntilRestart`].
    UntilRestart,
    /// For this many seconds from now.
    For {
        /// Duration in seconds, at least 1.
        secs: u64,
    },
    /// Until this wall-clock time.
    Until {
        /// End in milliseconds since the Unix epoch.
        unix_ms: u64,
    },
    /// See [`Lifetime::Forever`].
    Forever,
}

impl LifetimeSpec {
    /// Returns the lifetime that starts at `now`, with `process` as the process whose exit ends
    /// an until-exit lifetime. Returns `None` for until-exit without a process.
    pub fn resolve(self, now: &Clock, process: Option<ProcessStart>) -> Option<Lifetime> {
        Some(match self {
            Self::Once => Lifetime::Once,
            Self::UntilExit { .. } => Lifetime::UntilExit(process?),
            Self::UntilRestart => Lifetime::UntilRestart,
            Self::For { secs } => Lifetime::For {
                secs,
                expires_boottime_ms: now.boottime_ms.saturating_add(secs.saturating_mul(1000)),
            },
            Self::Until { unix_ms } => Lifetime::Until { unix_ms },
            Self::Forever => Lifetime::Forever,
        })
    }
}

impl fmt::Display for LifetimeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Once => f.write_str("once"),
            Self::UntilExit { pid: Some(pid) } => write!(f, "until pid {pid} exits"),
            Self::UntilExit { pid: None } => f.write_str("until the process exits"),
            Self::UntilRestart => f.write_str("until-restart"),
            Self::For { secs } => write!(f, "for {secs}s"),
            Self::Until { unix_ms } => write!(f, "until {unix_ms} ms"),
            Self::Forever => f.write_str("forever"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Clock = Clock {
        unix_ms: 1_700_000_000_000,
        boottime_ms: 5_000,
    };

    #[test]
    fn duration_expires_by_boot_clock() {
        let lifetime = LifetimeSpec::For { secs: 2 }.resolve(&NOW, None).unwrap();

        assert_eq!(
            lifetime,
            Lifetime::For {
                secs: 2,
                expires_boottime_ms: 7_000
            }
        );
        let later = |boottime_ms| Clock { boottime_ms, ..NOW };
        assert!(!lifetime.is_expired(&later(6_999)));
        assert!(lifetime.is_expired(&later(7_000)));
        // The wall clock jumping ahead does not end a duration.
        let jumped = Clock {
            unix_ms: u64::MAX,
            ..NOW
        };
        assert!(!lifetime.is_expired(&jumped));
    }

    #[test]
    fn until_time_expires_by_wall_clock() {
        let lifetime = Lifetime::Until {
            unix_ms: NOW.unix_ms + 1,
        };

        assert!(!lifetime.is_expired(&NOW));
        let later = Clock {
            unix_ms: NOW.unix_ms + 1,
            ..NOW
        };
        assert!(lifetime.is_expired(&later));
    }

    #[test]
    fn other_lifetimes_never_expire_by_clock() {
        let end_of_time = Clock {
            unix_ms: u64::MAX,
            boottime_ms: u64::MAX,
        };
        let process = ProcessStart {
            pid: 1,
            start_time: 2,
        };
        for lifetime in [
            Lifetime::Once,
            Lifetime::UntilExit(process),
            Lifetime::UntilRestart,
            Lifetime::Forever,
        ] {
            assert!(!lifetime.is_expired(&end_of_time), "{lifetime}");
        }
    }

    #[test]
    fn until_exit_needs_a_process() {
        let spec = LifetimeSpec::UntilExit { pid: Some(7) };
        let process = ProcessStart {
            pid: 7,
            start_time: 99,
        };

        assert_eq!(spec.resolve(&NOW, None), None);
        assert_eq!(
            spec.resolve(&NOW, Some(process)),
            Some(Lifetime::UntilExit(process))
        );
    }

    #[test]
    fn stored_lifetimes() {
        assert!(Lifetime::Forever.is_stored());
        assert!(Lifetime::Until { unix_ms: 1 }.is_stored());
        assert!(!Lifetime::UntilRestart.is_stored());
        assert!(!Lifetime::Once.is_stored());
    }

    #[test]
    fn lifetime_serde_keeps_plain_words() {
        assert_eq!(
            serde_json::to_string(&Lifetime::Forever).unwrap(),
            r#""forever""#
        );
        assert_eq!(
            serde_json::from_str::<LifetimeSpec>(r#""until_restart""#).unwrap(),
            LifetimeSpec::UntilRestart
        );
        assert_eq!(
            serde_json::from_str::<LifetimeSpec>(r#"{"for":{"secs":2}}"#).unwrap(),
            LifetimeSpec::For { secs: 2 }
        );
        assert_eq!(
            serde_json::from_str::<LifetimeSpec>(r#"{"until_exit":{}}"#).unwrap(),
            LifetimeSpec::UntilExit { pid: None }
        );
    }
}
