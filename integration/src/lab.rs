//! The lab: a desk namespace for the firewall and its clients, and a net namespace with servers.

use std::{
    ffi::OsStr,
    io,
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{
    client::{self, BulkTransfer, TransferError},
    dns::{DnsError, LabDns},
    netns::{NetNs, NetNsError, unique_tag},
    process::ProcessGuard,
    servers::{self, ServerError, Servers},
    topology::{self, BULK_PORT, ECHO_PORT, HTTP_PORT, SERVER_ADDRS},
};

/// Two network namespaces joined by a veth pair, with servers running in one of them.
///
/// "desk" is the machine the firewall protects: tests run `tollgated` and client programs
/// there. "net" plays the internet and runs an HTTP server (port 80), an echo server (port 7)
/// and a bulk server (port 9000) on every address in [`SERVER_ADDRS`], and a DNS server for the
/// zone `lab.test` (see [`crate::dns`]). See [`topology`] for the addresses.
///
/// Dropping the lab stops the servers and every process started with [`NetNs::spawn`], then
/// deletes both namespaces and the work directory. This also happens during a panic, but not
/// when the process is killed by a signal.
#[derive(Debug)]
pub struct Lab {
    // Fields drop in order: the servers stop before their namespace goes away.
    servers: Servers,
    dns: LabDns,
    desk: NetNs,
    net: NetNs,
    name: String,
    work_dir: TempDir,
}

impl Lab {
    /// Builds the network, starts the servers and checks that desk reaches each of them.
    ///
    /// Took about 0.2 s in total on a 2-core VM, most of it for python's start.
    pub fn start() -> Result<Self, LabError> {
        let name = format!("tg-{}", unique_tag());
        let work_dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .map_err(LabError::WorkDir)?;

        let desk = NetNs::create(&format!("{name}-desk"))?;
        let net = NetNs::create(&format!("{name}-net"))?;
        topology::build(&desk, &net)?;

        let servers = servers::start(&net, work_dir.path(), &name)?;
        let dns = LabDns::start(&net, desk.name(), &work_dir.path().join("dnsmasq.log"))?;
        desk.run(check_servers_reachable)??;

        Ok(Self {
            servers,
            dns,
            desk,
            net,
            name,
            work_dir,
        })
    }

    /// Returns the lab's name, `tg-TAG`, which prefixes both namespace names.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the desk namespace.
    pub fn desk(&self) -> &NetNs {
        &self.desk
    }

    /// Returns the net namespace.
    pub fn net(&self) -> &NetNs {
        &self.net
    }

    /// Returns a command that runs `program` in desk through `ip netns exec`.
    pub fn desk_command(&self, program: impl AsRef<OsStr>) -> Command {
        self.desk.command(program)
    }

    /// Returns a command that runs `program` in net through `ip netns exec`.
    pub fn net_command(&self, program: impl AsRef<OsStr>) -> Command {
        self.net.command(program)
    }

    /// Returns the lab's temporary directory, which contains the web root and the server logs
    /// (`http.log`, `lab-server.log`) and is deleted on drop.
    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// Returns the lab's DNS server and desk's resolv.conf.
    pub fn dns(&self) -> &LabDns {
        &self.dns
    }

    /// Returns the HTTP server process.
    pub fn http_server(&self) -> &ProcessGuard {
        &self.servers.http
    }

    /// Returns the `lab-server` process, which runs the echo and bulk servers.
    pub fn lab_server(&self) -> &ProcessGuard {
        &self.servers.lab_server
    }

    /// Returns the URL of the HTTP server's index page on `server`, for example
    /// `http://[2001:db8::10]/`.
    pub fn http_url(server: IpAddr) -> String {
        match server {
            IpAddr::V4(addr) => format!("http://{addr}/"),
            IpAddr::V6(addr) => format!("http://[{addr}]/"),
        }
    }

    /// Sends `payload` from desk to the echo server on `server` and checks the echo.
    ///
    /// Uses [`client::DEFAULT_TIMEOUT`] for the connect and for each read and write.
    pub fn echo(&self, server: IpAddr, payload: &[u8]) -> Result<(), TransferError> {
        let addr = SocketAddr::new(server, ECHO_PORT);
        self.desk
            .run(|| client::echo(addr, payload, client::DEFAULT_TIMEOUT))?
    }

    /// Downloads `len` bytes from desk from the bulk server on `server` and checks each byte.
    ///
    /// Uses [`client::DEFAULT_TIMEOUT`] for the connect and for each read.
    pub fn bulk_download(&self, server: IpAddr, len: u64) -> Result<BulkTransfer, TransferError> {
        let addr = SocketAddr::new(server, BULK_PORT);
        self.desk
            .run(|| client::bulk_download(addr, len, client::DEFAULT_TIMEOUT))?
    }
}

/// A lab that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The work directory could not be created.
    #[error("failed to create the lab's temporary directory")]
    WorkDir(#[source] io::Error),

    /// Creating or configuring a namespace failed.
    #[error(transparent)]
    Namespace(#[from] NetNsError),

    /// A server did not start.
    #[error(transparent)]
    Server(#[from] ServerError),

    /// The DNS server did not start.
    #[error(transparent)]
    Dns(#[from] DnsError),

    /// Desk could not connect to a server that net reported as listening.
    #[error("desk cannot reach {addr} within {timeout:?}")]
    Unreachable {
        /// The server address.
        addr: SocketAddr,
        /// How long the connects went on.
        timeout: Duration,
        /// The error of the last connect.
        #[source]
        source: io::Error,
    },
}

/// Connects to every server port on every server address, with retries until a deadline.
///
/// Must run inside desk.
fn check_servers_reachable() -> Result<(), LabError> {
    let deadline = Instant::now() + REACH_TIMEOUT;
    for server in SERVER_ADDRS {
        for port in [HTTP_PORT, ECHO_PORT, BULK_PORT] {
            let addr = SocketAddr::new(server, port);
            // The first IPv6 packet waits for neighbour discovery, so a connect can fail or
            // time out while the veth comes up.
            loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(_) => break,
                    Err(source) if Instant::now() >= deadline => {
                        return Err(LabError::Unreachable {
                            addr,
                            timeout: REACH_TIMEOUT,
                            source,
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
    Ok(())
}

const REACH_TIMEOUT: Duration = Duration::from_secs(5);
