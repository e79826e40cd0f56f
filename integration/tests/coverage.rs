//! Tests for the rows of docs/coverage.md that are not covered elsewhere: kinds of outbound
//! traffic and whether the daemon intercepts them.

use std::{
    process::{Output, Stdio},
    time::Duration,
};

use tollgate_integration::{Lab, daemon::Daemon};

const WAIT: Duration = Duration::from_secs(30);

fn start() -> (Lab, Daemon) {
    let lab = Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"));
    let daemon = Daemon::start(&lab, "").unwrap_or_else(|err| panic!("{err:#}"));
    (lab, daemon)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_cli_ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// Runs a python3 client in desk while the test allows the one pending request it makes, and
/// returns the pending request and the client's output.
fn allow_python_client(lab: &Lab, daemon: &Daemon, script: &str) -> (serde_json::Value, Output) {
    let child = lab
        .desk_command("python3")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pending = daemon.wait_for_held(1, WAIT);
    let id = pending[0]["id"].to_string();
    assert_cli_ok(&daemon.run_cli(&["allow", &id]), "allow");
    (pending[0].clone(), child.wait_with_output().unwrap())
}

#[test]
fn ipv4_mapped_ipv6_is_intercepted() {
    let (lab, daemon) = start();
    let script = "import socket\n\
                  s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n\
                  s.settimeout(60)\n\
                  s.connect(('::ffff:203.0.113.10', 7))\n\
                  s.sendall(b'mapped')\n\
                  print(s.recv(100).decode())";
    let (pending, output) = allow_python_client(&lab, &daemon, script);
    // The destination is shown in its IPv4 form, so IPv4 rules apply to it.
    assert_eq!(pending["destination"], "203.0.113.10:7");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim(), "mapped");
}

#[test]
fn sendfile_sender_is_intercepted() {
    let (lab, daemon) = start();
    let payload = lab.work_dir().join("payload.bin");
    std::fs::write(&payload, vec![b'z'; 100_000]).unwrap();
    // socket.sendfile uses sendfile(2), which hands the kernel a file instead of a buffer.
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('203.0.113.20', 7), timeout=60)\n\
         with open('{}', 'rb') as f:\n\
         \x20   sent = s.sendfile(f)\n\
         s.shutdown(socket.SHUT_WR)\n\
         received = 0\n\
         while True:\n\
         \x20   chunk = s.recv(65536)\n\
         \x20   if not chunk:\n\
         \x20       break\n\
         \x20   received += len(chunk)\n\
         print(sent, received)",
        payload.display()
    );
    let (pending, output) = allow_python_client(&lab, &daemon, &script);
    assert_eq!(pending["destination"], "203.0.113.20:7");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim(), "100000 100000");
}

#[test]
fn udp_sendmsg_connected_and_not() {
    let (lab, daemon) = start();
    // sendmsg on an unconnected socket names the destination in the call.
    let unconnected = "import socket\n\
                       s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                       s.settimeout(60)\n\
                       s.sendmsg([b'via ', b'sendmsg'], [], 0, ('203.0.113.10', 7))\n\
                       print(s.recv(100).decode())";
    let (pending, output) = allow_python_client(&lab, &daemon, unconnected);
    assert_eq!(pending["protocol"], "udp");
    assert_eq!(text(&output.stdout).trim(), "via sendmsg");

    let connected = "import socket\n\
                     s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
                     s.settimeout(60)\n\
                     s.connect(('2001:db8::20', 7))\n\
                     s.sendmsg([b'connected ', b'sendmsg'])\n\
                     print(s.recv(100).decode())";
    let (pending, output) = allow_python_client(&lab, &daemon, connected);
    assert_eq!(pending["destination"], "[2001:db8::20]:7");
    assert_eq!(text(&output.stdout).trim(), "connected sendmsg");
}

#[test]
fn io_uring_sender_is_intercepted() {
    let (lab, daemon) = start();
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/programs/uring_echo.c");
    let program = lab.work_dir().join("uring_echo");
    let compiled = std::process::Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&program)
        .arg(source)
        .arg("-luring")
        .output()
        .expect("failed to run cc");
    assert!(
        compiled.status.success(),
        "compiling {source} failed (needs liburing-dev): {}",
        text(&compiled.stderr)
    );

    let child = lab
        .desk_command(&program)
        .args(["203.0.113.10", "7", "through io_uring"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pending = daemon.wait_for_held(1, WAIT);
    assert_eq!(pending[0]["destination"], "203.0.113.10:7");
    let id = pending[0]["id"].to_string();
    assert_cli_ok(&daemon.run_cli(&["allow", &id]), "allow");
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim(), "through io_uring");
}
