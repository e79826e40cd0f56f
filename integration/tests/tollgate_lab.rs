//! Tests of the `tollgate-lab` command in its `--command` mode, without the daemon.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tollgate_integration::INDEX_MARKER;

#[test]
fn command_runs_in_desk() {
    let output = tollgate_lab()
        .args(["--command", PRINT_NAME_AND_FETCH_PAGE])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "tollgate-lab failed: {stderr}");
    assert!(
        stdout.contains(INDEX_MARKER),
        "curl output lacks the marker: {stdout}"
    );
    let lab_name = stdout.lines().next().unwrap_or_default();
    assert_lab_removed(lab_name);
}

#[test]
fn command_exit_code_is_passed_on() {
    let status = tollgate_lab()
        .args(["--command", "exit 3"])
        .stdout(Stdio::null())
        .status()
        .unwrap();

    assert_eq!(status.code(), Some(3), "exit status {status}");
}

#[test]
fn sigterm_removes_the_lab() {
    let mut child = tollgate_lab()
        .args(["--command", "echo \"$TOLLGATE_LAB\"; exec sleep 60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lab_name = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut lab_name)
        .unwrap();
    let lab_name = lab_name.trim();
    assert!(
        Path::new("/run/netns")
            .join(format!("{lab_name}-desk"))
            .exists(),
        "desk of lab {lab_name:?} does not exist while the command runs"
    );

    // The child is ours and not reaped yet, so its pid is safe to signal.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();

    assert_eq!(
        status.code(),
        Some(128 + Signal::SIGTERM as i32),
        "exit status {status}"
    );
    assert_lab_removed(lab_name);
}

fn tollgate_lab() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate-lab"));
    command.arg("--no-daemon").stdin(Stdio::null());
    command
}

fn assert_lab_removed(lab_name: &str) {
    assert!(
        lab_name.starts_with("tg-"),
        "unexpected lab name {lab_name:?}"
    );
    for role in ["desk", "net"] {
        let path = Path::new("/run/netns").join(format!("{lab_name}-{role}"));
        assert!(
            !path.exists(),
            "namespace file {} still exists",
            path.display()
        );
    }
}

/// A shell command that prints the lab name, then fetches server A's index page.
const PRINT_NAME_AND_FETCH_PAGE: &str =
    "echo \"$TOLLGATE_LAB\"; curl --silent --max-time 10 --noproxy '*' http://203.0.113.10/";
