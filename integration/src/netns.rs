//! A named network namespace that is deleted on drop, and ways to run code inside it.

use std::{
    collections::hash_map::RandomState,
    ffi::OsStr,
    fs::File,
    hash::BuildHasher,
    io,
    os::unix::process::CommandExt,
    panic,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use nix::sched::{CloneFlags, setns};

use crate::process::{ProcessGuard, SharedChild};

/// A network namespace created with `ip netns add`, with `lo` up.
///
/// Dropping it stops the processes started with [`NetNs::spawn`] (SIGTERM, then SIGKILL after a
/// grace period) and then runs `ip netns del`. Drop also runs during a panic. Drop cannot
/// report errors, so it prints them to stderr. A process that this type did not start but
/// that still runs inside (for example a background job of a shell) keeps the kernel namespace
/// alive after the name is deleted, and drop prints its pid.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// The open `/run/netns/NAME` file, used to enter the namespace with setns(2).
    ns_file: File,
    children: Mutex<Vec<SharedChild>>,
}

impl NetNs {
    /// Creates a namespace named `tg-TAG-LABEL`, where TAG is a random tag unique to this call.
    pub fn new(label: &str) -> Result<Self, NetNsError> {
        Self::create(&format!("tg-{}-{label}", unique_tag()))
    }

    /// Creates a namespace with exactly this name and brings its `lo` up.
    ///
    /// Fails if a namespace with this name exists already, so it never adopts (and later
    /// deletes) a namespace that someone else made.
    pub fn create(name: &str) -> Result<Self, NetNsError> {
        run_checked(Command::new("ip").args(["netns", "add", name]))?;

        let path = Path::new(NETNS_DIR).join(name);
        let ns_file = match File::open(&path) {
            Ok(file) => file,
            Err(source) => {
                // The namespace exists now, so delete it before reporting the error.
                delete_namespace(name);
                return Err(NetNsError::Open { path, source });
            }
        };
        let netns = Self {
            name: name.to_owned(),
            ns_file,
            children: Mutex::new(Vec::new()),
        };

        netns.ip(["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Returns the namespace name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the path of the namespace file under `/run/netns`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Returns a command that runs `program` inside the namespace through
    /// `ip netns exec NAME program`.
    ///
    /// `ip netns exec` replaces itself with `program`, so the child's pid is the program's pid.
    /// It also runs the program in a new mount namespace with a fresh `/sys`, in which
    /// `/sys/fs/cgroup` is empty. Use [`NetNs::setns_command`] for programs that need cgroups.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec"]).arg(&self.name).arg(program);
        command
    }

    /// Returns a command that runs `program` inside the namespace by calling setns(2) between
    /// fork and exec.
    ///
    /// Unlike [`NetNs::command`] it keeps the caller's mount namespace, so `/sys/fs/cgroup`
    /// stays visible, which the daemon needs to attach its programs to a cgroup.
    pub fn setns_command(&self, program: impl AsRef<OsStr>) -> Result<Command, NetNsError> {
        // The command owns its own descriptor, so it stays valid even if the command outlives
        // `self`. It is close-on-exec, so the program does not inherit it.
        let ns_file = self
            .ns_file
            .try_clone()
            .map_err(|source| NetNsError::Open {
                path: self.path(),
                source,
            })?;

        let mut command = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
        // which is async-signal-safe, on a descriptor that the closure owns.
        unsafe {
            command.pre_exec(move || {
                setns(&ns_file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
        Ok(command)
    }

    /// Runs `ip -n NAME ARGS` and returns its stdout.
    pub fn ip<I, S>(&self, args: I) -> Result<String, NetNsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new("ip");
        command.arg("-n").arg(&self.name).args(args);
        run_checked(&mut command)
    }

    /// Spawns `command` and tracks the child, so that dropping the namespace stops it.
    ///
    /// `command` should come from [`NetNs::command`] or [`NetNs::setns_command`]. The returned
    /// guard also stops the child when it is dropped.
    pub fn spawn(&self, command: &mut Command) -> Result<ProcessGuard, NetNsError> {
        let label = describe(command);
        let child = command.spawn().map_err(|source| NetNsError::Spawn {
            command: label.clone(),
            source,
        })?;

        let shared = Arc::new(Mutex::new(child));
        let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        // A child whose guard is gone has been stopped by that guard already.
        children.retain(|child| Arc::strong_count(child) > 1);
        children.push(Arc::clone(&shared));
        Ok(ProcessGuard::new(label, shared))
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    ///
    /// Sockets that `f` creates belong to this namespace for their whole life, even when they
    /// are used later from another thread. Threads that `f` spawns (a tokio runtime's workers,
    /// for example) start in this namespace too. A panic in `f` resumes in the caller.
    pub fn run<F, T>(&self, f: F) -> Result<T, NetNsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name(format!("netns {}", self.name))
                .spawn_scoped(scope, || {
                    setns(&self.ns_file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetNsError::Enter {
                            name: self.name.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .map_err(|source| NetNsError::Thread {
                    name: self.name.clone(),
                    source,
                })?;

            handle
                .join()
                .unwrap_or_else(|payload| panic::resume_unwind(payload))
        })
    }

    /// Lists the pids of all processes inside the namespace, as `ip netns pids` finds them.
    pub fn pids(&self) -> Result<Vec<u32>, NetNsError> {
        let output = run_checked(Command::new("ip").args(["netns", "pids", &self.name]))?;
        Ok(output
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let children = self
            .children
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for child in children.drain(..) {
            let mut child = child.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(err) = crate::process::stop_child(&mut child) {
                eprintln!(
                    "failed to stop process {} in network namespace {}: {err}",
                    child.id(),
                    self.name
                );
            }
        }

        match self.pids() {
            Ok(pids) if !pids.is_empty() => eprintln!(
                "processes {pids:?} still run in network namespace {}, which stays alive \
                 until they exit",
                self.name
            ),
            Ok(_) => {}
            Err(err) => eprintln!("failed to list processes in {}: {err}", self.name),
        }

        delete_namespace(&self.name);
    }
}

/// An error from creating, entering or configuring a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// A command could not be started.
    #[error("failed to start `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A command ran but exited with a failure status.
    #[error("`{command}` failed with {status}: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// The exit status.
        status: ExitStatus,
        /// The command's stderr, trimmed.
        stderr: String,
    },

    /// The namespace file under `/run/netns` could not be opened or duplicated.
    #[error("failed to open network namespace file {path}")]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// setns(2) into the namespace failed.
    #[error("failed to enter network namespace {name}")]
    Enter {
        /// The namespace name.
        name: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },

    /// The thread that enters the namespace could not be started.
    #[error("failed to start a thread for network namespace {name}")]
    Thread {
        /// The namespace name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Returns a random tag of 6 hex digits for namespace names.
///
/// The tag mixes an in-process counter into a hash keyed by std's per-process random keys, so
/// two calls in one process and calls in concurrent processes get different tags with high
/// probability. [`NetNs::create`] still rejects a name that exists already.
pub(crate) fn unique_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hash = RandomState::new().hash_one((std::process::id(), count));
    format!("{:06x}", hash & 0xff_ffff)
}

/// Runs `command` with stdin closed and returns its stdout, or an error with its stderr.
pub(crate) fn run_checked(command: &mut Command) -> Result<String, NetNsError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetNsError::Spawn {
            command: describe(command),
            source,
        })?;

    if !output.status.success() {
        return Err(NetNsError::Command {
            command: describe(command),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Formats a command line for messages, for example `ip -n tg-1a2b3c-desk link set lo up`.
pub(crate) fn describe(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `ip netns del NAME` and prints a failure to stderr, because callers are drop paths.
fn delete_namespace(name: &str) {
    if let Err(err) = run_checked(Command::new("ip").args(["netns", "del", name])) {
        eprintln!("failed to delete network namespace {name}: {err}");
    }
}

/// The directory in which `ip netns add` creates the namespace files.
const NETNS_DIR: &str = "/run/netns";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_tags_differ() {
        let first = unique_tag();
        let second = unique_tag();

        assert_eq!(first.len(), 6, "tag {first:?} is not 6 hex digits");
        assert_ne!(first, second, "two calls returned the same tag");
    }

    #[test]
    fn describe_joins_arguments() {
        let mut command = Command::new("ip");
        command.args(["-n", "tg-x", "link"]);

        assert_eq!(describe(&command), "ip -n tg-x link");
    }
}
