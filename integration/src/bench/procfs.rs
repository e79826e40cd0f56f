//! Readings from `/proc`: a process's resident memory and CPU time, and the machine's
//! processors and kernel.

use std::{fs, io, time::Duration};

/// Returns the resident set size of process `pid` in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no VmRSS line in /proc/{pid}/status"),
        )
    })
}

/// Returns the CPU time process `pid` has used, user plus system (`utime` and `stime`, fields
/// 14 and 15 of `/proc/PID/stat`). The kernel counts it in clock ticks, 10 ms each at the
/// usual 100 ticks per second.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected format of /proc/{pid}/stat"),
        )
    })?;
    Ok(ticks_to_duration(ticks, clock_ticks_per_second()))
}

/// The machine a benchmark ran on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Processors available to this process, as `nproc` counts them.
    pub cpus: usize,
    /// `model name` of the first processor in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Kernel release, as `uname -r` prints it.
    pub kernel: String,
}

impl Machine {
    /// Describes the machine this process runs on. Facts that cannot be read show as
    /// "unknown".
    pub fn current() -> Self {
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|cpuinfo| parse_cpu_model(&cpuinfo))
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = nix::sys::utsname::uname()
            .map(|uname| uname.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self {
            cpus,
            cpu_model,
            kernel,
        }
    }
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let kibibytes: u64 = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(kibibytes * 1024)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses, so count the fields from
    // the last closing parenthesis: field 3 comes first there.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Linux has always reported 100; a failure (-1) falls back to it.
    u64::try_from(ticks)
        .ok()
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\ttollgated\nVmPeak:\t  99 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";

        assert_eq!(parse_vm_rss(status), Some(12_345 * 1024));
    }

    #[test]
    fn cpu_ticks_skip_name_with_spaces() {
        let stat = "42 (tollgated (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";

        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn own_process_has_memory_and_cpu_time() {
        let pid = std::process::id();

        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_time(pid).is_ok());
    }

    #[test]
    fn ticks_become_durations() {
        assert_eq!(ticks_to_duration(325, 100), Duration::from_millis(3250));
    }

    #[test]
    fn cpu_model_is_first_model_name() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n\nmodel name\t: Other\n";

        assert_eq!(
            parse_cpu_model(cpuinfo).as_deref(),
            Some("Example CPU @ 2.0GHz")
        );
    }
}
