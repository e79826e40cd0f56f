//! The daemon's configuration file, `/etc/tollgate/config.toml` by default.
//!
//! Every key is optional; `docs/config.md` lists each key with its default.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use tollgate_rules::Action;

/// Path of the configuration file when none is given on the command line.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tollgate/config.toml";

/// Path of the control socket when the configuration does not set one.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tollgate/control.sock";

/// The daemon's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
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
    /// Interception settings.
    pub interception: InterceptionConfig,
    /// Process attribution settings.
    pub attribution: AttributionConfig,
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
    /// Whether the kernel applies rule verdicts at `connect()`, so that flows a rule decides
    /// skip the proxy. Needs process attribution.
    pub fast_path: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            state_dir: PathBuf::from("/var/lib/tollgate"),
            prompt_timeout_secs: 60,
            default_action: Action::Deny,
            desktop_user: None,
            upstream_connect_timeout_secs: 10,
            udp_idle_timeout_secs: 60,
            udp_queue_limit: 64,
            interception: InterceptionConfig::default(),
            attribution: AttributionConfig::default(),
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
        config.validate().map_err(|reason| ConfigError::Invalid {
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

    /// Returns the path of the rule database.
    pub fn rules_db_path(&self) -> PathBuf {
        self.state_dir.join("rules.redb")
    }

    fn validate(&self) -> Result<(), String> {
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
        if matches!(interception.route_table, 0 | 253..=255) {
            return Err(
                "interception.route_table must not be 0 or a reserved table (253-255)".into(),
            );
        }
        Ok(())
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
    fn zero_timeout_is_rejected() {
        let err = parse("prompt_timeout_secs = 0\n").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    }
}
