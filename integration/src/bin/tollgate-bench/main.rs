//! `tollgate-bench`: measures what Tollgate costs against the same lab without it, and keeps
//! the results in `BENCHMARKS.md`.
//!
//! Each round measures every figure twice in the same lab: once with `tollgated` stopped,
//! which leaves no nftables table and no BPF program ("off"), and once with it running and
//! rules that allow the benchmark's flows ("on"). The order alternates between rounds, so a
//! drift of the machine's load weighs on both. The table shows medians over the rounds and
//! each ratio as the median of the per-round ratios. Needs root, `iperf3` and a release build
//! (`cargo build --release`).

mod figures;
mod measure;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::SystemTime,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use tollgate_integration::{
    Lab,
    bench::{
        procfs::Machine,
        report::{self, Report},
    },
    daemon::Daemon,
    workspace_binary,
};

use crate::{
    figures::Samples,
    measure::{Bench, Mode, Settings},
};

/// Measures Tollgate against the same network without it: bulk TCP throughput, new
/// connections per second and their latency, UDP packets per second, memory per held
/// connection, time to the pending event and CPU time per GiB and per 1,000 connections.
///
/// Builds a lab of network namespaces and touches nothing outside it. Takes about 3 minutes
/// with the defaults on 2 cores.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Rounds; each measures every figure with Tollgate off and on.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    seconds: u64,
    /// Parallel TCP streams of the multi-stream download.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=64))]
    streams: u32,
    /// Connections of each connection-rate run.
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    connections: u64,
    /// Sequential connections of each latency run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    latency_samples: u64,
    /// Connections held at once for the memory figure. The client process needs one file
    /// descriptor for each, and so does the daemon.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=18_000))]
    held: u64,
    /// Connections timed from `connect()` to their pending event, per round.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=2_000))]
    pending_samples: u64,
    /// File whose results section is replaced.
    #[arg(long, default_value = "BENCHMARKS.md", value_name = "PATH")]
    output: PathBuf,
    /// Print the results without writing them to the output file.
    #[arg(long)]
    no_write: bool,
}

/// Set by SIGINT or SIGTERM; the rounds stop at the next measurement and the lab is removed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_: libc::c_int) {
    // Only an atomic store: a signal handler may do nothing that can block or allocate.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM stop the rounds instead of the process, so that the lab's guards
/// remove its namespaces and processes. Child processes get the default action again at
/// `exec`.
fn stop_on_signals() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

    let action = SigAction::new(
        SigHandler::Handler(note_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }
            .with_context(|| format!("failed to handle {signal}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(err) = stop_on_signals() {
        eprintln!("tollgate-bench: error: {err:#}");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tollgate-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    check_requirements()?;
    let settings = Settings {
        seconds: args.seconds,
        streams: args.streams,
        connections: args.connections,
        latency_samples: args.latency_samples,
        held: args.held,
        pending_samples: args.pending_samples,
    };

    let lab = Lab::start().context("failed to build the lab")?;
    let daemon = Daemon::start_with_log_filter(&lab, measure::DAEMON_CONFIG, "info")
        .context("failed to start tollgated")?;
    let mut bench = Bench::new(&lab, daemon, settings)?;
    let mut samples = Samples::default();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [Mode::Off, Mode::On]
        } else {
            [Mode::On, Mode::Off]
        };
        for mode in order {
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted; the lab is removed and no results are written");
            }
            eprintln!(
                "tollgate-bench: round {}/{}, {mode}",
                round + 1,
                args.rounds
            );
            bench.measure_round(mode, &mut samples)?;
        }
    }
    drop(bench);
    drop(lab);

    let report = Report {
        machine: Machine::current(),
        command: command_line(),
        finished: SystemTime::now(),
        rounds: args.rounds as usize,
        rows: samples.rows(&settings),
        notes: figures::notes(&settings),
    };
    let markdown = report.to_markdown();
    println!("{markdown}");
    if !args.no_write {
        report::write_results(&args.output, &markdown)
            .with_context(|| format!("failed to write {}", args.output.display()))?;
        eprintln!(
            "tollgate-bench: results written to {}",
            args.output.display()
        );
    }
    Ok(())
}

/// Returns the command line with the program's file name only, without the directory of the
/// build that ran.
fn command_line() -> String {
    let mut args = std::env::args();
    let program = args
        .next()
        .map(PathBuf::from)
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "tollgate-bench".to_owned());
    std::iter::once(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails early, with the fix, when something the benchmark needs is missing.
fn check_requirements() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("tollgate-bench builds network namespaces and needs root");
    }
    let iperf3 = std::process::Command::new("iperf3")
        .arg("--version")
        .output();
    if !iperf3.is_ok_and(|output| output.status.success()) {
        bail!("iperf3 not found; install it with `apt-get install iperf3`");
    }
    // The search falls back to debug builds, whose figures would mislead.
    let own_dir = std::env::current_exe()
        .context("failed to find this executable")?
        .parent()
        .map(PathBuf::from);
    for binary in ["tollgated", "tollgate", "lab-server", "bench-client"] {
        let path = workspace_binary(binary)?;
        if path.parent().map(PathBuf::from) != own_dir {
            bail!(
                "{} is not next to tollgate-bench; build both with `cargo build --release`",
                path.display()
            );
        }
    }
    Ok(())
}
