//! Socket records are deleted when sockets close, and dropping the classifier detaches every
//! program from the cgroup.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use support::{
    Fixture, TCP_CLIENT, TcpServer, TestCgroup, UDP_CLIENT, UdpServer, error_chain, exchange,
    python_path_cached,
};
use tollgate_classifier::Classifier;

/// Python client that connects, reports readiness on stdout and waits for stdin to close.
const HOLDING_CLIENT: &str = "
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2]))):
    print('connected', flush=True)
    sys.stdin.read()
";

/// Programs the classifier attaches: four socket address hooks, sock_ops, egress, ingress and
/// sock_release.
const ATTACHED_PROGRAM_COUNT: usize = 8;

#[test]
fn socket_record_lives_while_socket_open() {
    let fixture = Fixture::new();
    let server = TcpServer::bind(&fixture.netns, "127.0.0.1:0");
    let mut command = fixture.python_client(HOLDING_CLIENT, server.address(), &[]);
    command.stdin(Stdio::piped()).stdout(Stdio::piped());

    let mut child = command.spawn().expect("failed to spawn client");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("client wrote nothing");
    assert_eq!(line.trim(), "connected");
    let open_count = fixture.classifier.tracked_socket_count();

    drop(child.stdin.take());
    let status = child.wait().expect("failed to wait for client");

    assert!(status.success(), "client failed: {status}");
    assert_eq!(open_count, 1, "one connected socket should have a record");
    assert_eq!(wait_for_tracked_sockets(&fixture, 0), 0);
}

#[test]
fn socket_records_removed_after_clients_exit() {
    let fixture = Fixture::new();
    let tcp = TcpServer::bind(&fixture.netns, "127.0.0.1:0");
    let udp = UdpServer::bind(&fixture.netns, "[::1]:0");

    exchange(
        20,
        4,
        |_| fixture.python_client(TCP_CLIENT, tcp.address(), &[]),
        |n| tcp.receive(n),
    );
    exchange(
        20,
        4,
        |_| fixture.python_client(UDP_CLIENT, udp.address(), &[]),
        |n| udp.receive(n),
    );

    let counters = fixture.classifier.counters().unwrap();
    assert_eq!(counters.sockets_recorded, 40, "{counters:?}");
    assert_eq!(wait_for_tracked_sockets(&fixture, 0), 0);
}

#[test]
fn flow_entry_outlives_socket_record() {
    let fixture = Fixture::new();
    let server = UdpServer::bind(&fixture.netns, "127.0.0.1:0");

    let (pids, received) = exchange(
        1,
        1,
        |_| fixture.python_client(UDP_CLIENT, server.address(), &[]),
        |n| server.receive(n),
    );
    wait_for_tracked_sockets(&fixture, 0);

    let owner = fixture
        .classifier
        .lookup(&received[0].lookup)
        .expect("flow entry missing");
    assert_eq!(owner.pid, pids[0]);
    assert_eq!(owner.exe.as_deref(), Some(python_path_cached()));
}

#[test]
fn drop_detaches_all_programs() {
    let cgroup = TestCgroup::new();
    let classifier = Classifier::load_and_attach(cgroup.path())
        .unwrap_or_else(|error| panic!("failed to attach: {}", error_chain(&error)));
    let attached = attached_programs(cgroup.path());

    drop(classifier);

    assert_eq!(attached.len(), ATTACHED_PROGRAM_COUNT, "{attached:?}");
    for attach_type in [
        "connect4",
        "connect6",
        "sendmsg4",
        "sendmsg6",
        "sock_ops",
        "egress",
        "ingress",
        "sock_release",
    ] {
        assert!(
            attached.iter().any(|line| line.contains(attach_type)),
            "{attach_type} not attached: {attached:?}"
        );
    }
    assert_eq!(attached_programs(cgroup.path()), Vec::<String>::new());
}

#[test]
fn missing_cgroup_reports_path() {
    let path = Path::new("/nonexistent/tollgate-cgroup");

    let error = Classifier::load_and_attach(path)
        .err()
        .expect("attach to a missing cgroup");

    assert!(
        error.to_string().contains("/nonexistent/tollgate-cgroup"),
        "{error}"
    );
}

/// Returns the program lines `bpftool cgroup show` prints for `cgroup`, without its header.
fn attached_programs(cgroup: &Path) -> Vec<String> {
    let output = Command::new("bpftool")
        .arg("cgroup")
        .arg("show")
        .arg(cgroup)
        .output()
        .expect("bpftool not found");
    assert!(output.status.success(), "bpftool failed: {output:?}");
    String::from_utf8(output.stdout)
        .expect("non-UTF-8 bpftool output")
        .lines()
        .filter(|line| line.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

/// Polls until the classifier tracks `expected` sockets or 5 s pass, and returns the last count.
///
/// `sock_release` runs when the kernel frees the socket file, which can lag the process exit
/// by a moment.
fn wait_for_tracked_sockets(fixture: &Fixture, expected: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let count = fixture.classifier.tracked_socket_count();
        if count == expected || Instant::now() > deadline {
            return count;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
