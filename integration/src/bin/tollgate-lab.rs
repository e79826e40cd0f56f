//! `tollgate-lab`: builds the lab, starts `tollgated` in desk and opens a shell there.
//!
//! Everything runs in network namespaces that the command creates and deletes again, so the
//! host's network, firewall and routes stay untouched. Needs root.

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::{net::UnixStream, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{ExitCode, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    runtime::Builder,
    signal::unix::{SignalKind, signal},
};
use tollgate_integration::{
    Lab, ProcessGuard,
    cgroup::TestCgroup,
    dns::BLOG_NAME,
    topology::{DESK_V4, DESK_V6, DNS_V4, SERVER_ADDRS},
    workspace_binary,
};

/// Builds a throwaway network of two namespaces and opens a shell behind the Tollgate firewall.
///
/// "desk" runs the daemon and your shell, "net" plays the internet with an HTTP server
/// (port 80), an echo server (port 7) and a bulk server (port 9000). Leaving the shell, or
/// SIGTERM or SIGHUP to this command, removes everything.
#[derive(Debug, Parser)]
struct Args {
    /// Do not start tollgated, so desk's traffic is not filtered.
    #[arg(long)]
    no_daemon: bool,

    /// Run this command with `sh -c` in desk instead of an interactive shell, then exit with
    /// its exit code. Ctrl-C stops the command and removes the lab.
    #[arg(long, value_name = "CMD")]
    command: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tollgate-lab: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let runtime = Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    // Signals are caught from here on, so Ctrl-C during setup no longer kills this process
    // before it can delete the namespaces.
    let mut signals = runtime.block_on(async { StopSignals::new() })?;

    let lab = Lab::start().context("failed to build the lab")?;
    let daemon = if args.no_daemon {
        None
    } else {
        start_daemon(&lab)?
    };
    if let Some(signal) = runtime.block_on(signals.pending()) {
        eprintln!("tollgate-lab: received {signal} during setup, removing the lab");
        return Ok(ExitCode::from(128 + signal as u8));
    }

    let status = runtime.block_on(run_session(&lab, daemon.as_ref(), args, &mut signals))?;

    if let Some(daemon) = daemon {
        let daemon_status = daemon.process.stop().context("failed to stop tollgated")?;
        if !stopped_cleanly(daemon_status) {
            // The log goes away with the lab, so show its end now.
            eprintln!(
                "tollgate-lab: tollgated exited with {daemon_status}, log:\n{}",
                log_tail(&daemon.log_path)
            );
        }
    }
    let name = lab.name().to_owned();
    drop(lab);
    eprintln!("tollgate-lab: lab {name} removed");

    Ok(exit_code(status))
}

/// A running `tollgated`, its files and the cgroup whose processes it attributes.
struct Daemon {
    process: ProcessGuard,
    socket_path: PathBuf,
    log_path: PathBuf,
    cgroup: TestCgroup,
}

/// Starts `tollgated` in desk if its binary exists and waits for its control socket.
fn start_daemon(lab: &Lab) -> anyhow::Result<Option<Daemon>> {
    let daemon_path = match workspace_binary("tollgated") {
        Ok(path) => path,
        Err(err) => {
            eprintln!("tollgate-lab: {err}. Starting the lab without the firewall");
            return Ok(None);
        }
    };

    let work_dir = lab.work_dir();
    let socket_path = work_dir.join("tollgated.sock");
    let state_dir = work_dir.join("state");
    let config_path = work_dir.join("tollgated.toml");
    let log_path = work_dir.join("tollgated.log");
    fs::create_dir(&state_dir)
        .with_context(|| format!("failed to create {}", state_dir.display()))?;
    // The daemon attributes only the lab's processes, which the session joins, and attaches
    // nothing to the host's root cgroup.
    let cgroup = TestCgroup::create(lab.name())
        .with_context(|| format!("failed to create cgroup {}", lab.name()))?;
    let resolv_conf_path = lab.dns().resolv_conf_path();
    fs::write(
        &config_path,
        daemon_config(&socket_path, &state_dir, cgroup.path(), resolv_conf_path)?,
    )
    .with_context(|| format!("failed to write {}", config_path.display()))?;

    let log = fs::File::create(&log_path)
        .with_context(|| format!("failed to create {}", log_path.display()))?;
    // setns keeps this process's mount namespace, in which the daemon finds the cgroup2 mount.
    let mut command = lab.desk().setns_command(&daemon_path)?;
    command
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("failed to duplicate the log file")?,
        )
        .stderr(log);
    let process = lab.desk().spawn(&mut command)?;

    wait_for_socket(&process, &socket_path, &log_path)?;
    Ok(Some(Daemon {
        process,
        socket_path,
        log_path,
        cgroup,
    }))
}

/// Returns the daemon's TOML configuration, whose DNS upstream is the lab's DNS server.
fn daemon_config(
    socket_path: &Path,
    state_dir: &Path,
    cgroup: &Path,
    resolv_conf_path: &Path,
) -> anyhow::Result<String> {
    Ok(format!(
        "control_socket = {}\nstate_dir = {}\n[dns]\nresolv_conf_path = {}\n\
         [attribution]\ncgroup = {}\n",
        toml_string(socket_path)?,
        toml_string(state_dir)?,
        toml_string(resolv_conf_path)?,
        toml_string(cgroup)?
    ))
}

/// Quotes a path as a TOML basic string.
fn toml_string(path: &Path) -> anyhow::Result<String> {
    let Some(text) = path.to_str() else {
        bail!(
            "path {} is not valid UTF-8, which TOML requires",
            path.display()
        );
    };

    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    Ok(quoted)
}

/// Waits until the daemon accepts connections on its control socket.
fn wait_for_socket(
    daemon: &ProcessGuard,
    socket_path: &Path,
    log_path: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + DAEMON_STARTUP_TIMEOUT;
    loop {
        if let Some(status) = daemon.try_wait().context("failed to check tollgated")? {
            bail!(
                "tollgated exited with {status} during startup (run with --no-daemon to skip \
                 it), log:\n{}",
                log_tail(log_path)
            );
        }
        if UnixStream::connect(socket_path).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "tollgated did not accept connections on {} within {DAEMON_STARTUP_TIMEOUT:?} \
                 (run with --no-daemon to skip it), log:\n{}",
                socket_path.display(),
                log_tail(log_path)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the shell or the command in desk until it exits or a stop signal arrives.
async fn run_session(
    lab: &Lab,
    daemon: Option<&Daemon>,
    args: &Args,
    signals: &mut StopSignals,
) -> anyhow::Result<ExitStatus> {
    let shell = env::var_os("SHELL").unwrap_or_else(|| OsString::from("/bin/bash"));
    let mut command = match &args.command {
        Some(line) => {
            let mut command = lab.desk_command("sh");
            command.arg("-c").arg(line);
            command
        }
        None => {
            print_guide(lab, daemon);
            lab.desk_command(&shell)
        }
    };
    command
        .env("TOLLGATE_LAB", lab.name())
        .env("PATH", search_path()?);
    if let Some(daemon) = daemon {
        command.env("TOLLGATE_SOCKET", &daemon.socket_path);
        daemon
            .cgroup
            .enter(&mut command)
            .context("failed to prepare the session's cgroup")?;
    }

    let mut child = tokio::process::Command::from(command)
        .spawn()
        .context("failed to start the session in desk")?;
    // An interactive shell handles Ctrl-C itself and ignores SIGTERM, but exits on SIGHUP.
    let (stop_with, ignore_interrupt) = match args.command {
        Some(_) => (Signal::SIGTERM, false),
        None => (Signal::SIGHUP, true),
    };

    loop {
        tokio::select! {
            status = child.wait() => return status.context("failed to wait for the session"),
            signal = signals.recv() => {
                if signal == Signal::SIGINT && ignore_interrupt {
                    continue;
                }
                eprintln!("tollgate-lab: received {signal}, stopping the session");
                if let Some(pid) = child.id() {
                    // The child is not reaped yet, so its pid still names it.
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), stop_with);
                }
                return match tokio::time::timeout(SESSION_STOP_GRACE, child.wait()).await {
                    Ok(status) => status.context("failed to wait for the session"),
                    Err(_) => {
                        child.kill().await.context("failed to kill the session")?;
                        child.wait().await.context("failed to wait for the session")
                    }
                };
            }
        }
    }
}

fn print_guide(lab: &Lab, daemon: Option<&Daemon>) {
    let servers: Vec<String> = SERVER_ADDRS.iter().map(ToString::to_string).collect();
    println!(
        "Tollgate lab {} is up. Your shell runs in the desk namespace.",
        lab.name()
    );
    println!("  desk: {DESK_V4}, {DESK_V6}");
    println!("  net (the \"internet\"): {}", servers.join(", "));
    println!("  servers in net: HTTP on port 80, echo on port 7, bulk on port 9000");
    println!("  DNS in net: {DNS_V4} for the zone lab.test");
    println!();
    println!("Try:");
    println!("  curl {}", Lab::http_url(SERVER_ADDRS[0]));
    println!("  curl '{}'", Lab::http_url(SERVER_ADDRS[2]));
    println!("  curl http://{BLOG_NAME}/");
    match daemon {
        Some(daemon) => {
            println!("  tollgate --socket \"$TOLLGATE_SOCKET\" pending     # connections waiting");
            println!("  tollgate --socket \"$TOLLGATE_SOCKET\" allow ID    # allow one of them");
            println!();
            println!("tollgated log: {}", daemon.log_path.display());
        }
        None => {
            println!();
            println!("tollgated is not running, so all traffic passes.");
        }
    }
    println!("Server logs: {}", lab.work_dir().display());
    println!("Leave the shell with `exit` to remove the lab.");
}

/// Returns PATH with the directory of this executable in front, so `tollgate` and
/// `tollgated` from the same build are found first.
fn search_path() -> anyhow::Result<OsString> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).context("failed to build PATH for the session")
}

/// The signals that end the session.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers, which replace the default action of terminating the process.
    fn new() -> anyhow::Result<Self> {
        let install = |kind| signal(kind).context("failed to install a signal handler");
        Ok(Self {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
            hangup: install(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
            _ = self.hangup.recv() => Signal::SIGHUP,
        }
    }

    /// Returns a signal that arrived earlier, without waiting.
    async fn pending(&mut self) -> Option<Signal> {
        tokio::select! {
            biased;
            signal = self.recv() => Some(signal),
            () = std::future::ready(()) => None,
        }
    }
}

/// Returns the last lines of a log file, or a note that it could not be read.
fn log_tail(log_path: &Path) -> String {
    match fs::read_to_string(log_path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(err) => format!("({} not readable: {err})", log_path.display()),
    }
}

/// Returns whether a process stopped with SIGTERM exited normally: with success, killed by the
/// signal, or with the shell convention 128 + 15 after handling it.
fn stopped_cleanly(status: ExitStatus) -> bool {
    let sigterm = Signal::SIGTERM as i32;
    status.success() || status.signal() == Some(sigterm) || status.code() == Some(128 + sigterm)
}

/// Returns the session's exit code, or 128 plus the signal number if a signal ended it, as
/// shells report it.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// How long tollgated may take to accept connections on its control socket.
const DAEMON_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

const LOG_TAIL_LINES: usize = 20;

/// How long the session may take to exit after the stop signal, before SIGKILL.
const SESSION_STOP_GRACE: Duration = Duration::from_secs(3);
