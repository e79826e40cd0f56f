//! End-to-end tests of rules through `tollgated` in the lab: temporary lifetimes, editing,
//! explaining, conflicts, hit counts, export and import, driven by the `tollgate` command.

use std::{
    net::IpAddr,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use tollgate_integration::{
    INDEX_MARKER, Lab,
    daemon::Daemon,
    topology::{SERVER_A_V4, SERVER_B_V4},
};

/// Generous bound on waits for the daemon; tests never depend on how fast it is.
const WAIT: Duration = Duration::from_secs(30);

fn start_lab() -> Lab {
    Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"))
}

fn start_daemon(lab: &Lab) -> Daemon {
    Daemon::start(lab, "prompt_timeout_secs = 2").unwrap_or_else(|err| panic!("{err:#}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run_ok(daemon: &Daemon, args: &[&str]) -> String {
    let output = daemon.run_cli(args);
    assert!(
        output.status.success(),
        "tollgate {args:?} failed: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn run_err(daemon: &Daemon, args: &[&str]) -> String {
    let output = daemon.run_cli(args);
    assert!(
        !output.status.success(),
        "tollgate {args:?} succeeded: {}",
        text(&output.stdout)
    );
    text(&output.stderr)
}

/// Runs curl in desk against `server` and returns its output. The daemon's prompt timeout is
/// 2 s and its default action deny, so a connection that no rule allows fails after 2 s.
fn curl(lab: &Lab, server: IpAddr) -> Output {
    lab.desk_command("curl")
        .args(["-sS", "--max-time", "20"])
        .arg(Lab::http_url(server))
        .output()
        .expect("failed to run curl")
}

fn assert_passes(lab: &Lab, server: IpAddr) {
    let output = curl(lab, server);
    assert!(
        output.status.success(),
        "curl failed: {}",
        text(&output.stderr)
    );
    assert!(text(&output.stdout).contains(INDEX_MARKER));
}

fn assert_blocked(lab: &Lab, server: IpAddr) {
    let output = curl(lab, server);
    assert!(!output.status.success(), "curl to {server} passed");
}

fn rules_json(daemon: &Daemon) -> Vec<serde_json::Value> {
    let stdout = run_ok(daemon, &["rules", "list", "--json"]);
    serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("invalid JSON ({err}): {stdout}"))
}

fn added_id(stdout: &str) -> String {
    let rest = stdout
        .strip_prefix("added rule ")
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    rest.split(':').next().unwrap().to_owned()
}

/// Waits until `tollgate rules list` shows `count` rules, and panics with the log otherwise.
fn wait_for_rule_count(daemon: &Daemon, count: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let rules = rules_json(daemon);
        if rules.len() == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} rules, found {rules:#?}\n--- daemon log ---\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

const ALLOW_A: &[&str] = &[
    "rules",
    "add",
    "--action",
    "allow",
    "--to",
    "203.0.113.10",
    "--port",
    "80",
];

#[test]
fn duration_rule_expires() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let args = [ALLOW_A, &["--for", "2s"]].concat();
    let added = Instant::now();
    run_ok(&daemon, &args);

    assert_passes(&lab, SERVER_A_V4.into());
    let listed = rules_json(&daemon);
    assert_eq!(listed[0]["lifetime"]["for"]["secs"], 2, "{listed:#?}");

    wait_for_rule_count(&daemon, 0);
    assert!(
        added.elapsed() >= Duration::from_secs(2),
        "removed too early"
    );
    assert!(
        added.elapsed() < Duration::from_secs(10),
        "removed too late"
    );
    assert_blocked(&lab, SERVER_A_V4.into());
    assert!(daemon.log().contains("rule ended"), "{}", daemon.log());
}

fn spawn_sleeper() -> Child {
    Command::new("sleep")
        .arg("60")
        .stdout(Stdio::null())
        .spawn()
        .expect("failed to start sleep")
}

#[test]
fn until_exit_rule_ends_with_its_process() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let mut tied = spawn_sleeper();
    // Another process of the same executable must not keep the rule alive.
    let mut other = spawn_sleeper();
    let pid = tied.id().to_string();
    run_ok(&daemon, &[ALLOW_A, &["--until-exit", &pid]].concat());

    assert_passes(&lab, SERVER_A_V4.into());
    let listed = rules_json(&daemon);
    assert_eq!(
        listed[0]["lifetime"]["until_exit"]["pid"],
        tied.id(),
        "{listed:#?}"
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        rules_json(&daemon).len(),
        1,
        "the rule ended while its process runs"
    );

    tied.kill().unwrap();
    tied.wait().unwrap();
    wait_for_rule_count(&daemon, 0);
    assert_blocked(&lab, SERVER_A_V4.into());

    other.kill().unwrap();
    other.wait().unwrap();
    let error = run_err(&daemon, &[ALLOW_A, &["--until-exit", &pid]].concat());
    assert!(error.contains("no running process with pid"), "{error}");
}

#[test]
fn temporary_rules_survive_edits_and_imports() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let mut sleeper = spawn_sleeper();
    let pid = sleeper.id().to_string();
    run_ok(&daemon, &[ALLOW_A, &["--until-exit", &pid]].concat());
    run_ok(&daemon, &[ALLOW_A, &["--for", "1h"]].concat());
    run_ok(&daemon, &[ALLOW_A, &["--until-restart"]].concat());
    let forever = added_id(&run_ok(&daemon, ALLOW_A));

    run_ok(&daemon, &["rules", "edit", &forever, "--action", "deny"]);
    run_ok(&daemon, &["rules", "disable", &forever]);
    let file = lab.work_dir().join("one.json");
    std::fs::write(
        &file,
        r#"{"format":"tollgate-rules","version":1,"rules":[{"id":1,"action":"allow","lifetime":"forever"}]}"#,
    )
    .unwrap();
    run_ok(
        &daemon,
        &["rules", "import", file.to_str().unwrap(), "--new-ids"],
    );

    assert_eq!(rules_json(&daemon).len(), 5);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    wait_for_rule_count(&daemon, 4);
}

#[test]
fn edit_enable_disable_change_verdicts() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let id = added_id(&run_ok(&daemon, ALLOW_A));
    assert_passes(&lab, SERVER_A_V4.into());

    run_ok(&daemon, &["rules", "disable", &id]);
    assert_blocked(&lab, SERVER_A_V4.into());
    assert_eq!(rules_json(&daemon)[0]["enabled"], false);

    run_ok(&daemon, &["rules", "enable", &id]);
    assert_passes(&lab, SERVER_A_V4.into());

    run_ok(
        &daemon,
        &[
            "rules",
            "edit",
            &id,
            "--action",
            "deny",
            "--note",
            "blocked now",
        ],
    );
    let output = curl(&lab, SERVER_A_V4.into());
    // A reset right at the accept reaches curl during or after its connect: 7 or 56.
    assert!(
        matches!(output.status.code(), Some(7 | 56)),
        "{}\n--- daemon log ---\n{}",
        text(&output.stderr),
        daemon.log()
    );
    assert!(
        daemon.log().contains("verdict action=deny by=Rule"),
        "{}",
        daemon.log()
    );
    let rule = &rules_json(&daemon)[0];
    assert_eq!(rule["action"], "deny");
    assert_eq!(rule["note"], "blocked now");
    assert!(rule["updated_unix_ms"].as_u64() >= rule["created_unix_ms"].as_u64());

    run_ok(
        &daemon,
        &[
            "rules",
            "edit",
            &id,
            "--to",
            "203.0.113.20",
            "--action",
            "allow",
        ],
    );
    assert_passes(&lab, SERVER_B_V4.into());
    assert_blocked(&lab, SERVER_A_V4.into());
}

#[test]
fn explain_names_the_deciding_rule() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let any = added_id(&run_ok(&daemon, &["rules", "add", "--action", "deny"]));
    let network = added_id(&run_ok(
        &daemon,
        &[
            "rules",
            "add",
            "--action",
            "allow",
            "--to",
            "203.0.113.0/24",
        ],
    ));
    let curl_rule = added_id(&run_ok(
        &daemon,
        &[
            "rules",
            "add",
            "--action",
            "deny",
            "--exe",
            "/usr/bin/curl",
            "--to",
            "203.0.113.0/24",
        ],
    ));
    let via_bash = added_id(&run_ok(
        &daemon,
        &[
            "rules",
            "add",
            "--action",
            "allow",
            "--exe",
            "/usr/bin/curl",
            "--via",
            "/usr/bin/bash",
        ],
    ));

    let unknown = run_ok(&daemon, &["explain", "unknown", "203.0.113.10:80"]);
    assert!(
        unknown.contains(&format!("decided by rule {network}:")),
        "{unknown}"
    );
    assert!(
        unknown.contains(&format!("beats rule {any} (deny) at step 5 (address kind)")),
        "{unknown}"
    );

    let from_curl = run_ok(&daemon, &["explain", "/usr/bin/curl", "203.0.113.10:80"]);
    assert!(
        from_curl.contains(&format!("decided by rule {curl_rule}:")),
        "{from_curl}"
    );
    assert!(
        from_curl.contains(&format!(
            "beats rule {network} (allow) at step 2 (executable)"
        )),
        "{from_curl}"
    );

    let via = run_ok(
        &daemon,
        &[
            "explain",
            "/usr/bin/curl",
            "203.0.113.10:80",
            "--via",
            "/usr/bin/bash",
        ],
    );
    assert!(
        via.contains(&format!("decided by rule {via_bash}:")),
        "{via}"
    );
    assert!(via.contains("step 4 (subject conditions)"), "{via}");

    let json = run_ok(
        &daemon,
        &["explain", "unknown", "[2001:db8::10]:443", "--json"],
    );
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["explanation"]["winner"].to_string(), any, "{json}");

    run_ok(&daemon, &["rules", "remove", &any]);
    let prompt = run_ok(
        &daemon,
        &["explain", "unknown", "198.51.100.1:53", "--protocol", "udp"],
    );
    assert!(prompt.contains("would be held and prompt"), "{prompt}");

    run_ok(&daemon, &["rules", "disable", &network]);
    let disabled = run_ok(&daemon, &["explain", "unknown", "203.0.113.10:80"]);
    assert!(
        disabled.contains(&format!("rule {network} would match but is disabled")),
        "{disabled}"
    );
}

#[test]
fn explain_reads_a_running_process() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let mut sleeper = spawn_sleeper();
    let sleep_path = std::fs::read_link(format!("/proc/{}/exe", sleeper.id())).unwrap();
    let rule = added_id(&run_ok(
        &daemon,
        &[
            "rules",
            "add",
            "--action",
            "deny",
            "--exe",
            sleep_path.to_str().unwrap(),
            "--user",
            "0",
        ],
    ));

    let pid = sleeper.id().to_string();
    let output = run_ok(&daemon, &["explain", &pid, "203.0.113.10:80", "--json"]);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    let value: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(value["explanation"]["winner"].to_string(), rule, "{output}");
    let connection = &value["connection"];
    assert_eq!(connection["uid"], 0, "{output}");
    assert_eq!(connection["command_line"], "sleep 60", "{output}");
    assert_eq!(
        connection["sha256"].as_str().map(str::len),
        Some(64),
        "{output}"
    );
    assert!(connection["parent_executable"].is_string(), "{output}");
}

#[test]
fn list_shows_which_conflicting_rule_wins() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let allow = added_id(&run_ok(&daemon, ALLOW_A));
    let deny = added_id(&run_ok(
        &daemon,
        &[
            "rules",
            "add",
            "--action",
            "deny",
            "--to",
            "203.0.113.10",
            "--port",
            "80",
        ],
    ));

    let table = run_ok(&daemon, &["rules", "list"]);

    let deny_line = table
        .lines()
        .position(|line| line.starts_with(&deny))
        .unwrap();
    let allow_line = table
        .lines()
        .position(|line| line.starts_with(&allow))
        .unwrap();
    assert!(
        deny_line < allow_line,
        "the winner is listed first:\n{table}"
    );
    let note = table.lines().nth(allow_line + 1).unwrap_or_default();
    assert!(
        note.contains(&format!(
            "never decides: rule {deny} has the same conditions"
        )),
        "{table}"
    );
    let explained = run_ok(&daemon, &["explain", "unknown", "203.0.113.10:80"]);
    assert!(
        explained.contains(&format!("decided by rule {deny}:")),
        "{explained}"
    );
    assert!(explained.contains("step 9 (action)"), "{explained}");

    let filtered = run_ok(&daemon, &["rules", "list", "--action", "allow", "--json"]);
    let filtered: Vec<serde_json::Value> = serde_json::from_str(&filtered).unwrap();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["id"].to_string(), allow);
}

#[test]
fn hit_counts_survive_restart() {
    let lab = start_lab();
    let mut daemon = start_daemon(&lab);
    run_ok(&daemon, ALLOW_A);
    for _ in 0..3 {
        assert_passes(&lab, SERVER_A_V4.into());
    }
    let rule = &rules_json(&daemon)[0];
    assert_eq!(rule["hits"], 3, "{rule:#?}");
    assert!(rule["last_hit_unix_ms"].is_u64(), "{rule:#?}");

    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));
    let rule = &rules_json(&daemon)[0];
    assert_eq!(rule["hits"], 3, "saved at shutdown: {rule:#?}");
}

#[test]
fn export_import_round_trip_is_exact() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let adds: [&[&str]; 5] = [
        &[
            "--action",
            "allow",
            "--exe",
            "/opt/app/*",
            "--to",
            "*.example.com",
            "--port",
            "80,443",
        ],
        &[
            "--action",
            "deny",
            "--user",
            "alice",
            "--to",
            "scope:internet",
            "--protocol",
            "udp",
        ],
        &[
            "--action",
            "allow",
            "--exe",
            "/usr/bin/curl",
            "--via",
            "/usr/bin/bash",
            "--priority",
        ],
        &[
            "--action",
            "deny",
            "--cmdline",
            "python3 *",
            "--to",
            "2001:db8::/32",
            "--for",
            "1h",
        ],
        &[
            "--action",
            "allow",
            "--to",
            "example.org",
            "--port",
            "8000-8100",
            "--until-restart",
        ],
    ];
    for args in adds {
        run_ok(&daemon, &[&["rules", "add"], args].concat());
    }
    let first = lab.work_dir().join("first.json");
    let second = lab.work_dir().join("second.json");
    run_ok(
        &daemon,
        &["rules", "export", "--output", first.to_str().unwrap()],
    );

    for rule in rules_json(&daemon) {
        run_ok(&daemon, &["rules", "remove", &rule["id"].to_string()]);
    }
    run_ok(&daemon, &["rules", "import", first.to_str().unwrap()]);
    run_ok(
        &daemon,
        &["rules", "export", "--output", second.to_str().unwrap()],
    );

    let first_text = std::fs::read_to_string(&first).unwrap();
    assert_eq!(first_text, std::fs::read_to_string(&second).unwrap());
    assert_eq!(rules_json(&daemon).len(), 5);

    // Importing again collides with the existing ids and applies nothing.
    let error = run_err(&daemon, &["rules", "import", first.to_str().unwrap()]);
    assert!(error.contains("rule 1 (id 1)"), "{error}");
    assert!(error.contains("exists already"), "{error}");
    assert_eq!(rules_json(&daemon).len(), 5);
}

#[test]
fn invalid_import_applies_nothing() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let file = lab.work_dir().join("bad.json");
    std::fs::write(
        &file,
        r#"{"format":"tollgate-rules","version":1,"rules":[
            {"id":10,"action":"allow","lifetime":"forever"},
            {"id":11,"action":"allow","lifetime":"forever","destination":{"port":{"range":{"first":9,"last":8}}}}]}"#,
    )
    .unwrap();

    let error = run_err(&daemon, &["rules", "import", file.to_str().unwrap()]);

    assert!(error.contains("rule 2 (id 11)"), "{error}");
    assert!(error.contains("destination.port"), "{error}");
    assert!(rules_json(&daemon).is_empty());
}

#[test]
fn decide_until_exit_needs_a_known_process() {
    let lab = start_lab();
    let daemon = Daemon::start(&lab, "").unwrap_or_else(|err| panic!("{err:#}"));
    let mut curl = lab
        .desk_command("curl")
        .args(["-sS", "--max-time", "60"])
        .arg(Lab::http_url(SERVER_A_V4.into()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pending = daemon.wait_for_held(1, WAIT);
    let id = pending[0]["id"].to_string();

    let error = run_err(&daemon, &["allow", &id, "--until-exit"]);
    assert!(error.contains("is unknown"), "{error}");

    let mut sleeper = spawn_sleeper();
    let pid = sleeper.id().to_string();
    let stdout = run_ok(&daemon, &["allow", &id, "--until-exit", &pid]);
    assert!(stdout.contains(&format!("until-exit {pid}")), "{stdout}");
    assert!(curl.wait().unwrap().success());
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    wait_for_rule_count(&daemon, 0);
}

/// One row of the precedence table: two rules, a connection for `tollgate explain`, the rule
/// that must win (0 or 1) and the step that must decide.
struct PrecedenceCase {
    rules: [&'static [&'static str]; 2],
    explain: &'static [&'static str],
    winner: usize,
    step: &'static str,
}

const DIGEST: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const PRECEDENCE_CASES: &[PrecedenceCase] = &[
    PrecedenceCase {
        rules: [
            &["--action", "allow", "--priority"],
            &[
                "--action",
                "deny",
                "--exe",
                "/usr/bin/curl",
                "--to",
                "203.0.113.10",
                "--port",
                "80",
            ],
        ],
        explain: &["/usr/bin/curl", "203.0.113.10:80"],
        winner: 0,
        step: "priority",
    },
    PrecedenceCase {
        rules: [
            &["--action", "allow", "--sha256", DIGEST],
            &[
                "--action",
                "deny",
                "--exe",
                "/usr/bin/curl",
                "--to",
                "203.0.113.10",
            ],
        ],
        explain: &["/usr/bin/curl", "203.0.113.10:80", "--sha256", DIGEST],
        winner: 0,
        step: "executable",
    },
    PrecedenceCase {
        rules: [
            &[
                "--action",
                "deny",
                "--exe",
                "/usr/**",
                "--to",
                "203.0.113.10",
            ],
            &["--action", "allow", "--exe", "/usr/bin/*"],
        ],
        explain: &["/usr/bin/curl", "203.0.113.10:80"],
        winner: 1,
        step: "glob_length",
    },
    PrecedenceCase {
        rules: [
            &[
                "--action",
                "allow",
                "--exe",
                "/usr/bin/curl",
                "--via",
                "/usr/bin/bash",
            ],
            &[
                "--action",
                "deny",
                "--exe",
                "/usr/bin/curl",
                "--to",
                "203.0.113.10",
            ],
        ],
        explain: &["/usr/bin/curl", "203.0.113.10:80", "--via", "/usr/bin/bash"],
        winner: 0,
        step: "subject_conditions",
    },
    PrecedenceCase {
        rules: [
            &["--action", "allow", "--to", "203.0.113.10"],
            &["--action", "deny", "--to", "example.com"],
        ],
        explain: &["unknown", "example.com:80", "--ip", "203.0.113.10"],
        winner: 0,
        step: "address_kind",
    },
    PrecedenceCase {
        rules: [
            &["--action", "deny", "--to", "*.example.com"],
            &["--action", "allow", "--to", "*.www.example.com"],
        ],
        explain: &["unknown", "a.www.example.com:80", "--ip", "203.0.113.10"],
        winner: 1,
        step: "address_length",
    },
    PrecedenceCase {
        rules: [
            &["--action", "allow", "--port", "80"],
            &["--action", "deny", "--port", "1-1024"],
        ],
        explain: &["unknown", "203.0.113.10:80"],
        winner: 0,
        step: "ports",
    },
    PrecedenceCase {
        rules: [
            &["--action", "allow", "--protocol", "tcp"],
            &["--action", "deny"],
        ],
        explain: &["unknown", "203.0.113.10:80"],
        winner: 0,
        step: "protocol",
    },
    PrecedenceCase {
        rules: [
            &["--action", "allow", "--to", "203.0.113.0/24"],
            &["--action", "deny", "--to", "203.0.113.0/24"],
        ],
        explain: &["unknown", "203.0.113.10:80"],
        winner: 1,
        step: "action",
    },
    PrecedenceCase {
        rules: [
            &["--action", "allow", "--to", "203.0.113.0/24"],
            &["--action", "allow", "--to", "203.0.113.0/24"],
        ],
        explain: &["unknown", "203.0.113.10:80"],
        winner: 0,
        step: "id",
    },
];

#[test]
fn explain_names_winner_for_each_step() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);

    for (row, case) in PRECEDENCE_CASES.iter().enumerate() {
        for rule in rules_json(&daemon) {
            run_ok(&daemon, &["rules", "remove", &rule["id"].to_string()]);
        }
        let ids: Vec<String> = case
            .rules
            .iter()
            .map(|args| added_id(&run_ok(&daemon, &[&["rules", "add"], *args].concat())))
            .collect();

        let output = run_ok(&daemon, &[&["explain"], case.explain, &["--json"]].concat());

        let value: serde_json::Value = serde_json::from_str(&output).unwrap();
        let explanation = &value["explanation"];
        let loser = &ids[1 - case.winner];
        assert_eq!(
            explanation["winner"].to_string(),
            ids[case.winner],
            "step {}: {output}",
            row + 1
        );
        assert_eq!(
            explanation["beaten"][0]["loser"].to_string(),
            *loser,
            "{output}"
        );
        assert_eq!(explanation["beaten"][0]["step"], case.step, "{output}");
    }
}

#[test]
fn large_import_is_applied_whole() {
    const COUNT: usize = 5000;
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let rules: Vec<String> = (1..=COUNT)
        .map(|id| {
            format!(
                r#"{{"id":{id},"subject":{{"executable":{{"path":"/usr/bin/app{id}"}}}},"destination":{{"address":{{"host":"host{id}.example.com"}},"port":{{"list":[80,443]}}}},"action":"allow","lifetime":"forever","note":"rule number {id} of a large import"}}"#
            )
        })
        .collect();
    let file = lab.work_dir().join("large.json");
    let text = format!(
        r#"{{"format":"tollgate-rules","version":1,"rules":[{}]}}"#,
        rules.join(",")
    );
    assert!(text.len() > 1 << 20, "the import is larger than 1 MiB");
    std::fs::write(&file, text).unwrap();

    run_ok(&daemon, &["rules", "import", file.to_str().unwrap()]);

    assert_eq!(rules_json(&daemon).len(), COUNT);
}

#[test]
fn linked_executable_path_is_resolved() {
    let lab = start_lab();
    let daemon = start_daemon(&lab);
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real-program");
    std::fs::write(&real, b"#!/bin/sh\n").unwrap();
    let link = dir.path().join("linked-program");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    // The kernel reports the resolved path, so a rule on the link would never match.
    let output = daemon.run_cli(&[
        "rules",
        "add",
        "--action",
        "allow",
        "--exe",
        link.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("resolves to"),
        "{}",
        text(&output.stderr)
    );

    let listed = run_ok(&daemon, &["rules", "list", "--json"]);
    let real = std::fs::canonicalize(&real).unwrap();
    assert!(listed.contains(real.to_str().unwrap()), "{listed}");
    assert!(!listed.contains("linked-program"), "{listed}");
}
