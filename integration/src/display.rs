//! A virtual X display (Xvfb) for tests of the desktop interface, with the xdotool and
//! ImageMagick commands that find windows, type keys and take screenshots.

use std::{
    io,
    path::Path,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::process::ProcessGuard;

/// First display number tried; lower numbers are left to real sessions.
const FIRST_DISPLAY: u32 = 100;

/// Display numbers [`VirtualDisplay::start`] tries before it gives up.
const MAX_ATTEMPTS: u32 = 20;

/// How long [`VirtualDisplay::start`] waits for a display to accept clients.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Screen size of the display: wide enough for the monitor and a prompt side by side.
const SCREEN: &str = "1600x900x24";

/// An Xvfb server on a free display number, stopped on drop.
#[derive(Debug)]
pub struct VirtualDisplay {
    display: String,
    server: ProcessGuard,
}

/// Errors starting the display or running the X tools.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// Xvfb could not be started.
    #[error("failed to start Xvfb")]
    Start(#[source] io::Error),
    /// No display number worked, or Xvfb did not accept clients in time.
    #[error("Xvfb did not start on any of {MAX_ATTEMPTS} display numbers")]
    NoDisplay,
    /// A tool could not be run.
    #[error("failed to run {tool} (install xdotool, x11-utils and imagemagick)")]
    Tool {
        /// The tool.
        tool: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A tool failed.
    #[error("{tool} failed: {stderr}")]
    Failed {
        /// The command line.
        tool: String,
        /// Its standard error output.
        stderr: String,
    },
}

impl VirtualDisplay {
    /// Returns whether Xvfb is installed.
    pub fn is_available() -> bool {
        Command::new("Xvfb")
            .arg("-help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Starts Xvfb on a free display.
    ///
    /// Each display number is tried once per test process, so that no test starts a server on
    /// a number whose previous server may still be shutting down. Numbers start at an offset
    /// from the pid, so test processes running side by side rarely try the same ones. A number
    /// whose lock file exists or whose server exits at once is skipped.
    pub fn start() -> Result<Self, DisplayError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = FIRST_DISPLAY + (std::process::id() % 1000) * 20;
        for _ in 0..MAX_ATTEMPTS {
            let number = base + NEXT.fetch_add(1, Ordering::Relaxed) % 20_000;
            if Path::new(&format!("/tmp/.X{number}-lock")).exists() {
                continue;
            }
            if let Some(display) = Self::start_on(number)? {
                return Ok(display);
            }
        }
        Err(DisplayError::NoDisplay)
    }

    /// Starts Xvfb on display `number` and waits until a client can connect. Returns `None`
    /// when the server exits, as it does when another server has the number.
    fn start_on(number: u32) -> Result<Option<Self>, DisplayError> {
        let mut command = Command::new("Xvfb");
        command
            .arg(format!(":{number}"))
            // Without -noreset the server resets whenever its last client disconnects, and a
            // client connecting during the reset fails to open the display.
            .args(["-screen", "0", SCREEN, "-nolisten", "tcp", "-noreset"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = ProcessGuard::spawn(&mut command).map_err(DisplayError::Start)?;
        let display = Self {
            display: format!(":{number}"),
            server,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if display.xdotool(&["getdisplaygeometry"]).is_ok() {
                return Ok(Some(display));
            }
            if display
                .server
                .try_wait()
                .map_err(DisplayError::Start)?
                .is_some()
            {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                return Err(DisplayError::NoDisplay);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Returns the value for `DISPLAY`, such as `:100`.
    pub fn name(&self) -> &str {
        &self.display
    }

    /// Returns `program` set up to run on this display.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("DISPLAY", &self.display);
        command
    }

    /// Runs `xdotool ARGS` and returns its standard output.
    pub fn xdotool(&self, args: &[&str]) -> Result<String, DisplayError> {
        self.run("xdotool", args)
    }

    /// Returns the ids of the visible windows whose title contains `name`.
    pub fn find_windows(&self, name: &str) -> Vec<String> {
        // xdotool exits with 1 when no window matches, which is no error here.
        self.xdotool(&["search", "--onlyvisible", "--name", name])
            .map(|found| found.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for a visible window whose title contains `name`, and returns
    /// its id.
    pub fn wait_for_window(&self, name: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(window) = self.find_windows(name).into_iter().next() {
                return Some(window);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Returns the value of X property `property` of `window` as `xprop` prints it.
    pub fn property(&self, window: &str, property: &str) -> Result<String, DisplayError> {
        self.run("xprop", &["-id", window, property])
    }

    /// Saves a PNG screenshot of `window`, or of the whole screen for `root`.
    pub fn screenshot(&self, window: &str, path: &Path) -> Result<(), DisplayError> {
        let path = path.to_string_lossy();
        self.run("import", &["-window", window, &path]).map(drop)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<String, DisplayError> {
        let output: Output =
            self.command(tool)
                .args(args)
                .output()
                .map_err(|source| DisplayError::Tool {
                    tool: tool.to_owned(),
                    source,
                })?;
        if !output.status.success() {
            return Err(DisplayError::Failed {
                tool: format!("{tool} {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
