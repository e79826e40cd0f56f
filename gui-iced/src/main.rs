//! `tollgate-ui`: Tollgate's desktop interface.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use tollgate_ui::shell::{self, Options};

/// Prompts for new connections, shows live connections and edits rules of tollgated.
#[derive(Debug, Parser)]
#[command(name = "tollgate-ui", version)]
struct Cli {
    /// Control socket of tollgated.
    #[arg(
        long,
        env = "TOLLGATE_SOCKET",
        default_value = "/run/tollgate/control.sock"
    )]
    socket: PathBuf,
    /// Start with no window: only prompts appear, when connections wait for a decision.
    #[arg(long)]
    prompts_only: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tollgate_ui=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let options = Options {
        socket: cli.socket,
        open_monitor: !cli.prompts_only,
    };
    match shell::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: failed to run the interface: {err}");
            ExitCode::FAILURE
        }
    }
}
