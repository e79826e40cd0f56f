//! Telling processes apart: a pid with the start time from `/proc/PID/stat`.

use std::{fs, io};

use tollgate_rules::ProcessStart;

/// Returns the pid and start time of the running process `pid`.
///
/// Fails when no such process exists or it has exited but was not reaped yet (a zombie),
/// since a rule tied to it must end either way.
pub fn process_start(pid: u32) -> io::Result<ProcessStart> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (state, start_time) = parse_stat(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected format of /proc/{pid}/stat"),
        )
    })?;
    if matches!(state, 'Z' | 'X') {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} has exited"),
        ));
    }
    Ok(ProcessStart { pid, start_time })
}

/// Returns whether `process` still runs: a process with its pid exists and started at the
/// same time, so it is not a later process that reused the pid.
pub fn is_running(process: ProcessStart) -> bool {
    process_start(process.pid).is_ok_and(|current| current == process)
}

/// Returns the state (field 3) and start time (field 22) of a `/proc/PID/stat` line.
///
/// Field 2 is the command name in parentheses, which may itself contain spaces and
/// parentheses, so the fields after it are counted from its last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was the state, so the start time (field 22) is 18 fields further.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_reads_state_and_start_time() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    1 2 0 0 20 0 1 0 987654 1000000 100 18446744073709551615";

        assert_eq!(parse_stat(stat), Some(('S', 987_654)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_process_is_running() {
        let own = process_start(std::process::id()).unwrap();

        assert!(is_running(own));
        let reused = ProcessStart {
            start_time: own.start_time + 1,
            ..own
        };
        assert!(!is_running(reused), "another start time is another process");
    }

    #[test]
    fn exited_process_is_not_running() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let started = process_start(child.id()).unwrap();
        assert!(is_running(started));

        child.kill().unwrap();
        child.wait().unwrap();

        assert!(!is_running(started));
    }
}
