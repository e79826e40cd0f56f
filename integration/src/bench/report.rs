//! The table of benchmark results, printed and kept in `BENCHMARKS.md` between two marker
//! lines, so a new run replaces the previous results and leaves the rest of the page alone.

use std::{fmt::Write as _, fs, io, path::Path, time::SystemTime};

use crate::bench::procfs::Machine;

/// Line before the results in `BENCHMARKS.md`.
pub const BEGIN_MARKER: &str = "<!-- tollgate-bench: begin results -->";
/// Line after the results in `BENCHMARKS.md`.
pub const END_MARKER: &str = "<!-- tollgate-bench: end results -->";

/// The results of one run of the benchmark command.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The machine it ran on.
    pub machine: Machine,
    /// The command line, as typed.
    pub command: String,
    /// When the run ended.
    pub finished: SystemTime,
    /// Rounds per figure; each round measures Tollgate off and on.
    pub rounds: usize,
    /// One row per figure.
    pub rows: Vec<Row>,
    /// Remarks printed below the table.
    pub notes: Vec<String>,
}

/// One figure of the table, already formatted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Name of the measured quantity, with its unit.
    pub figure: String,
    /// Median without Tollgate, or empty for figures of the daemon alone.
    pub off: String,
    /// Median with Tollgate.
    pub on: String,
    /// On against off, or empty for figures of the daemon alone.
    pub ratio: String,
    /// The goal, or empty.
    pub goal: String,
    /// Whether the goal was met, and by how much it was missed.
    pub verdict: String,
}

impl Report {
    /// Renders the results as Markdown: the run's facts, the table and the notes.
    pub fn to_markdown(&self) -> String {
        let mut text = String::new();
        let machine = &self.machine;
        // Writing to a String cannot fail.
        let _ = writeln!(text, "Run of {}.\n", utc_timestamp(self.finished));

        let _ = writeln!(text, "- command: `{}`", self.command);
        let _ = writeln!(
            text,
            "- machine: {} CPUs ({}), Linux {}",
            machine.cpus, machine.cpu_model, machine.kernel
        );
        let _ = writeln!(
            text,
            "- {} rounds, Tollgate off and on interleaved; figures are medians over the rounds\n",
            self.rounds
        );

        text.push_str("| figure | off | on | on / off (range) | goal | result |\n");
        text.push_str("| --- | ---: | ---: | ---: | --- | --- |\n");
        for row in &self.rows {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} |",
                row.figure, row.off, row.on, row.ratio, row.goal, row.verdict
            );
        }

        if !self.notes.is_empty() {
            text.push('\n');
            for note in &self.notes {
                let _ = writeln!(text, "- {note}");
            }
        }
        text
    }
}

/// Replaces the results in the file at `path` with `results`: the lines between
/// [`BEGIN_MARKER`] and [`END_MARKER`]. Appends the markers and the results when the file has
/// none, and creates the file when it does not exist.
pub fn write_results(path: &Path, results: &str) -> io::Result<()> {
    let page = match fs::read_to_string(path) {
        Ok(page) => page,
        Err(err) if err.kind() == io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
        Err(err) => return Err(err),
    };
    fs::write(path, replace_results(&page, results))
}

/// Returns `page` with the text between the markers replaced by `results`.
fn replace_results(page: &str, results: &str) -> String {
    let section = format!("{BEGIN_MARKER}\n{}\n{END_MARKER}", results.trim_end());
    let begin = page.find(BEGIN_MARKER);
    let end = page.find(END_MARKER);
    match (begin, end) {
        (Some(begin), Some(end)) if begin < end => format!(
            "{}{section}{}",
            &page[..begin],
            &page[end + END_MARKER.len()..]
        ),
        _ => format!("{}\n\n{section}\n", page.trim_end()),
    }
}

/// Formats `value` with `decimals` decimals, and groups the digits of a whole number in
/// thousands with commas, as in 26,757.
pub fn format_number(value: f64, decimals: usize) -> String {
    if decimals > 0 || !value.is_finite() || value.abs() >= 1e15 {
        return format!("{value:.decimals$}");
    }
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if rounded < 0 {
        grouped.insert(0, '-');
    }
    grouped
}

/// Formats a time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_timestamp(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let days = (seconds / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let minutes_of_day = seconds % 86_400 / 60;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minutes_of_day / 60,
        minutes_of_day % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date, with Howard Hinnant's
/// `civil_from_days` algorithm (public domain, "chrono-Compatible Low-Level Date Algorithms").
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamp_of_epoch() {
        assert_eq!(
            utc_timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01 00:00 UTC"
        );
    }

    #[test]
    fn timestamp_of_leap_day() {
        // 2024-02-29 13:45:10 UTC.
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_214_310);

        assert_eq!(utc_timestamp(time), "2024-02-29 13:45 UTC");
    }

    #[test]
    fn timestamp_at_end_of_year() {
        // 2026-12-31 23:59:59 UTC.
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_599);

        assert_eq!(utc_timestamp(time), "2026-12-31 23:59 UTC");
    }

    #[test]
    fn whole_numbers_are_grouped() {
        assert_eq!(format_number(26_757.4, 0), "26,757");
        assert_eq!(format_number(999.0, 0), "999");
        assert_eq!(format_number(1_000.0, 0), "1,000");
        assert_eq!(format_number(-3_716.0, 0), "-3,716");
        assert_eq!(format_number(0.0, 0), "0");
    }

    #[test]
    fn decimals_are_not_grouped() {
        assert_eq!(format_number(1234.567, 2), "1234.57");
    }

    #[test]
    fn results_between_markers_are_replaced() {
        let page = format!("# B\n\nintro\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\n\nafter\n");

        let updated = replace_results(&page, "new\n");

        assert_eq!(
            updated,
            format!("# B\n\nintro\n\n{BEGIN_MARKER}\nnew\n{END_MARKER}\n\nafter\n")
        );
    }

    #[test]
    fn results_are_appended_without_markers() {
        let updated = replace_results("# B\n\nintro\n", "new");

        assert_eq!(
            updated,
            format!("# B\n\nintro\n\n{BEGIN_MARKER}\nnew\n{END_MARKER}\n")
        );
    }

    #[test]
    fn markdown_has_one_line_per_row() {
        let report = Report {
            machine: Machine {
                cpus: 2,
                cpu_model: "Example".into(),
                kernel: "6.18.0".into(),
            },
            command: "tollgate-bench".into(),
            finished: SystemTime::UNIX_EPOCH,
            rounds: 3,
            rows: vec![Row {
                figure: "rate".into(),
                off: "10".into(),
                on: "9".into(),
                ratio: "0.90".into(),
                goal: "≥ 0.9".into(),
                verdict: "met".into(),
            }],
            notes: vec!["noisy".into()],
        };

        let markdown = report.to_markdown();

        assert!(
            markdown.contains("| rate | 10 | 9 | 0.90 | ≥ 0.9 | met |\n"),
            "{markdown}"
        );
        assert!(
            markdown.contains("2 CPUs (Example), Linux 6.18.0"),
            "{markdown}"
        );
        assert!(markdown.ends_with("- noisy\n"), "{markdown}");
    }
}
