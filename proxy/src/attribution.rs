//! Finding the process that opened a connection: the kernel's record of the flow's owner,
//! completed with the user name and, for interpreters, the script they run.

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tollgate_classifier::{Classifier, FlowLookup, Owner};
use tollgate_rules::Protocol;

use crate::{exe_hash::ExecutableHasher, protocol::ProcessInfo};

/// Finds the process that owns a flow, given the flow's addresses as the proxy received it.
pub trait OwnerLookup: Send + Sync {
    /// Returns the owner of the flow from `source` to `destination`, or `None` when it cannot
    /// be known. Implementations must never guess.
    fn lookup(
        &self,
        protocol: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Option<Arc<ProcessInfo>>;
}

/// An owner lookup that returns no process, used when kernel attribution is not available.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAttribution;

impl OwnerLookup for NoAttribution {
    fn lookup(&self, _: Protocol, _: SocketAddr, _: SocketAddr) -> Option<Arc<ProcessInfo>> {
        None
    }
}

/// Owner lookup through the BPF programs of `tollgate-classifier`.
pub struct KernelAttribution {
    classifier: Classifier,
    user_names: Mutex<HashMap<u32, Option<String>>>,
    hasher: ExecutableHasher,
    /// Recently completed records, so that a process that opens many connections costs the
    /// reads from `/proc` once per [`PROCESS_CACHE_TTL`].
    processes: Mutex<HashMap<ProcessKey, (Instant, Arc<ProcessInfo>)>>,
}

/// Identity of a kernel record: a later process with the same pid differs in its start time,
/// the same process after `execve()` in its executable, and threads in their names.
type ProcessKey = (u32, Option<Duration>, Option<PathBuf>, String);

/// How long a completed record is reused. A script, command line or parent that changes
/// within this time shows late.
const PROCESS_CACHE_TTL: Duration = Duration::from_secs(1);

/// Records kept at most; the cache is emptied when it is reached.
const PROCESS_CACHE_CAPACITY: usize = 4096;

impl KernelAttribution {
    /// Wraps a loaded and attached classifier.
    pub fn new(classifier: Classifier) -> Self {
        Self {
            classifier,
            user_names: Mutex::new(HashMap::new()),
            hasher: ExecutableHasher::new(),
            processes: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the classifier, for its counters.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Takes the classifier's fast path maps and event ring, once.
    pub fn take_fast_path(
        &mut self,
    ) -> Option<(
        tollgate_classifier::FastPath,
        tollgate_classifier::FlowEvents,
    )> {
        Some((
            self.classifier.take_fast_path()?,
            self.classifier.take_flow_events()?,
        ))
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        let mut names = self
            .user_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        names
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|user| user.name)
            })
            .clone()
    }
}

impl OwnerLookup for KernelAttribution {
    fn lookup(
        &self,
        protocol: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Option<Arc<ProcessInfo>> {
        let flow = FlowLookup {
            // The daemon's listeners live in its own network namespace, which is the calling
            // thread's.
            netns_cookie: None,
            protocol: match protocol {
                Protocol::Tcp => tollgate_classifier::flow::Protocol::Tcp,
                Protocol::Udp => tollgate_classifier::flow::Protocol::Udp,
            },
            src: source,
            dst: destination,
        };
        let owner = self.classifier.lookup(&flow)?;
        Some(self.process_info(owner))
    }
}

impl KernelAttribution {
    /// Completes the kernel's record of a process with what `/proc` and the user database
    /// tell about it.
    pub(crate) fn process_info(&self, owner: Owner) -> Arc<ProcessInfo> {
        let key = (
            owner.pid,
            owner.start_time,
            owner.exe.clone(),
            owner.comm.clone(),
        );
        let now = Instant::now();
        if let Some((read, info)) = self.cached_processes().get(&key)
            && now.duration_since(*read) < PROCESS_CACHE_TTL
        {
            return Arc::clone(info);
        }
        let info = Arc::new(self.read_process_info(owner));
        let mut cache = self.cached_processes();
        if cache.len() >= PROCESS_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, (now, Arc::clone(&info)));
        info
    }

    fn cached_processes(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ProcessKey, (Instant, Arc<ProcessInfo>)>> {
        // Every update of the cache completes or makes none, so the poison flag is ignored.
        self.processes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_process_info(&self, owner: Owner) -> ProcessInfo {
        // NOTE: the script and the parent's executable come from /proc, read now, so they are
        // missing when the process (or its parent) has already exited. A process whose pid was
        // reused is detected by its start time and yields nothing.
        let alive = is_same_process(owner.pid, owner.start_time);
        let script = match (&owner.exe, alive) {
            (Some(exe), true) if is_interpreter(exe) => script_of(owner.pid),
            _ => None,
        };
        let parent_executable = owner
            .ppid
            .filter(|_| alive)
            .and_then(|ppid| fs::read_link(format!("/proc/{ppid}/exe")).ok());
        // A running process is hashed through /proc, which reaches the file it runs even when
        // the path now names a replacement; an exited one through its path.
        let running_exe = PathBuf::from(format!("/proc/{}/exe", owner.pid));
        let sha256 = match (&owner.exe, alive) {
            (_, true) => self.hasher.digest(&running_exe).ok(),
            (Some(exe), false) => self.hasher.digest(exe).ok(),
            (None, false) => None,
        };
        let command_line = if alive {
            command_line_of(owner.pid)
        } else {
            None
        };
        ProcessInfo {
            pid: owner.pid,
            uid: owner.uid,
            comm: owner.comm,
            executable: owner.exe,
            gid: owner.gid,
            user: self.user_name(owner.uid),
            ppid: owner.ppid,
            parent_executable,
            script,
            cgroup_id: owner.cgroup_id,
            sha256,
            command_line,
            start_time: owner.start_time.and_then(clock_ticks),
        }
    }
}

/// Converts a time since boot to clock ticks, the unit of `/proc/PID/stat`.
fn clock_ticks(since_boot: Duration) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let ticks = since_boot.as_nanos() * u128::from(ticks_per_second) / 1_000_000_000;
    u64::try_from(ticks).ok()
}

/// Returns whether `pid` still runs the process that started at `start_time` (time since boot).
fn is_same_process(pid: u32, start_time: Option<Duration>) -> bool {
    let Some(start_time) = start_time else {
        return false;
    };
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Field 22 counts clock ticks; the command name (field 2) may contain spaces, so count
    // from the closing parenthesis.
    let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return false;
    };
    let Some(ticks) = after_name
        .split_whitespace()
        .nth(19)
        .and_then(|field| field.parse::<u64>().ok())
    else {
        return false;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let Ok(ticks_per_second) = u64::try_from(ticks_per_second) else {
        return false;
    };
    if ticks_per_second == 0 {
        return false;
    }
    let tick = Duration::from_secs(1) / ticks_per_second as u32;
    let recorded = start_time.as_nanos() / tick.as_nanos();
    u128::from(ticks).abs_diff(recorded) <= 1
}

/// Interpreters whose first non-option argument is the program that really runs.
const INTERPRETERS: [&str; 12] = [
    "python", "perl", "ruby", "node", "nodejs", "php", "sh", "bash", "dash", "zsh", "lua", "java",
];

/// Returns whether `exe` is an interpreter such as `/usr/bin/python3.11`.
pub fn is_interpreter(exe: &Path) -> bool {
    let Some(name) = exe.file_name().and_then(|name| name.to_str()) else {
        return false;
    };
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-');
    INTERPRETERS.contains(&base)
}

fn command_line_of(pid: u32) -> Option<String> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let arguments: Vec<String> = cmdline
        .split(|byte| *byte == 0)
        .filter(|argument| !argument.is_empty())
        .map(|argument| String::from_utf8_lossy(argument).into_owned())
        .collect();
    (!arguments.is_empty()).then(|| arguments.join(" "))
}

fn script_of(pid: u32) -> Option<PathBuf> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let arguments: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
    let script = script_argument(&arguments)?;
    if script.is_absolute() {
        return Some(script);
    }
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    Some(cwd.join(script))
}

/// Picks the script from an interpreter's arguments: the first argument after the interpreter
/// that is not an option. Code given inline (`-c`, `-e`) or a module (`-m`) names no file.
pub fn script_argument(arguments: &[&[u8]]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;

    for argument in arguments.iter().skip(1) {
        match *argument {
            b"" => return None,
            b"-c" | b"-e" | b"-m" | b"-E" => return None,
            _ if argument.starts_with(b"-") => continue,
            _ => return Some(PathBuf::from(std::ffi::OsStr::from_bytes(argument))),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreters_are_recognised() {
        for path in [
            "/usr/bin/python3",
            "/usr/bin/python3.11",
            "/bin/bash",
            "/usr/bin/perl",
        ] {
            assert!(is_interpreter(Path::new(path)), "{path}");
        }
        for path in ["/usr/bin/curl", "/usr/bin/pythonista", "/opt/shell"] {
            assert!(!is_interpreter(Path::new(path)), "{path}");
        }
    }

    #[test]
    fn script_is_first_non_option() {
        let arguments: [&[u8]; 4] = [b"python3", b"-u", b"/opt/app/sync.py", b"--verbose"];
        assert_eq!(
            script_argument(&arguments),
            Some(PathBuf::from("/opt/app/sync.py"))
        );
    }

    #[test]
    fn inline_code_has_no_script() {
        let arguments: [&[u8]; 3] = [b"python3", b"-c", b"print(1)"];
        assert_eq!(script_argument(&arguments), None);
        let arguments: [&[u8]; 3] = [b"python3", b"-m", b"http.server"];
        assert_eq!(script_argument(&arguments), None);
    }

    #[test]
    fn own_process_is_same_process() {
        assert!(!is_same_process(std::process::id(), None));
    }
}
