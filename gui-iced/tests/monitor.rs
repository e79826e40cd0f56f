//! Headless tests of the monitor: the live list by process and destination, search, filters,
//! and the requests its allow and deny buttons send.

mod common;

use common::{app, assert_shows, connection, simulate, update};
use tollgate_proxy::protocol::{ConnectionState, DecidedBy, Request};
use tollgate_rules::{Action, AddressMatch, LifetimeSpec, PortMatch, RuleId};
use tollgate_ui::{
    app::{App, Message, WindowKind},
    link::LinkEvent,
    monitor::{MonitorMessage, StateFilter, view},
};

fn listed() -> Vec<tollgate_proxy::protocol::ConnectionInfo> {
    let mut pending = connection(1, ConnectionState::Pending, "203.0.113.10:80");
    pending.pending_id = Some(4);
    let mut allowed = connection(2, ConnectionState::Allowed, "203.0.113.20:80");
    allowed.decided_by = Some(DecidedBy::Rule { rule: RuleId(3) });
    allowed.bytes_up = 120;
    allowed.bytes_down = 1260;
    let mut denied = connection(3, ConnectionState::Denied, "203.0.113.20:443");
    denied.decided_by = Some(DecidedBy::Timeout);
    denied.ended_unix_ms = Some(common::NOW + 60_000);
    vec![pending, allowed, denied]
}

fn connected_app() -> App {
    let mut app = app();
    update(&mut app, Message::Link(LinkEvent::Connections(listed())), 0);
    app
}

#[test]
fn list_groups_by_process_and_destination() {
    let app = connected_app();
    let mut ui = simulate(view::view(&app.monitor, app.banner()));
    assert_shows(&mut ui, "unknown process");
    assert_shows(&mut ui, "203.0.113.10");
    assert_shows(&mut ui, "203.0.113.20");
    assert_shows(&mut ui, "port 80 TCP, pending, open, up 0 B, down 0 B");
    assert_shows(
        &mut ui,
        "port 80 TCP, allowed by rule 3, open, up 120 B, down 1.2 KiB",
    );
    assert_shows(
        &mut ui,
        "port 443 TCP, denied by timeout, closed, up 0 B, down 0 B",
    );
}

#[test]
fn filter_and_search_narrow_list() {
    let mut app = connected_app();
    let mut ui = simulate(view::view(&app.monitor, app.banner()));
    ui.click("Denied").unwrap();
    let messages: Vec<MonitorMessage> = ui.into_messages().collect();
    assert_eq!(messages, vec![MonitorMessage::Filter(StateFilter::Denied)]);
    for message in messages {
        update(&mut app, Message::Monitor(message), 10);
    }
    let mut ui = simulate(view::view(&app.monitor, app.banner()));
    assert!(
        ui.find("203.0.113.10").is_err(),
        "pending one is filtered out"
    );
    assert_shows(
        &mut ui,
        "port 443 TCP, denied by timeout, closed, up 0 B, down 0 B",
    );
    drop(ui);

    update(
        &mut app,
        Message::Monitor(MonitorMessage::Filter(StateFilter::All)),
        20,
    );
    update(
        &mut app,
        Message::Monitor(MonitorMessage::Search("rule 3".into())),
        30,
    );
    let mut ui = simulate(view::view(&app.monitor, app.banner()));
    assert_shows(&mut ui, "203.0.113.20");
    assert!(
        ui.find("203.0.113.10").is_err(),
        "search hides other destinations"
    );
}

#[test]
fn buttons_send_decisions_and_rules() {
    let mut app = connected_app();
    let mut ui = simulate(view::view(&app.monitor, app.banner()));
    // The first row is the pending connection; its Deny button comes first.
    ui.click("Deny").unwrap();
    let messages: Vec<MonitorMessage> = ui.into_messages().collect();
    assert_eq!(messages, vec![MonitorMessage::Decide(1, Action::Deny)]);
    let (effects, _) = update(&mut app, Message::Monitor(messages[0].clone()), 10);
    assert_eq!(
        effects.requests,
        vec![Request::decide(4, Action::Deny, LifetimeSpec::Once)]
    );

    let (effects, _) = update(
        &mut app,
        Message::Monitor(MonitorMessage::Decide(3, Action::Allow)),
        20,
    );
    let [Request::AddRule { rule }] = effects.requests.as_slice() else {
        panic!("expected one add_rule request: {effects:?}");
    };
    assert_eq!(rule.action, Action::Allow);
    assert_eq!(rule.lifetime, LifetimeSpec::Forever);
    assert_eq!(
        rule.destination.address,
        AddressMatch::Ip("203.0.113.20".parse().unwrap())
    );
    assert_eq!(rule.destination.port, PortMatch::Port(443));
}

#[test]
fn rules_button_opens_rules_window() {
    let mut app = connected_app();
    let mut ui = simulate(view::view(&app.monitor, app.banner()));
    ui.click("Rules").unwrap();
    let message = ui.into_messages().next().unwrap();
    let (effects, _) = update(&mut app, Message::Monitor(message), 10);
    assert_eq!(effects.open, vec![WindowKind::Rules]);
    let (again, _) = update(&mut app, Message::Monitor(MonitorMessage::OpenRules), 20);
    assert!(again.open.is_empty(), "the rules window is open already");
}

#[test]
fn unreachable_daemon_shows_reason() {
    let mut app = app();
    let reason = "tollgated is not running: no control socket at /run/tollgate/control.sock";
    update(
        &mut app,
        Message::Link(LinkEvent::Disconnected(reason.into())),
        0,
    );
    let mut ui = simulate(view::view(&app.monitor, app.banner()));
    assert_shows(
        &mut ui,
        &format!(
            "Cannot reach tollgated: {reason}. Start it with `sudo tollgated`; \
             retrying every second."
        ),
    );
    assert_shows(&mut ui, "No connections to show");
}
