//! The daemon's configuration file, `/etc/tollgate/config.toml` by default.
//!
//! Every key is optional; `docs/config.md` lists each key with its default.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tollgate_resolver::DnsConfig;
use tollgate_rules::Action;

/// Path of the configuration file when none is given on the command line.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tollgate/config.toml";

/// Path of the control socket when the configuration does not set one.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tollgate/control.sock";

/// Path of the flow log in audit and enforce mode when the configuration does not set one.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/tollgate/flows.jsonl";

/// The daemon's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Decision mode: prompts, audit or enforce.
    pub mode: Mode,
    /// Flow log: one JSON line per flow. Audit and enforce mode write it at
    /// [`DEFAULT_AUDIT_LOG`] when this is unset; interactive mode only when it is set.
    pub audit_log: Option<PathBuf>,
    /// File the flow summary goes to when the daemon stops; `None` means stderr. Written in
    /// audit and enforce mode, and whenever `audit_log` is set.
    pub audit_summary: Option<PathBuf>,
    /// Allowlist of enforce mode (`docs/policy.md`). In audit mode it gives the expected
    /// verdict of each flow instead of the rules.
    pub policy: Option<PathBuf>,
    /// Path of the control socket.
    pub control_socket: PathBuf,
    /// Directory of the rule database (`rules.redb`).
    pub state_dir: PathBuf,
    /// Seconds a connection waits for a decision before `default_action` applies to it.
    pub prompt_timeout_secs: u64,
    /// Action for a connection nobody decided within the prompt timeout. It applies to that
    /// connection only and never creates a rule.
    pub default_action: Action,
    /// User name or numeric uid that may use the control socket besides root.
    pub desktop_user: Option<String>,
    /// Seconds allowed for connecting to the original destination after an allow.
    pub upstream_connect_timeout_secs: u64,
    /// Seconds without a datagram in either direction after which a UDP flow ends.
    pub udp_idle_timeout_secs: u64,
    /// Datagrams of a UDP flow kept while it waits for a decision; later ones are dropped.
    pub udp_queue_limit: usize,
    /// Whether a denied UDP flow's datagrams are answered with ICMP "port unreachable", so
    /// programs fail at once instead of waiting for a reply that never comes.
    pub udp_deny_icmp: bool,
    /// Connections and UDP flows held at once, across all pending requests. A new one beyond
    /// this gets the default action at once, which keeps memory and descriptors bounded.
    pub max_held_connections: usize,
    /// Interception settings.
    pub interception: InterceptionConfig,
    /// Process attribution settings.
    pub attribution: AttributionConfig,
    /// Settings of the local DNS resolver.
    pub dns: DnsConfig,
}

/// How the daemon decides flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Rules decide; a flow no rule decides waits for a person.
    #[default]
    Interactive,
    /// Every flow is allowed and recorded with the verdict the policy or the rules would give.
    Audit,
    /// The policy decides: what it does not allow is denied, with no prompts.
    Enforce,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Interactive => "interactive",
            Self::Audit => "audit",
            Self::Enforce => "enforce",
        })
    }
}

/// Settings of the kernel programs that name the process behind each flow.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributionConfig {
    /// Whether to load the BPF programs. Without them every flow shows as "unknown process".
    pub enabled: bool,
    /// cgroup2 directory the programs attach to; processes outside it are not attributed.
    /// `None` means the root of the cgroup2 mount, which covers every process.
    pub cgroup: Option<PathBuf>,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cgroup: None,
        }
    }
}

/// Settings of the diversion of outbound connections to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InterceptionConfig {
    /// Whether the daemon installs its nftables table and policy routes. With `false` it only
    /// listens, which is useful when another tool diverts traffic to it.
    pub enabled: bool,
    /// Loopback port of the transparent TCP listeners (127.0.0.1 and ::1).
    pub tcp_port: u16,
    /// Loopback port of the transparent UDP listeners (127.0.0.1 and ::1).
    pub udp_port: u16,
    /// Firewall mark bit that routes a diverted packet to the listeners.
    pub intercept_mark: u32,
    /// Firewall mark of the daemon's own sockets, which are never diverted.
    pub bypass_mark: u32,
    /// Routing table that delivers marked packets locally.
    pub route_table: u32,
    /// Priority of the policy routing rules that select `route_table`.
    pub rule_priority: u32,
    /// Users whose DNS traffic is not diverted to the resolver: local stub resolvers that the
    /// resolver may forward to, whose own upstream queries would otherwise come back to it in a
    /// loop. Users that do not exist are skipped.
    pub dns_exempt_users: Vec<String>,
    /// Whether the kernel applies rule verdicts at `connect()`, so that flows a rule decides
    /// skip the proxy (interactive mode only). Needs process attribution.
    pub fast_path: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Interactive,
            audit_log: None,
            audit_summary: None,
            policy: None,
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            state_dir: PathBuf::from("/var/lib/tollgate"),
            prompt_timeout_secs: 60,
            default_action: Action::Deny,
            desktop_user: None,
            upstream_connect_timeout_secs: 10,
            udp_idle_timeout_secs: 60,
            udp_queue_limit: 64,
            max_held_connections: 16_384,
            udp_deny_icmp: false,
            interception: InterceptionConfig::default(),
            attribution: AttributionConfig::default(),
            dns: DnsConfig::default(),
        }
    }
}

impl Default for InterceptionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tcp_port: 15001,
            udp_port: 15002,
            intercept_mark: 0x1,
            bypass_mark: 0x2,
            route_table: 100,
            rule_priority: 100,
            dns_exempt_users: vec!["systemd-resolve".to_owned()],
            fast_path: true,
        }
    }
}

/// Errors reading the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a wrong type.
    #[error("invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid config file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Description of the invalid value.
        reason: String,
    },
}

impl Config {
    /// Reads the configuration from `path`. When `path` is the default path and the file does
    /// not exist, returns the defaults; an explicitly named file must exist.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config
            .validate_numbers()
            .map_err(|reason| ConfigError::Invalid {
                path: path.to_owned(),
                reason,
            })?;
        Ok(config)
    }

    /// Returns the prompt timeout as a duration.
    pub fn prompt_timeout(&self) -> Duration {
        Duration::from_secs(self.prompt_timeout_secs)
    }

    /// Returns the upstream connect timeout as a duration.
    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_connect_timeout_secs)
    }

    /// Returns the UDP idle timeout as a duration.
    pub fn udp_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.udp_idle_timeout_secs)
    }

    /// Returns the path of the flow log, or `None` when no flow log is written.
    pub fn flow_log_path(&self) -> Option<PathBuf> {
        match (&self.audit_log, self.mode) {
            (Some(path), _) => Some(path.clone()),
            (None, Mode::Interactive) => None,
            (None, Mode::Audit | Mode::Enforce) => Some(PathBuf::from(DEFAULT_AUDIT_LOG)),
        }
    }

    /// Checks the whole configuration, after the command line has changed what it may.
    /// [`Config::load`] checks only the values that the command line cannot set.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == Mode::Enforce && self.policy.is_none() {
            return Err("enforce mode needs a policy file (policy key or --policy)".into());
        }
        self.validate_numbers()
    }

    /// Returns the path of the rule database.
    pub fn rules_db_path(&self) -> PathBuf {
        self.state_dir.join("rules.redb")
    }

    fn validate_numbers(&self) -> Result<(), String> {
        let interception = &self.interception;
        if self.prompt_timeout_secs == 0 {
            return Err("prompt_timeout_secs must be at least 1".into());
        }
        if self.upstream_connect_timeout_secs == 0 {
            return Err("upstream_connect_timeout_secs must be at least 1".into());
        }
        if self.udp_idle_timeout_secs == 0 {
            return Err("udp_idle_timeout_secs must be at least 1".into());
        }
        if self.max_held_connections == 0 {
            return Err("max_held_connections must be at least 1".into());
        }
        if self.udp_queue_limit == 0 {
            return Err("udp_queue_limit must be at least 1".into());
        }
        if interception.tcp_port == 0 || interception.udp_port == 0 {
            return Err("interception.tcp_port and udp_port must not be 0".into());
        }
        if interception.intercept_mark == 0 || interception.bypass_mark == 0 {
            return Err("interception marks must not be 0".into());
        }
        if interception.intercept_mark & interception.bypass_mark != 0 {
            return Err("interception.intercept_mark and bypass_mark must not share bits".into());
        }
        // The main table's rule has priority 32766: a later rule would never be consulted.
        if interception.rule_priority == 0 || interception.rule_priority >= 32766 {
            return Err(
                "interception.rule_priority must be between 1 and 32765, before the main table"
                    .into(),
            );
        }
        if matches!(interception.route_table, 0 | 253..=255) {
            return Err(
                "interception.route_table must not be 0 or a reserved table (253-255)".into(),
            );
        }
        if self.dns.enabled && self.dns.port == interception.tcp_port {
            return Err("dns.port must differ from interception.tcp_port".into());
        }
        self.dns.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, text).unwrap();
        Config::load(&path, true)
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn missing_default_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(&dir.path().join("absent.toml"), false).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn missing_explicit_file_is_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::load(&dir.path().join("absent.toml"), true).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn keys_override_defaults() {
        let config = parse(
            "prompt_timeout_secs = 5\ndefault_action = \"allow\"\n\
             [interception]\ntcp_port = 16001\n",
        )
        .unwrap();
        assert_eq!(config.prompt_timeout_secs, 5);
        assert_eq!(config.default_action, Action::Allow);
        assert_eq!(config.interception.tcp_port, 16001);
        assert_eq!(config.interception.route_table, 100);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = parse("prompt_timeout = 5\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn overlapping_marks_are_rejected() {
        let err = parse("[interception]\nintercept_mark = 3\nbypass_mark = 2\n").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    }

    #[test]
    fn dns_table_is_read() {
        let config = parse(
            "[dns]\nport = 16053\nrefusal = \"null_address\"\n\
             [[dns.upstreams]]\naddress = \"192.0.2.53\"\nprotocol = \"tls\"\n\
             server_name = \"dns.test\"\n",
        )
        .unwrap();
        assert_eq!(config.dns.port, 16053);
        assert_eq!(
            config.dns.refusal,
            tollgate_resolver::RefusalMode::NullAddress
        );
        assert_eq!(config.dns.upstreams[0].port(), 853);
    }

    #[test]
    fn encrypted_upstream_needs_server_name() {
        let err = parse("[[dns.upstreams]]\naddress = \"192.0.2.53\"\nprotocol = \"https\"\n")
            .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    }

    #[test]
    fn priority_after_main_table_is_rejected() {
        let err = parse("[interception]\nrule_priority = 40000\n").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    }

    #[test]
    fn enforce_needs_policy() {
        let err = parse("mode = \"enforce\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.contains("policy"), "{err}");
        let config = parse("mode = \"enforce\"\npolicy = \"/etc/tollgate/policy.toml\"\n").unwrap();
        assert_eq!(config.mode, Mode::Enforce);
        assert_eq!(
            config.flow_log_path(),
            Some(PathBuf::from(DEFAULT_AUDIT_LOG))
        );
    }

    #[test]
    fn interactive_writes_no_flow_log_by_default() {
        assert_eq!(Config::default().flow_log_path(), None);
    }

    #[test]
    fn zero_timeout_is_rejected() {
        let err = parse("prompt_timeout_secs = 0\n").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    }
}
