//! End-to-end tests of `tollgated` in the lab: real curl and TCP clients in the desk namespace,
//! real servers in the net namespace, decisions made with the `tollgate` command.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Command, Output, Stdio},
    thread,
    time::Duration,
};

use tollgate_integration::{
    INDEX_MARKER, Lab,
    daemon::Daemon,
    topology::{ECHO_PORT, SERVER_A_V4, SERVER_A_V6, SERVER_B_V4},
};

/// Generous bound on waits for the daemon; tests never depend on how fast it is.
const WAIT: Duration = Duration::from_secs(30);

fn start_lab() -> Lab {
    Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"))
}

fn start_daemon(lab: &Lab, extra_config: &str) -> Daemon {
    Daemon::start(lab, extra_config).unwrap_or_else(|err| panic!("{err:#}"))
}

/// Starts curl in desk in the background; it waits up to 60 s for the page.
fn spawn_curl(lab: &Lab, server: IpAddr) -> Child {
    lab.desk_command("curl")
        .args(["-sS", "--max-time", "60"])
        .arg(Lab::http_url(server))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start curl")
}

fn curl_now(lab: &Lab, server: IpAddr) -> Output {
    lab.desk_command("curl")
        .args(["-sS", "--max-time", "20"])
        .arg(Lab::http_url(server))
        .output()
        .expect("failed to run curl")
}

fn wait(child: Child) -> Output {
    child.wait_with_output().expect("failed to wait for curl")
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

fn only_pending_id(daemon: &Daemon) -> String {
    let pending = daemon.wait_for_held(1, WAIT);
    assert_eq!(pending.len(), 1, "{pending:#?}");
    pending[0]["id"].to_string()
}

fn rule_count(daemon: &Daemon) -> usize {
    let output = daemon.run_cli(&["rules", "list", "--json"]);
    assert_cli_ok(&output, "tollgate rules list");
    let rules: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    rules.len()
}

#[test]
fn curl_waits_until_allowed() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    let curl = spawn_curl(&lab, SERVER_A_V4.into());

    let pending = daemon.wait_for_held(1, WAIT);
    assert_eq!(pending[0]["destination"], "203.0.113.10:80");
    assert_eq!(pending[0]["protocol"], "tcp");
    assert!(pending[0]["process"].is_null(), "{pending:#?}");
    let table = daemon.run_cli(&["pending"]);
    assert!(
        text(&table.stdout).contains("203.0.113.10:80"),
        "{}",
        text(&table.stdout)
    );

    let id = pending[0]["id"].to_string();
    assert_cli_ok(&daemon.run_cli(&["allow", &id]), "tollgate allow");
    let output = wait(curl);
    assert!(
        output.status.success(),
        "curl failed: {}",
        text(&output.stderr)
    );
    assert!(text(&output.stdout).contains(INDEX_MARKER));
    assert_eq!(rule_count(&daemon), 0, "allow --once must not add a rule");
}

#[test]
fn ipv6_is_held_and_denied() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    let curl = spawn_curl(&lab, SERVER_A_V6.into());

    let pending = daemon.wait_for_held(1, WAIT);
    assert_eq!(pending[0]["destination"], "[2001:db8::10]:80");
    let id = pending[0]["id"].to_string();
    assert_cli_ok(&daemon.run_cli(&["deny", &id]), "tollgate deny");

    let output = wait(curl);
    assert_eq!(output.status.code(), Some(56), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("reset"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn deny_resets_ipv4_curl() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    let id = only_pending_id(&daemon);
    assert_cli_ok(&daemon.run_cli(&["deny", &id]), "tollgate deny");

    let output = wait(curl);
    // 56 is curl's "failure receiving network data"; the message names the reset.
    assert_eq!(output.status.code(), Some(56), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("reset"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn timeout_denies_without_rule() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "prompt_timeout_secs = 1");
    let output = curl_now(&lab, SERVER_A_V4.into());
    assert_eq!(output.status.code(), Some(56), "{}", text(&output.stderr));
    assert_eq!(rule_count(&daemon), 0);
    assert!(daemon.pending().is_empty());
}

#[test]
fn timeout_default_allow_adds_no_rule() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "prompt_timeout_secs = 1\ndefault_action = \"allow\"");
    let output = curl_now(&lab, SERVER_A_V4.into());
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains(INDEX_MARKER));
    assert_eq!(rule_count(&daemon), 0);

    // The next connection is held again: the timeout decided one connection only.
    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    daemon.wait_for_held(1, WAIT);
    assert!(wait(curl).status.success());
}

#[test]
fn forever_allow_survives_restart() {
    let lab = start_lab();
    let mut daemon = start_daemon(&lab, "");
    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    let id = only_pending_id(&daemon);
    assert_cli_ok(
        &daemon.run_cli(&["allow", &id, "--forever"]),
        "tollgate allow",
    );
    assert!(wait(curl).status.success());

    let second = curl_now(&lab, SERVER_A_V4.into());
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(text(&second.stdout).contains(INDEX_MARKER));

    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(rule_count(&daemon), 1);
    let third = curl_now(&lab, SERVER_A_V4.into());
    assert!(third.status.success(), "{}", text(&third.stderr));
    assert!(daemon.pending().is_empty());

    // The rule covers this address and port only: another server still prompts.
    let other = spawn_curl(&lab, SERVER_B_V4.into());
    let id = only_pending_id(&daemon);
    assert_cli_ok(&daemon.run_cli(&["deny", &id]), "tollgate deny");
    assert_eq!(wait(other).status.code(), Some(56));
}

#[test]
fn until_restart_rule_is_forgotten() {
    let lab = start_lab();
    let mut daemon = start_daemon(&lab, "");
    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    let id = only_pending_id(&daemon);
    assert_cli_ok(
        &daemon.run_cli(&["allow", &id, "--until-restart"]),
        "tollgate allow",
    );
    assert!(wait(curl).status.success());
    assert!(curl_now(&lab, SERVER_A_V4.into()).status.success());
    assert_eq!(rule_count(&daemon), 1);

    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(rule_count(&daemon), 0);
    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    let id = only_pending_id(&daemon);
    assert_cli_ok(&daemon.run_cli(&["deny", &id]), "tollgate deny");
    assert_eq!(wait(curl).status.code(), Some(56));
}

/// One echo client in desk: connects, sends its message, and returns what came back or the
/// error kind that ended it.
fn echo_once(server: SocketAddr, message: &[u8]) -> Result<Vec<u8>, ErrorKind> {
    let mut stream = TcpStream::connect_timeout(&server, WAIT).map_err(|err| err.kind())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream.write_all(message).map_err(|err| err.kind())?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|err| err.kind())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(|err| err.kind())?;
    Ok(reply)
}

#[test]
fn hundred_pending_settled_independently() {
    const CLIENTS: u8 = 100;
    const DUPLICATES: usize = 3;
    let lab = start_lab();
    let servers: Vec<Ipv4Addr> = (0..CLIENTS)
        .map(|i| Ipv4Addr::new(203, 0, 113, 100 + i))
        .collect();
    for server in &servers {
        lab.net()
            .ip(["addr", "add", &format!("{server}/32"), "dev", "lo"])
            .unwrap_or_else(|err| panic!("failed to add {server}: {err}"));
    }
    let daemon = start_daemon(&lab, "");

    let results = lab
        .desk()
        .run(|| {
            thread::scope(|scope| {
                let mut clients = Vec::new();
                for (index, server) in servers.iter().enumerate() {
                    let address = SocketAddr::new((*server).into(), ECHO_PORT);
                    let copies = if index == 0 { 1 + DUPLICATES } else { 1 };
                    for copy in 0..copies {
                        let message = format!("client {index} copy {copy}").into_bytes();
                        clients.push((
                            index,
                            message.clone(),
                            scope.spawn(move || echo_once(address, &message)),
                        ));
                    }
                }

                let pending = daemon.wait_for_held(u64::from(CLIENTS) + DUPLICATES as u64, WAIT);
                assert_eq!(
                    pending.len(),
                    usize::from(CLIENTS),
                    "duplicates must share a request"
                );
                for request in &pending {
                    let destination: SocketAddr =
                        request["destination"].as_str().unwrap().parse().unwrap();
                    let IpAddr::V4(ip) = destination.ip() else {
                        panic!("unexpected destination {destination}");
                    };
                    let index = ip.octets()[3] - 100;
                    let verb = if index % 2 == 0 { "allow" } else { "deny" };
                    let expected = if index == 0 { 1 + DUPLICATES } else { 1 };
                    assert_eq!(request["connections"].as_u64(), Some(expected as u64));
                    let id = request["id"].to_string();
                    assert_cli_ok(&daemon.run_cli(&[verb, &id]), verb);
                }

                clients
                    .into_iter()
                    .map(|(index, message, handle)| (index, message, handle.join().unwrap()))
                    .collect::<Vec<_>>()
            })
        })
        .unwrap();

    assert_eq!(results.len(), usize::from(CLIENTS) + DUPLICATES);
    for (index, message, result) in results {
        if index % 2 == 0 {
            assert_eq!(
                result.as_deref(),
                Ok(&message[..]),
                "client {index} was allowed"
            );
        } else {
            assert_eq!(
                result,
                Err(ErrorKind::ConnectionReset),
                "client {index} was denied"
            );
        }
    }
    assert!(daemon.pending().is_empty());
}

#[test]
fn bulk_gibibyte_is_byte_exact() {
    const LEN: u64 = 1 << 30;
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    let added = daemon.run_cli(&[
        "rules",
        "add",
        "--action",
        "allow",
        "--to",
        "203.0.113.10",
        "--port",
        "9000",
        "--protocol",
        "tcp",
        "--lifetime",
        "until-restart",
    ]);
    assert_cli_ok(&added, "tollgate rules add");

    let transfer = lab
        .bulk_download(SERVER_A_V4.into(), LEN)
        .unwrap_or_else(|err| panic!("bulk transfer failed: {err}\n{}", daemon.log()));
    assert_eq!(transfer.bytes, LEN);
    assert!(daemon.pending().is_empty());
}

#[test]
fn loopback_and_own_addresses_pass() {
    let lab = start_lab();
    let _daemon = start_daemon(&lab, "");
    let root = lab.work_dir().join("desk-www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "desk page").unwrap();
    let mut server = lab.desk_command("python3");
    server
        .args(["-m", "http.server", "--bind", "::", "--directory"])
        .arg(&root)
        .arg("8080")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = lab.desk().spawn(&mut server).unwrap();

    for url in [
        "http://127.0.0.1:8080/",
        "http://[::1]:8080/",
        "http://10.77.0.2:8080/",
        "http://[fd77::2]:8080/",
    ] {
        let output = lab
            .desk_command("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--retry",
                "20",
                "--retry-connrefused",
            ])
            .args(["--retry-delay", "1", url])
            .output()
            .unwrap();
        assert!(output.status.success(), "{url}: {}", text(&output.stderr));
        assert_eq!(text(&output.stdout), "desk page", "{url}");
    }
}

fn desk_state(lab: &Lab) -> (String, String, String, String) {
    let run = |args: &[&str]| {
        let output = lab.desk_command(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        text(&output.stdout)
    };
    // The kernel adds the route of veth0's IPv6 link-local address once duplicate address
    // detection ends, about a second after the lab starts, whatever the daemon does.
    let routes: String = run(&["ip", "route", "show", "table", "all"])
        .lines()
        .filter(|line| !line.starts_with("local fe80::"))
        .map(|line| format!("{line}\n"))
        .collect();
    (
        run(&["nft", "list", "ruleset"]),
        run(&["ip", "rule", "show"]),
        run(&["ip", "-6", "rule", "show"]),
        routes,
    )
}

#[test]
fn clean_exit_removes_everything() {
    let lab = start_lab();
    let before = desk_state(&lab);
    let mut daemon = start_daemon(&lab, "");
    let during = desk_state(&lab);
    assert!(during.0.contains("table inet tollgate"), "{}", during.0);
    assert!(
        during.1.contains("fwmark 0x1/0x1 lookup 100"),
        "{}",
        during.1
    );
    assert!(
        during.2.contains("fwmark 0x1/0x1 lookup 100"),
        "{}",
        during.2
    );

    daemon.stop().unwrap();
    assert_eq!(desk_state(&lab), before);
    assert!(!daemon.socket_path().exists(), "control socket left behind");
}

#[test]
fn sigkill_blocks_then_restart_recovers() {
    let lab = start_lab();
    let mut daemon = start_daemon(&lab, "");
    let allowed = daemon.run_cli(&[
        "rules",
        "add",
        "--action",
        "allow",
        "--to",
        "203.0.113.20",
        "--port",
        "80",
    ]);
    assert_cli_ok(&allowed, "tollgate rules add");
    daemon.kill().unwrap();

    // With the daemon dead, its table still diverts new connections, which find no listener
    // and are reset: nothing passes undecided.
    for server in [IpAddr::from(SERVER_A_V4), SERVER_A_V6.into()] {
        let output = curl_now(&lab, server);
        assert_eq!(
            output.status.code(),
            Some(7),
            "{server}: {}",
            text(&output.stderr)
        );
    }

    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));
    let (ruleset, rules_v4, rules_v6, _) = desk_state(&lab);
    assert_eq!(
        ruleset.matches("table inet tollgate").count(),
        1,
        "{ruleset}"
    );
    assert_eq!(
        ruleset.matches("reject with tcp reset").count(),
        1,
        "{ruleset}"
    );
    assert_eq!(rules_v4.matches("fwmark").count(), 1, "{rules_v4}");
    assert_eq!(rules_v6.matches("fwmark").count(), 1, "{rules_v6}");

    // The stored rule still applies, and everything else is held again.
    assert!(curl_now(&lab, SERVER_B_V4.into()).status.success());
    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    let id = only_pending_id(&daemon);
    assert_cli_ok(&daemon.run_cli(&["allow", &id]), "tollgate allow");
    assert!(wait(curl).status.success());
}

fn host_state() -> Vec<String> {
    let commands: [&[&str]; 4] = [
        &["nft", "list", "ruleset"],
        &["ip", "rule", "show"],
        &["ip", "-6", "rule", "show"],
        &["ip", "route", "show", "table", "all"],
    ];
    commands
        .iter()
        .map(|args| {
            let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
            text(&output.stdout)
        })
        .collect()
}

#[test]
fn host_network_is_untouched() {
    let before = host_state();
    {
        let lab = start_lab();
        let mut daemon = start_daemon(&lab, "");
        let curl = spawn_curl(&lab, SERVER_A_V4.into());
        let id = only_pending_id(&daemon);
        assert_cli_ok(&daemon.run_cli(&["allow", &id]), "tollgate allow");
        assert!(wait(curl).status.success());
        daemon.kill().unwrap();
        daemon.restart(&lab).unwrap();
        daemon.stop().unwrap();
    }
    assert_eq!(host_state(), before);
}

#[test]
fn cli_errors_are_clear() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");

    let unknown = daemon.run_cli(&["allow", "999"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("no pending request with id 999"),
        "{}",
        text(&unknown.stderr)
    );

    let missing_rule = daemon.run_cli(&["rules", "remove", "42"]);
    assert!(!missing_rule.status.success());
    assert!(text(&missing_rule.stderr).contains("no rule with id 42"));

    let bad_cidr = daemon.run_cli(&["rules", "add", "--action", "deny", "--to", "10.0.0.0/40"]);
    assert!(!bad_cidr.status.success());
    assert!(
        text(&bad_cidr.stderr).contains("prefix length"),
        "{}",
        text(&bad_cidr.stderr)
    );

    let absent = Command::new(tollgate_integration::workspace_binary("tollgate").unwrap())
        .args(["--socket", "/nonexistent/tollgate.sock", "status"])
        .output()
        .unwrap();
    assert!(!absent.status.success());
    assert!(
        text(&absent.stderr).contains("tollgated is not running"),
        "{}",
        text(&absent.stderr)
    );
}

#[test]
fn garbage_on_socket_disconnects() {
    use std::{io::BufRead, os::unix::net::UnixStream};

    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    for garbage in [
        &b"hello\n"[..],
        b"{\"version\":1,\"type\":\"decide\",\"id\":\"x\"}\n",
        b"{\"version\":9,\"type\":\"status\"}\n",
        b"\xff\xfe\x00\n",
    ] {
        let mut stream = UnixStream::connect(daemon.socket_path()).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(garbage).unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["type"], "error", "{line}");
        line.clear();
        assert_eq!(
            reader.read_line(&mut line).unwrap(),
            0,
            "connection must close"
        );
    }

    // An oversized line is rejected too.
    let mut stream = UnixStream::connect(daemon.socket_path()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let _ = stream.write_all(&vec![b'a'; 100_000]);
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("longer than"), "{line}");

    // The daemon still works afterwards.
    assert_cli_ok(&daemon.run_cli(&["status"]), "tollgate status");
}
