//! Data and helpers shared by the headless interface tests.

#![allow(dead_code, reason = "each test file uses a different part")]

use iced::{Element, window};
use iced_test::Simulator;
use tollgate_proxy::protocol::{ConnectionInfo, ConnectionState, NameSource, PendingInfo};
use tollgate_rules::{
    Action, AddressMatch, Destination, Lifetime, PortMatch, Protocol, ProtocolMatch, Rule, RuleId,
    Subject,
};
use tollgate_ui::{
    app::{App, Effects, Message, WindowKind},
    apps::AppDirectory,
};

/// Time of the tests' first message, in milliseconds since the Unix epoch.
pub const NOW: u64 = 1_800_000_000_000;

/// Returns an app that finds no `.desktop` files.
pub fn app() -> App {
    App::new(AppDirectory::with_dirs(Vec::new(), Vec::new()))
}

/// Returns a pending request of an unknown process, started at [`NOW`].
pub fn pending(id: u64, destination: &str) -> PendingInfo {
    PendingInfo {
        id,
        process: None,
        source: "10.77.0.2:40000".parse().unwrap(),
        destination: destination.parse().unwrap(),
        protocol: Protocol::Tcp,
        started_unix_ms: NOW,
        connections: 1,
        host: None,
        name_source: NameSource::None,
    }
}

/// Returns a connection in `state` to `destination`.
pub fn connection(id: u64, state: ConnectionState, destination: &str) -> ConnectionInfo {
    ConnectionInfo {
        connection: id,
        process: None,
        source: "10.77.0.2:40000".parse().unwrap(),
        destination: destination.parse().unwrap(),
        host: None,
        name_source: NameSource::None,
        protocol: Protocol::Tcp,
        state,
        pending_id: None,
        decided_by: None,
        started_unix_ms: NOW,
        ended_unix_ms: None,
        bytes_up: 0,
        bytes_down: 0,
        error: None,
    }
}

/// Returns a rule allowing any process to reach 203.0.113.10 on `port`.
pub fn rule(id: u64, port: u16, lifetime: Lifetime) -> Rule {
    let destination = Destination {
        address: AddressMatch::Ip("203.0.113.10".parse().unwrap()),
        port: PortMatch::Port(port),
        protocol: ProtocolMatch::Tcp,
    };
    Rule::new(
        RuleId(id),
        Subject::any(),
        destination,
        Action::Allow,
        lifetime,
    )
}

/// Handles `message` at [`NOW`] plus `later_ms`, and opens the windows the update asks for,
/// returning the effects and the ids of the opened windows.
pub fn update(app: &mut App, message: Message, later_ms: u64) -> (Effects, Vec<window::Id>) {
    let effects = app.update(message, NOW + later_ms);
    let opened = effects
        .open
        .iter()
        .map(|kind| {
            let id = window::Id::unique();
            app.window_opened(id, kind.clone());
            id
        })
        .collect();
    (effects, opened)
}

/// Returns the id of the only window an update opened, which shows `kind`.
pub fn only_window(app: &App, opened: &[window::Id], kind: &WindowKind) -> window::Id {
    assert_eq!(opened.len(), 1, "windows opened: {opened:?}");
    assert_eq!(app.window(opened[0]), Some(kind));
    opened[0]
}

/// Builds a simulator of `element`.
pub fn simulate<'a, M>(element: Element<'a, M>) -> Simulator<'a, M> {
    iced_test::simulator(element)
}

/// Asserts that the simulated view shows exactly `text` somewhere.
pub fn assert_shows<M>(ui: &mut Simulator<'_, M>, text: &str) {
    assert!(ui.find(text).is_ok(), "the view does not show {text:?}");
}
