//! `tollgated`: the Tollgate daemon.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tollgate_proxy::{
    config::{Config, DEFAULT_CONFIG_PATH},
    daemon,
    firewall::Interception,
};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// Tollgate daemon: holds each new outbound TCP connection of this network namespace until it
/// is allowed or denied.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file; every key in it is optional.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Remove the nftables table and policy routes of a daemon that died, then exit.
    #[arg(long)]
    cleanup: bool,
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
    let config = Config::load(&path, explicit)?;
    if args.cleanup {
        Interception::remove_leftovers(&config.interception)
            .await
            .context("failed to remove leftovers")?;
        info!("leftovers removed");
        return Ok(());
    }

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
