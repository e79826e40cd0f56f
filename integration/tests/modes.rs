//! End-to-end tests of audit and enforce mode: real curl and python clients in the desk
//! namespace, the flow log they leave, and the exit codes of `tollgate report`.

use std::{
    fs,
    net::{IpAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use tollgate_integration::{
    INDEX_MARKER, Lab,
    daemon::Daemon,
    topology::{SERVER_A_V4, SERVER_B_V4, UDP_ECHO_PORT},
};

fn start_lab() -> Lab {
    Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"))
}

fn start_daemon(lab: &Lab, extra_config: &str) -> Daemon {
    Daemon::start(lab, extra_config).unwrap_or_else(|err| panic!("{err:#}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Returns the path `program` resolves to, as the daemon reports executables. A python3 found
/// on `PATH` may be a wrapper script (pyenv's shims), so python names its own interpreter.
fn real_path(program: &str) -> String {
    let script = match program {
        "python3" => "python3 -c 'import os, sys; print(os.path.realpath(sys.executable))'".into(),
        _ => format!("readlink -f \"$(command -v {program})\""),
    };
    let output = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("failed to run sh");
    text(&output.stdout).trim().to_owned()
}

fn curl(lab: &Lab, daemon: &Daemon, server: IpAddr) -> Output {
    daemon
        .desk_client(lab, "curl")
        .args(["-sS", "--max-time", "20"])
        .arg(Lab::http_url(server))
        .output()
        .expect("failed to run curl")
}

fn python_get(lab: &Lab, daemon: &Daemon, server: IpAddr) -> Output {
    let script = format!(
        "import urllib.request; print(urllib.request.urlopen('{}', timeout=20).read().decode())",
        Lab::http_url(server)
    );
    daemon
        .desk_client(lab, "python3")
        .args(["-c", &script])
        .output()
        .expect("failed to run python3")
}

fn assert_page(output: &Output, client: &str) {
    assert!(
        output.status.success(),
        "{client} failed: {}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stdout).contains(INDEX_MARKER),
        "{client} got no page"
    );
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    let log = fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("failed to read flow log {}: {err}", path.display()));
    log.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

/// Waits until the flow log has `count` records. A flow's record is written once the daemon
/// has relayed both closes, which may be just after the client exits.
fn wait_for_records(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = if path.exists() {
            records(path)
        } else {
            Vec::new()
        };
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} records in {}, found {found:#?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn record_to<'a>(records: &'a [serde_json::Value], ip: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|record| record["ip"] == ip)
        .unwrap_or_else(|| panic!("no record to {ip}: {records:#?}"))
}

/// Writes a policy that lets curl reach server A on port 80 over TCP.
fn write_policy(dir: &Path) -> PathBuf {
    let path = dir.join("policy.toml");
    let policy = format!(
        "[[allow]]\nname = \"server A\"\nexecutables = [\"{}\"]\nnetworks = [\"{SERVER_A_V4}\"]\n\
         ports = [80]\nprotocol = \"tcp\"\n",
        real_path("curl")
    );
    fs::write(&path, policy).expect("failed to write policy");
    path
}

fn report(daemon: &Daemon, log: &Path, policy: Option<&Path>) -> Output {
    let mut command = daemon.cli();
    command.arg("report").arg("--audit-log").arg(log);
    if let Some(policy) = policy {
        command.arg("--policy").arg(policy);
    }
    command.output().expect("failed to run tollgate report")
}

#[test]
fn audit_records_each_flow() {
    let lab = start_lab();
    let log = lab.work_dir().join("flows.jsonl");
    let summary = lab.work_dir().join("summary.txt");
    let mut daemon = start_daemon(
        &lab,
        &format!(
            "mode = \"audit\"\naudit_log = \"{}\"\naudit_summary = \"{}\"\n",
            log.display(),
            summary.display()
        ),
    );

    assert_page(&curl(&lab, &daemon, SERVER_A_V4.into()), "curl");
    assert_page(&python_get(&lab, &daemon, SERVER_B_V4.into()), "python3");
    assert!(
        daemon.pending().is_empty(),
        "audit mode must not hold flows"
    );
    let status = text(&daemon.run_cli(&["status"]).stdout);
    assert!(status.contains("mode:               audit"), "{status}");
    wait_for_records(&log, 2);
    daemon.stop().expect("failed to stop tollgated");

    let records = records(&log);
    assert_eq!(records.len(), 2, "{records:#?}");
    let by_curl = record_to(&records, "203.0.113.10");
    assert_eq!(by_curl["process"]["executable"], real_path("curl"));
    assert_eq!(by_curl["port"], 80);
    assert_eq!(by_curl["protocol"], "tcp");
    assert_eq!(by_curl["verdict"], "allow");
    assert_eq!(by_curl["expected"], "prompt");
    assert!(by_curl["host"].is_null(), "{by_curl:#}");
    assert!(by_curl["name_source"].is_null(), "{by_curl:#}");
    assert!(by_curl["bytes_up"].as_u64().unwrap() > 0, "{by_curl:#}");
    assert!(by_curl["bytes_down"].as_u64().unwrap() > 0, "{by_curl:#}");
    let by_python = record_to(&records, "203.0.113.20");
    assert_eq!(by_python["process"]["executable"], real_path("python3"));
    assert_eq!(by_python["verdict"], "allow");

    let summary = fs::read_to_string(&summary).expect("no summary written at exit");
    assert!(
        summary.contains("2 flow(s) from 2 process(es)"),
        "{summary}"
    );
    assert!(summary.contains("203.0.113.10:80/tcp"), "{summary}");
    assert!(summary.contains(&real_path("python3")), "{summary}");
}

#[test]
fn audit_with_rule_expects_its_verdict() {
    let lab = start_lab();
    let log = lab.work_dir().join("flows.jsonl");
    let daemon = start_daemon(
        &lab,
        &format!("mode = \"audit\"\naudit_log = \"{}\"\n", log.display()),
    );
    let added = daemon.run_cli(&[
        "rules",
        "add",
        "--action",
        "deny",
        "--to",
        "203.0.113.20",
        "--lifetime",
        "until-restart",
    ]);
    assert!(added.status.success(), "{}", text(&added.stderr));

    // The rule denies, but audit mode lets the flow pass and records what would happen.
    assert_page(&curl(&lab, &daemon, SERVER_B_V4.into()), "curl");
    let records = wait_for_records(&log, 1);
    let record = record_to(&records, "203.0.113.20");
    assert_eq!(record["verdict"], "allow");
    assert_eq!(record["expected"], "deny");
    assert!(
        record["reason"].as_str().unwrap().contains("rule"),
        "{record:#}"
    );
}

#[test]
fn enforce_allows_policy_and_resets_rest() {
    let lab = start_lab();
    let log = lab.work_dir().join("flows.jsonl");
    let policy = write_policy(lab.work_dir());
    let mut daemon = start_daemon(
        &lab,
        &format!(
            "mode = \"enforce\"\npolicy = \"{}\"\naudit_log = \"{}\"\n",
            policy.display(),
            log.display()
        ),
    );

    assert_page(
        &curl(&lab, &daemon, SERVER_A_V4.into()),
        "curl to the allowed server",
    );
    let refused = curl(&lab, &daemon, SERVER_B_V4.into());
    // A reset that arrives before curl has sent its request shows as "failed to connect" (7),
    // a later one as "receive failure" (56).
    assert!(
        matches!(refused.status.code(), Some(7 | 56)),
        "curl outside the policy must see a reset, got {:?}: {}",
        refused.status.code(),
        text(&refused.stderr)
    );
    let python = python_get(&lab, &daemon, SERVER_A_V4.into());
    assert!(
        !python.status.success(),
        "python3 is not in the policy, yet got through"
    );
    assert!(daemon.pending().is_empty(), "enforce mode must not prompt");
    wait_for_records(&log, 3);
    daemon.stop().expect("failed to stop tollgated");

    let log_text = daemon.log();
    assert!(log_text.contains("denied by policy"), "{log_text}");
    let records = records(&log);
    let denied: Vec<&serde_json::Value> = records
        .iter()
        .filter(|record| record["verdict"] == "deny")
        .collect();
    assert_eq!(denied.len(), 2, "{records:#?}");
    let to_b = record_to(&records, "203.0.113.20");
    assert_eq!(to_b["verdict"], "deny");
    let reason = to_b["reason"].as_str().expect("denial without a reason");
    assert!(reason.contains("server A"), "{reason}");
    assert!(reason.contains("203.0.113.20"), "{reason}");
    let by_python = denied
        .iter()
        .find(|record| record["process"]["executable"] == real_path("python3"))
        .unwrap_or_else(|| panic!("no denial of python3: {records:#?}"));
    assert!(
        by_python["reason"].as_str().unwrap().contains("executable"),
        "{by_python:#}"
    );
    let allowed = records
        .iter()
        .find(|record| record["verdict"] == "allow")
        .expect("no allowed flow recorded");
    assert_eq!(allowed["ip"], "203.0.113.10");
    assert!(allowed["bytes_down"].as_u64().unwrap() > 0, "{allowed:#}");
}

#[test]
fn report_exits_nonzero_outside_policy() {
    let lab = start_lab();
    let log = lab.work_dir().join("flows.jsonl");
    let daemon = start_daemon(
        &lab,
        &format!("mode = \"audit\"\naudit_log = \"{}\"\n", log.display()),
    );
    assert_page(&curl(&lab, &daemon, SERVER_A_V4.into()), "curl");

    wait_for_records(&log, 1);
    let policy = write_policy(lab.work_dir());
    let within = report(&daemon, &log, Some(&policy));
    assert_eq!(within.status.code(), Some(0), "{}", text(&within.stderr));
    assert!(
        text(&within.stdout).contains("all 1 flow(s) allowed"),
        "{}",
        text(&within.stdout)
    );

    assert_page(&curl(&lab, &daemon, SERVER_B_V4.into()), "curl");
    wait_for_records(&log, 2);
    let outside = report(&daemon, &log, Some(&policy));
    let printed = text(&outside.stdout);
    assert_eq!(outside.status.code(), Some(3), "{printed}");
    assert!(
        printed.contains("1 destination(s) outside the policy"),
        "{printed}"
    );
    assert!(printed.contains("203.0.113.20:80/tcp"), "{printed}");

    let plain = report(&daemon, &log, None);
    assert_eq!(plain.status.code(), Some(0), "{}", text(&plain.stderr));
    assert!(text(&plain.stdout).contains(&real_path("curl")));
}

#[test]
fn enforce_without_policy_fails_to_start() {
    let lab = start_lab();
    let err = Daemon::start(&lab, "mode = \"enforce\"\n").expect_err("daemon started");
    assert!(err.to_string().contains("policy"), "{err:#}");
}

#[test]
fn enforce_applies_policy_to_udp() {
    let lab = start_lab();
    let log = lab.work_dir().join("flows.jsonl");
    let policy = lab.work_dir().join("policy.toml");
    fs::write(
        &policy,
        format!(
            "[[allow]]\nname = \"echo A\"\nnetworks = [\"{SERVER_A_V4}\"]\nports = [{UDP_ECHO_PORT}]\n\
             protocol = \"udp\"\n"
        ),
    )
    .expect("failed to write policy");
    // A short idle timeout ends the allowed flow soon, which writes its record.
    let daemon = start_daemon(
        &lab,
        &format!(
            "mode = \"enforce\"\npolicy = \"{}\"\naudit_log = \"{}\"\nudp_idle_timeout_secs = 1\n",
            policy.display(),
            log.display()
        ),
    );

    let (allowed, denied) = lab
        .desk()
        .run(|| {
            let exchange = |server: IpAddr, wait: Duration| {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                socket.connect((server, UDP_ECHO_PORT)).unwrap();
                socket.set_read_timeout(Some(wait)).unwrap();
                socket.send(b"ping").unwrap();
                let mut buffer = [0u8; 64];
                socket
                    .recv(&mut buffer)
                    .map(|len| buffer[..len].to_vec())
                    .map_err(|err| err.kind())
            };
            (
                exchange(SERVER_A_V4.into(), Duration::from_secs(20)),
                exchange(SERVER_B_V4.into(), Duration::from_secs(2)),
            )
        })
        .unwrap();
    assert_eq!(allowed, Ok(b"ping".to_vec()));
    assert!(denied.is_err(), "a flow outside the policy got {denied:?}");

    let records = wait_for_records(&log, 2);
    let to_b = record_to(&records, "203.0.113.20");
    assert_eq!(to_b["protocol"], "udp");
    assert_eq!(to_b["verdict"], "deny");
    let reason = to_b["reason"].as_str().expect("denial without a reason");
    assert!(reason.contains("echo A"), "{reason}");
    let to_a = record_to(&records, "203.0.113.10");
    assert_eq!(to_a["verdict"], "allow");
    assert_eq!(to_a["bytes_down"], 4);
    drop(daemon);
}
