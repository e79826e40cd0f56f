//! A `tollgated` running in a lab's desk namespace, with its own config, state and socket.

use std::{
    fs, io,
    path::PathBuf,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{
    binary::{BinaryNotFoundError, workspace_binary},
    cgroup::TestCgroup,
    lab::Lab,
    netns::NetNsError,
    process::ProcessGuard,
};

/// How long [`Daemon::start`] waits for the daemon to serve its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`Daemon::stop`] waits for the daemon to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// `RUST_LOG` of a daemon started with [`Daemon::start`]: one debug line per connection, which
/// the tests' failure messages show.
pub const DEBUG_LOG_FILTER: &str = "tollgate_proxy=debug,info";

/// A `tollgated` process in the desk namespace of a [`Lab`].
///
/// The config, rule database, control socket and log live in a directory of the lab's work
/// directory, so they survive [`Daemon::restart`] and vanish with the lab. The daemon attaches
/// its BPF programs to a child cgroup named after the lab; [`Daemon::desk_client`] runs
/// programs inside it. Dropping the guard stops the daemon with SIGTERM, then removes the
/// cgroup.
#[derive(Debug)]
pub struct Daemon {
    process: Option<ProcessGuard>,
    cgroup: TestCgroup,
    dir: PathBuf,
    tollgated: PathBuf,
    tollgate: PathBuf,
    log_filter: String,
}

/// Errors starting or talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A binary was not built.
    #[error(transparent)]
    Binary(#[from] BinaryNotFoundError),
    /// A file of the daemon could not be written or read.
    #[error("failed to access {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The daemon could not be started in the namespace.
    #[error("failed to start tollgated")]
    Spawn(#[from] NetNsError),
    /// The daemon exited or did not answer in time.
    #[error("tollgated did not start: {reason}\n--- daemon log ---\n{log}")]
    NotReady {
        /// What went wrong.
        reason: String,
        /// The daemon's log so far.
        log: String,
    },
    /// A signal could not be sent.
    #[error("failed to signal tollgated")]
    Signal(#[source] io::Error),
}

impl Daemon {
    /// Starts `tollgated` in the lab's desk with `extra_config` appended to a config that puts
    /// its socket and state in the lab's work directory, and waits until it answers. It logs
    /// with [`DEBUG_LOG_FILTER`].
    pub fn start(lab: &Lab, extra_config: &str) -> Result<Self, DaemonError> {
        Self::start_with_log_filter(lab, extra_config, DEBUG_LOG_FILTER)
    }

    /// Starts `tollgated` as [`Daemon::start`] does, with `log_filter` as its `RUST_LOG`, which
    /// also applies after [`Daemon::restart`]. Benchmarks pass `info`, the daemon's default,
    /// so that per-connection debug lines do not add to the cost they measure.
    pub fn start_with_log_filter(
        lab: &Lab,
        extra_config: &str,
        log_filter: &str,
    ) -> Result<Self, DaemonError> {
        let dir = lab.work_dir().join("tollgated");
        fs::create_dir_all(&dir).map_err(|source| DaemonError::File {
            path: dir.clone(),
            source,
        })?;
        let cgroup = TestCgroup::create(lab.name()).map_err(|source| DaemonError::File {
            path: PathBuf::from(lab.name()),
            source,
        })?;
        // Dotted keys keep the top level open, so `extra_config` may add top-level keys and
        // `dns.` keys. The resolver's upstream is the lab's DNS server, never the host's.
        let config = format!(
            "control_socket = \"{}\"\nstate_dir = \"{}\"\ndns.resolv_conf_path = \"{}\"\n\
             attribution.cgroup = \"{}\"\n{extra_config}\n",
            dir.join("control.sock").display(),
            dir.join("state").display(),
            lab.dns().resolv_conf_path().display(),
            cgroup.path().display(),
        );
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config).map_err(|source| DaemonError::File {
            path: config_path,
            source,
        })?;

        let mut daemon = Self {
            process: None,
            cgroup,
            dir,
            tollgated: workspace_binary("tollgated")?,
            tollgate: workspace_binary("tollgate")?,
            log_filter: log_filter.to_owned(),
        };
        daemon.spawn(lab)?;
        Ok(daemon)
    }

    /// Stops the daemon with SIGTERM if it runs, then starts it again with the same config and
    /// state.
    pub fn restart(&mut self, lab: &Lab) -> Result<(), DaemonError> {
        self.stop()?;
        self.spawn(lab)
    }

    /// Stops the daemon with SIGTERM and waits for it to exit, for up to [`STOP_TIMEOUT`]
    /// before it is killed. The daemon removes its table and routes before it exits, which can
    /// take a while on a loaded machine.
    pub fn stop(&mut self) -> Result<(), DaemonError> {
        let Some(process) = self.process.take() else {
            return Ok(());
        };
        process
            .send_signal(Signal::SIGTERM)
            .map_err(DaemonError::Signal)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if process.try_wait().map_err(DaemonError::Signal)?.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        process.stop().map_err(DaemonError::Signal)?;
        Ok(())
    }

    /// Kills the daemon with SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill(&mut self) -> Result<(), DaemonError> {
        if let Some(process) = self.process.take() {
            process
                .send_signal(Signal::SIGKILL)
                .map_err(DaemonError::Signal)?;
            process.stop().map_err(DaemonError::Signal)?;
        }
        Ok(())
    }

    /// Returns the process id of the running daemon, or `None` when it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ProcessGuard::pid)
    }

    /// Returns the path of the control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// Returns the path of the config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Returns the cgroup the daemon attributes processes in.
    pub fn cgroup(&self) -> &TestCgroup {
        &self.cgroup
    }

    /// Returns a command that runs `program` in the lab's desk inside the daemon's cgroup, so
    /// the daemon can name its process.
    pub fn desk_client(&self, lab: &Lab, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = lab.desk_command(program);
        if let Err(err) = self.cgroup.enter(&mut command) {
            panic!("failed to prepare cgroup entry: {err}");
        }
        command
    }

    /// Returns a `tollgate` command aimed at this daemon's socket.
    pub fn cli(&self) -> Command {
        let mut command = Command::new(&self.tollgate);
        command.arg("--socket").arg(self.socket_path());
        command
    }

    /// Runs `tollgate ARGS` and returns its output, whatever its exit status.
    pub fn run_cli(&self, args: &[&str]) -> Output {
        self.cli()
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("failed to run tollgate {args:?}: {err}"))
    }

    /// Returns the pending requests as `tollgate pending --json` prints them.
    pub fn pending(&self) -> Vec<serde_json::Value> {
        let output = self.run_cli(&["pending", "--json"]);
        assert!(
            output.status.success(),
            "tollgate pending failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "tollgate pending printed invalid JSON ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Waits until the pending requests hold `connections` connections in all, and returns the
    /// requests. Panics with the daemon log after `timeout`.
    pub fn wait_for_held(&self, connections: u64, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let pending = self.pending();
            let held: u64 = pending
                .iter()
                .filter_map(|request| request["connections"].as_u64())
                .sum();
            if held == connections {
                return pending;
            }
            assert!(
                Instant::now() < deadline,
                "expected {connections} held connections, found {held}: {pending:#?}\n\
                 --- daemon log ---\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Returns the daemon's log (stderr of every run so far).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("tollgated.log")).unwrap_or_default()
    }

    fn spawn(&mut self, lab: &Lab) -> Result<(), DaemonError> {
        let log_path = self.dir.join("tollgated.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| DaemonError::File {
                path: log_path.clone(),
                source,
            })?;
        let stderr = log.try_clone().map_err(|source| DaemonError::File {
            path: log_path,
            source,
        })?;
        // setns keeps this mount namespace, so the daemon sees the host's cgroup2 mount.
        let mut command = lab.desk().setns_command(&self.tollgated)?;
        command
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", &self.log_filter)
            .stdout(log)
            .stderr(stderr);
        self.process = Some(lab.desk().spawn(&mut command)?);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), DaemonError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(process) = &self.process
                && let Ok(Some(status)) = process.try_wait()
            {
                return Err(self.not_ready(format!("tollgated exited with {status}")));
            }
            let output = self.run_cli(&["status"]);
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let reason = format!(
                    "no answer within {START_TIMEOUT:?}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                return Err(self.not_ready(reason));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn not_ready(&self, reason: String) -> DaemonError {
        DaemonError::NotReady {
            reason,
            log: self.log(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("failed to stop tollgated: {err}");
        }
    }
}
