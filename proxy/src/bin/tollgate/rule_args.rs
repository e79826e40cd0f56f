//! Command-line flags for the fields of a rule, shared by `rules add` and `rules edit`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;
use tollgate_rules::{
    Action, CommandMatch, Destination, ExecutableMatch, LifetimeSpec, Subject, UserMatch,
};

/// Conditions of a rule. Every flag takes `any` to clear the condition.
#[derive(Debug, Default, Args)]
pub struct ConditionArgs {
    /// Executable path, or a glob such as '/opt/app/*'.
    #[arg(long, value_name = "PATH|GLOB")]
    pub exe: Option<String>,
    /// SHA-256 digest of the executable file, 64 hex digits.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// User the process runs as: a uid or a user name.
    #[arg(long, value_name = "UID|NAME")]
    pub user: Option<String>,
    /// Script that an interpreter runs, as an absolute path.
    #[arg(long, value_name = "PATH", conflicts_with = "cmdline")]
    pub script: Option<String>,
    /// Glob over the command line (arguments joined by spaces), such as 'python3 *'.
    #[arg(long, value_name = "PATTERN")]
    pub cmdline: Option<String>,
    /// Executable of the parent process, as a path or glob: curl --via /usr/bin/bash.
    #[arg(long, value_name = "PATH|GLOB")]
    pub via: Option<String>,
    /// Destination: an IP, a network such as 10.0.0.0/8, a host name, '*.DOMAIN' for a domain
    /// with its subdomains, or scope:loopback, scope:local-network or scope:internet.
    #[arg(long, value_name = "ADDRESS")]
    pub to: Option<String>,
    /// Destination port: a port, a list such as 80,443 or a range such as 8000-8100.
    #[arg(long, value_name = "PORTS")]
    pub port: Option<String>,
    /// Transport protocol: tcp, udp or any.
    #[arg(long, value_name = "PROTOCOL")]
    pub protocol: Option<String>,
}

impl ConditionArgs {
    /// Returns `subject` with the subject flags applied.
    pub fn apply_subject(&self, mut subject: Subject) -> anyhow::Result<Subject> {
        set(
            &mut subject.executable,
            self.exe.as_deref(),
            "--exe",
            resolved_executable,
        )?;
        set(
            &mut subject.sha256,
            self.sha256.as_deref(),
            "--sha256",
            str::parse,
        )?;
        set(&mut subject.user, self.user.as_deref(), "--user", |text| {
            text.parse::<UserMatch>()
        })?;
        set(
            &mut subject.parent,
            self.via.as_deref(),
            "--via",
            resolved_executable,
        )?;
        if self.script.is_some() {
            set(
                &mut subject.command,
                self.script.as_deref(),
                "--script",
                script,
            )?;
        }
        if self.cmdline.is_some() {
            set(
                &mut subject.command,
                self.cmdline.as_deref(),
                "--cmdline",
                |text| text.parse().map(CommandMatch::Line),
            )?;
        }
        Ok(subject)
    }

    /// Returns `destination` with the destination flags applied.
    pub fn apply_destination(&self, mut destination: Destination) -> anyhow::Result<Destination> {
        if let Some(text) = &self.to {
            destination.address = text.parse().context("invalid --to")?;
        }
        if let Some(text) = &self.port {
            destination.port = text.parse().context("invalid --port")?;
        }
        if let Some(text) = &self.protocol {
            destination.protocol = text.parse().context("invalid --protocol")?;
        }
        Ok(destination)
    }
}

/// Parses an executable condition. A path that reaches its file through a symbolic link, such
/// as `/bin/curl` where `/bin` links to `usr/bin`, becomes the resolved path, because the
/// kernel reports executables by their resolved paths and the given one would never match.
fn resolved_executable(text: &str) -> Result<ExecutableMatch, tollgate_rules::ParseError> {
    let parsed = text.parse::<ExecutableMatch>()?;
    let ExecutableMatch::Path(path) = &parsed else {
        return Ok(parsed);
    };
    match std::fs::canonicalize(path) {
        Ok(resolved) if resolved != *path => {
            eprintln!(
                "note: {} resolves to {}, the path the kernel reports; the rule uses that path",
                path.display(),
                resolved.display()
            );
            Ok(ExecutableMatch::Path(resolved))
        }
        _ => Ok(parsed),
    }
}

/// Lifetime flags; at most one may be given.
#[derive(Debug, Default, Args)]
#[group(multiple = false)]
pub struct LifetimeArgs {
    /// Keep the rule until it is removed, across restarts.
    #[arg(long)]
    pub forever: bool,
    /// Keep the rule until the daemon stops.
    #[arg(long)]
    pub until_restart: bool,
    /// Keep the rule for a duration such as 30s, 10m or 2h; suspended time counts.
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: Option<String>,
    /// Keep the rule until a time, in RFC 3339 form such as 2026-12-31T18:00:00Z.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Keep the rule until the process with this pid exits.
    #[arg(long, value_name = "PID")]
    pub until_exit: Option<u32>,
    /// Lifetime as a word: until-restart or forever.
    #[arg(long, value_name = "LIFETIME", hide = true)]
    pub lifetime: Option<String>,
}

impl LifetimeArgs {
    /// Returns the lifetime the flags name, or `None` when none was given.
    pub fn spec(&self) -> anyhow::Result<Option<LifetimeSpec>> {
        if self.forever {
            return Ok(Some(LifetimeSpec::Forever));
        }
        if self.until_restart {
            return Ok(Some(LifetimeSpec::UntilRestart));
        }
        if let Some(text) = &self.duration {
            return duration(text).map(|secs| Some(LifetimeSpec::For { secs }));
        }
        if let Some(text) = &self.until {
            return end_time(text).map(|unix_ms| Some(LifetimeSpec::Until { unix_ms }));
        }
        if let Some(pid) = self.until_exit {
            return Ok(Some(LifetimeSpec::UntilExit { pid: Some(pid) }));
        }
        match self.lifetime.as_deref() {
            None => Ok(None),
            Some("forever") => Ok(Some(LifetimeSpec::Forever)),
            Some("until-restart") => Ok(Some(LifetimeSpec::UntilRestart)),
            Some(other) => bail!("invalid --lifetime {other:?}: expected until-restart or forever"),
        }
    }
}

/// Parses an action word.
pub fn action(text: &str) -> anyhow::Result<Action> {
    Ok(text.parse()?)
}

/// Parses a duration such as `2s` or `1h30m` into whole seconds, at least 1.
pub fn duration(text: &str) -> anyhow::Result<u64> {
    let duration = humantime::parse_duration(text).with_context(|| {
        format!("invalid duration {text:?}: expected a value such as 30s or 2h")
    })?;
    if duration < Duration::from_secs(1) {
        bail!("invalid duration {text:?}: a rule lasts at least 1s");
    }
    Ok(duration.as_secs())
}

/// Parses an RFC 3339 time into milliseconds since the Unix epoch.
fn end_time(text: &str) -> anyhow::Result<u64> {
    let time = humantime::parse_rfc3339_weak(text).with_context(|| {
        format!("invalid time {text:?}: expected RFC 3339 such as 2026-12-31T18:00:00Z")
    })?;
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .with_context(|| format!("invalid time {text:?}: before 1970"))?;
    if time <= SystemTime::now() {
        bail!("invalid time {text:?}: it is in the past");
    }
    Ok(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

fn script(text: &str) -> Result<CommandMatch, String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} is not an absolute path"));
    }
    Ok(CommandMatch::Script(text.into()))
}

/// Sets `field` from `text`: `any` clears it, other text is parsed.
fn set<T, E: std::fmt::Display>(
    field: &mut Option<T>,
    text: Option<&str>,
    flag: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> anyhow::Result<()> {
    match text {
        None => {}
        Some("any") => *field = None,
        Some(text) => {
            let value = parse(text).map_err(|err| anyhow::anyhow!("invalid {flag}: {err}"))?;
            *field = Some(value);
        }
    }
    Ok(())
}
