//! The samples of all rounds and the table rows made from them: medians, per-round ratios
//! and the goals each figure is held to.

use tollgate_integration::bench::{
    report::{self, Row},
    stats::{median, percentile, range},
};

use crate::measure::{Common, DaemonCost, Held, RATE_WORKERS, Settings};

/// Percentiles of one latency run, in µs.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub connect_p99_us: f64,
    pub first_byte_p50_us: f64,
    pub first_byte_p99_us: f64,
}

/// Everything measured, round by round. `off[i]` and `on[i]` come from the same round.
#[derive(Debug, Default)]
pub struct Samples {
    pub off: Vec<Common>,
    pub on: Vec<Common>,
    pub held: Vec<Held>,
    /// Time from `connect()` to the `held` event, in ms, of all rounds.
    pub pending_ms: Vec<f64>,
    pub cost: DaemonCost,
}

/// Target of a figure.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// None is set.
    None,
    /// The ratio on / off is at least this.
    RatioAtLeast(f64),
    /// The increase from off to on is at most this many units.
    AddedAtMost(f64, &'static str),
    /// The value is at most this many units.
    AtMost(f64, &'static str),
}

impl Samples {
    /// Returns one row per figure.
    pub fn rows(&self, settings: &Settings) -> Vec<Row> {
        let mut rows = vec![
            self.paired_row(
                "Bulk TCP download, 1 stream (Gbit/s)",
                |common| common.bulk_one.bits_per_second / 1e9,
                2,
                Goal::RatioAtLeast(0.97),
            ),
            self.paired_row(
                &format!("Bulk TCP download, {} streams (Gbit/s)", settings.streams),
                |common| common.bulk_many.bits_per_second / 1e9,
                2,
                Goal::RatioAtLeast(0.97),
            ),
            self.paired_row(
                "New connections per second",
                |common| common.rate,
                0,
                Goal::RatioAtLeast(0.9),
            ),
            self.paired_row(
                "Connect to first byte, p50 (µs)",
                |common| common.latency.first_byte_p50_us,
                0,
                Goal::None,
            ),
            self.paired_row(
                "Connect to first byte, p99 (µs)",
                |common| common.latency.first_byte_p99_us,
                0,
                Goal::AddedAtMost(50.0, "µs"),
            ),
            self.paired_row(
                "`connect()` returns, p99 (µs)",
                |common| common.latency.connect_p99_us,
                0,
                Goal::None,
            ),
            self.paired_row(
                "UDP datagrams received per second",
                |common| common.udp.packets_per_second,
                0,
                Goal::None,
            ),
        ];
        rows.extend(self.held_rows(settings));
        rows.extend(self.pending_rows());
        rows.extend(self.cost_rows());
        rows
    }

    /// Returns the row of a figure measured in both modes: medians and the median of the
    /// per-round ratios.
    fn paired_row(
        &self,
        figure: &str,
        value: impl Fn(&Common) -> f64,
        decimals: usize,
        goal: Goal,
    ) -> Row {
        let off: Vec<f64> = self.off.iter().map(&value).collect();
        let on: Vec<f64> = self.on.iter().map(&value).collect();
        let ratios: Vec<f64> = off.iter().zip(&on).map(|(off, on)| on / off).collect();
        let added: Vec<f64> = off.iter().zip(&on).map(|(off, on)| on - off).collect();
        let ratio = median(&ratios);
        let verdict = match (goal, ratio, median(&added)) {
            (Goal::RatioAtLeast(minimum), Some(ratio), _) => {
                if ratio >= minimum {
                    "met".to_owned()
                } else {
                    format!("missed by {:.2}", minimum - ratio)
                }
            }
            (Goal::AddedAtMost(maximum, unit), _, Some(added)) => {
                if added <= maximum {
                    format!("met (added {} {unit})", report::format_number(added, 0))
                } else {
                    format!(
                        "missed by {} {unit} (added {} {unit})",
                        report::format_number(added - maximum, 0),
                        report::format_number(added, 0)
                    )
                }
            }
            _ => String::new(),
        };
        Row {
            figure: figure.to_owned(),
            off: format_number(median(&off), decimals),
            on: format_number(median(&on), decimals),
            ratio: match (ratio, range(&ratios)) {
                (Some(ratio), Some((low, high))) => {
                    format!("{ratio:.2} ({low:.2}–{high:.2})")
                }
                _ => "–".to_owned(),
            },
            goal: goal_text(goal),
            verdict,
        }
    }

    fn held_rows(&self, settings: &Settings) -> Vec<Row> {
        let per_held_kib: Vec<f64> = self
            .held
            .iter()
            .map(|held| {
                held.rss_after.saturating_sub(held.rss_before) as f64
                    / held.connected.max(1) as f64
                    / 1024.0
            })
            .collect();
        let goal = Goal::AtMost(4.0, "KiB");
        let settled = self
            .held
            .iter()
            .map(|held| {
                if held.reset == held.requested && held.connected == held.requested {
                    format!("{} of {}", count(held.reset), count(held.requested))
                } else {
                    format!(
                        "{} of {} ({} connected; {})",
                        count(held.reset),
                        count(held.requested),
                        count(held.connected),
                        held.outcomes
                    )
                }
            })
            .collect::<Vec<_>>();
        let all_settled = self
            .held
            .iter()
            .all(|held| held.reset == held.requested && held.connected == held.requested);
        vec![
            daemon_row(
                &format!(
                    "Daemon memory per held connection, {} held (KiB)",
                    count(settings.held)
                ),
                median(&per_held_kib),
                2,
                goal,
            ),
            Row {
                figure: "Held connections reset after a deny, per round".to_owned(),
                off: String::new(),
                on: dedup(&settled),
                ratio: String::new(),
                goal: "all".to_owned(),
                verdict: if all_settled { "met" } else { "missed" }.to_owned(),
            },
        ]
    }

    fn pending_rows(&self) -> Vec<Row> {
        vec![
            daemon_row(
                "Connect to pending event, p50 (ms)",
                percentile(&self.pending_ms, 50.0),
                2,
                Goal::None,
            ),
            daemon_row(
                "Connect to pending event, p99 (ms)",
                percentile(&self.pending_ms, 99.0),
                2,
                Goal::AtMost(5.0, "ms"),
            ),
        ]
    }

    fn cost_rows(&self) -> Vec<Row> {
        let cost = &self.cost;
        let gibibytes = cost.bulk_bytes as f64 / f64::from(1u32 << 30);
        let thousands = cost.connections as f64 / 1000.0;
        vec![
            daemon_row(
                "Daemon CPU time per GiB downloaded (s)",
                (gibibytes > 0.0).then(|| cost.bulk_cpu.as_secs_f64() / gibibytes),
                3,
                Goal::None,
            ),
            daemon_row(
                "Daemon CPU time per 1,000 connections (ms)",
                (thousands > 0.0).then(|| cost.connection_cpu.as_secs_f64() * 1e3 / thousands),
                1,
                Goal::None,
            ),
        ]
    }
}

/// Returns the row of a figure of the daemon alone, which has no value with Tollgate off.
fn daemon_row(figure: &str, value: Option<f64>, decimals: usize, goal: Goal) -> Row {
    let verdict = match (goal, value) {
        (Goal::AtMost(maximum, unit), Some(value)) => {
            if value <= maximum {
                "met".to_owned()
            } else {
                format!("missed by {:.2} {unit}", value - maximum)
            }
        }
        _ => String::new(),
    };
    Row {
        figure: figure.to_owned(),
        off: String::new(),
        on: format_number(value, decimals),
        ratio: String::new(),
        goal: goal_text(goal),
        verdict,
    }
}

fn goal_text(goal: Goal) -> String {
    match goal {
        Goal::None => String::new(),
        Goal::RatioAtLeast(minimum) => format!("≥ {minimum:.2} × off"),
        Goal::AddedAtMost(maximum, unit) => format!("≤ off + {maximum:.0} {unit}"),
        Goal::AtMost(maximum, unit) => format!("≤ {maximum} {unit}"),
    }
}

fn format_number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(
        || "–".to_owned(),
        |value| report::format_number(value, decimals),
    )
}

fn count(value: u64) -> String {
    report::format_number(value as f64, 0)
}

/// Joins values, writing a value that repeats only once.
fn dedup(values: &[String]) -> String {
    let mut unique: Vec<&String> = Vec::new();
    for value in values {
        if !unique.contains(&value) {
            unique.push(value);
        }
    }
    unique
        .iter()
        .map(|value| value.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Returns the notes that explain how each figure was measured.
pub fn notes(settings: &Settings) -> Vec<String> {
    vec![
        "Off is the same lab without `tollgated`: no nftables table and no BPF program. On \
         runs `tollgated` (default settings, log level info) with two rules that allow \
         203.0.113.10 port 5201 (TCP and UDP) and port 9000 (TCP), so a rule decides every \
         measured flow except the held and probed ones, which take the path through the \
         proxy. With the fast path the kernel decides the ruled flows at `connect()`."
            .to_owned(),
        format!(
            "Bulk: `iperf3 --reverse` for {} s from net to desk, with 1 and {} streams. \
             UDP: `iperf3 --udp --bitrate 0 --length 64` for {} s; the figure counts \
             datagrams the server received, since the sender outpaces the receiver and loses \
             many in both modes.",
            settings.seconds, settings.streams, settings.seconds
        ),
        format!(
            "Connections: `bench-client` asks the lab's bulk server for one byte per \
             connection and reads it and the close; {} connections from {} threads for the \
             rate, {} one at a time for the latencies.",
            count(settings.connections),
            RATE_WORKERS,
            count(settings.latency_samples)
        ),
        format!(
            "Memory: VmRSS of `tollgated` right after its start and with {} connections from \
             a separate process held at once, divided by the count. All are then denied, and \
             each client must see a reset.",
            count(settings.held)
        ),
        format!(
            "Pending event: CLOCK_MONOTONIC before `connect()` in the client to the arrival of \
             the `held` event on a `watch` connection, {} connections per round, pooled.",
            settings.pending_samples
        ),
        "CPU time: utime + stime of `tollgated` from `/proc/PID/stat`, in 10 ms ticks, over \
         the bulk runs and over the connection runs, summed over the rounds."
            .to_owned(),
        "The machine is shared and its cores run the clients, the servers and the daemon \
         together, so single rounds vary: the range after each ratio shows the smallest and \
         the largest round. Compare ratios, not absolute figures, across machines."
            .to_owned(),
    ]
}
