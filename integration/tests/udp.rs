//! End-to-end tests of UDP flows through `tollgated`: held first datagrams, relay after allow,
//! drop after deny, and the behaviour with the daemon killed.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Output,
    thread,
    time::Duration,
};

use tollgate_integration::{
    Lab,
    daemon::Daemon,
    topology::{QUIC_PORT, SERVER_A_V4, SERVER_A_V6, UDP_ECHO_PORT},
};

const WAIT: Duration = Duration::from_secs(30);
const DENIED_WAIT: Duration = Duration::from_secs(10);

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

/// Sends `message` on a socket connected to `server` and returns the first reply, or the error
/// kind when none came within `timeout`.
fn exchange(socket: &UdpSocket, message: &[u8], timeout: Duration) -> Result<Vec<u8>, ErrorKind> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    socket.send(message).map_err(|err| err.kind())?;
    let mut buffer = [0u8; 2048];
    let len = socket.recv(&mut buffer).map_err(|err| err.kind())?;
    Ok(buffer[..len].to_vec())
}

fn connected_socket(server: SocketAddr) -> UdpSocket {
    let local: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(local).unwrap();
    socket.connect(server).unwrap();
    socket
}

/// Runs an echo exchange in desk while the test decides the flow with `verb`; returns the
/// first reply and the reply to a second datagram sent after the decision.
fn echo_with_decision(
    lab: &Lab,
    daemon: &Daemon,
    server: SocketAddr,
    verb: &str,
) -> (Result<Vec<u8>, ErrorKind>, Result<Vec<u8>, ErrorKind>) {
    lab.desk()
        .run(|| {
            let socket = connected_socket(server);
            thread::scope(|scope| {
                // A denied flow never answers, so its wait is kept short.
                let first_wait = if verb == "deny" { DENIED_WAIT } else { WAIT };
                let socket = &socket;
                let first = scope.spawn(move || exchange(socket, b"first", first_wait));
                let pending = daemon.wait_for_held(1, WAIT);
                assert_eq!(pending[0]["protocol"], "udp", "{pending:#?}");
                assert_eq!(pending[0]["destination"], server.to_string());
                let id = pending[0]["id"].to_string();
                assert_cli_ok(&daemon.run_cli(&[verb, &id]), verb);
                let first = first.join().unwrap();
                let second = exchange(socket, b"second", Duration::from_secs(2));
                (first, second)
            })
        })
        .unwrap()
}

#[test]
fn udp_held_then_relayed_ipv4() {
    let (lab, daemon) = start();
    let server = SocketAddr::new(SERVER_A_V4.into(), UDP_ECHO_PORT);
    let (first, second) = echo_with_decision(&lab, &daemon, server, "allow");
    assert_eq!(first, Ok(b"first".to_vec()));
    assert_eq!(second, Ok(b"second".to_vec()));
}

#[test]
fn udp_held_then_relayed_ipv6() {
    let (lab, daemon) = start();
    let server = SocketAddr::new(SERVER_A_V6.into(), UDP_ECHO_PORT);
    let (first, second) = echo_with_decision(&lab, &daemon, server, "allow");
    assert_eq!(first, Ok(b"first".to_vec()));
    assert_eq!(second, Ok(b"second".to_vec()));
}

#[test]
fn denied_udp_gets_nothing_back() {
    let (lab, daemon) = start();
    let server = SocketAddr::new(SERVER_A_V4.into(), UDP_ECHO_PORT);
    let (first, second) = echo_with_decision(&lab, &daemon, server, "deny");
    assert_eq!(
        first,
        Err(ErrorKind::WouldBlock),
        "a denied flow must not be answered"
    );
    assert_eq!(second, Err(ErrorKind::WouldBlock));
}

#[test]
fn unconnected_sendto_reply_comes_from_server() {
    let (lab, daemon) = start();
    let server = SocketAddr::new(SERVER_A_V6.into(), QUIC_PORT);
    let (reply, from) = lab
        .desk()
        .run(|| {
            let socket = UdpSocket::bind("[::]:0").unwrap();
            socket.set_read_timeout(Some(WAIT)).unwrap();
            thread::scope(|scope| {
                let receiver = scope.spawn(|| {
                    socket.send_to(b"quic-like hello", server).unwrap();
                    let mut buffer = [0u8; 2048];
                    let (len, from) = socket.recv_from(&mut buffer).unwrap();
                    (buffer[..len].to_vec(), from)
                });
                let pending = daemon.wait_for_held(1, WAIT);
                assert_eq!(pending[0]["destination"], "[2001:db8::10]:443");
                assert_eq!(pending[0]["protocol"], "udp");
                let id = pending[0]["id"].to_string();
                assert_cli_ok(&daemon.run_cli(&["allow", &id]), "allow");
                receiver.join().unwrap()
            })
        })
        .unwrap();
    assert_eq!(reply, b"quic-like hello");
    assert_eq!(
        from, server,
        "the reply must come from the original destination"
    );
}

#[test]
fn exited_sender_is_still_decided() {
    let (lab, daemon) = start();
    let script = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
                  s.sendto(b'fire and forget', ('203.0.113.10', 7))";
    let status = lab
        .desk_command("python3")
        .args(["-c", script])
        .status()
        .unwrap();
    assert!(status.success());

    let pending = daemon.wait_for_held(1, WAIT);
    assert_eq!(pending[0]["destination"], "203.0.113.10:7");
    let id = pending[0]["id"].to_string();
    let output = daemon.run_cli(&["allow", &id]);
    assert_cli_ok(&output, "allow");
    assert!(
        text(&output.stdout).contains("1 connection(s) settled"),
        "{}",
        text(&output.stdout)
    );
    assert!(daemon.pending().is_empty());
}

#[test]
fn udp_rule_decides_without_prompt() {
    let (lab, daemon) = start();
    let added = daemon.run_cli(&[
        "rules",
        "add",
        "--action",
        "allow",
        "--to",
        "203.0.113.0/24",
        "--port",
        "7",
        "--protocol",
        "udp",
        "--lifetime",
        "until-restart",
    ]);
    assert_cli_ok(&added, "rules add");
    let server = SocketAddr::new(SERVER_A_V4.into(), UDP_ECHO_PORT);
    let reply = lab
        .desk()
        .run(|| exchange(&connected_socket(server), b"ruled", WAIT))
        .unwrap();
    assert_eq!(reply, Ok(b"ruled".to_vec()));
    assert!(daemon.pending().is_empty());
}

#[test]
fn udp_dropped_while_daemon_dead() {
    let (lab, mut daemon) = start();
    daemon.kill().unwrap();
    for server in [IpAddr::from(SERVER_A_V4), SERVER_A_V6.into()] {
        let address = SocketAddr::new(server, UDP_ECHO_PORT);
        let reply = lab
            .desk()
            .run(|| {
                exchange(
                    &connected_socket(address),
                    b"anyone?",
                    Duration::from_secs(2),
                )
            })
            .unwrap();
        // IPv4 sees a timeout; IPv6 may also see ICMPv6 port unreachable. Never an echo.
        assert!(
            matches!(
                reply,
                Err(ErrorKind::WouldBlock | ErrorKind::ConnectionRefused)
            ),
            "{server}: expected no answer, got {reply:?}"
        );
    }
}

#[test]
fn denied_udp_can_get_port_unreachable() {
    let lab = Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"));
    let daemon =
        Daemon::start(&lab, "udp_deny_icmp = true").unwrap_or_else(|err| panic!("{err:#}"));
    for server in [IpAddr::from(SERVER_A_V4), SERVER_A_V6.into()] {
        let server = SocketAddr::new(server, UDP_ECHO_PORT);
        let (first, second) = echo_with_decision(&lab, &daemon, server, "deny");
        // The first datagram's error arrives while the client waits for its reply; the second
        // datagram is refused the same way.
        assert_eq!(first, Err(ErrorKind::ConnectionRefused), "{server}");
        assert_eq!(second, Err(ErrorKind::ConnectionRefused), "{server}");
    }
}
