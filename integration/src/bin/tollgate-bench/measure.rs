//! The measurements of one round, with Tollgate off or on, and the client processes they run.

use std::{
    fmt,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use tollgate_integration::{
    Lab, ProcessGuard,
    bench::{
        iperf::{self, IPERF_PORT, TcpDownload, UdpUpload},
        procfs,
    },
    daemon::Daemon,
    topology::{BULK_PORT, HTTP_PORT, SERVER_A_V4, SERVER_B_V4},
    watch::Watcher,
    workspace_binary,
};

use crate::figures::{Latency, Samples};

/// Settings added to the daemon's config. Held connections must outlast their measurement.
pub const DAEMON_CONFIG: &str = "prompt_timeout_secs = 600\n";

/// Rules that allow the benchmark's flows, as `tollgate rules add` arguments: iperf3 over TCP
/// and UDP, and the bulk server for the connection runs. Both name one address and one port,
/// like the rules that answers to prompts create.
const RULES: [&[&str]; 2] = [
    &[
        "--to",
        "203.0.113.10",
        "--port",
        "5201",
        "--protocol",
        "any",
    ],
    &[
        "--to",
        "203.0.113.10",
        "--port",
        "9000",
        "--protocol",
        "tcp",
    ],
];

/// Destination of the connections that no rule decides, which the daemon holds.
const HELD_DESTINATION: SocketAddr = SocketAddr::new(IpAddr::V4(SERVER_B_V4), BULK_PORT);
/// Destination of the connections timed to their pending event.
const PROBED_DESTINATION: SocketAddr = SocketAddr::new(IpAddr::V4(SERVER_B_V4), HTTP_PORT);
/// Destination of the connection-rate and latency runs, allowed by a rule.
const ALLOWED_DESTINATION: SocketAddr = SocketAddr::new(IpAddr::V4(SERVER_A_V4), BULK_PORT);

/// Whether the daemon runs during a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No daemon, so no nftables table and no BPF program.
    Off,
    /// The daemon runs with the benchmark's rules.
    On,
}

impl fmt::Display for Mode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Off => "Tollgate off",
            Self::On => "Tollgate on",
        })
    }
}

/// Sizes of the measurements, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub seconds: u64,
    pub streams: u32,
    pub connections: u64,
    pub latency_samples: u64,
    pub held: u64,
    pub pending_samples: u64,
}

/// The lab's daemon, iperf3 server and clients, ready for rounds of measurements.
pub struct Bench<'lab> {
    lab: &'lab Lab,
    daemon: Daemon,
    // Stopped on drop, before the lab goes.
    _iperf_server: ProcessGuard,
    bench_client: PathBuf,
    settings: Settings,
}

impl<'lab> Bench<'lab> {
    /// Adds the benchmark's rules to `daemon`, stops it and starts the iperf3 server in net.
    pub fn new(lab: &'lab Lab, mut daemon: Daemon, settings: Settings) -> anyhow::Result<Self> {
        for rule in RULES {
            let mut args = vec!["rules", "add", "--action", "allow", "--lifetime", "forever"];
            args.extend_from_slice(rule);
            let output = daemon.run_cli(&args);
            if !output.status.success() {
                bail!(
                    "tollgate rules add failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
        }
        daemon.stop().context("failed to stop tollgated")?;
        Ok(Self {
            _iperf_server: start_iperf_server(lab)?,
            bench_client: workspace_binary("bench-client")?,
            lab,
            daemon,
            settings,
        })
    }

    /// Measures every figure once in `mode` and adds the results to `samples`.
    pub fn measure_round(&mut self, mode: Mode, samples: &mut Samples) -> anyhow::Result<()> {
        match mode {
            Mode::Off => {
                let common = self.measure_common(None)?;
                samples.off.push(common);
            }
            Mode::On => {
                self.daemon
                    .restart(self.lab)
                    .context("failed to start tollgated")?;
                let pid = self
                    .daemon
                    .pid()
                    .ok_or_else(|| anyhow!("tollgated is not running"))?;
                // Memory first, while the daemon's heap contains nothing from earlier transfers.
                samples.held.push(self.measure_held(pid)?);
                samples.pending_ms.extend(self.measure_pending_events()?);
                let common = self.measure_common(Some((pid, &mut samples.cost)))?;
                samples.on.push(common);
                self.daemon.stop().context("failed to stop tollgated")?;
            }
        }
        Ok(())
    }

    /// Measures the figures both modes have. With a daemon, adds its CPU time to `cost`.
    fn measure_common(&self, mut daemon: Option<(u32, &mut DaemonCost)>) -> anyhow::Result<Common> {
        let settings = self.settings;
        let duration = Duration::from_secs(settings.seconds);
        let server = IpAddr::V4(SERVER_A_V4);

        let cpu = cpu_of(daemon.as_ref())?;
        let bulk_one = self.iperf_tcp(&iperf::tcp_download_args(server, duration, 1))?;
        let bulk_many = self.iperf_tcp(&iperf::tcp_download_args(
            server,
            duration,
            settings.streams,
        ))?;
        if let Some((pid, cost)) = daemon.as_mut() {
            cost.bulk_cpu += procfs::cpu_time(*pid)? - cpu;
            cost.bulk_bytes += bulk_one.bytes + bulk_many.bytes;
        }

        // Latencies first: a burst of connections slows the next ones down for seconds, with
        // Tollgate off as well.
        let cpu = cpu_of(daemon.as_ref())?;
        let latency = self.latency()?;
        let rate = self.connection_rate()?;
        if let Some((pid, cost)) = daemon.as_mut() {
            cost.connection_cpu += procfs::cpu_time(*pid)? - cpu;
            cost.connections += settings.connections + settings.latency_samples;
        }

        let udp = self.iperf_udp(&iperf::udp_upload_args(server, duration))?;
        eprintln!(
            "  bulk {:.2} / {:.2} Gbit/s, {:.0} connections/s, first byte p50 {:.0} µs \
             p99 {:.0} µs, UDP {:.0} datagrams/s",
            bulk_one.bits_per_second / 1e9,
            bulk_many.bits_per_second / 1e9,
            rate,
            latency.first_byte_p50_us,
            latency.first_byte_p99_us,
            udp.packets_per_second
        );
        Ok(Common {
            bulk_one,
            bulk_many,
            rate,
            latency,
            udp,
        })
    }

    fn iperf_tcp(&self, args: &[String]) -> anyhow::Result<TcpDownload> {
        let json = self.iperf(args)?;
        Ok(iperf::parse_tcp_download(&json)?)
    }

    fn iperf_udp(&self, args: &[String]) -> anyhow::Result<UdpUpload> {
        let json = self.iperf(args)?;
        Ok(iperf::parse_udp_upload(&json)?)
    }

    /// Runs the iperf3 client in desk and returns its JSON report. Retries while the server
    /// is still busy with the previous test.
    fn iperf(&self, args: &[String]) -> anyhow::Result<String> {
        let timeout = Duration::from_secs(self.settings.seconds + 30);
        for attempt in 1..=IPERF_ATTEMPTS {
            let mut command = self.daemon.desk_client(self.lab, "iperf3");
            command.args(args);
            let output = run_bounded(&mut command, timeout)?;
            let json = String::from_utf8_lossy(&output.stdout).into_owned();
            if json.contains("server is busy") && attempt < IPERF_ATTEMPTS {
                thread::sleep(Duration::from_secs(1));
                continue;
            }
            return Ok(json);
        }
        unreachable!("the last attempt returns")
    }

    /// Returns the connections per second of `settings.connections` connections to an
    /// allowed destination.
    fn connection_rate(&self) -> anyhow::Result<f64> {
        let count = self.settings.connections.to_string();
        let result = self.client_json(&[
            "rate",
            "--to",
            &ALLOWED_DESTINATION.to_string(),
            "--count",
            &count,
            "--workers",
            &RATE_WORKERS.to_string(),
        ])?;
        let failed = json_u64(&result, "failed")?;
        if failed > 0 {
            bail!("{failed} of {count} connections of the rate run failed");
        }
        Ok(json_u64(&result, "completed")? as f64 / json_f64(&result, "seconds")?)
    }

    /// Returns the percentiles of sequential connections to an allowed destination.
    fn latency(&self) -> anyhow::Result<Latency> {
        let result = self.client_json(&[
            "latency",
            "--to",
            &ALLOWED_DESTINATION.to_string(),
            "--count",
            &self.settings.latency_samples.to_string(),
        ])?;
        let failed = json_u64(&result, "failed")?;
        if failed > 0 {
            bail!("{failed} connections of the latency run failed");
        }
        Ok(Latency {
            connect_p99_us: json_f64(&result, "connect_p99_us")?,
            first_byte_p50_us: json_f64(&result, "first_byte_p50_us")?,
            first_byte_p99_us: json_f64(&result, "first_byte_p99_us")?,
        })
    }

    /// Holds `settings.held` connections, reads the daemon's memory before and after, then
    /// denies them and checks that each client saw a reset.
    fn measure_held(&self, pid: u32) -> anyhow::Result<Held> {
        let count = self.settings.held;
        let before = procfs::rss_bytes(pid)?;
        let mut command = self.daemon.desk_client(self.lab, &self.bench_client);
        command.args([
            "hold",
            "--to",
            &HELD_DESTINATION.to_string(),
            "--count",
            &count.to_string(),
        ]);
        let mut client = ClientProcess::spawn(&mut command)?;
        let opened = client.read_json_line()?;
        let connected = json_u64(&opened, "connected")?;
        self.wait_for_held(connected)?;
        let after = procfs::rss_bytes(pid)?;

        self.deny_pending()?;
        let outcomes = client.read_json_line()?;
        client.wait()?;
        let reset = outcomes["Reset"].as_u64().unwrap_or(0);
        eprintln!(
            "  {connected} held, {:.2} KiB each, {reset} reset after deny",
            after.saturating_sub(before) as f64 / connected.max(1) as f64 / 1024.0
        );
        Ok(Held {
            requested: count,
            connected,
            reset,
            rss_before: before,
            rss_after: after,
            outcomes: outcomes.to_string(),
        })
    }

    /// Returns the time from `connect()` to the `held` event on a watch connection, in ms,
    /// of `settings.pending_samples` connections that no rule decides.
    fn measure_pending_events(&self) -> anyhow::Result<Vec<f64>> {
        let watcher = Watcher::connect(&self.daemon.socket_path())
            .context("failed to watch the daemon's events")?;
        let mut command = self.daemon.desk_client(self.lab, &self.bench_client);
        command.args(["probe", "--to", &PROBED_DESTINATION.to_string()]);
        command.stdin(Stdio::piped());
        let mut client = ClientProcess::spawn(&mut command)?;
        let mut stdin = client
            .child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("bench-client has no stdin"))?;

        let mut latencies = Vec::new();
        for _ in 0..self.settings.pending_samples {
            writeln!(stdin, "connect").context("failed to write to bench-client")?;
            stdin.flush().context("failed to write to bench-client")?;
            let line = client.read_line()?;
            let (started_ns, port) = parse_probe_line(&line)?;
            let event = watcher
                .wait_for(EVENT_TIMEOUT, |event| {
                    event.kind() == "held"
                        && event.source().is_some_and(|source| source.port() == port)
                })
                .ok_or_else(|| anyhow!("no held event for port {port} in {EVENT_TIMEOUT:?}"))?;
            latencies.push(event.received_ns.saturating_sub(started_ns) as f64 / 1e6);
        }
        drop(stdin);
        client.wait()?;
        self.deny_pending()?;
        self.wait_for_held(0)?;
        Ok(latencies)
    }

    /// Waits until exactly `connections` connections are held by the daemon.
    fn wait_for_held(&self, connections: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + HELD_TIMEOUT;
        loop {
            let held: u64 = self
                .daemon
                .pending()
                .iter()
                .filter_map(|request| request["connections"].as_u64())
                .sum();
            if held == connections {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the daemon holds {held} connections, expected {connections}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Denies every pending request.
    fn deny_pending(&self) -> anyhow::Result<()> {
        for request in self.daemon.pending() {
            let id = request["id"].to_string();
            let output = self.daemon.run_cli(&["deny", &id]);
            if !output.status.success() {
                bail!(
                    "tollgate deny {id} failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// Runs bench-client in desk and returns the JSON line it prints.
    fn client_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut command = self.daemon.desk_client(self.lab, &self.bench_client);
        command.args(args);
        let output = run_bounded(&mut command, CLIENT_TIMEOUT)?;
        if !output.status.success() {
            bail!(
                "bench-client {} failed: {}",
                args[0],
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("bench-client {} printed invalid JSON", args[0]))
    }
}

/// The figures both modes have, from one round.
#[derive(Debug, Clone, Copy)]
pub struct Common {
    pub bulk_one: TcpDownload,
    pub bulk_many: TcpDownload,
    pub rate: f64,
    pub latency: Latency,
    pub udp: UdpUpload,
}

/// The held-connection figure of one round.
#[derive(Debug, Clone)]
pub struct Held {
    pub requested: u64,
    pub connected: u64,
    pub reset: u64,
    pub rss_before: u64,
    pub rss_after: u64,
    /// Count of each way the connections ended, as bench-client reported them.
    pub outcomes: String,
}

/// The daemon's CPU time over all rounds, and what it did in that time.
#[derive(Debug, Clone, Copy, Default)]
pub struct DaemonCost {
    pub bulk_cpu: Duration,
    pub bulk_bytes: u64,
    pub connection_cpu: Duration,
    pub connections: u64,
}

fn cpu_of(daemon: Option<&(u32, &mut DaemonCost)>) -> anyhow::Result<Duration> {
    match daemon {
        Some((pid, _)) => Ok(procfs::cpu_time(*pid)?),
        None => Ok(Duration::ZERO),
    }
}

/// Starts `iperf3 --server` on server A in net and waits until it listens.
fn start_iperf_server(lab: &Lab) -> anyhow::Result<ProcessGuard> {
    let log_path = lab.work_dir().join("iperf3.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("failed to create {}", log_path.display()))?;
    let mut command = lab.net_command("iperf3");
    command
        .args(["--server", "--bind", &SERVER_A_V4.to_string()])
        .args(["--port", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("failed to duplicate the log file")?,
        )
        .stderr(log);
    let server = lab.net().spawn(&mut command)?;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listening = lab
            .net_command("ss")
            .args(["-Hltn", &format!("sport = :{IPERF_PORT}")])
            .output()
            .context("failed to run ss")?;
        if !listening.stdout.is_empty() {
            return Ok(server);
        }
        if Instant::now() >= deadline {
            bail!("iperf3 did not listen within 10 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A client process whose stdout is read line by line, killed if still running on drop.
struct ClientProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl ClientProcess {
    fn spawn(command: &mut Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("failed to start bench-client")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("bench-client has no stdout"))?;
        Ok(Self {
            child,
            stdout: BufReader::new(stdout),
        })
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .context("failed to read from bench-client")?;
        if read == 0 {
            bail!("bench-client exited early");
        }
        Ok(line)
    }

    fn read_json_line(&mut self) -> anyhow::Result<Value> {
        let line = self.read_line()?;
        serde_json::from_str(&line)
            .with_context(|| format!("invalid JSON from bench-client: {line}"))
    }

    fn wait(mut self) -> anyhow::Result<()> {
        let status = self
            .child
            .wait()
            .context("failed to wait for bench-client")?;
        if !status.success() {
            bail!("bench-client exited with {status}");
        }
        Ok(())
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        // After a successful wait() this does nothing, because the child is reaped.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `command` with its output captured, killing it if it runs longer than `timeout`.
fn run_bounded(command: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to start a client in desk")?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read_all = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read_all(stdout.map(|pipe| Box::new(pipe) as _));
    let stderr = read_all(stderr.map(|pipe| Box::new(pipe) as _));

    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("failed to wait for a client")? {
            break status;
        }
        if Instant::now() >= deadline {
            // The child is not reaped yet, so its pid still names it.
            let _ = child.kill();
            let _ = child.wait();
            bail!("a client in desk ran longer than {timeout:?} and was killed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn parse_probe_line(line: &str) -> anyhow::Result<(u64, u16)> {
    let mut fields = line.split_whitespace();
    let started = fields.next().and_then(|field| field.parse().ok());
    let port = fields.next().and_then(|field| field.parse().ok());
    started
        .zip(port)
        .ok_or_else(|| anyhow!("invalid line from bench-client probe: {line:?}"))
}

fn json_u64(value: &Value, key: &str) -> anyhow::Result<u64> {
    value[key]
        .as_u64()
        .ok_or_else(|| anyhow!("bench-client result has no {key}: {value}"))
}

fn json_f64(value: &Value, key: &str) -> anyhow::Result<f64> {
    value[key]
        .as_f64()
        .ok_or_else(|| anyhow!("bench-client result has no {key}: {value}"))
}

/// Client threads of the connection-rate run. More than one, so that the round trip of one
/// connection does not limit the rate.
pub const RATE_WORKERS: u32 = 4;

/// Attempts of an iperf3 client while the server reports that it is busy.
const IPERF_ATTEMPTS: u32 = 5;

/// Bound on a bench-client run; the connection runs take seconds.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Bound on the wait for one `held` event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on the wait for the daemon to hold or release connections.
const HELD_TIMEOUT: Duration = Duration::from_secs(120);
