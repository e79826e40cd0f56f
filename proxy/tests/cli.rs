//! Tests of the `tollgate` and `tollgated` binaries that need no daemon and no privileges.
//!
//! The end-to-end tests with a running daemon are in the `integration` crate; cargo builds these
//! binaries for them because this file exists.

use std::process::Command;

fn tollgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_SOCKET")
        .output()
        .expect("failed to run tollgate")
}

#[test]
fn missing_daemon_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let output = tollgate(&["--socket", socket.to_str().unwrap(), "status"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tollgated is not running"), "{stderr}");
    assert!(stderr.contains(socket.to_str().unwrap()), "{stderr}");
}

#[test]
fn stale_socket_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let output = tollgate(&["--socket", socket.to_str().unwrap(), "pending"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused the connection"), "{stderr}");
}

#[test]
fn conflicting_lifetimes_are_rejected() {
    let output = tollgate(&["allow", "1", "--once", "--forever"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn daemon_rejects_missing_config() {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgated"))
        .args(["--config", "/nonexistent/tollgate.toml"])
        .output()
        .expect("failed to run tollgated");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("failed to read config file /nonexistent/tollgate.toml"),
        "{stderr}"
    );
}

#[test]
fn enforce_without_policy_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tollgated"))
        .args(["--config", config.to_str().unwrap(), "--enforce"])
        .output()
        .expect("failed to run tollgated");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("enforce mode needs a policy file"),
        "{stderr}"
    );
}

#[test]
fn report_of_missing_log_fails() {
    let output = tollgate(&["report", "--audit-log", "/nonexistent/flows.jsonl"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("failed to read flow log /nonexistent/flows.jsonl"),
        "{stderr}"
    );
}

#[test]
fn report_rejects_invalid_policy() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("flows.jsonl");
    std::fs::write(&log, "").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[allow]]\nports = [0]\n").unwrap();
    let output = tollgate(&[
        "report",
        "--audit-log",
        log.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("allow entry #1"), "{stderr}");
}
