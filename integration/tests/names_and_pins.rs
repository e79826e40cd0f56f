//! End-to-end tests where names, rules and attribution meet: a QUIC-like flow named by DNS,
//! domain rules on live connections, and a rule pinned to an executable's digest.

use std::{
    fs,
    process::{Output, Stdio},
    time::Duration,
};

use tollgate_integration::{
    INDEX_MARKER, Lab,
    daemon::Daemon,
    dns::{ALIAS_NAME, BLOG_NAME, SHOP_NAME},
};

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

fn curl(daemon: &Daemon, lab: &Lab, url: &str) -> Output {
    daemon
        .desk_client(lab, "curl")
        .args(["-sS", "--max-time", "20", url])
        .output()
        .unwrap()
}

#[test]
fn quic_like_flow_shows_its_name() {
    let (lab, daemon) = start();
    // One process resolves the name and sends a datagram to port 443 of the address it got.
    let script = format!(
        "import socket\n\
         address = socket.getaddrinfo('{BLOG_NAME}', 443, socket.AF_INET, socket.SOCK_DGRAM)[0][4]\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(60)\n\
         s.sendto(b'initial', address)\n\
         print(s.recv(100).decode())"
    );
    let child = daemon
        .desk_client(&lab, "python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pending = daemon.wait_for_held(1, WAIT);
    assert_eq!(
        pending[0]["destination"], "203.0.113.10:443",
        "{pending:#?}"
    );
    assert_eq!(pending[0]["protocol"], "udp");
    assert_eq!(pending[0]["host"], BLOG_NAME, "{pending:#?}");
    assert_eq!(pending[0]["name_source"], "dns", "{pending:#?}");
    let id = pending[0]["id"].to_string();
    assert_cli_ok(&daemon.run_cli(&["allow", &id]), "allow");
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        text(&output.stdout).trim(),
        "initial",
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn domain_rule_covers_subdomains_only() {
    let (lab, daemon) = start();
    let added = daemon.run_cli(&["rules", "add", "--action", "allow", "--to", "*.lab.test"]);
    assert_cli_ok(&added, "rules add");

    // blog.lab.test is under the domain: it passes without a prompt.
    let blog = curl(&daemon, &lab, &format!("http://{BLOG_NAME}/"));
    assert!(
        text(&blog.stdout).contains(INDEX_MARKER),
        "{}",
        text(&blog.stderr)
    );
    assert!(daemon.pending().is_empty());

    // The same address reached by its bare IP has no name: it is held.
    let child = daemon
        .desk_client(&lab, "curl")
        .args(["-sS", "--max-time", "60", "http://203.0.113.20/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pending = daemon.wait_for_held(1, WAIT);
    let id = pending[0]["id"].to_string();
    assert_cli_ok(&daemon.run_cli(&["deny", &id]), "deny");
    child.wait_with_output().unwrap();
}

#[test]
fn deny_on_cname_target_blocks_alias() {
    let (lab, daemon) = start();
    // www.lab.test is an alias whose chain ends at blog.lab.test; the deny names the end.
    let denied = daemon.run_cli(&["rules", "add", "--action", "deny", "--to", BLOG_NAME]);
    assert_cli_ok(&denied, "rules add deny");
    let allowed = daemon.run_cli(&["rules", "add", "--action", "allow", "--to", "*.lab.test"]);
    assert_cli_ok(&allowed, "rules add allow");

    // Refused at DNS time (6, NXDOMAIN) or reset by the firewall (7 or 56): the alias, case
    // and trailing-dot variants, and the name's IPv6 address (AAAA). The allowed name below
    // shows that lookups work.
    let attempts = [
        (format!("http://{ALIAS_NAME}/"), "-4"),
        (format!("http://{}/", BLOG_NAME.to_uppercase()), "-4"),
        (format!("http://{BLOG_NAME}./"), "-4"),
        (format!("http://{BLOG_NAME}/"), "-6"),
    ];
    for (url, family) in attempts {
        let output = daemon
            .desk_client(&lab, "curl")
            .args(["-sS", family, "--max-time", "20", &url])
            .output()
            .unwrap();
        assert!(
            matches!(output.status.code(), Some(6 | 7 | 56)),
            "{url} {family}: {:?} {}",
            output.status.code(),
            text(&output.stderr)
        );
    }
    // Another name on the same address is allowed by the domain rule.
    let shop = curl(&daemon, &lab, &format!("http://{SHOP_NAME}/"));
    assert!(
        text(&shop.stdout).contains(INDEX_MARKER),
        "{}",
        text(&shop.stderr)
    );
}

#[test]
fn replaced_executable_loses_pinned_rule() {
    let (lab, daemon) = start();
    let program = lab.work_dir().join("fetcher");
    let curl_path = std::process::Command::new("sh")
        .args(["-c", "readlink -f \"$(command -v curl)\""])
        .output()
        .unwrap();
    fs::copy(text(&curl_path.stdout).trim(), &program).unwrap();
    let digest = std::process::Command::new("sha256sum")
        .arg(&program)
        .output()
        .unwrap();
    let digest = text(&digest.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let added = daemon.run_cli(&[
        "rules",
        "add",
        "--action",
        "allow",
        "--sha256",
        &digest,
        "--to",
        "203.0.113.10",
    ]);
    assert_cli_ok(&added, "rules add --sha256");

    let pinned = daemon
        .desk_client(&lab, &program)
        .args(["-sS", "--max-time", "20", "http://203.0.113.10/"])
        .output()
        .unwrap();
    assert!(
        text(&pinned.stdout).contains(INDEX_MARKER),
        "{}",
        text(&pinned.stderr)
    );
    assert!(daemon.pending().is_empty());

    // Replace the file as an update would: new content, renamed over the old path.
    let mut changed = fs::read(&program).unwrap();
    changed.extend_from_slice(b"\0replaced");
    let staged = lab.work_dir().join("fetcher.new");
    fs::write(&staged, changed).unwrap();
    fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::rename(&staged, &program).unwrap();

    let child = daemon
        .desk_client(&lab, &program)
        .args(["-sS", "--max-time", "60", "http://203.0.113.10/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pending = daemon.wait_for_held(1, WAIT);
    assert_eq!(
        pending[0]["process"]["executable"],
        program.to_str().unwrap(),
        "{pending:#?}"
    );
    let id = pending[0]["id"].to_string();
    assert_cli_ok(&daemon.run_cli(&["deny", &id]), "deny");
    child.wait_with_output().unwrap();
}

/// Runs `dig` in desk in the daemon's cgroup and returns its output.
fn dig(daemon: &Daemon, lab: &Lab, args: &[&str]) -> String {
    let output = daemon
        .desk_client(lab, "dig")
        .args(["+tries=1", "+time=5"])
        .args(args)
        .output()
        .unwrap();
    text(&output.stdout)
}

#[test]
fn denied_name_is_refused_at_dns_time() {
    let (lab, daemon) = start();
    let before = dig(&daemon, &lab, &["+short", SHOP_NAME]);
    assert_eq!(before.trim(), "203.0.113.10", "{before}");

    let denied = daemon.run_cli(&["rules", "add", "--action", "deny", "--to", SHOP_NAME]);
    assert_cli_ok(&denied, "rules add deny");
    let after = dig(&daemon, &lab, &[SHOP_NAME]);
    assert!(after.contains("status: NXDOMAIN"), "{after}");
    // Other names still resolve.
    let other = dig(&daemon, &lab, &["+short", BLOG_NAME, "A"]);
    assert_eq!(other.trim(), "203.0.113.10", "{other}");
}

#[test]
fn refusal_can_answer_null_address() {
    let lab = Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"));
    let daemon = Daemon::start(&lab, "dns.refusal = \"null_address\"")
        .unwrap_or_else(|err| panic!("{err:#}"));
    let denied = daemon.run_cli(&["rules", "add", "--action", "deny", "--to", "*.lab.test"]);
    assert_cli_ok(&denied, "rules add deny");
    let v4 = dig(&daemon, &lab, &["+short", BLOG_NAME, "A"]);
    assert_eq!(v4.trim(), "0.0.0.0", "{v4}");
    let v6 = dig(&daemon, &lab, &["+short", BLOG_NAME, "AAAA"]);
    assert_eq!(v6.trim(), "::", "{v6}");
}
