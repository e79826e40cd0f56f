//! `tollgate`: the command-line client of the Tollgate daemon.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use tollgate_proxy::{
    client::Client,
    config::DEFAULT_CONTROL_SOCKET,
    holding::unix_ms,
    protocol::{DecidedBy, Event, EventKind, NewRule, PendingInfo, ProcessInfo, Request, Response},
};
use tollgate_rules::{
    Action, AddressMatch, Cidr, Destination, Lifetime, PortMatch, ProtocolMatch, Rule, RuleId,
    Subject,
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
    /// List, add or remove rules.
    #[command(subcommand)]
    Rules(RulesCommand),
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
    /// Create a rule that lasts until the daemon stops.
    #[arg(long, group = "lifetime")]
    until_restart: bool,
    /// Create a rule that is stored and lasts across restarts.
    #[arg(long, group = "lifetime")]
    forever: bool,
}

impl DecideArgs {
    fn lifetime(&self) -> Lifetime {
        if self.forever {
            Lifetime::Forever
        } else if self.until_restart {
            Lifetime::UntilRestart
        } else {
            Lifetime::Once
        }
    }
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// List the rules in precedence order.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a rule.
    Add(AddRuleArgs),
    /// Remove a rule by id.
    Remove {
        /// Id of the rule, from `tollgate rules list`.
        id: u64,
    },
}

#[derive(Debug, ClapArgs)]
struct AddRuleArgs {
    /// Action of the rule.
    #[arg(long, value_enum)]
    action: ActionArg,
    /// Executable path the rule applies to; without it the rule applies to every process.
    #[arg(long, value_name = "PATH")]
    exe: Option<PathBuf>,
    /// Destination address, or network in CIDR form such as 203.0.113.0/24; any when absent.
    #[arg(long, value_name = "IP[/PREFIX]")]
    to: Option<String>,
    /// Destination port; any when absent.
    #[arg(long)]
    port: Option<u16>,
    /// Transport protocol.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Any)]
    protocol: ProtocolArg,
    /// How long the rule lasts.
    #[arg(long, value_enum, default_value_t = LifetimeArg::Forever)]
    lifetime: LifetimeArg,
    /// Free text kept with the rule.
    #[arg(long, default_value = "")]
    note: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ActionArg {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Tcp,
    Udp,
    Any,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LifetimeArg {
    UntilRestart,
    Forever,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Status => {
            let Response::Status(status) = expect(client.request(Request::Status).await?)? else {
                bail!("unexpected reply to status");
            };
            println!("tollgated {} (pid {})", status.version, status.pid);
            println!("  uptime:             {}s", status.uptime_secs);
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
                "  fast path:          {}",
                if status.fast_path { "on" } else { "off" }
            );
            println!("  rules:              {}", status.rules);
            println!(
                "  prompt timeout:     {}s, then {}",
                status.prompt_timeout_secs, status.default_action
            );
        }
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
        Command::Rules(command) => rules(&mut client, command).await?,
        Command::Watch { json } => watch(&mut client, json).await?,
    }
    Ok(())
}

async fn decide(client: &mut Client, args: &DecideArgs, action: Action) -> anyhow::Result<()> {
    let request = Request::Decide {
        id: args.id,
        action,
        lifetime: args.lifetime(),
    };
    let Response::Decided { settled, rule } = expect(client.request(request).await?)? else {
        bail!("unexpected reply to {action}");
    };
    println!("{action}: {settled} connection(s) settled");
    if let Some(rule) = rule {
        println!("added rule {}: {}", rule.id, describe_rule(&rule));
    }
    Ok(())
}

async fn rules(client: &mut Client, command: RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::List { json } => {
            let Response::Rules { rules } = expect(client.request(Request::ListRules).await?)?
            else {
                bail!("unexpected reply to rules list");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
            } else if rules.is_empty() {
                println!("no rules");
            } else {
                println!("{:<5} {:<6} {:<14} RULE", "ID", "ACTION", "LIFETIME");
                for rule in &rules {
                    let lifetime = rule.lifetime.to_string();
                    println!(
                        "{:<5} {:<6} {:<14} {}",
                        rule.id.0,
                        rule.action,
                        lifetime,
                        describe_rule(rule)
                    );
                }
            }
        }
        RulesCommand::Add(args) => {
            let rule = new_rule(args)?;
            let Response::RuleAdded { rule, settled } =
                expect(client.request(Request::AddRule { rule }).await?)?
            else {
                bail!("unexpected reply to rules add");
            };
            println!(
                "added rule {}: {} {}",
                rule.id,
                rule.action,
                describe_rule(&rule)
            );
            if settled > 0 {
                println!("{settled} pending connection(s) settled by it");
            }
        }
        RulesCommand::Remove { id } => {
            let request = Request::RemoveRule { id: RuleId(id) };
            expect(client.request(request).await?)?;
            println!("removed rule {id}");
        }
    }
    Ok(())
}

fn new_rule(args: AddRuleArgs) -> anyhow::Result<NewRule> {
    let address = match args.to.as_deref() {
        None => AddressMatch::Any,
        Some(text) => parse_address(text)?,
    };
    Ok(NewRule {
        subject: match args.exe {
            Some(path) if path.is_absolute() => Subject::Executable(path),
            Some(path) => bail!("--exe must be an absolute path, got {}", path.display()),
            None => Subject::Any,
        },
        destination: Destination {
            address,
            port: args.port.map_or(PortMatch::Any, PortMatch::Port),
            protocol: match args.protocol {
                ProtocolArg::Tcp => ProtocolMatch::Tcp,
                ProtocolArg::Udp => ProtocolMatch::Udp,
                ProtocolArg::Any => ProtocolMatch::Any,
            },
        },
        action: match args.action {
            ActionArg::Allow => Action::Allow,
            ActionArg::Deny => Action::Deny,
        },
        lifetime: match args.lifetime {
            LifetimeArg::UntilRestart => Lifetime::UntilRestart,
            LifetimeArg::Forever => Lifetime::Forever,
        },
        note: args.note,
    })
}

fn parse_address(text: &str) -> anyhow::Result<AddressMatch> {
    let Some((addr, prefix)) = text.split_once('/') else {
        let ip: IpAddr = text
            .parse()
            .with_context(|| format!("invalid --to {text:?}: expected an IP address or CIDR"))?;
        return Ok(AddressMatch::Ip(ip));
    };
    let addr: IpAddr = addr
        .parse()
        .with_context(|| format!("invalid --to {text:?}: {addr:?} is not an IP address"))?;
    let prefix: u8 = prefix
        .parse()
        .with_context(|| format!("invalid --to {text:?}: {prefix:?} is not a prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        bail!("invalid --to {text:?}: prefix length must be at most {max}");
    }
    let addr = match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u32::from(v4) & mask).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u128::from(v6) & mask).to_be_bytes())
        }
    };
    Ok(AddressMatch::Cidr(Cidr { addr, prefix }))
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
        "{:<5} {:<32} {:<40} {:<5} {:>5} {:>6}",
        "ID", "PROCESS", "DESTINATION", "PROTO", "CONNS", "AGE"
    );
    let now = unix_ms(SystemTime::now());
    for request in requests {
        let age = Duration::from_millis(now.saturating_sub(request.started_unix_ms));
        println!(
            "{:<5} {:<32} {:<40} {:<5} {:>5} {:>5}s",
            request.id,
            describe_process(request.process.as_ref()),
            request.destination.to_string(),
            request.protocol.to_string(),
            request.connections,
            age.as_secs()
        );
    }
}

fn describe_process(process: Option<&ProcessInfo>) -> String {
    match process {
        None => "unknown process".to_owned(),
        Some(process) => match &process.executable {
            Some(path) => format!("{} [{}]", path.display(), process.pid),
            None => format!("{} [{}]", process.comm, process.pid),
        },
    }
}

fn describe_rule(rule: &Rule) -> String {
    let subject = match &rule.subject {
        Subject::Any => "any process".to_owned(),
        Subject::Executable(path) => path.display().to_string(),
    };
    let address = match rule.destination.address {
        AddressMatch::Any => "any address".to_owned(),
        AddressMatch::Ip(ip) => ip.to_string(),
        AddressMatch::Cidr(cidr) => format!("{}/{}", cidr.addr, cidr.prefix),
    };
    let port = match rule.destination.port {
        PortMatch::Any => "any port".to_owned(),
        PortMatch::Port(port) => format!("port {port}"),
    };
    let protocol = match rule.destination.protocol {
        ProtocolMatch::Any => "tcp+udp",
        ProtocolMatch::Tcp => "tcp",
        ProtocolMatch::Udp => "udp",
    };
    let disabled = if rule.enabled { "" } else { " (disabled)" };
    format!("{subject} -> {address} {port} {protocol}{disabled}")
}

fn describe_event(event: &Event) -> String {
    let process = describe_process(event.process.as_ref());
    let flow = format!(
        "#{} {} {} -> {}",
        event.connection, event.protocol, event.source, event.destination
    );
    match &event.kind {
        EventKind::Held { pending_id } => {
            format!("held     {flow} by {process} (pending {pending_id})")
        }
        EventKind::Decided {
            action,
            by,
            in_kernel,
        } => {
            let by = match by {
                DecidedBy::Rule { rule } => format!("rule {rule}"),
                DecidedBy::User => "user".to_owned(),
                DecidedBy::Timeout => "timeout".to_owned(),
            };
            let place = if *in_kernel { ", in the kernel" } else { "" };
            format!("{action:<8} {flow} by {process} ({by}{place})")
        }
        EventKind::Closed {
            bytes_up,
            bytes_down,
            error,
        } => match error {
            None => format!("closed   {flow} up {bytes_up} B, down {bytes_down} B"),
            Some(error) => format!("closed   {flow}: {error}"),
        },
    }
}
