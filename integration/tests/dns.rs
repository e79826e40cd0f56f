//! End-to-end tests of DNS awareness in the lab: real dnsmasq in net, real curl, dig and
//! openssl in desk, and `tollgated` naming held connections.
//!
//! Until kernel attribution names processes, the daemon keys names by the client's address. The
//! tests for per-program names therefore give each program its own source address in desk, so
//! the address stands for the program.

use std::{
    net::IpAddr,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use tollgate_integration::{
    INDEX_MARKER, Lab,
    daemon::Daemon,
    dns::{
        ALIAS_NAME, BIG_NAME, BIG_RECORDS, BLOG_NAME, LocalStub, SHOP_NAME, SHORT_TTL_NAME,
        STUB_USER, STUB_V4, STUB_V6,
    },
    topology::{DESK_LINK, DNS_V4, OTHER_DNS_V4, SERVER_A_V4, SERVER_B_V4},
};

/// Generous bound on waits for the daemon; tests never depend on how fast it is.
const WAIT: Duration = Duration::from_secs(30);

/// A second desk address, standing for a second program.
const SECOND_DESK_V4: &str = "10.77.0.3";

fn start_lab() -> Lab {
    Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"))
}

fn start_daemon(lab: &Lab, extra_config: &str) -> Daemon {
    Daemon::start(lab, extra_config).unwrap_or_else(|err| panic!("{err:#}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `dig ARGS` in desk and returns its output.
fn dig(lab: &Lab, args: &[&str]) -> Output {
    lab.desk_command("dig")
        .args(["+time=5", "+tries=1"])
        .args(args)
        .output()
        .expect("failed to run dig (install dnsutils)")
}

/// Starts `curl ARGS` in desk in the background.
fn spawn_curl(lab: &Lab, args: &[&str]) -> Child {
    lab.desk_command("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start curl")
}

/// Returns the pending request for `destination`, waiting until it appears.
fn pending_for(daemon: &Daemon, destination: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let pending = daemon.pending();
        if let Some(request) = pending.iter().find(|r| r["destination"] == destination) {
            return request.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no pending request for {destination}: {pending:#?}\n--- daemon log ---\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a pending request for `destination` named from its first bytes. The daemon keeps
/// a connection without a DNS name pending at once and names it when its first bytes arrive.
fn named_pending_for(daemon: &Daemon, destination: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let pending = daemon.pending();
        let named = pending
            .iter()
            .find(|r| r["destination"] == destination && !r["host"].is_null());
        if let Some(request) = named {
            return request.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no named pending request for {destination}: {pending:#?}\n--- daemon log ---\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn allow(daemon: &Daemon, request: &serde_json::Value) {
    let id = request["id"].to_string();
    let output = daemon.run_cli(&["allow", &id]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn curl_by_name_shows_name() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    let curl = spawn_curl(&lab, &[&format!("http://{BLOG_NAME}/")]);

    let request = pending_for(&daemon, "203.0.113.10:80");
    assert_eq!(request["host"], BLOG_NAME, "{request:#}");
    assert_eq!(request["name_source"], "dns", "{request:#}");
    let table = text(&daemon.run_cli(&["pending"]).stdout);
    assert!(table.contains("blog.lab.test (dns)"), "{table}");

    allow(&daemon, &request);
    let output = curl.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn alias_chain_names_first_name() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    let curl = spawn_curl(&lab, &[&format!("http://{ALIAS_NAME}/")]);

    let request = pending_for(&daemon, "203.0.113.10:80");
    assert_eq!(request["host"], ALIAS_NAME, "{request:#}");
    allow(&daemon, &request);
    assert!(curl.wait_with_output().unwrap().status.success());
}

#[test]
fn dig_at_any_server_is_answered_locally() {
    let lab = start_lab();
    let _daemon = start_daemon(&lab, "");

    // No DNS server listens on this address of net: only the local resolver can answer.
    let aimed_elsewhere = dig(&lab, &["+short", &format!("@{OTHER_DNS_V4}"), SHOP_NAME]);
    assert!(
        aimed_elsewhere.status.success(),
        "{}",
        text(&aimed_elsewhere.stdout)
    );
    assert_eq!(
        text(&aimed_elsewhere.stdout).trim(),
        SERVER_A_V4.to_string()
    );
    // The answer comes from the address dig aimed at, or dig would reject it.
    let full = dig(&lab, &[&format!("@{OTHER_DNS_V4}"), SHOP_NAME]);
    assert!(
        text(&full.stdout).contains(&format!("SERVER: {OTHER_DNS_V4}#53")),
        "{}",
        text(&full.stdout)
    );

    let over_tcp = dig(
        &lab,
        &["+short", "+tcp", &format!("@{OTHER_DNS_V4}"), BLOG_NAME],
    );
    assert_eq!(text(&over_tcp.stdout).trim(), SERVER_A_V4.to_string());
    let over_v6 = dig(&lab, &["+short", "@2001:db8::54", "AAAA", BLOG_NAME]);
    assert_eq!(text(&over_v6.stdout).trim(), "2001:db8::10");
}

#[test]
fn oversized_answer_sets_truncation() {
    let lab = start_lab();
    let _daemon = start_daemon(&lab, "");

    let udp = dig(
        &lab,
        &["+noedns", "+ignore", &format!("@{DNS_V4}"), BIG_NAME],
    );
    let udp_text = text(&udp.stdout);
    assert!(udp_text.contains(" tc"), "{udp_text}");
    let tcp = dig(&lab, &["+short", &format!("@{DNS_V4}"), BIG_NAME]);
    assert_eq!(
        text(&tcp.stdout).lines().count(),
        usize::from(BIG_RECORDS),
        "dig retries truncated answers over TCP: {}",
        text(&tcp.stdout)
    );
}

#[test]
fn two_programs_see_own_names() {
    let lab = start_lab();
    lab.desk()
        .ip([
            "addr",
            "add",
            &format!("{SECOND_DESK_V4}/24"),
            "dev",
            DESK_LINK,
        ])
        .unwrap();
    let daemon = start_daemon(&lab, "");

    // Program one resolves blog, program two shop; both names point at server A.
    let first = dig(&lab, &["+short", "-b", "10.77.0.2", BLOG_NAME]);
    assert_eq!(text(&first.stdout).trim(), SERVER_A_V4.to_string());
    let second = dig(&lab, &["+short", "-b", SECOND_DESK_V4, SHOP_NAME]);
    assert_eq!(text(&second.stdout).trim(), SERVER_A_V4.to_string());

    let url = format!("http://{SERVER_A_V4}/");
    let first_curl = spawn_curl(&lab, &["--interface", "10.77.0.2", &url]);
    let first_request = pending_for(&daemon, "203.0.113.10:80");
    assert_eq!(first_request["host"], BLOG_NAME, "{first_request:#}");
    assert_eq!(first_request["name_source"], "dns");
    allow(&daemon, &first_request);
    assert!(first_curl.wait_with_output().unwrap().status.success());

    let second_curl = spawn_curl(&lab, &["--interface", SECOND_DESK_V4, &url]);
    let second_request = pending_for(&daemon, "203.0.113.10:80");
    assert_eq!(second_request["host"], SHOP_NAME, "{second_request:#}");
    assert_eq!(second_request["name_source"], "dns");
    allow(&daemon, &second_request);
    assert!(second_curl.wait_with_output().unwrap().status.success());
}

#[test]
fn other_program_gets_machine_name() {
    let lab = start_lab();
    lab.desk()
        .ip([
            "addr",
            "add",
            &format!("{SECOND_DESK_V4}/24"),
            "dev",
            DESK_LINK,
        ])
        .unwrap();
    let daemon = start_daemon(&lab, "");
    let resolved = dig(&lab, &["+short", "-b", "10.77.0.2", SHOP_NAME]);
    assert_eq!(text(&resolved.stdout).trim(), SERVER_A_V4.to_string());

    let curl = spawn_curl(
        &lab,
        &[
            "--interface",
            SECOND_DESK_V4,
            &format!("http://{SERVER_A_V4}/"),
        ],
    );
    let request = pending_for(&daemon, "203.0.113.10:80");
    assert_eq!(request["host"], SHOP_NAME, "{request:#}");
    assert_eq!(request["name_source"], "dns_machine", "{request:#}");
    allow(&daemon, &request);
    assert!(curl.wait_with_output().unwrap().status.success());
}

#[test]
fn tls_to_bare_ip_named_by_sni() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");

    // No DNS lookup happens: --resolve pins the address. Nothing listens on 443, so after the
    // allow the connection is reset; the name is read before anything is relayed.
    let curl = spawn_curl(
        &lab,
        &[
            "--resolve",
            &format!("tls-only.example:443:{SERVER_B_V4}"),
            "https://tls-only.example/",
        ],
    );
    let request = named_pending_for(&daemon, "203.0.113.20:443");
    assert_eq!(request["host"], "tls-only.example", "{request:#}");
    assert_eq!(request["name_source"], "tls", "{request:#}");
    allow(&daemon, &request);
    let _ = curl.wait_with_output();

    let openssl = lab
        .desk_command("openssl")
        .args(["s_client", "-connect", &format!("{SERVER_B_V4}:443")])
        .args(["-servername", "Openssl.Example"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("failed to start openssl");
    let request = named_pending_for(&daemon, "203.0.113.20:443");
    assert_eq!(request["host"], "openssl.example", "{request:#}");
    assert_eq!(request["name_source"], "tls");
    let id = request["id"].to_string();
    assert!(daemon.run_cli(&["deny", &id]).status.success());
    let _ = openssl.wait_with_output();
}

#[test]
fn http_host_names_connection() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    let curl = spawn_curl(
        &lab,
        &[
            "-H",
            "Host: by-header.example",
            &format!("http://{SERVER_B_V4}/"),
        ],
    );
    let request = named_pending_for(&daemon, "203.0.113.20:80");
    assert_eq!(request["host"], "by-header.example", "{request:#}");
    assert_eq!(request["name_source"], "http");
    allow(&daemon, &request);
    let output = curl.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn upstream_down_gives_fast_servfail() {
    let lab = start_lab();
    let _daemon = start_daemon(&lab, "dns.upstream_timeout_ms = 1000");
    lab.dns().server().stop().expect("failed to stop dnsmasq");

    let started = Instant::now();
    let output = dig(&lab, &[BLOG_NAME]);
    let elapsed = started.elapsed();
    assert!(
        text(&output.stdout).contains("status: SERVFAIL"),
        "{}",
        text(&output.stdout)
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "SERVFAIL took {elapsed:?}"
    );
}

#[test]
fn events_carry_host() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    let mut watch = daemon
        .cli()
        .args(["watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("failed to start tollgate watch");
    let curl = spawn_curl(&lab, &[&format!("http://{BLOG_NAME}/")]);
    let request = pending_for(&daemon, "203.0.113.10:80");
    allow(&daemon, &request);
    assert!(curl.wait_with_output().unwrap().status.success());

    let _ = watch.kill();
    let output = watch.wait_with_output().unwrap();
    let events: Vec<serde_json::Value> = text(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let held = events
        .iter()
        .find(|event| event["event"] == "held")
        .unwrap_or_else(|| panic!("no held event: {events:#?}"));
    assert_eq!(held["host"], BLOG_NAME);
    assert_eq!(held["name_source"], "dns");
}

#[test]
fn dns_rules_come_before_tcp() {
    let lab = start_lab();
    let _daemon = start_daemon(&lab, "interception.dns_exempt_users = [\"nobody\"]");
    let output = lab
        .desk_command("nft")
        .args(["list", "table", "inet", "tollgate"])
        .output()
        .unwrap();
    let ruleset = text(&output.stdout);
    let position = |needle: &str| {
        ruleset
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from\n{ruleset}"))
    };

    let exempt = position("udp dport 53 meta skuid 65534 return");
    let stub_udp = position("udp dport 53 fib daddr type local");
    let stub_tcp = position("tcp dport 53 fib daddr type local");
    let local = position("\n\t\tfib daddr type local return");
    let dns_mark = position("udp dport 53 meta mark set");
    let tcp_mark = position("meta l4proto tcp meta mark set");
    assert!(exempt < stub_udp, "{ruleset}");
    assert!(stub_udp < local, "{ruleset}");
    assert!(stub_tcp < local, "{ruleset}");
    assert!(exempt < dns_mark, "{ruleset}");
    assert!(dns_mark < tcp_mark, "{ruleset}");
    let dns_tproxy = position("ipv4 tcp dport 53 tproxy ip to 127.0.0.1:15053");
    let tcp_tproxy = position("tproxy ip to 127.0.0.1:15001");
    assert!(dns_tproxy < tcp_tproxy, "{ruleset}");
    position("ipv6 udp dport 53 tproxy ip6 to [::1]:15053");
}

#[test]
fn name_expires_after_ttl_and_grace() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "dns.name_grace_secs = 1");
    let resolved = dig(&lab, &["+short", SHORT_TTL_NAME]);
    assert_eq!(text(&resolved.stdout).trim(), SERVER_B_V4.to_string());

    let url = format!("http://{SERVER_B_V4}/");
    let fresh = spawn_curl(&lab, &[&url]);
    let request = pending_for(&daemon, "203.0.113.20:80");
    assert_eq!(request["host"], SHORT_TTL_NAME, "{request:#}");
    allow(&daemon, &request);
    assert!(fresh.wait_with_output().unwrap().status.success());

    // The TTL is 2 s and the grace period 1 s; the request's Host is the bare address.
    thread::sleep(Duration::from_secs(4));
    let stale = spawn_curl(&lab, &[&url]);
    let request = pending_for(&daemon, "203.0.113.20:80");
    assert!(request["host"].is_null(), "{request:#}");
    assert_eq!(request["name_source"], "none");
    allow(&daemon, &request);
    assert!(stale.wait_with_output().unwrap().status.success());

    // Both mappings of the answer expired: this client's and the machine-wide one.
    let status = text(&daemon.run_cli(&["status"]).stdout);
    assert!(status.contains("2 expired"), "{status}");
}

#[test]
fn desk_resolv_conf_is_removed_with_lab() {
    let path = {
        let lab = start_lab();
        let path = lab.dns().resolv_conf_path().to_owned();
        assert!(path.exists());
        let direct = Command::new("cat").arg(&path).output().unwrap();
        assert!(text(&direct.stdout).contains(&DNS_V4.to_string()));
        path
    };
    assert!(!path.exists(), "{} left behind", path.display());
    assert!(!path.parent().unwrap().exists());
}

#[test]
fn resolver_forwards_to_lab_server() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    let resolved = dig(&lab, &["+short", SHOP_NAME]);
    assert_eq!(text(&resolved.stdout).trim(), SERVER_A_V4.to_string());
    let log = daemon.log();
    assert!(log.contains("203.0.113.53"), "upstreams not logged:\n{log}");
}

/// Runs `dig ARGS` in the daemon's cgroup in desk and returns its pid and output.
fn dig_in_cgroup(lab: &Lab, daemon: &Daemon, args: &[&str]) -> (u32, Output) {
    let dig = daemon
        .desk_client(lab, "dig")
        .args(["+time=5", "+tries=1"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to run dig (install dnsutils)");
    let pid = dig.id();
    (pid, dig.wait_with_output().unwrap())
}

/// Waits until the daemon's log contains a line with every one of `parts`.
fn wait_for_log_line(daemon: &Daemon, parts: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = daemon.log();
        if log
            .lines()
            .any(|line| parts.iter().all(|part| line.contains(part)))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no log line contains {parts:?}:\n{log}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn local_stub_queries_reach_resolver() {
    let lab = start_lab();
    let stub_log = lab.work_dir().join("stub-dnsmasq.log");
    let _stub = LocalStub::start(lab.desk(), lab.work_dir(), &stub_log)
        .unwrap_or_else(|err| panic!("failed to start the local stub: {err:#}"));
    // Programs in desk and the daemon's default upstreams now name only the stub.
    lab.dns()
        .set_nameservers(&[IpAddr::V4(STUB_V4)])
        .unwrap_or_else(|err| panic!("{err:#}"));
    // No exempt user is configured: the daemon finds the stub's user from its socket.
    let mut daemon = Daemon::start_with_log_filter(
        &lab,
        "interception.dns_exempt_users = []",
        "tollgate_proxy=debug,tollgate_resolver=trace,info",
    )
    .unwrap_or_else(|err| panic!("{err:#}"));
    wait_for_log_line(&daemon, &["DNS upstreams", "127.0.0.53"]);
    let stub_uid = nix::unistd::User::from_name(STUB_USER)
        .unwrap()
        .unwrap_or_else(|| panic!("user {STUB_USER} not found"))
        .uid;
    wait_for_log_line(
        &daemon,
        &["stub resolver's user exempted", &format!("uid={stub_uid}")],
    );

    // Queries to the stub over UDP and TCP, IPv4 and IPv6: each is answered, and the resolver
    // records the name for the process that asked.
    let servers = [IpAddr::V4(STUB_V4), IpAddr::V6(STUB_V6)];
    for server in servers {
        for transport in ["+notcp", "+tcp"] {
            let (pid, output) = dig_in_cgroup(
                &lab,
                &daemon,
                &[transport, "+short", &format!("@{server}"), BLOG_NAME],
            );
            assert!(output.status.success(), "{}", text(&output.stderr));
            assert_eq!(
                text(&output.stdout).trim(),
                SERVER_A_V4.to_string(),
                "{server} {transport}"
            );
            wait_for_log_line(
                &daemon,
                &["answer recorded", &format!("pid: {pid} "), BLOG_NAME],
            );
        }
    }

    // curl resolves through desk's resolv.conf, which names the stub only.
    let curl = daemon
        .desk_client(&lab, "curl")
        .args(["-sS", "--max-time", "60", &format!("http://{SHOP_NAME}/")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start curl");
    let curl_pid = curl.id();
    let request = pending_for(&daemon, "203.0.113.10:80");
    assert_eq!(request["host"], SHOP_NAME, "{request:#}");
    assert_eq!(request["name_source"], "dns", "{request:#}");
    assert_eq!(
        request["process"]["pid"].as_u64(),
        Some(u64::from(curl_pid)),
        "{request:#}"
    );
    allow(&daemon, &request);
    let output = curl.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains(INDEX_MARKER));
    let stub_queries = std::fs::read_to_string(&stub_log).unwrap();
    assert!(
        stub_queries.contains(&format!("query[A] {SHOP_NAME} from 127.0.0.1")),
        "the resolver did not forward to the stub:\n{stub_queries}"
    );

    // After a crash the table stays, but once its heartbeat element expires (3 s) the stub
    // answers directly again.
    daemon.kill().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let after_crash = lab
            .desk_command("dig")
            .args(["+time=1", "+tries=1", "+short", &format!("@{STUB_V4}")])
            .arg(SHORT_TTL_NAME)
            .output()
            .expect("failed to run dig (install dnsutils)");
        if text(&after_crash.stdout).trim() == SERVER_B_V4.to_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stub not reachable after the crash: {}{}",
            text(&after_crash.stdout),
            text(&after_crash.stderr)
        );
        thread::sleep(Duration::from_millis(200));
    }
    let leftover = lab
        .desk_command("nft")
        .args(["list", "table", "inet", "tollgate"])
        .output()
        .unwrap();
    assert!(leftover.status.success(), "table removed by the crash");

    // A clean stop removes the table, and the stub answers directly.
    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));
    daemon.stop().unwrap();
    let table = lab
        .desk_command("nft")
        .args(["list", "table", "inet", "tollgate"])
        .output()
        .unwrap();
    assert!(
        !table.status.success(),
        "table left: {}",
        text(&table.stdout)
    );
    for transport in ["+notcp", "+tcp"] {
        let direct = dig(
            &lab,
            &[transport, "+short", &format!("@{STUB_V4}"), SHOP_NAME],
        );
        assert_eq!(
            text(&direct.stdout).trim(),
            SERVER_A_V4.to_string(),
            "{transport}: {}",
            text(&direct.stderr)
        );
    }
}

#[test]
fn host_rule_beats_network_rule_for_first_bytes() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    let deny = daemon.run_cli(&["rules", "add", "--action", "deny", "--to", "203.0.113.0/24"]);
    assert!(deny.status.success(), "{}", text(&deny.stderr));
    let allow = daemon.run_cli(&[
        "rules",
        "add",
        "--action",
        "allow",
        "--to",
        "by-header.example",
    ]);
    assert!(allow.status.success(), "{}", text(&allow.stderr));

    // The name comes from the Host header only; the more specific host rule must still win.
    let output = spawn_curl(
        &lab,
        &[
            "-H",
            "Host: by-header.example",
            &format!("http://{SERVER_B_V4}/"),
        ],
    )
    .wait_with_output()
    .unwrap();

    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn answer_reaches_request_named_meanwhile() {
    let lab = start_lab();
    let daemon = start_daemon(&lab, "");
    // Connects, waits for a line on stdin, then sends an HTTP request head and prints the
    // echo server's reply.
    let script = "import socket, sys\n\
                  s = socket.create_connection((sys.argv[1], 7), timeout=30)\n\
                  sys.stdin.readline()\n\
                  s.sendall(b'GET / HTTP/1.1\\r\\nHost: late.example\\r\\n\\r\\n')\n\
                  print(s.recv(100).decode().split()[0])\n";
    let mut client = lab
        .desk_command("python3")
        .args(["-c", script, &SERVER_B_V4.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start python3");
    let unnamed = pending_for(&daemon, "203.0.113.20:7");
    assert!(unnamed["host"].is_null(), "{unnamed:#}");

    // The first bytes name the connection, which moves to a new request.
    let mut stdin = client.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
    let named = named_pending_for(&daemon, "203.0.113.20:7");
    assert_eq!(named["host"], "late.example", "{named:#}");
    assert_ne!(named["id"], unnamed["id"]);

    // An answer to the id the person saw first still reaches the connection.
    allow(&daemon, &unnamed);
    let output = client.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim(), "GET");
}
