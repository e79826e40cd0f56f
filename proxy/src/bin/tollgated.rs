//! `tollgated`: the Tollgate daemon.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tollgate_proxy::{
    config::{Config, DEFAULT_CONFIG_PATH, Mode},
    daemon,
    firewall::Interception,
};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// Tollgate daemon: keeps each new outbound TCP connection and UDP flow of this network
/// namespace waiting until it is allowed or denied. Audit mode records every flow instead, and
/// enforce mode checks each one against a policy.
#[derive(Debug, Parser)]
#[command(name = "tollgated", version)]
struct Args {
    /// Configuration file; every key in it is optional.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Remove the nftables table and policy routes of a daemon that died, then exit.
    #[arg(long)]
    cleanup: bool,
    /// Audit mode: allow every flow and record it in the flow log, with the verdict the
    /// policy (if given) or the rules would give it.
    #[arg(long, conflicts_with = "enforce")]
    audit: bool,
    /// Enforce mode: allow only what the policy (--policy or the config's `policy`) allows,
    /// deny the rest without prompting.
    #[arg(long)]
    enforce: bool,
    /// Policy file (TOML allowlist, see docs/policy.md).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Flow log, one JSON line per flow [default in audit and enforce mode:
    /// /var/log/tollgate/flows.jsonl].
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// File for the flow summary written at exit, instead of stderr.
    #[arg(long, value_name = "FILE")]
    audit_summary: Option<PathBuf>,
    /// cgroup2 directory the attribution programs attach to, as the config's
    /// `attribution.cgroup`; processes outside it show as unknown.
    #[arg(long, value_name = "DIR")]
    attribution_cgroup: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    raise_file_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            error!(error = %err, "failed to start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            error!(error = %format!("{err:#}"), "tollgated failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit, because the daemon needs one
/// descriptor per held connection and two per relayed one. A failure is logged, and the daemon
/// continues with the current limit.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open file limit"),
            Err(err) => warn!(error = %err, limit = soft, "failed to raise the open file limit"),
        },
        Ok(_) => {}
        Err(err) => warn!(error = %err, "failed to read the open file limit"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let explicit = args.config.is_some();
    let path = args
        .config
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let mut config = Config::load(&path, explicit)?;
    if args.audit {
        config.mode = Mode::Audit;
    }
    if args.enforce {
        config.mode = Mode::Enforce;
    }
    if let Some(policy) = args.policy {
        config.policy = Some(policy);
    }
    if let Some(audit_log) = args.audit_log {
        config.audit_log = Some(audit_log);
    }
    if let Some(audit_summary) = args.audit_summary {
        config.audit_summary = Some(audit_summary);
    }
    if let Some(cgroup) = args.attribution_cgroup {
        config.attribution.cgroup = Some(cgroup);
    }
    config
        .validate()
        .map_err(|reason| anyhow::anyhow!("invalid settings: {reason}"))?;
    if args.cleanup {
        Interception::remove_leftovers(&config.interception)
            .await
            .context("failed to remove leftovers")?;
        info!("leftovers removed");
        return Ok(());
    }

    raise_open_file_limit();
    let _lock = daemon::lock_network_namespace()?;

    let mut terminate = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to watch SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!(signal = "SIGTERM", "stopping"),
            _ = interrupt.recv() => info!(signal = "SIGINT", "stopping"),
        }
    };
    daemon::run(config, shutdown).await
}

/// Raises the soft limit of open files to the hard limit: every held connection needs a
/// descriptor, and relayed ones two.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open file limit"),
            Err(err) => tracing::warn!(error = %err, soft, "failed to raise the open file limit"),
        },
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "failed to read the open file limit"),
    }
}
