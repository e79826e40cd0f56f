//! `bench-client`: the clients of `tollgate-bench`, run as a process of their own inside the
//! lab's desk namespace and the daemon's cgroup, so that the daemon attributes their
//! connections and its file descriptors are not shared with theirs.
//!
//! Each subcommand prints its result as one line of JSON on stdout.

use std::{
    io::{self, BufRead, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::{io::AsyncReadExt as _, sync::Semaphore};
use tollgate_integration::bench::{clock::monotonic_ns, stats::percentile};

/// Clients for `tollgate-bench`. Every connection speaks the lab's bulk server protocol: an
/// 8-byte big-endian length, to which the server replies with that many bytes and a close.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Opens `count` connections from `workers` threads, each asking for one byte, and prints
    /// how many completed and how long all took.
    Rate {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 4)]
        workers: u64,
    },
    /// Opens `count` connections one after the other, each asking for one byte, and prints the
    /// 50th and 99th percentiles of the time to connect and to the first byte, in µs.
    Latency {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
    },
    /// Opens `count` connections that send nothing, prints how many are open, then waits up to
    /// `wait_secs` for each to be reset, closed or sent data, and prints the counts.
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// For each line read on stdin, opens one connection that sends nothing and prints the
    /// CLOCK_MONOTONIC time (ns) taken just before `connect()` and the local port. Keeps the
    /// connections open until stdin ends.
    Probe {
        #[arg(long)]
        to: SocketAddr,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Rate { to, count, workers } => rate(to, count, workers),
        Command::Latency { to, count } => latency(to, count),
        Command::Hold {
            to,
            count,
            wait_secs,
        } => hold(to, count, Duration::from_secs(wait_secs)),
        Command::Probe { to } => probe(to),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-client: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn rate(to: SocketAddr, count: u64, workers: u64) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            let (next, failed) = (Arc::clone(&next), Arc::clone(&failed));
            scope.spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    if fetch_one_byte(to).is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    print_json(&json!({
        "completed": count - failed,
        "failed": failed,
        "seconds": seconds,
    }))
}

fn latency(to: SocketAddr, count: u64) -> anyhow::Result<()> {
    let mut connect_us = Vec::new();
    let mut first_byte_us = Vec::new();
    let mut failed = 0u64;
    for _ in 0..count {
        match fetch_one_byte(to) {
            Ok(timing) => {
                connect_us.push(timing.connected.as_secs_f64() * 1e6);
                first_byte_us.push(timing.first_byte.as_secs_f64() * 1e6);
            }
            Err(_) => failed += 1,
        }
    }
    print_json(&json!({
        "samples": connect_us.len(),
        "failed": failed,
        "connect_p50_us": percentile(&connect_us, 50.0),
        "connect_p99_us": percentile(&connect_us, 99.0),
        "first_byte_p50_us": percentile(&first_byte_us, 50.0),
        "first_byte_p99_us": percentile(&first_byte_us, 99.0),
    }))
}

/// Times of one request, from just before `connect()`.
struct Timing {
    connected: Duration,
    first_byte: Duration,
}

/// Connects, requests one byte from the bulk server, and reads it and the close.
fn fetch_one_byte(to: SocketAddr) -> io::Result<Timing> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    let connected = started.elapsed();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    stream.write_all(&1u64.to_be_bytes())?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    let first_byte = started.elapsed();
    let mut rest = [0u8; 16];
    while stream.read(&mut rest)? > 0 {}
    Ok(Timing {
        connected,
        first_byte,
    })
}

fn hold(to: SocketAddr, count: u64, wait: Duration) -> anyhow::Result<()> {
    raise_file_limit()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    runtime.block_on(hold_all(to, count, wait))
}

/// End of one held connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    ConnectFailed,
    Reset,
    Closed,
    Answered,
    OtherError,
    TimedOut,
}

async fn hold_all(to: SocketAddr, count: u64, wait: Duration) -> anyhow::Result<()> {
    let connects = Arc::new(Semaphore::new(CONCURRENT_CONNECTS));
    let (connected_sender, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let connects = Arc::clone(&connects);
        let connected_sender = connected_sender.clone();
        tasks.spawn(async move {
            let permit = connects.acquire_owned().await;
            let stream = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(to)).await;
            drop(permit);
            let Ok(Ok(mut stream)) = stream else {
                let _ = connected_sender.send(false);
                return Outcome::ConnectFailed;
            };
            let _ = connected_sender.send(true);
            let mut buffer = [0u8; 64];
            match tokio::time::timeout(wait, stream.read(&mut buffer)).await {
                Err(_) => Outcome::TimedOut,
                Ok(Ok(0)) => Outcome::Closed,
                Ok(Ok(_)) => Outcome::Answered,
                Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionReset => Outcome::Reset,
                Ok(Err(_)) => Outcome::OtherError,
            }
        });
    }
    drop(connected_sender);
    // Each task reports its connect once, then keeps its sender until its read ends.
    let (mut open, mut failed) = (0u64, 0u64);
    while open + failed < count {
        match connected.recv().await {
            Some(true) => open += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    print_json(&json!({ "connected": open, "connect_failed": failed }))?;

    let mut outcomes = std::collections::HashMap::new();
    while let Some(outcome) = tasks.join_next().await {
        let outcome = outcome.context("a connection task panicked")?;
        *outcomes.entry(format!("{outcome:?}")).or_insert(0u64) += 1;
    }
    print_json(&json!(outcomes))
}

fn probe(to: SocketAddr) -> anyhow::Result<()> {
    let mut connections = Vec::new();
    let stdin = io::stdin();
    for line in stdin.lock().lines() {
        line.context("failed to read stdin")?;
        let started_ns = monotonic_ns();
        let stream = TcpStream::connect_timeout(&to, IO_TIMEOUT)
            .with_context(|| format!("failed to connect to {to}"))?;
        let port = stream
            .local_addr()
            .context("failed to read local address")?
            .port();
        println!("{started_ns} {port}");
        io::stdout().flush().context("failed to write stdout")?;
        connections.push(stream);
    }
    for stream in connections {
        let _ = stream.shutdown(Shutdown::Both);
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit, for the held connections.
fn raise_file_limit() -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("failed to read RLIMIT_NOFILE");
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit whose soft limit does not exceed its hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error()).context("failed to raise RLIMIT_NOFILE");
    }
    Ok(())
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{value}").context("failed to write stdout")?;
    stdout.flush().context("failed to write stdout")
}

/// Bound on each connect and read, so that a stuck connection fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects in flight at once while opening held connections. More would overflow the
/// daemon's listen backlog, and SYNs dropped there are retried only after a second.
const CONCURRENT_CONNECTS: usize = 256;
