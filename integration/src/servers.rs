//! The servers in net: python's `http.server` and the `lab-server` echo and bulk servers.

use std::{
    fs::{self, File},
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    binary::{BinaryNotFoundError, workspace_binary},
    netns::{NetNs, NetNsError},
    process::ProcessGuard,
    topology::{BULK_PORT, ECHO_PORT, HTTP_PORT},
};

/// Text that the lab's `index.html` contains, so a test can tell the lab's page from an error.
pub const INDEX_MARKER: &str = "Tollgate lab HTTP server";

/// The running servers of one lab.
#[derive(Debug)]
pub(crate) struct Servers {
    pub(crate) http: ProcessGuard,
    pub(crate) lab_server: ProcessGuard,
}

/// Starts the servers inside `net` and waits until each accepts connections.
///
/// The web root and the server logs go into `work_dir`. The page names `lab_name`, so a test
/// can check that it reached its own lab.
pub(crate) fn start(net: &NetNs, work_dir: &Path, lab_name: &str) -> Result<Servers, ServerError> {
    let web_root = work_dir.join("www");
    let index_path = web_root.join("index.html");
    fs::create_dir(&web_root)
        .and_then(|()| fs::write(&index_path, index_page(lab_name)))
        .map_err(|source| ServerError::Write {
            path: index_path,
            source,
        })?;

    let lab_server_path = workspace_binary("lab-server")?;

    let mut http_command = net.command("python3");
    http_command
        .args([
            "-m",
            "http.server",
            &HTTP_PORT.to_string(),
            "--bind",
            "::",
            "--directory",
        ])
        .arg(&web_root);
    let http = spawn_logged(net, &mut http_command, &work_dir.join("http.log"))?;

    let mut lab_server_command = net.command(lab_server_path);
    lab_server_command
        .arg("--echo")
        .arg(SocketAddr::from((Ipv6Addr::UNSPECIFIED, ECHO_PORT)).to_string())
        .arg("--bulk")
        .arg(SocketAddr::from((Ipv6Addr::UNSPECIFIED, BULK_PORT)).to_string());
    let lab_server = spawn_logged(
        net,
        &mut lab_server_command,
        &work_dir.join("lab-server.log"),
    )?;

    // Probing both loopback addresses checks that each server is dual-stack.
    net.run(|| {
        wait_until_listening(
            &http,
            &work_dir.join("http.log"),
            &loopback_addrs(HTTP_PORT),
        )?;
        let lab_server_log = work_dir.join("lab-server.log");
        wait_until_listening(&lab_server, &lab_server_log, &loopback_addrs(ECHO_PORT))?;
        wait_until_listening(&lab_server, &lab_server_log, &loopback_addrs(BULK_PORT))
    })??;

    Ok(Servers { http, lab_server })
}

/// A server that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file for a server could not be written.
    #[error("failed to write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The `lab-server` binary was not found.
    #[error(transparent)]
    Binary(#[from] BinaryNotFoundError),

    /// Starting the server or entering net failed.
    #[error(transparent)]
    Namespace(#[from] NetNsError),

    /// The server's status could not be read.
    #[error("failed to check whether `{server}` is running")]
    Status {
        /// The server's command line.
        server: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The server exited before it accepted connections.
    ///
    /// The error carries the end of the log, because the log file goes away with the lab.
    #[error("`{server}` exited with {status} during startup, log:\n{log_tail}")]
    Exited {
        /// The server's command line.
        server: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of the server's log.
        log_tail: String,
    },

    /// The server did not accept connections within the startup timeout.
    #[error("`{server}` did not accept connections on {addr} within {timeout:?}, log:\n{log_tail}")]
    NotListening {
        /// The server's command line.
        server: String,
        /// The address probed.
        addr: SocketAddr,
        /// How long the probes went on.
        timeout: Duration,
        /// The last lines of the server's log.
        log_tail: String,
        /// The error of the last probe.
        #[source]
        source: io::Error,
    },
}

/// Spawns `command` in `net` with stdout and stderr written to a new file at `log_path`.
fn spawn_logged(
    net: &NetNs,
    command: &mut Command,
    log_path: &Path,
) -> Result<ProcessGuard, ServerError> {
    let write_error = |source| ServerError::Write {
        path: log_path.to_path_buf(),
        source,
    };
    let log = File::create(log_path).map_err(write_error)?;
    let log_for_stderr = log.try_clone().map_err(write_error)?;

    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr);
    Ok(net.spawn(command)?)
}

/// Connects to each of `addrs` until it succeeds, with bounded retries.
///
/// Must run inside the server's namespace.
fn wait_until_listening(
    server: &ProcessGuard,
    log_path: &Path,
    addrs: &[SocketAddr],
) -> Result<(), ServerError> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    for &addr in addrs {
        loop {
            let status = server.try_wait().map_err(|source| ServerError::Status {
                server: server.label().to_owned(),
                source,
            })?;
            if let Some(status) = status {
                return Err(ServerError::Exited {
                    server: server.label().to_owned(),
                    status,
                    log_tail: log_tail(log_path),
                });
            }

            match TcpStream::connect_timeout(&addr, PROBE_INTERVAL) {
                Ok(_) => break,
                Err(source) if Instant::now() >= deadline => {
                    return Err(ServerError::NotListening {
                        server: server.label().to_owned(),
                        addr,
                        timeout: STARTUP_TIMEOUT,
                        log_tail: log_tail(log_path),
                        source,
                    });
                }
                Err(_) => thread::sleep(PROBE_INTERVAL),
            }
        }
    }
    Ok(())
}

fn loopback_addrs(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
}

fn index_page(lab_name: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<title>Tollgate lab</title>\n<p>{INDEX_MARKER}</p>\n\
         <p>lab {lab_name}</p>\n"
    )
}

/// Returns the last lines of a log file, or a note that it could not be read.
fn log_tail(log_path: &Path) -> String {
    match fs::read_to_string(log_path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(err) => format!("(log not readable: {err})"),
    }
}

/// How long a server may take to accept connections. Python's `http.server` started in about
/// 0.1 s on a 2-core VM, so the margin is for loaded machines.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

const PROBE_INTERVAL: Duration = Duration::from_millis(50);

const LOG_TAIL_LINES: usize = 20;
