//! End-to-end tests of the control requests that desktop interfaces use: connection listing
//! with byte counts, rule updates, wide decisions and rule expiry.

use std::{
    net::IpAddr,
    process::{Child, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use tollgate_integration::{
    INDEX_MARKER, Lab,
    daemon::Daemon,
    topology::{SERVER_A_V4, SERVER_B_V4},
};
use tollgate_proxy::{
    client::Client,
    protocol::{
        ConnectionInfo, ConnectionState, DecidedBy, ErrorCode, PortScope, Request, Response,
        RuleInfo, Scope,
    },
};
use tollgate_rules::{
    Action, AddressMatch, Destination, Lifetime, PortMatch, ProtocolMatch, RuleId, Subject,
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

fn spawn_curl(lab: &Lab, server: IpAddr) -> Child {
    lab.desk_command("curl")
        .args(["-sS", "--max-time", "60"])
        .arg(Lab::http_url(server))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start curl")
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

fn rules(daemon: &Daemon) -> Vec<RuleInfo> {
    match request(daemon, Request::ListRules) {
        Response::Rules { rules } => rules,
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

fn allow_server_a(daemon: &Daemon, lifetime: Lifetime) -> RuleId {
    let rule = tollgate_proxy::protocol::NewRule {
        subject: Subject::Any,
        destination: Destination {
            address: AddressMatch::Ip(SERVER_A_V4.into()),
            port: PortMatch::Port(80),
            protocol: ProtocolMatch::Tcp,
        },
        action: Action::Allow,
        lifetime,
        note: String::new(),
    };
    match request(daemon, Request::AddRule { rule }) {
        Response::RuleAdded { rule, .. } => rule.id,
        other => panic!("unexpected reply to add_rule: {other:?}"),
    }
}

fn update(daemon: &Daemon, id: RuleId, enabled: Option<bool>, lifetime: Option<Lifetime>) {
    let reply = request(
        daemon,
        Request::UpdateRule {
            id,
            enabled,
            lifetime,
            expires_after_secs: None,
        },
    );
    assert!(
        matches!(reply, Response::RuleUpdated { .. }),
        "unexpected reply to update_rule: {reply:?}"
    );
}

#[test]
fn connections_show_state_and_bytes() {
    let (lab, daemon) = start();
    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    let id = pending_id(&daemon, "203.0.113.10:80");

    let listed = connections(&daemon);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0].state, ConnectionState::Pending);
    assert_eq!(listed[0].pending_id, Some(id));
    assert_eq!(listed[0].ended_unix_ms, None);

    request(&daemon, Request::decide(id, Action::Allow, Lifetime::Once));
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
fn disabled_rule_stops_matching() {
    let (lab, daemon) = start();
    let rule = allow_server_a(&daemon, Lifetime::Forever);
    assert!(page_loaded(
        &spawn_curl(&lab, SERVER_A_V4.into())
            .wait_with_output()
            .unwrap()
    ));

    update(&daemon, rule, Some(false), None);
    assert!(!rules(&daemon)[0].rule.enabled);
    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    daemon.wait_for_held(1, WAIT);

    // Enabling the rule again settles the connection it now matches.
    update(&daemon, rule, Some(true), None);
    assert!(page_loaded(&curl.wait_with_output().unwrap()));
    let listed = connections(&daemon);
    let last = listed.last().unwrap();
    assert_eq!(last.decided_by, Some(DecidedBy::Rule { rule }));
}

#[test]
fn lifetime_change_unstores_rule() {
    let (lab, mut daemon) = start();
    let kept = allow_server_a(&daemon, Lifetime::UntilRestart);
    let dropped = allow_server_a(&daemon, Lifetime::Forever);
    update(&daemon, kept, None, Some(Lifetime::Forever));
    update(&daemon, dropped, None, Some(Lifetime::UntilRestart));

    daemon.restart(&lab).unwrap_or_else(|err| panic!("{err:#}"));
    let ids: Vec<RuleId> = rules(&daemon).iter().map(|info| info.rule.id).collect();
    assert_eq!(ids, vec![kept]);
    assert_eq!(rules(&daemon)[0].rule.lifetime, Lifetime::Forever);
}

#[test]
fn wide_once_settles_burst() {
    let (lab, daemon) = start();
    let first = spawn_curl(&lab, SERVER_A_V4.into());
    let second = spawn_curl(&lab, SERVER_B_V4.into());
    let pending = daemon.wait_for_held(2, WAIT);
    let id = pending[0]["id"].as_u64().unwrap();

    let reply = request(
        &daemon,
        Request::Decide {
            id,
            action: Action::Allow,
            lifetime: Lifetime::Once,
            scope: Scope::AnyHost,
            port: PortScope::Any,
            expires_after_secs: None,
            until_process_exits: false,
        },
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
fn timed_rule_expires() {
    let (lab, daemon) = start();
    let curl = spawn_curl(&lab, SERVER_A_V4.into());
    let id = pending_id(&daemon, "203.0.113.10:80");
    let reply = request(
        &daemon,
        Request::Decide {
            id,
            action: Action::Allow,
            lifetime: Lifetime::UntilRestart,
            scope: Scope::Host,
            port: PortScope::This,
            expires_after_secs: Some(1),
            until_process_exits: false,
        },
    );
    let Response::Decided {
        rule: Some(rule), ..
    } = reply
    else {
        panic!("unexpected reply to decide: {reply:?}");
    };
    assert!(rule.expires_unix_ms.is_some());
    assert!(page_loaded(&curl.wait_with_output().unwrap()));
    wait_until("the rule expires", || rules(&daemon).is_empty());

    let mut next = spawn_curl(&lab, SERVER_A_V4.into());
    daemon.wait_for_held(1, WAIT);
    next.kill().unwrap();
    next.wait().unwrap();
}

#[test]
fn domain_scope_is_rejected() {
    let (lab, daemon) = start();
    let mut curl = spawn_curl(&lab, SERVER_A_V4.into());
    let id = pending_id(&daemon, "203.0.113.10:80");
    let reply = request(
        &daemon,
        Request::Decide {
            id,
            action: Action::Allow,
            lifetime: Lifetime::Forever,
            scope: Scope::Domain,
            port: PortScope::This,
            expires_after_secs: None,
            until_process_exits: false,
        },
    );
    let Response::Error { code, .. } = reply else {
        panic!("unexpected reply to decide: {reply:?}");
    };
    assert_eq!(code, ErrorCode::Invalid);
    assert_eq!(daemon.pending().len(), 1, "the request stays pending");
    assert!(rules(&daemon).is_empty());
    curl.kill().unwrap();
    curl.wait().unwrap();
}
