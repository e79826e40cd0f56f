//! Text for numbers, users and processes as the windows show them.

use std::fs;

use tollgate_proxy::protocol::{NameSource, ProcessInfo};

/// Label of connections whose process is unknown.
pub const UNKNOWN_PROCESS: &str = "unknown process";

/// Returns a byte count with a binary unit, such as `1.5 KiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Returns how a host name was learned, as a prompt shows it, or `None` when no name is known.
pub fn name_source(source: NameSource) -> Option<&'static str> {
    match source {
        NameSource::Dns => Some("this program's DNS lookup"),
        NameSource::DnsMachine => Some("another program's DNS lookup"),
        NameSource::Tls => Some("the TLS server name"),
        NameSource::Http => Some("the HTTP Host header"),
        NameSource::None => None,
    }
}

/// Returns the name of user `uid` from `/etc/passwd`, or `uid N` when it has none.
pub fn user(uid: u32) -> String {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    user_in(&passwd, uid).unwrap_or_else(|| format!("uid {uid}"))
}

fn user_in(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let line_uid: u32 = fields.nth(1)?.parse().ok()?;
        (line_uid == uid).then(|| name.to_owned())
    })
}

/// Returns a process as one line: executable (or command), pid and user.
pub fn process(process: Option<&ProcessInfo>) -> String {
    let Some(process) = process else {
        return UNKNOWN_PROCESS.to_owned();
    };
    let program = match &process.executable {
        Some(path) => path.display().to_string(),
        None => process.comm.clone(),
    };
    format!(
        "{program} (pid {}, user {})",
        process.pid,
        user(process.uid)
    )
}

/// Returns a countdown such as `1 min 5 s` for a number of milliseconds, rounded up.
pub fn countdown(remaining_ms: u64) -> String {
    let secs = remaining_ms.div_ceil(1000);
    match (secs / 60, secs % 60) {
        (0, secs) => format!("{secs} s"),
        (minutes, 0) => format!("{minutes} min"),
        (minutes, secs) => format!("{minutes} min {secs} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn user_names_come_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(user_in(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_in(passwd, 5), None);
    }

    #[test]
    fn countdown_rounds_up() {
        assert_eq!(countdown(41_200), "42 s");
        assert_eq!(countdown(60_000), "1 min");
        assert_eq!(countdown(65_000), "1 min 5 s");
    }
}
