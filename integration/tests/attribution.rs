//! End-to-end tests of process attribution: the daemon names the program behind each held
//! connection from its BPF programs, also after the program has exited.

use std::{
    fs,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use tollgate_integration::{INDEX_MARKER, Lab, daemon::Daemon};

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

fn real_path(program: &str) -> String {
    // python3 may be a wrapper script (pyenv) that runs the real interpreter, so ask it.
    let script = match program {
        "python3" => "python3 -c 'import os, sys; print(os.path.realpath(sys.executable))'".into(),
        _ => format!("readlink -f \"$(command -v {program})\""),
    };
    let output = Command::new("sh").args(["-c", &script]).output().unwrap();
    text(&output.stdout).trim().to_owned()
}

/// Waits for one held connection, returns its process record, and denies it.
fn held_process(daemon: &Daemon) -> serde_json::Value {
    let pending = daemon.wait_for_held(1, WAIT);
    let process = pending[0]["process"].clone();
    let id = pending[0]["id"].to_string();
    assert_cli_ok(&daemon.run_cli(&["deny", &id]), "deny");
    process
}

#[test]
fn curl_is_named_with_pid_and_user() {
    let (lab, daemon) = start();
    let mut curl = daemon
        .desk_client(&lab, "curl")
        .args(["-sS", "--max-time", "60", "http://203.0.113.10/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = curl.id();

    let process = held_process(&daemon);
    assert_eq!(process["executable"], real_path("curl"), "{process:#}");
    assert_eq!(process["pid"].as_u64(), Some(u64::from(pid)), "{process:#}");
    assert_eq!(process["uid"], 0);
    assert_eq!(process["user"], "root");
    assert_eq!(process["comm"], "curl");
    assert!(process["ppid"].as_u64().is_some(), "{process:#}");
    curl.wait().unwrap();

    let table = daemon.run_cli(&["pending"]);
    assert!(
        text(&table.stdout).contains("no pending"),
        "{}",
        text(&table.stdout)
    );
}

#[test]
fn python_script_is_named_by_path() {
    let (lab, daemon) = start();
    let script = lab.work_dir().join("fetch.py");
    fs::write(
        &script,
        "import socket, threading\n\
         def fetch():\n\
         \x20   s = socket.create_connection(('203.0.113.10', 80), timeout=60)\n\
         \x20   s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n\
         \x20   s.recv(100)\n\
         worker = threading.Thread(target=fetch)\n\
         worker.start()\n\
         worker.join()\n",
    )
    .unwrap();
    let mut python = daemon
        .desk_client(&lab, "python3")
        .arg(&script)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = python.id();

    let process = held_process(&daemon);
    // The connection came from a worker thread, but the process is the whole program.
    assert_eq!(process["pid"].as_u64(), Some(u64::from(pid)), "{process:#}");
    assert_eq!(process["executable"], real_path("python3"), "{process:#}");
    assert_eq!(process["script"], script.to_str().unwrap(), "{process:#}");
    python.wait().unwrap();
}

#[test]
fn exec_into_curl_is_named_curl() {
    let (lab, daemon) = start();
    let mut shell = daemon
        .desk_client(&lab, "sh")
        .args(["-c", "exec curl -sS --max-time 60 http://203.0.113.10/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = held_process(&daemon);
    assert_eq!(process["executable"], real_path("curl"), "{process:#}");
    assert_eq!(process["pid"].as_u64(), Some(u64::from(shell.id())));
    shell.wait().unwrap();
}

#[test]
fn exited_process_is_still_named() {
    let (lab, daemon) = start();
    // The client sends one datagram and exits before the daemon is asked anything.
    let status = daemon
        .desk_client(&lab, "python3")
        .args([
            "-c",
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\
             .sendto(b'x', ('203.0.113.10', 7))",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let process = held_process(&daemon);
    assert_eq!(process["executable"], real_path("python3"), "{process:#}");
    assert_eq!(process["comm"], "python3");
}

#[test]
fn forever_rule_names_the_executable() {
    let (lab, daemon) = start();
    let curl = |client: &mut Command| {
        client
            .args(["-sS", "--max-time", "60", "http://203.0.113.10/"])
            .output()
            .unwrap()
    };
    let child = daemon
        .desk_client(&lab, "curl")
        .args(["-sS", "--max-time", "60", "http://203.0.113.10/"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pending = daemon.wait_for_held(1, WAIT);
    let id = pending[0]["id"].to_string();
    let decided = daemon.run_cli(&["allow", &id, "--forever"]);
    assert_cli_ok(&decided, "allow");
    assert!(
        text(&decided.stdout).contains(&real_path("curl")),
        "{}",
        text(&decided.stdout)
    );
    assert!(text(&child.wait_with_output().unwrap().stdout).contains(INDEX_MARKER));

    // The same program passes at once; another program to the same place is held.
    let again = curl(&mut daemon.desk_client(&lab, "curl"));
    assert!(
        text(&again.stdout).contains(INDEX_MARKER),
        "{}",
        text(&again.stderr)
    );
    let mut python = daemon
        .desk_client(&lab, "python3")
        .args([
            "-c",
            "import socket; socket.create_connection(('203.0.113.10', 80), timeout=60).recv(1)",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = held_process(&daemon);
    assert_eq!(process["executable"], real_path("python3"));
    python.wait().unwrap();
}

/// Returns the names of the programs attached to `cgroup`, sorted, as bpftool lists them.
fn attached_programs(cgroup: &Path) -> Vec<String> {
    let output = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("failed to run bpftool");
    assert!(output.status.success(), "bpftool: {}", text(&output.stderr));
    // Lines are "ID ATTACH_TYPE FLAGS NAME" after a header line.
    let mut names: Vec<String> = text(&output.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().last().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[test]
fn restart_attaches_without_duplicates() {
    let (lab, mut daemon) = start();
    let expected = [
        "connect4",
        "connect6",
        "egress",
        "ingress",
        "sendmsg4",
        "sendmsg6",
        "sock_ops",
        "sock_release",
    ];
    assert_eq!(attached_programs(daemon.cgroup().path()), expected);

    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(attached_programs(daemon.cgroup().path()), expected);

    // After a crash the kernel releases the links with the process, so nothing doubles.
    daemon.kill().unwrap();
    assert!(attached_programs(daemon.cgroup().path()).is_empty());
    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(attached_programs(daemon.cgroup().path()), expected);

    daemon.stop().unwrap();
    assert!(attached_programs(daemon.cgroup().path()).is_empty());
}
