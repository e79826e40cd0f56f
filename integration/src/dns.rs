//! The lab's DNS: dnsmasq in net, authoritative for the test zone `lab.test`, desk's
//! resolv.conf pointing at it, and a local stub resolver that tests may start in desk.

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns::{NetNs, NetNsError},
    process::ProcessGuard,
    topology::{DNS_V4, DNS_V6, SERVER_A_V4, SERVER_A_V6, SERVER_B_V4},
};

/// A name with an A and an AAAA record, on server A.
pub const BLOG_NAME: &str = "blog.lab.test";
/// A second name on server A's IPv4 address.
pub const SHOP_NAME: &str = "shop.lab.test";
/// An alias chain: `www.lab.test` → `web.lab.test` → [`BLOG_NAME`].
pub const ALIAS_NAME: &str = "www.lab.test";
/// A name on server B with a 2-second TTL.
pub const SHORT_TTL_NAME: &str = "short.lab.test";
/// A name with 60 A records, too many for a 512-byte UDP answer.
pub const BIG_NAME: &str = "big.lab.test";

/// Number of A records of [`BIG_NAME`].
pub const BIG_RECORDS: u8 = 60;

/// The IPv4 address of [`LocalStub`], the one systemd-resolved's stub listens on.
pub const STUB_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
/// The IPv6 address of [`LocalStub`].
pub const STUB_V6: Ipv6Addr = Ipv6Addr::LOCALHOST;

/// The user [`LocalStub`] runs as. It is not root, so a daemon that finds the stub among its
/// upstreams exempts the stub's own queries from the diversion.
pub const STUB_USER: &str = "nobody";

/// The running dnsmasq and desk's resolv.conf, both removed on drop.
#[derive(Debug)]
pub struct LabDns {
    // Fields drop in order: the server stops before the resolv.conf goes.
    server: ProcessGuard,
    resolv_conf: ResolvConfGuard,
}

impl LabDns {
    /// Starts dnsmasq in `net` and writes `/etc/netns/DESK/resolv.conf`, which `ip netns exec`
    /// mounts over `/etc/resolv.conf` for programs it starts in desk.
    pub fn start(net: &NetNs, desk_name: &str, log_path: &Path) -> Result<Self, DnsError> {
        let resolv_conf = ResolvConfGuard::create(desk_name)?;
        let log = fs::File::create(log_path).map_err(|source| DnsError::File {
            path: log_path.to_owned(),
            source,
        })?;
        let stderr = log.try_clone().map_err(|source| DnsError::File {
            path: log_path.to_owned(),
            source,
        })?;
        let mut command = net.command("dnsmasq");
        command
            .args(dnsmasq_args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let server = net.spawn(&mut command)?;
        let dns = Self {
            server,
            resolv_conf,
        };
        dns.wait_ready(net, log_path)?;
        Ok(dns)
    }

    /// Returns the path of desk's resolv.conf.
    pub fn resolv_conf_path(&self) -> &Path {
        &self.resolv_conf.path
    }

    /// Returns the dnsmasq process.
    pub fn server(&self) -> &ProcessGuard {
        &self.server
    }

    /// Replaces desk's resolv.conf with one naming `servers`. Programs started in desk later
    /// read it, and so does a daemon started later, whose `dns.resolv_conf_path` it is.
    pub fn set_nameservers(&self, servers: &[IpAddr]) -> Result<(), DnsError> {
        let text: String = servers
            .iter()
            .map(|server| format!("nameserver {server}\n"))
            .collect();
        fs::write(&self.resolv_conf.path, text).map_err(|source| DnsError::File {
            path: self.resolv_conf.path.clone(),
            source,
        })
    }

    fn wait_ready(&self, net: &NetNs, log_path: &Path) -> Result<(), DnsError> {
        wait_answering(net, IpAddr::V4(DNS_V4), &self.server, log_path)
    }
}

/// A local stub resolver in desk, as systemd-resolved or dnsmasq are on many hosts: dnsmasq on
/// [`STUB_V4`] and [`STUB_V6`], port 53, as [`STUB_USER`], forwarding every query to the lab's
/// DNS server.
#[derive(Debug)]
pub struct LocalStub {
    server: ProcessGuard,
}

impl LocalStub {
    /// Starts the stub in `desk` and waits until it answers. Its log goes to `log_path` and its
    /// pid file into `work_dir`.
    pub fn start(desk: &NetNs, work_dir: &Path, log_path: &Path) -> Result<Self, DnsError> {
        let log = fs::File::create(log_path).map_err(|source| DnsError::File {
            path: log_path.to_owned(),
            source,
        })?;
        let stderr = log.try_clone().map_err(|source| DnsError::File {
            path: log_path.to_owned(),
            source,
        })?;
        let mut command = desk.command("dnsmasq");
        command
            .args([
                "--keep-in-foreground",
                "--log-facility=-",
                "--log-queries",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--bind-interfaces",
            ])
            .arg(format!("--listen-address={STUB_V4},{STUB_V6}"))
            .arg(format!("--server={DNS_V4}"))
            .arg(format!("--user={STUB_USER}"))
            .arg(format!(
                "--pid-file={}",
                work_dir.join("stub-dnsmasq.pid").display()
            ))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let stub = Self {
            server: desk.spawn(&mut command)?,
        };
        wait_answering(desk, IpAddr::V4(STUB_V4), &stub.server, log_path)?;
        Ok(stub)
    }

    /// Returns the dnsmasq process.
    pub fn server(&self) -> &ProcessGuard {
        &self.server
    }
}

/// Waits until the DNS server at `address`, seen from `namespace`, answers for [`BLOG_NAME`].
fn wait_answering(
    namespace: &NetNs,
    address: IpAddr,
    server: &ProcessGuard,
    log_path: &Path,
) -> Result<(), DnsError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut probe = namespace.command("dig");
        probe.args([
            "+short",
            "+time=1",
            "+tries=1",
            &format!("@{address}"),
            BLOG_NAME,
        ]);
        let output = probe
            .output()
            .map_err(|source| DnsError::Probe { source })?;
        if String::from_utf8_lossy(&output.stdout).contains(&SERVER_A_V4.to_string()) {
            return Ok(());
        }
        if Instant::now() >= deadline || matches!(server.try_wait(), Ok(Some(_))) {
            return Err(DnsError::NotReady {
                log: fs::read_to_string(log_path).unwrap_or_default(),
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The lab's DNS could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A file could not be written.
    #[error("failed to write {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// dnsmasq could not be started in net.
    #[error("failed to start dnsmasq (install dnsmasq-base)")]
    Spawn(#[from] NetNsError),
    /// dig could not be run to probe the server.
    #[error("failed to run dig (install dnsutils)")]
    Probe {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// dnsmasq did not answer in time.
    #[error("dnsmasq did not answer within {START_TIMEOUT:?}, log:\n{log}")]
    NotReady {
        /// dnsmasq's log.
        log: String,
    },
}

/// The zone, as dnsmasq options: nothing is read from the host, nothing is forwarded.
fn dnsmasq_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "--keep-in-foreground",
        "--log-facility=-",
        "--log-queries",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--bind-interfaces",
        "--local=/lab.test/",
        "--user=root",
        // Without an argument this writes no PID file. The default, /var/run/dnsmasq.pid, is
        // shared by every lab, and two labs starting at once made dnsmasq fail with "failed
        // to open pidfile /var/run/dnsmasq.pid: File exists" (dnsmasq 2.90).
        "--pid-file",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.push(format!("--listen-address={DNS_V4},{DNS_V6}"));
    args.push(format!(
        "--host-record={BLOG_NAME},{SERVER_A_V4},{SERVER_A_V6},30"
    ));
    args.push(format!("--host-record={SHOP_NAME},{SERVER_A_V4},30"));
    args.push(format!("--host-record={SHORT_TTL_NAME},{SERVER_B_V4},2"));
    args.push(format!("--cname={ALIAS_NAME},web.lab.test,30"));
    args.push(format!("--cname=web.lab.test,{BLOG_NAME},30"));
    for last in 1..=BIG_RECORDS {
        args.push(format!("--host-record={BIG_NAME},198.51.100.{last}"));
    }
    args
}

/// `/etc/netns/DESK/resolv.conf`, removed with its directory on drop.
#[derive(Debug)]
struct ResolvConfGuard {
    dir: PathBuf,
    path: PathBuf,
}

impl ResolvConfGuard {
    fn create(desk_name: &str) -> Result<Self, DnsError> {
        let dir = Path::new(NETNS_ETC_DIR).join(desk_name);
        let path = dir.join("resolv.conf");
        let text = format!("nameserver {DNS_V4}\nnameserver {DNS_V6}\n");
        fs::create_dir_all(&dir)
            .and_then(|()| fs::write(&path, text))
            .map_err(|source| DnsError::File {
                path: path.clone(),
                source,
            })?;
        Ok(Self { dir, path })
    }
}

impl Drop for ResolvConfGuard {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("failed to remove {}: {err}", self.dir.display());
        }
    }
}

/// Where `ip netns exec` looks for per-namespace files to mount over `/etc`.
const NETNS_ETC_DIR: &str = "/etc/netns";

const START_TIMEOUT: Duration = Duration::from_secs(10);
