//! A guard for a child process that the lab started, stopped by pid when dropped.

use std::{
    io,
    process::{Child, Command, ExitStatus},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

/// A child shared between its [`ProcessGuard`] and the [`NetNs`](crate::NetNs) it runs in, so
/// that whichever drops first stops it.
pub(crate) type SharedChild = Arc<Mutex<Child>>;

/// A child process started with [`NetNs::spawn`](crate::NetNs::spawn) or
/// [`ProcessGuard::spawn`].
///
/// Dropping the guard stops the process as [`ProcessGuard::stop`] does. Only the guard and its
/// namespace reap the child, so its pid cannot be reused by another process while the guard
/// can still signal it.
#[derive(Debug)]
pub struct ProcessGuard {
    label: String,
    pid: u32,
    child: SharedChild,
}

impl ProcessGuard {
    pub(crate) fn new(label: String, child: SharedChild) -> Self {
        let pid = lock(&child).id();
        Self { label, pid, child }
    }

    /// Starts `command` in the caller's namespaces and guards it.
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        let label = format!("{command:?}");
        let child = command.spawn()?;
        Ok(Self::new(label, Arc::new(Mutex::new(child))))
    }

    /// Returns the process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Returns the command line the process was started with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Returns the exit status if the process has exited, without blocking.
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        lock(&self.child).try_wait()
    }

    /// Sends `signal` to the process unless it has exited already.
    ///
    /// Returns `false` if the process had exited and no signal was sent.
    pub fn send_signal(&self, signal: Signal) -> io::Result<bool> {
        let mut child = lock(&self.child);
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        nix::sys::signal::kill(pid_of(&child), signal)?;
        Ok(true)
    }

    /// Stops the process and returns its exit status.
    ///
    /// Sends SIGTERM, waits up to 2 seconds, then sends SIGKILL. Returns the status at once if
    /// the process has exited already.
    pub fn stop(&self) -> io::Result<ExitStatus> {
        stop_child(&mut lock(&self.child))
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("failed to stop `{}` (pid {}): {err}", self.label, self.pid);
        }
    }
}

/// Stops `child` with SIGTERM, then SIGKILL after [`STOP_GRACE`], and reaps it.
pub(crate) fn stop_child(child: &mut Child) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }

    // The child is not reaped yet, so its pid still names it.
    nix::sys::signal::kill(pid_of(child), Signal::SIGTERM)?;
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(POLL_INTERVAL);
    }

    child.kill()?;
    child.wait()
}

fn pid_of(child: &Child) -> Pid {
    // Linux pids are at most 2^22, so they always fit in an i32.
    Pid::from_raw(child.id() as i32)
}

/// Locks `child`, also after a thread panicked while holding the lock, because the `Child`
/// stays usable.
fn lock(child: &SharedChild) -> MutexGuard<'_, Child> {
    child.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long [`stop_child`] waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

const POLL_INTERVAL: Duration = Duration::from_millis(10);
