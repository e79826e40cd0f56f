//! The parts of the `tollgate-bench` command that do not run the lab: statistics, iperf3
//! results, readings from `/proc` and the report.
//!
//! - [`stats`]: medians and percentiles.
//! - [`iperf`]: iperf3 client commands and their JSON results.
//! - [`procfs`]: memory and CPU time of a process, and the machine's description.
//! - [`report`]: the table of results and its section of `BENCHMARKS.md`.
//! - [`clock`]: `CLOCK_MONOTONIC` readings, comparable between processes.

pub mod clock;
pub mod iperf;
pub mod procfs;
pub mod report;
pub mod stats;
