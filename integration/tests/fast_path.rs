//! End-to-end tests of the fast path: flows that a rule decides are decided by the kernel at
//! `connect()`, pass without the relay, and still produce `decided` and `closed` events with
//! their bytes. The clients are python processes in the daemon's cgroup, where its BPF
//! programs run.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use tollgate_integration::{
    Lab,
    daemon::Daemon,
    topology::{BULK_PORT, DNS_V4, ECHO_PORT, HTTP_PORT, SERVER_A_V4, SERVER_A_V6, UDP_ECHO_PORT},
    watch::{ReceivedEvent, Watcher},
};

/// Generous bound on waits; the tests never depend on how fast the daemon is.
const WAIT: Duration = Duration::from_secs(30);

/// Downloads N bytes from the lab's bulk server and prints how many arrived.
const BULK_CLIENT: &str = r#"
import socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=30)
s.sendall(size.to_bytes(8, "big"))
received = 0
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    received += len(chunk)
s.close()
print(received)
"#;

/// Sends "first" to the echo server and prints the echo, waits for a line on stdin, then sends
/// "second", prints the echo and closes.
const TWO_PART_ECHO: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.sendall(b"first")
print(s.recv(100).decode(), flush=True)
sys.stdin.readline()
s.sendall(b"second")
print(s.recv(100).decode(), flush=True)
s.shutdown(socket.SHUT_WR)
s.recv(100)
s.close()
"#;

/// Connects, sends one byte and prints the reply, or prints the errno name of the failure.
const CONNECT_ONCE: &str = r#"
import errno, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.sendall(b"x")
    print("replied", s.recv(10).decode())
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"#;

/// Exchanges three 100-byte datagrams with the UDP echo server over a connected socket.
const UDP_EXCHANGE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.connect((sys.argv[1], int(sys.argv[2])))
for _ in range(3):
    s.send(b"u" * 100)
    s.recv(2048)
s.close()
print("exchanged")
"#;

/// Sends two datagrams with an address on an unconnected socket and prints the errno name of
/// each failure, or "sent".
const UDP_SENDTO_TWICE: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(2):
    try:
        s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
        print("sent")
    except OSError as e:
        print(errno.errorcode.get(e.errno, e.errno))
"#;

fn start() -> (Lab, Daemon) {
    let lab = Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"));
    let daemon = Daemon::start(&lab, "").unwrap_or_else(|err| panic!("{err:#}"));
    (lab, daemon)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Adds a rule that lasts until the daemon restarts and returns its id.
fn add_rule(daemon: &Daemon, action: &str, destination: &[&str]) -> u64 {
    let mut args = vec![
        "rules",
        "add",
        "--action",
        action,
        "--lifetime",
        "until-restart",
    ];
    args.extend_from_slice(destination);
    let output = daemon.run_cli(&args);
    assert!(
        output.status.success(),
        "tollgate rules add failed: {}",
        text(&output.stderr)
    );
    rule_ids(daemon)
        .into_iter()
        .max()
        .expect("no rule after add")
}

fn rule_ids(daemon: &Daemon) -> Vec<u64> {
    let output = daemon.run_cli(&["rules", "list", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let rules: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    rules
        .iter()
        .filter_map(|rule| rule["id"].as_u64())
        .collect()
}

fn python(daemon: &Daemon, lab: &Lab, script: &str, args: &[&str]) -> Command {
    let mut command = daemon.desk_client(lab, "python3");
    command.arg("-c").arg(script).args(args);
    command
}

fn run_python(daemon: &Daemon, lab: &Lab, script: &str, args: &[&str]) -> Output {
    let output = python(daemon, lab, script, args)
        .output()
        .expect("failed to run python3");
    assert!(
        output.status.success(),
        "python3 failed: {}\n--- daemon log ---\n{}",
        text(&output.stderr),
        daemon.log()
    );
    output
}

/// Returns the path of the python3 executable, as the kernel records it.
fn python_executable(daemon: &Daemon, lab: &Lab) -> String {
    let script = "import os, sys; print(os.path.realpath(sys.executable))";
    let output = run_python(daemon, lab, script, &[]);
    text(&output.stdout).trim().to_owned()
}

fn watch(daemon: &Daemon) -> Watcher {
    Watcher::connect(&daemon.socket_path()).expect("failed to watch events")
}

/// Waits for the `decided` event of a connection to `destination`.
fn decided_to(watcher: &Watcher, daemon: &Daemon, destination: SocketAddr) -> Value {
    let event = watcher.wait_for(WAIT, |event| {
        event.kind() == "decided" && event.event["destination"] == destination.to_string()
    });
    expect_event(event, daemon, &format!("decided event for {destination}"))
}

/// Waits for the `closed` event of connection `connection`.
fn closed(watcher: &Watcher, daemon: &Daemon, connection: &Value) -> Value {
    let event = watcher.wait_for(WAIT, |event| {
        event.kind() == "closed" && event.event["connection"] == *connection
    });
    expect_event(
        event,
        daemon,
        &format!("closed event of connection {connection}"),
    )
}

fn expect_event(event: Option<ReceivedEvent>, daemon: &Daemon, expected: &str) -> Value {
    match event {
        Some(event) => event.event,
        None => panic!(
            "no {expected} within {WAIT:?}\n--- daemon log ---\n{}",
            daemon.log()
        ),
    }
}

fn bulk_destination() -> SocketAddr {
    SocketAddr::from((SERVER_A_V4, BULK_PORT))
}

#[test]
fn kernel_allowed_flow_counts_bytes() {
    const SIZE: u64 = 4 << 20;
    let (lab, daemon) = start();
    let rule = add_rule(
        &daemon,
        "allow",
        &["--to", "203.0.113.10", "--port", "9000"],
    );
    let watcher = watch(&daemon);

    let output = run_python(
        &daemon,
        &lab,
        BULK_CLIENT,
        &["203.0.113.10", "9000", &SIZE.to_string()],
    );
    assert_eq!(text(&output.stdout).trim(), SIZE.to_string());

    let decided = decided_to(&watcher, &daemon, bulk_destination());
    assert_eq!(decided["in_kernel"], true, "{decided}");
    assert_eq!(decided["action"], "allow", "{decided}");
    assert_eq!(decided["by"]["by"], "rule", "{decided}");
    assert_eq!(decided["by"]["rule"], rule, "{decided}");
    assert_eq!(decided["process"]["comm"], "python3", "{decided}");
    let source: SocketAddr = decided["source"].as_str().unwrap().parse().unwrap();
    assert_ne!(source.port(), 0, "{decided}");

    let closed = closed(&watcher, &daemon, &decided["connection"]);
    assert_eq!(closed["bytes_down"], SIZE, "{closed}");
    assert_eq!(closed["bytes_up"], 8, "{closed}");
    assert!(closed["error"].is_null(), "{closed}");

    // The monitor's list shows the flow with the rule and its bytes.
    let listed = daemon.run_cli(&["connections", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let connections: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let flow = connections
        .iter()
        .find(|connection| connection["connection"] == decided["connection"])
        .unwrap_or_else(|| panic!("kernel flow not listed: {connections:#?}"));
    assert_eq!(flow["state"], "allowed", "{flow}");
    assert_eq!(flow["decided_by"]["rule"], rule, "{flow}");
    assert_eq!(flow["bytes_down"], SIZE, "{flow}");
    assert_eq!(flow["bytes_up"], 8, "{flow}");
    assert!(!flow["ended_unix_ms"].is_null(), "{flow}");
}

#[test]
fn kernel_allowed_flow_bypasses_relay() {
    let (lab, daemon) = start();
    add_rule(&daemon, "allow", &["--to", "203.0.113.10", "--port", "7"]);
    let watcher = watch(&daemon);
    let mut client = python(&daemon, &lab, TWO_PART_ECHO, &["203.0.113.10", "7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("failed to start python3");
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");

    // While the connection is open, no relay carries it.
    let status = daemon.run_cli(&["status"]);
    assert!(
        text(&status.stdout).contains("active relays:      0"),
        "{}",
        text(&status.stdout)
    );
    let decided = decided_to(
        &watcher,
        &daemon,
        SocketAddr::from((SERVER_A_V4, ECHO_PORT)),
    );
    assert_eq!(decided["in_kernel"], true, "{decided}");

    writeln!(client.stdin.take().unwrap()).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(client.wait().unwrap().success());
}

#[test]
fn deny_rule_applies_to_new_flows_only() {
    let (lab, daemon) = start();
    let allow = add_rule(&daemon, "allow", &["--to", "203.0.113.10", "--port", "7"]);
    let watcher = watch(&daemon);
    let echo = SocketAddr::from((SERVER_A_V4, ECHO_PORT));

    // A flow the kernel allowed is open when a deny rule for its destination arrives.
    let mut first = python(&daemon, &lab, TWO_PART_ECHO, &["203.0.113.10", "7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("failed to start python3");
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    let opened = decided_to(&watcher, &daemon, echo);
    assert_eq!(opened["in_kernel"], true, "{opened}");
    assert_eq!(opened["by"]["rule"], allow, "{opened}");
    // Deny wins over allow between rules that match alike.
    let deny = add_rule(
        &daemon,
        "deny",
        &["--to", "203.0.113.10", "--port", "7", "--protocol", "tcp"],
    );

    // A new connection is denied inside connect().
    let output = run_python(&daemon, &lab, CONNECT_ONCE, &["203.0.113.10", "7"]);
    assert_eq!(text(&output.stdout).trim(), "EPERM");
    let denied = decided_to(&watcher, &daemon, echo);
    assert_eq!(denied["action"], "deny", "{denied}");
    assert_eq!(denied["in_kernel"], true, "{denied}");
    assert_eq!(denied["by"]["rule"], deny, "{denied}");

    // The open flow goes on until it closes, and its bytes are counted.
    writeln!(first.stdin.take().unwrap()).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(first.wait().unwrap().success());
    let closed = closed(&watcher, &daemon, &opened["connection"]);
    assert_eq!(closed["bytes_up"], 11, "{closed}");
    assert_eq!(closed["bytes_down"], 11, "{closed}");

    // Removing the deny rule allows new connections again.
    let removed = daemon.run_cli(&["rules", "remove", &deny.to_string()]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let output = run_python(&daemon, &lab, CONNECT_ONCE, &["203.0.113.10", "7"]);
    assert_eq!(text(&output.stdout).trim(), "replied x");
}

#[test]
fn kernel_denial_produces_event() {
    let (lab, daemon) = start();
    let rule = add_rule(
        &daemon,
        "deny",
        &["--to", "2001:db8::10", "--port", "80", "--protocol", "tcp"],
    );
    let watcher = watch(&daemon);

    let output = run_python(&daemon, &lab, CONNECT_ONCE, &["2001:db8::10", "80"]);

    assert_eq!(text(&output.stdout).trim(), "EPERM");
    let denied = decided_to(
        &watcher,
        &daemon,
        SocketAddr::from((SERVER_A_V6, HTTP_PORT)),
    );
    assert_eq!(denied["action"], "deny", "{denied}");
    assert_eq!(denied["in_kernel"], true, "{denied}");
    assert_eq!(denied["by"]["rule"], rule, "{denied}");
    assert_eq!(denied["protocol"], "tcp", "{denied}");
    assert_eq!(denied["source"], "[::]:0", "{denied}");
    assert_eq!(denied["process"]["comm"], "python3", "{denied}");
    assert!(daemon.pending().is_empty());
}

#[test]
fn denied_udp_sends_report_once() {
    let (lab, daemon) = start();
    let rule = add_rule(
        &daemon,
        "deny",
        &["--to", "203.0.113.10", "--port", "7", "--protocol", "udp"],
    );
    let watcher = watch(&daemon);

    let output = run_python(&daemon, &lab, UDP_SENDTO_TWICE, &["203.0.113.10", "7"]);

    assert_eq!(text(&output.stdout), "EPERM\nEPERM\n");
    let destination = SocketAddr::from((SERVER_A_V4, UDP_ECHO_PORT));
    let denied = decided_to(&watcher, &daemon, destination);
    assert_eq!(denied["by"]["rule"], rule, "{denied}");
    assert_eq!(denied["protocol"], "udp", "{denied}");
    assert_eq!(denied["in_kernel"], true, "{denied}");
    let again = watcher.wait_for(Duration::from_secs(1), |event| {
        event.event["destination"] == destination.to_string()
    });
    assert!(again.is_none(), "second event: {again:?}");
}

#[test]
fn kernel_allowed_udp_flow_counts_bytes() {
    let (lab, daemon) = start();
    add_rule(
        &daemon,
        "allow",
        &["--to", "2001:db8::10", "--port", "7", "--protocol", "udp"],
    );
    let watcher = watch(&daemon);

    let output = run_python(&daemon, &lab, UDP_EXCHANGE, &["2001:db8::10", "7"]);

    assert_eq!(text(&output.stdout).trim(), "exchanged");
    let decided = decided_to(&watcher, &daemon, SocketAddr::from((SERVER_A_V6, 7)));
    assert_eq!(decided["in_kernel"], true, "{decided}");
    assert_eq!(decided["protocol"], "udp", "{decided}");
    let closed = closed(&watcher, &daemon, &decided["connection"]);
    assert_eq!(closed["bytes_up"], 300, "{closed}");
    assert_eq!(closed["bytes_down"], 300, "{closed}");
}

#[test]
fn network_rule_moves_to_kernel_after_first_flow() {
    let (lab, daemon) = start();
    add_rule(&daemon, "allow", &["--to", "203.0.113.0/24", "--port", "7"]);
    let watcher = watch(&daemon);
    let echo = SocketAddr::from((SERVER_A_V4, ECHO_PORT));

    // A rule for a network cannot be written for each address ahead of time: the proxy
    // decides the first flow and hands its verdict to the kernel for the next ones.
    for in_kernel in [false, true] {
        let output = run_python(&daemon, &lab, CONNECT_ONCE, &["203.0.113.10", "7"]);
        assert_eq!(text(&output.stdout).trim(), "replied x");
        let decided = decided_to(&watcher, &daemon, echo);
        assert_eq!(decided["in_kernel"], in_kernel, "{decided}");
        assert_eq!(decided["action"], "allow", "{decided}");
    }
}

#[test]
fn restarted_daemon_decides_in_kernel_again() {
    let (lab, mut daemon) = start();
    let output = daemon.run_cli(&[
        "rules",
        "add",
        "--action",
        "allow",
        "--to",
        "203.0.113.10",
        "--port",
        "7",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));
    let watcher = watch(&daemon);

    let output = run_python(&daemon, &lab, CONNECT_ONCE, &["203.0.113.10", "7"]);

    assert_eq!(text(&output.stdout).trim(), "replied x");
    let decided = decided_to(
        &watcher,
        &daemon,
        SocketAddr::from((SERVER_A_V4, ECHO_PORT)),
    );
    assert_eq!(decided["in_kernel"], true, "{decided}");
}

#[test]
fn program_rule_decides_only_its_program() {
    let (lab, daemon) = start();
    let python_path = python_executable(&daemon, &lab);
    let deny = add_rule(
        &daemon,
        "deny",
        &["--to", "203.0.113.10", "--port", "7", "--protocol", "tcp"],
    );
    let allow = add_rule(
        &daemon,
        "allow",
        &["--exe", &python_path, "--to", "203.0.113.10", "--port", "7"],
    );
    let watcher = watch(&daemon);
    let echo = SocketAddr::from((SERVER_A_V4, ECHO_PORT));

    // The program's own rule wins over the rule for any program.
    let output = run_python(&daemon, &lab, CONNECT_ONCE, &["203.0.113.10", "7"]);
    assert_eq!(text(&output.stdout).trim(), "replied x");
    let allowed = decided_to(&watcher, &daemon, echo);
    assert_eq!(allowed["in_kernel"], true, "{allowed}");
    assert_eq!(allowed["by"]["rule"], allow, "{allowed}");

    // Another program gets the rule for any program, in the kernel too.
    let output = daemon
        .desk_client(&lab, "bash")
        .args(["-c", "exec 3<>/dev/tcp/203.0.113.10/7"])
        .output()
        .expect("failed to run bash");
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("Operation not permitted"),
        "{}",
        text(&output.stderr)
    );
    let denied = decided_to(&watcher, &daemon, echo);
    assert_eq!(denied["in_kernel"], true, "{denied}");
    assert_eq!(denied["by"]["rule"], deny, "{denied}");
    assert_eq!(denied["process"]["comm"], "bash", "{denied}");
}

#[test]
fn name_rule_keeps_program_in_proxy() {
    let (lab, daemon) = start();
    let python_path = python_executable(&daemon, &lab);
    add_rule(&daemon, "allow", &["--to", "203.0.113.10", "--port", "7"]);
    // The kernel does not know the names a connection carries, so python's flows, which this
    // rule may match, stay with the proxy.
    add_rule(
        &daemon,
        "deny",
        &["--exe", &python_path, "--to", "*.lab.test"],
    );
    let watcher = watch(&daemon);
    let echo = SocketAddr::from((SERVER_A_V4, ECHO_PORT));

    for _ in 0..2 {
        let output = run_python(&daemon, &lab, CONNECT_ONCE, &["203.0.113.10", "7"]);
        assert_eq!(text(&output.stdout).trim(), "replied x");
        let decided = decided_to(&watcher, &daemon, echo);
        assert_eq!(decided["in_kernel"], false, "{decided}");
        assert_eq!(decided["action"], "allow", "{decided}");
    }
}

#[test]
fn disabled_interception_stops_kernel_denials() {
    let (lab, daemon) = start();
    add_rule(
        &daemon,
        "deny",
        &["--to", "203.0.113.10", "--port", "7", "--protocol", "tcp"],
    );
    let output = run_python(&daemon, &lab, CONNECT_ONCE, &["203.0.113.10", "7"]);
    assert_eq!(text(&output.stdout).trim(), "EPERM");

    // With interception off, traffic passes unfiltered: the kernel denies nothing either.
    let disabled = daemon.run_cli(&["disable"]);
    assert!(disabled.status.success(), "{}", text(&disabled.stderr));
    let output = run_python(&daemon, &lab, CONNECT_ONCE, &["203.0.113.10", "7"]);
    assert_eq!(text(&output.stdout).trim(), "replied x");

    let enabled = daemon.run_cli(&["enable"]);
    assert!(enabled.status.success(), "{}", text(&enabled.stderr));
    let output = run_python(&daemon, &lab, CONNECT_ONCE, &["203.0.113.10", "7"]);
    assert_eq!(text(&output.stdout).trim(), "EPERM");
}

/// Returns the number of names in the resolver's name map, from `tollgate status`.
fn names_held(daemon: &Daemon) -> u64 {
    let output = daemon.run_cli(&["status"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let status = text(&output.stdout);
    let line = status
        .lines()
        .find(|line| line.contains("DNS names:"))
        .unwrap_or_else(|| panic!("no DNS line in status: {status}"));
    line.split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

#[test]
fn dns_rule_keeps_queries_with_resolver() {
    let (lab, daemon) = start();
    // A rule on the DNS server's port 53 must not let queries skip the local resolver.
    add_rule(
        &daemon,
        "allow",
        &["--to", &DNS_V4.to_string(), "--port", "53"],
    );
    let before = names_held(&daemon);

    let output = daemon
        .desk_client(&lab, "dig")
        .args(["+time=5", "+tries=1", "+short", "shop.lab.test"])
        .output()
        .expect("failed to run dig");

    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim(), "203.0.113.10");
    assert!(
        names_held(&daemon) > before,
        "the resolver did not record the answer\n--- daemon log ---\n{}",
        daemon.log()
    );
}
