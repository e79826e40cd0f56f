//! End-to-end tests of the control requests that desktop interfaces use: connection listing
//! with byte counts, rule edits, decisions that cover a domain or every host, and timed rules.

use std::{
    process::{Child, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use tollgate_integration::{
    INDEX_MARKER, Lab,
    daemon::Daemon,
    dns::{BLOG_NAME, SHOP_NAME},
    topology::{SERVER_A_V4, SERVER_B_V4},
};
use tollgate_proxy::{
    client::Client,
    protocol::{
        ConnectionInfo, ConnectionState, DecidedBy, ErrorCode, NameSource, NewRule, PortScope,
        Request, Response, RuleChanges, Scope,
    },
};
use tollgate_rules::{
    Action, AddressMatch, Destination, Lifetime, LifetimeSpec, PortMatch, ProtocolMatch, Rule,
    RuleId, Subject,
};

const WAIT: Duration = Duration::from_secs(30);

fn start() -> (Lab, Daemon) {
    let lab = Lab::start().unwrap_or_else(|err| panic!("failed to start the lab: {err:#}"));
    let daemon = Daemon::start(&lab, "").unwrap_or_else(|err| panic!("{err:#}"));
    (lab, daemon)
}

/// Sends one request on a fresh connection and returns the reply.
fn request(daemon: &Daemon, request: Request) -> Response {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = Client::connect(&daemon.socket_path()).await.unwrap();
        client.request(request).await.unwrap()
    })
}

/// Starts curl in the daemon's cgroup, so its connections are attributed to it.
fn spawn_curl(lab: &Lab, daemon: &Daemon, url: &str) -> Child {
    daemon
        .desk_client(lab, "curl")
        .args(["-4", "-sS", "--max-time", "60", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start curl")
}

fn url_of(server: std::net::Ipv4Addr) -> String {
    Lab::http_url(server.into())
}

fn page_loaded(output: &Output) -> bool {
    output.status.success() && String::from_utf8_lossy(&output.stdout).contains(INDEX_MARKER)
}

fn connections(daemon: &Daemon) -> Vec<ConnectionInfo> {
    match request(daemon, Request::ListConnections) {
        Response::Connections { connections } => connections,
        other => panic!("unexpected reply to list_connections: {other:?}"),
    }
}

fn rules(daemon: &Daemon) -> Vec<Rule> {
    match request(daemon, Request::ListRules) {
        Response::Rules { rules, .. } => rules,
        other => panic!("unexpected reply to list_rules: {other:?}"),
    }
}

fn pending_id(daemon: &Daemon, server: &str) -> u64 {
    let pending = daemon.wait_for_held(1, WAIT);
    assert_eq!(pending[0]["destination"], server);
    pending[0]["id"].as_u64().unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn allow_server_a(daemon: &Daemon, lifetime: LifetimeSpec) -> RuleId {
    let rule = NewRule {
        subject: Subject::any(),
        destination: Destination {
            address: AddressMatch::Ip(SERVER_A_V4.into()),
            port: PortMatch::Port(80),
            protocol: ProtocolMatch::Tcp,
        },
        action: Action::Allow,
        lifetime,
        priority: false,
        enabled: true,
        note: String::new(),
    };
    let rule = Box::new(rule);
    match request(daemon, Request::AddRule { rule }) {
        Response::RuleAdded { rule, .. } => rule.id,
        other => panic!("unexpected reply to add_rule: {other:?}"),
    }
}

fn edit(daemon: &Daemon, id: RuleId, changes: RuleChanges) {
    let changes = Box::new(changes);
    let reply = request(daemon, Request::EditRule { id, changes });
    assert!(
        matches!(reply, Response::RuleEdited { .. }),
        "unexpected reply to edit_rule: {reply:?}"
    );
}

fn decide(
    daemon: &Daemon,
    id: u64,
    lifetime: LifetimeSpec,
    scope: Scope,
    port: PortScope,
) -> Response {
    let request_line = Request::Decide {
        id,
        action: Action::Allow,
        lifetime,
        scope,
        port,
    };
    request(daemon, request_line)
}

#[test]
fn connections_show_name_and_bytes() {
    let (lab, daemon) = start();
    let curl = spawn_curl(&lab, &daemon, &format!("http://{BLOG_NAME}/"));
    let id = pending_id(&daemon, "203.0.113.10:80");

    let listed = connections(&daemon);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0].state, ConnectionState::Pending);
    assert_eq!(listed[0].pending_id, Some(id));
    assert_eq!(listed[0].ended_unix_ms, None);
    assert_eq!(listed[0].host.as_deref(), Some(BLOG_NAME));
    assert_eq!(listed[0].name_source, NameSource::Dns);
    let process = listed[0].process.as_ref().expect("curl is attributed");
    assert_eq!(process.pid, curl.id());

    request(
        &daemon,
        Request::decide(id, Action::Allow, LifetimeSpec::Once),
    );
    assert!(page_loaded(&curl.wait_with_output().unwrap()));
    wait_until("the relay ends", || {
        connections(&daemon)[0].ended_unix_ms.is_some()
    });
    let ended = &connections(&daemon)[0];
    assert_eq!(ended.state, ConnectionState::Allowed);
    assert_eq!(ended.decided_by, Some(DecidedBy::User));
    assert!(ended.bytes_up > 50, "request bytes: {ended:?}");
    assert!(ended.bytes_down > 100, "page bytes: {ended:?}");
    assert_eq!(ended.error, None);
}

#[test]
fn denied_connection_is_listed_as_ended() {
    let (lab, daemon) = start();
    let curl = spawn_curl(&lab, &daemon, &url_of(SERVER_B_V4));
    let id = pending_id(&daemon, "203.0.113.20:80");
    request(
        &daemon,
        Request::decide(id, Action::Deny, LifetimeSpec::Once),
    );
    assert!(!curl.wait_with_output().unwrap().status.success());
    let listed = connections(&daemon);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0].state, ConnectionState::Denied);
    assert!(listed[0].ended_unix_ms.is_some());
    assert_eq!((listed[0].bytes_up, listed[0].bytes_down), (0, 0));
}

#[test]
fn disabled_rule_stops_matching() {
    let (lab, daemon) = start();
    let rule = allow_server_a(&daemon, LifetimeSpec::Forever);
    let first = spawn_curl(&lab, &daemon, &url_of(SERVER_A_V4));
    assert!(page_loaded(&first.wait_with_output().unwrap()));

    let disable = RuleChanges {
        enabled: Some(false),
        ..RuleChanges::default()
    };
    edit(&daemon, rule, disable);
    assert!(!rules(&daemon)[0].enabled);
    let curl = spawn_curl(&lab, &daemon, &url_of(SERVER_A_V4));
    daemon.wait_for_held(1, WAIT);

    // Enabling the rule again settles the connection it now matches.
    let enable = RuleChanges {
        enabled: Some(true),
        ..RuleChanges::default()
    };
    edit(&daemon, rule, enable);
    assert!(page_loaded(&curl.wait_with_output().unwrap()));
    let listed = connections(&daemon);
    let last = listed.last().unwrap();
    assert_eq!(last.decided_by, Some(DecidedBy::Rule { rule }));
}

#[test]
fn lifetime_change_stores_or_drops_rule() {
    let (lab, mut daemon) = start();
    let stored = allow_server_a(&daemon, LifetimeSpec::UntilRestart);
    let dropped = allow_server_a(&daemon, LifetimeSpec::Forever);
    let forever = RuleChanges {
        lifetime: Some(LifetimeSpec::Forever),
        ..RuleChanges::default()
    };
    let until_restart = RuleChanges {
        lifetime: Some(LifetimeSpec::UntilRestart),
        ..RuleChanges::default()
    };
    edit(&daemon, stored, forever);
    edit(&daemon, dropped, until_restart);

    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));
    let ids: Vec<RuleId> = rules(&daemon).iter().map(|rule| rule.id).collect();
    assert_eq!(ids, vec![stored]);
    assert_eq!(rules(&daemon)[0].lifetime, Lifetime::Forever);
}

#[test]
fn wide_once_settles_burst() {
    let (lab, daemon) = start();
    let first = spawn_curl(&lab, &daemon, &url_of(SERVER_A_V4));
    let second = spawn_curl(&lab, &daemon, &url_of(SERVER_B_V4));
    let pending = daemon.wait_for_held(2, WAIT);
    let id = pending[0]["id"].as_u64().unwrap();

    let reply = decide(
        &daemon,
        id,
        LifetimeSpec::Once,
        Scope::AnyHost,
        PortScope::Any,
    );
    assert_eq!(
        reply,
        Response::Decided {
            settled: 2,
            rule: None
        }
    );
    assert!(page_loaded(&first.wait_with_output().unwrap()));
    assert!(page_loaded(&second.wait_with_output().unwrap()));
    assert!(rules(&daemon).is_empty());
}

#[test]
fn domain_scope_covers_sibling_hosts() {
    let (lab, daemon) = start();
    let curl = spawn_curl(&lab, &daemon, &format!("http://{BLOG_NAME}/"));
    let id = pending_id(&daemon, "203.0.113.10:80");
    let reply = decide(
        &daemon,
        id,
        LifetimeSpec::Forever,
        Scope::Domain,
        PortScope::This,
    );
    let Response::Decided {
        rule: Some(rule), ..
    } = reply
    else {
        panic!("unexpected reply to decide: {reply:?}");
    };
    assert_eq!(
        rule.destination.address,
        AddressMatch::Domain("lab.test".parse().unwrap())
    );
    assert_eq!(
        rule.subject,
        Subject::executable(curl_path()),
        "the rule is for curl"
    );
    assert!(page_loaded(&curl.wait_with_output().unwrap()));

    // Another name in the domain passes without a prompt.
    let sibling = spawn_curl(&lab, &daemon, &format!("http://{SHOP_NAME}/"));
    assert!(page_loaded(&sibling.wait_with_output().unwrap()));
    let listed = connections(&daemon);
    let last = listed.last().unwrap();
    assert_eq!(last.host.as_deref(), Some(SHOP_NAME));
    assert_eq!(last.decided_by, Some(DecidedBy::Rule { rule: rule.id }));
}

#[test]
fn domain_scope_needs_a_name() {
    let (lab, daemon) = start();
    let mut curl = spawn_curl(&lab, &daemon, &url_of(SERVER_A_V4));
    let id = pending_id(&daemon, "203.0.113.10:80");
    let reply = decide(
        &daemon,
        id,
        LifetimeSpec::Forever,
        Scope::Domain,
        PortScope::This,
    );
    let Response::Error { code, message } = reply else {
        panic!("unexpected reply to decide: {reply:?}");
    };
    assert_eq!(code, ErrorCode::Invalid);
    assert!(message.contains("no known host name"), "{message}");
    assert_eq!(daemon.pending().len(), 1, "the request stays pending");
    assert!(rules(&daemon).is_empty());
    curl.kill().unwrap();
    curl.wait().unwrap();
}

#[test]
fn timed_rule_expires() {
    let (lab, daemon) = start();
    let curl = spawn_curl(&lab, &daemon, &url_of(SERVER_A_V4));
    let id = pending_id(&daemon, "203.0.113.10:80");
    let reply = decide(
        &daemon,
        id,
        LifetimeSpec::For { secs: 2 },
        Scope::Host,
        PortScope::This,
    );
    let Response::Decided {
        rule: Some(rule), ..
    } = reply
    else {
        panic!("unexpected reply to decide: {reply:?}");
    };
    assert!(matches!(rule.lifetime, Lifetime::For { secs: 2, .. }));
    assert!(page_loaded(&curl.wait_with_output().unwrap()));
    wait_until("the rule expires", || rules(&daemon).is_empty());

    let mut next = spawn_curl(&lab, &daemon, &url_of(SERVER_A_V4));
    daemon.wait_for_held(1, WAIT);
    next.kill().unwrap();
    next.wait().unwrap();
}

/// Returns the path of the curl executable the tests run, as the kernel names it.
fn curl_path() -> std::path::PathBuf {
    let path = std::process::Command::new("sh")
        .args(["-c", "command -v curl"])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&path.stdout).trim().to_owned();
    std::fs::canonicalize(path).unwrap()
}
