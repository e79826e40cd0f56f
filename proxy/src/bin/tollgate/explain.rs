//! `tollgate explain`: which rule decides a connection, and why.

use std::{
    fs,
    io::Read as _,
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::Args;
use sha2::{Digest as _, Sha256};
use tollgate_proxy::{
    client::Client,
    protocol::{Request, Response},
};
use tollgate_rules::{ConnectionFacts, Protocol, Rule, Sha256Digest};

use crate::{expect, format::describe_rule};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The process: a pid (its facts are read from /proc), an executable path, or `unknown`.
    process: String,
    /// The destination: IP:PORT, [IPv6]:PORT or HOST:PORT.
    destination: String,
    /// Transport protocol: tcp or udp.
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// Destination address when the destination is a host name; without it the name is
    /// resolved.
    #[arg(long, value_name = "IP")]
    ip: Option<IpAddr>,
    /// A CNAME target of the destination name; may be repeated, in chain order.
    #[arg(long, value_name = "NAME")]
    cname: Vec<String>,
    /// User id of the process.
    #[arg(long)]
    uid: Option<u32>,
    /// User name of the process.
    #[arg(long)]
    user: Option<String>,
    /// Executable of the parent process.
    #[arg(long, value_name = "PATH")]
    via: Option<PathBuf>,
    /// Command line of the process, arguments joined by spaces.
    #[arg(long, value_name = "TEXT")]
    cmdline: Option<String>,
    /// Script that the process's interpreter runs.
    #[arg(long, value_name = "PATH")]
    script: Option<PathBuf>,
    /// SHA-256 digest of the executable; computed from the file when it can be read.
    #[arg(long, value_name = "HEX")]
    sha256: Option<Sha256Digest>,
    /// Print the explanation as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `tollgate explain`.
pub async fn run(client: &mut Client, args: ExplainArgs) -> anyhow::Result<()> {
    let facts = args.facts()?;
    let request = Request::Explain {
        connection: Box::new(facts.clone()),
    };
    let Response::Explained { explanation, rules } = expect(client.request(request).await?)? else {
        bail!("unexpected reply to explain");
    };
    if args.json {
        let value = serde_json::json!({
            "connection": facts,
            "explanation": explanation,
            "rules": rules,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }

    println!("connection: {}", describe_facts(&facts));
    let rule = |id| rules.iter().find(|rule: &&Rule| rule.id == id);
    match explanation.winner.and_then(rule) {
        None => println!("no rule matches: the connection would be held and prompt"),
        Some(winner) => {
            println!(
                "decided by rule {}: {} {}",
                winner.id,
                winner.action,
                describe_rule(winner)
            );
            for contest in &explanation.beaten {
                println!(
                    "  beats rule {} ({}) at step {} ({}): {}",
                    contest.loser,
                    contest.action,
                    contest.step.number(),
                    contest.step,
                    contest.reason
                );
            }
        }
    }
    for inactive in &explanation.inactive {
        println!(
            "  rule {} would match but is {}",
            inactive.id, inactive.reason
        );
    }
    Ok(())
}

impl ExplainArgs {
    /// Collects the facts of the connection from the arguments and, for a pid, from /proc.
    fn facts(&self) -> anyhow::Result<ConnectionFacts> {
        let protocol: Protocol = self.protocol.parse()?;
        let (hosts, ip, port) = self.destination()?;
        let mut facts = ConnectionFacts::to(ip, port, protocol);
        facts.hosts = hosts;
        facts.hosts.extend(self.cname.iter().cloned());
        facts.canonicalize();

        if let Ok(pid) = self.process.parse::<u32>() {
            read_process(&mut facts, pid)?;
        } else if self.process != "unknown" {
            let path = PathBuf::from(&self.process);
            if !path.is_absolute() {
                bail!(
                    "invalid process {:?}: expected a pid, an absolute path or unknown",
                    self.process
                );
            }
            facts.sha256 = file_sha256(&path).ok();
            facts.executable = Some(path);
        }

        facts.uid = self.uid.or(facts.uid);
        facts.user = self.user.clone().or(facts.user);
        facts.parent_executable = self.via.clone().or(facts.parent_executable);
        facts.command_line = self.cmdline.clone().or(facts.command_line);
        facts.script = self.script.clone().or(facts.script);
        facts.sha256 = self.sha256.or(facts.sha256);
        Ok(facts)
    }

    /// Returns the host names, address and port of the destination argument.
    fn destination(&self) -> anyhow::Result<(Vec<String>, IpAddr, u16)> {
        let text = &self.destination;
        if let Ok(address) = text.parse::<SocketAddr>() {
            return Ok((Vec::new(), address.ip(), address.port()));
        }
        let invalid =
            || format!("invalid destination {text:?}: expected IP:PORT, [IPv6]:PORT or HOST:PORT");
        let (host, port) = text.rsplit_once(':').with_context(invalid)?;
        let port: u16 = port.parse().with_context(invalid)?;
        let ip = match self.ip {
            Some(ip) => ip,
            None => (host, port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut addresses| addresses.next())
                .map(|address| address.ip())
                .with_context(|| format!("failed to resolve {host}; give its address with --ip"))?,
        };
        Ok((vec![host.to_owned()], ip, port))
    }
}

/// Reads the facts of process `pid` from /proc: executable, digest, uid, user name, command
/// line, interpreter script and parent executable.
fn read_process(facts: &mut ConnectionFacts, pid: u32) -> anyhow::Result<()> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let executable = fs::read_link(dir.join("exe"))
        .with_context(|| format!("failed to read the executable of process {pid}"))?;
    facts.sha256 = file_sha256(&dir.join("exe")).ok();
    facts.executable = Some(executable.clone());

    let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
    facts.uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok());
    facts.user = facts.uid.and_then(|uid| {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
        Some(user.name)
    });

    let raw = fs::read(dir.join("cmdline")).unwrap_or_default();
    let args: Vec<String> = raw
        .split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    facts.command_line = (!args.is_empty()).then(|| args.join(" "));
    facts.script = interpreter_script(&executable, &args);

    let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
    let parent_pid = stat
        .rsplit_once(')')
        .and_then(|(_, fields)| fields.split_whitespace().nth(1))
        .and_then(|ppid| ppid.parse::<u32>().ok());
    facts.parent_executable =
        parent_pid.and_then(|ppid| fs::read_link(format!("/proc/{ppid}/exe")).ok());
    Ok(())
}

/// Returns the script an interpreter runs: its first argument that is an absolute path, when
/// the executable is a known interpreter.
fn interpreter_script(executable: &Path, args: &[String]) -> Option<PathBuf> {
    let name = executable.file_name()?.to_str()?;
    let interpreters = [
        "python", "bash", "sh", "dash", "zsh", "perl", "ruby", "node",
    ];
    if !interpreters
        .iter()
        .any(|interpreter| name.starts_with(interpreter))
    {
        return None;
    }
    args.iter()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .filter(|arg| arg.starts_with('/'))
        .map(PathBuf::from)
}

fn file_sha256(path: &Path) -> std::io::Result<Sha256Digest> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

fn describe_facts(facts: &ConnectionFacts) -> String {
    let process = match &facts.executable {
        Some(path) => path.display().to_string(),
        None => "unknown process".to_owned(),
    };
    let mut details = Vec::new();
    if let Some(uid) = facts.uid {
        details.push(format!("uid {uid}"));
    }
    if let Some(parent) = &facts.parent_executable {
        details.push(format!("via {}", parent.display()));
    }
    let details = if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join(", "))
    };
    let names = if facts.hosts.is_empty() {
        String::new()
    } else {
        format!("{} ", facts.hosts.join(" -> "))
    };
    format!(
        "{process}{details} to {names}{} port {} {}",
        facts.ip, facts.port, facts.protocol
    )
}
