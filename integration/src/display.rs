//! A virtual X display (Xvfb) for tests of the desktop interface, with the xdotool and
//! ImageMagick commands that find windows, type keys and take screenshots.

use std::{
    io::{self, BufRead, BufReader},
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::process::ProcessGuard;

/// Screen size of the display: wide enough for the monitor and a prompt side by side.
const SCREEN: &str = "1600x900x24";

/// An Xvfb server on a display number it chose itself, stopped on drop.
#[derive(Debug)]
pub struct VirtualDisplay {
    display: String,
    _server: ProcessGuard,
}

/// Errors starting the display or running the X tools.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// Xvfb could not be started.
    #[error("failed to start Xvfb")]
    Start(#[source] io::Error),
    /// Xvfb exited or never printed its display number.
    #[error("Xvfb did not report a display number")]
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

    /// Starts Xvfb on a free display. Xvfb picks the number and writes it to a pipe
    /// (`-displayfd`), so parallel tests never race for one.
    pub fn start() -> Result<Self, DisplayError> {
        let (reader, writer) =
            nix::unistd::pipe().map_err(|err| DisplayError::Start(err.into()))?;
        let mut command = Command::new("Xvfb");
        command
            .args(["-screen", "0", SCREEN, "-nolisten", "tcp", "-displayfd"])
            .arg(writer.as_raw_fd().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = ProcessGuard::spawn(&mut command).map_err(DisplayError::Start)?;
        // The child has its copy; closing ours lets the read below end if Xvfb exits.
        drop(writer);
        let mut line = String::new();
        BufReader::new(std::fs::File::from(reader))
            .read_line(&mut line)
            .map_err(DisplayError::Start)?;
        let number = line.trim();
        if number.is_empty() {
            return Err(DisplayError::NoDisplay);
        }
        Ok(Self {
            display: format!(":{number}"),
            _server: server,
        })
    }

    /// Returns the value for `DISPLAY`, such as `:1`.
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
