//! `tollgate`: the command-line client of the Tollgate daemon.

mod explain;
mod format;
mod rule_args;
mod rules;

use std::{path::PathBuf, process::ExitCode};

use anyhow::bail;
use clap::{Args as ClapArgs, Parser, Subcommand};
use tollgate_proxy::{
    audit,
    client::Client,
    config::DEFAULT_CONTROL_SOCKET,
    policy::Policy,
    protocol::{ConnectionState, DecidedBy, PendingInfo, PortScope, Request, Response, Scope},
    report::{Summary, violations},
};
use tollgate_rules::{Action, LifetimeSpec};

use crate::{
    format::{
        age_secs, describe_event, describe_host, describe_lifetime, describe_process, describe_rule,
    },
    rule_args::duration,
};

/// Control the Tollgate firewall daemon: answer pending connections, manage rules, watch events.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "TOLLGATE_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show whether the daemon runs and what it holds.
    Status,
    /// List connections waiting for a decision.
    Pending {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Allow a pending request's connections.
    Allow(DecideArgs),
    /// Deny a pending request's connections; they are reset.
    Deny(DecideArgs),
    /// List, add, edit, enable, disable, remove, export or import rules.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Show which rule decides a connection and why, or that it would prompt.
    Explain(explain::ExplainArgs),
    /// Summarize a flow log per process and destination, and with --policy list the flows the
    /// policy does not allow. Exits with 3 when there are any, so CI can fail on them. Needs
    /// no running daemon.
    Report {
        /// Flow log written by `tollgated --audit` or `--enforce`.
        #[arg(long, value_name = "FILE")]
        audit_log: PathBuf,
        /// Policy file to check every flow against (docs/policy.md).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Stop diverting connections, without stopping the daemon: traffic passes unfiltered.
    Disable,
    /// Divert connections to the daemon again after `tollgate disable`.
    Enable,
    /// List the connections in progress and the recently ended ones, with their state, the
    /// rule that decided them and their byte counts.
    Connections {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print connection events as they happen, until interrupted.
    Watch {
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, ClapArgs)]
struct DecideArgs {
    /// Id of the pending request, from `tollgate pending`.
    id: u64,
    /// Settle these connections only and create no rule (the default).
    #[arg(long, group = "lifetime")]
    once: bool,
    /// Create a rule that lasts until the process exits (the request's process without a PID).
    #[arg(long, group = "lifetime", value_name = "PID", num_args = 0..=1)]
    until_exit: Option<Option<u32>>,
    /// Create a rule that lasts until the daemon stops.
    #[arg(long, group = "lifetime")]
    until_restart: bool,
    /// Create a rule that lasts for a duration such as 30s, 10m or 2h.
    #[arg(long = "for", group = "lifetime", value_name = "DURATION")]
    duration: Option<String>,
    /// Create a rule that is stored and lasts across restarts.
    #[arg(long, group = "lifetime")]
    forever: bool,
    /// Cover the request's registrable domain and all its subdomains, not only its host.
    #[arg(long, group = "scope")]
    domain: bool,
    /// Cover every destination of the program, not only the request's host.
    #[arg(long, group = "scope")]
    any_host: bool,
    /// Cover every port, not only the request's port.
    #[arg(long)]
    any_port: bool,
}

impl DecideArgs {
    fn lifetime(&self) -> anyhow::Result<LifetimeSpec> {
        if let Some(pid) = self.until_exit {
            return Ok(LifetimeSpec::UntilExit { pid });
        }
        if let Some(text) = &self.duration {
            return Ok(LifetimeSpec::For {
                secs: duration(text)?,
            });
        }
        Ok(if self.forever {
            LifetimeSpec::Forever
        } else if self.until_restart {
            LifetimeSpec::UntilRestart
        } else {
            LifetimeSpec::Once
        })
    }
}

/// Exit status of `tollgate report` when a flow is outside the policy.
const EXIT_POLICY_VIOLATED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Report { audit_log, policy } = &cli.command {
        return match report(audit_log, policy.as_deref()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(EXIT_POLICY_VIOLATED),
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = Client::connect(&cli.socket).await?;
    match cli.command {
        Command::Status => status(&mut client).await?,
        Command::Pending { json } => {
            let Response::Pending { requests } =
                expect(client.request(Request::ListPending).await?)?
            else {
                bail!("unexpected reply to pending");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&requests)?);
            } else {
                print_pending(&requests);
            }
        }
        Command::Allow(args) => decide(&mut client, &args, Action::Allow).await?,
        Command::Deny(args) => decide(&mut client, &args, Action::Deny).await?,
        Command::Rules(command) => rules::run(&mut client, command).await?,
        Command::Explain(args) => explain::run(&mut client, args).await?,
        Command::Watch { json } => watch(&mut client, json).await?,
        Command::Connections { json } => connections(&mut client, json).await?,
        Command::Report { .. } => unreachable!("report runs without the daemon, in main"),
        Command::Disable => set_interception(&mut client, false).await?,
        Command::Enable => set_interception(&mut client, true).await?,
    }
    Ok(())
}

async fn status(client: &mut Client) -> anyhow::Result<()> {
    let Response::Status(status) = expect(client.request(Request::Status).await?)? else {
        bail!("unexpected reply to status");
    };
    println!("tollgated {} (pid {})", status.version, status.pid);
    println!("  uptime:             {}s", status.uptime_secs);
    println!("  mode:               {}", status.mode);
    println!(
        "  intercepting:       {}",
        if status.intercepting { "yes" } else { "no" }
    );
    println!(
        "  pending requests:   {} ({} connections held)",
        status.pending_requests, status.held_connections
    );
    println!("  active relays:      {}", status.active_connections);
    println!(
        "  kernel fast path:   {}",
        if status.fast_path { "on" } else { "off" }
    );
    println!("  rules:              {}", status.rules);
    println!(
        "  prompt timeout:     {}s, then {}",
        status.prompt_timeout_secs, status.default_action
    );
    match status.names {
        Some(names) => println!(
            "  DNS names:          {} held, {} evicted, {} expired",
            names.entries, names.evictions, names.expirations
        ),
        None => println!("  DNS names:          resolver disabled"),
    }
    Ok(())
}

async fn decide(client: &mut Client, args: &DecideArgs, action: Action) -> anyhow::Result<()> {
    let scope = if args.domain {
        Scope::Domain
    } else if args.any_host {
        Scope::AnyHost
    } else {
        Scope::Host
    };
    let port = if args.any_port {
        PortScope::Any
    } else {
        PortScope::This
    };
    let request = Request::Decide {
        id: args.id,
        action,
        lifetime: args.lifetime()?,
        scope,
        port,
    };
    let Response::Decided { settled, rule } = expect(client.request(request).await?)? else {
        bail!("unexpected reply to {action}");
    };
    println!("{action}: {settled} connection(s) settled");
    if let Some(rule) = rule {
        println!(
            "added rule {}: {}, {}",
            rule.id,
            describe_rule(&rule),
            describe_lifetime(&rule.lifetime)
        );
    }
    Ok(())
}

async fn watch(client: &mut Client, json: bool) -> anyhow::Result<()> {
    expect(client.request(Request::Watch).await?)?;
    while let Some(response) = client.next_response().await? {
        let Response::Event(event) = response else {
            continue;
        };
        if json {
            println!("{}", serde_json::to_string(&event)?);
        } else {
            println!("{}", describe_event(&event));
        }
    }
    bail!("tollgated closed the event stream")
}

/// Returns the reply, or the daemon's error as an error.
fn expect(response: Response) -> anyhow::Result<Response> {
    match response {
        Response::Error { message, .. } => bail!("{message}"),
        other => Ok(other),
    }
}

fn print_pending(requests: &[PendingInfo]) {
    if requests.is_empty() {
        println!("no pending connections");
        return;
    }
    println!(
        "{:<5} {:<32} {:<40} {:<32} {:<5} {:>5} {:>6}",
        "ID", "PROCESS", "DESTINATION", "HOST (SOURCE)", "PROTO", "CONNS", "AGE"
    );
    for request in requests {
        println!(
            "{:<5} {:<32} {:<40} {:<32} {:<5} {:>5} {:>5}s",
            request.id,
            describe_process(request.process.as_ref()),
            request.destination.to_string(),
            describe_host(request.host.as_deref(), request.name_source),
            request.protocol.to_string(),
            request.connections,
            age_secs(request.started_unix_ms)
        );
    }
}

async fn connections(client: &mut Client, json: bool) -> anyhow::Result<()> {
    let Response::Connections { connections } =
        expect(client.request(Request::ListConnections).await?)?
    else {
        bail!("unexpected reply to list_connections");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&connections)?);
        return Ok(());
    }
    if connections.is_empty() {
        println!("no connections seen yet");
        return Ok(());
    }
    println!(
        "{:<6} {:<28} {:<40} {:<28} {:<5} {:<8} {:<10} {:>10} {:>10}",
        "ID", "PROCESS", "DESTINATION", "HOST", "PROTO", "STATE", "BY", "UP", "DOWN"
    );
    for connection in &connections {
        let state = match (connection.state, connection.ended_unix_ms) {
            (_, Some(_)) if connection.state == ConnectionState::Allowed => "ended",
            (ConnectionState::Pending, _) => "pending",
            (ConnectionState::Allowed, _) => "allowed",
            (ConnectionState::Denied, _) => "denied",
        };
        let by = match connection.decided_by {
            Some(DecidedBy::Rule { rule }) => format!("rule {rule}"),
            Some(DecidedBy::User) => "user".to_owned(),
            Some(DecidedBy::Timeout) => "timeout".to_owned(),
            Some(DecidedBy::Limit) => "limit".to_owned(),
            Some(DecidedBy::Audit { .. }) => "audit".to_owned(),
            Some(DecidedBy::Policy { .. }) => "policy".to_owned(),
            None => "-".to_owned(),
        };
        println!(
            "{:<6} {:<28} {:<40} {:<28} {:<5} {:<8} {:<10} {:>10} {:>10}",
            connection.connection,
            describe_process(connection.process.as_ref()),
            connection.destination.to_string(),
            connection.host.as_deref().unwrap_or("-"),
            connection.protocol.to_string(),
            state,
            by,
            connection.bytes_up,
            connection.bytes_down
        );
    }
    Ok(())
}

async fn set_interception(client: &mut Client, enabled: bool) -> anyhow::Result<()> {
    let request = Request::SetInterception { enabled };
    let Response::Interception { enabled } = expect(client.request(request).await?)? else {
        bail!("unexpected reply to interception change");
    };
    if enabled {
        println!("interception enabled: new connections are held until decided");
    } else {
        println!("interception disabled: traffic passes unfiltered until `tollgate enable`");
    }
    Ok(())
}

/// Prints the summary of the flow log and, with a policy, the flows outside it. Returns whether
/// every flow is within the policy.
fn report(
    audit_log: &std::path::Path,
    policy_path: Option<&std::path::Path>,
) -> anyhow::Result<bool> {
    let records = audit::read_records(audit_log)?;
    print!("{}", Summary::from_records(&records));
    let Some(policy_path) = policy_path else {
        return Ok(true);
    };
    let policy = Policy::load(policy_path)?;
    let found = violations(&records, &policy);
    if found.is_empty() {
        println!(
            "\npolicy {}: all {} flow(s) allowed",
            policy_path.display(),
            records.len()
        );
        return Ok(true);
    }
    println!(
        "\npolicy {}: {} destination(s) outside the policy",
        policy_path.display(),
        found.len()
    );
    for violation in &found {
        println!("  {} -> {}", violation.process, violation.destination);
        println!("      {}", violation.reason);
    }
    Ok(false)
}
