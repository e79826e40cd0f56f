//! Headless tests of the prompt flow: what a prompt window shows, and which requests a person's
//! clicks and keys send to the daemon.

mod common;

use common::{NOW, app, assert_shows, only_window, pending, simulate, update};
use iced::keyboard;
use tollgate_proxy::protocol::{PortScope, Request, Scope};
use tollgate_rules::{Action, LifetimeSpec};
use tollgate_ui::{
    app::{Message, WindowKind},
    link::LinkEvent,
    prompt::{ARM_DELAY_MS, AppKey, PromptMessage, view},
};

fn burst() -> Vec<tollgate_proxy::protocol::PendingInfo> {
    let mut repeated = pending(2, "203.0.113.10:443");
    repeated.connections = 3;
    vec![
        pending(1, "203.0.113.10:80"),
        repeated,
        pending(3, "203.0.113.20:80"),
    ]
}

#[test]
fn burst_opens_one_prompt() {
    let mut app = app();
    let (effects, opened) = update(&mut app, Message::Link(LinkEvent::Pending(burst())), 0);
    let id = only_window(&app, &opened, &WindowKind::Prompt(AppKey::Unknown));
    assert!(effects.requests.is_empty());

    let prompt = app.prompt_in(id).unwrap();
    let mut ui = simulate(view::view(prompt, app.countdown()));
    assert_shows(&mut ui, "unknown process");
    assert_shows(&mut ui, "executable, pid and user not known yet");
    assert_shows(&mut ui, "wants to open 5 connections to 2 destinations:");
    assert_shows(&mut ui, "203.0.113.10 (name unknown)");
    assert_shows(&mut ui, "port 443 TCP, 3 connections");
    assert_shows(&mut ui, "203.0.113.20 (name unknown)");
    assert_shows(&mut ui, "Denying in 1 min unless you answer");
    assert_shows(&mut ui, "Keys work once this window has the focus");
    drop(ui);

    // A second listing of the same requests opens nothing new.
    let (again, opened) = update(&mut app, Message::Link(LinkEvent::Pending(burst())), 1000);
    assert!(opened.is_empty(), "{again:?}");
}

#[test]
fn clicks_choose_and_decide() {
    let mut app = app();
    let (_, opened) = update(&mut app, Message::Link(LinkEvent::Pending(burst())), 0);
    let id = opened[0];

    let prompt = app.prompt_in(id).unwrap();
    let mut ui = simulate(view::view(prompt, app.countdown()));
    for label in ["any host", "any port", "for an hour"] {
        ui.click(label)
            .unwrap_or_else(|err| panic!("cannot click {label}: {err}"));
    }
    // Choices a request cannot have are shown but do nothing.
    ui.click("the domain and its subdomains").unwrap();
    ui.click("until the app quits").unwrap();
    ui.click("Allow").unwrap();
    let messages: Vec<PromptMessage> = ui.into_messages().collect();
    assert_eq!(messages.len(), 4, "{messages:?}");

    let mut sent = Vec::new();
    let mut closed = Vec::new();
    for message in messages {
        let (effects, _) = update(&mut app, Message::Prompt(id, message), 500);
        sent.extend(effects.requests);
        closed.extend(effects.close);
    }
    let expected: Vec<Request> = [1, 2, 3]
        .map(|pending| Request::Decide {
            id: pending,
            action: Action::Allow,
            lifetime: LifetimeSpec::For { secs: 3600 },
            scope: Scope::AnyHost,
            port: PortScope::Any,
        })
        .into();
    assert_eq!(sent, expected);
    assert_eq!(closed, vec![id]);
    assert!(app.prompt_in(id).is_none());

    // The daemon still lists the requests until it has applied the decision: no new prompt.
    let (_, opened) = update(&mut app, Message::Link(LinkEvent::Pending(burst())), 600);
    assert!(opened.is_empty());
}

#[test]
fn keys_act_only_after_focus() {
    let mut app = app();
    let requests = vec![pending(7, "203.0.113.10:80")];
    let (_, opened) = update(&mut app, Message::Link(LinkEvent::Pending(requests)), 0);
    let id = opened[0];
    let key = |name: &str| Message::KeyPressed(id, keyboard::Key::Character(name.into()));

    let (typed, _) = update(&mut app, key("d"), 100);
    assert!(typed.requests.is_empty(), "no focus yet");
    update(&mut app, Message::Focus(id, true), 200);
    let (early, _) = update(&mut app, key("d"), 300);
    assert!(early.requests.is_empty(), "focus too recent");

    let armed = 200 + ARM_DELAY_MS;
    let prompt = app.prompt_in(id).unwrap();
    let countdown = view::Countdown {
        now_unix_ms: NOW + armed,
        ..app.countdown()
    };
    let mut ui = simulate(view::view(prompt, countdown));
    assert_shows(
        &mut ui,
        "Keys: a allow, d deny, s scope, p port, l lifetime",
    );
    drop(ui);

    for (name, later) in [("l", armed), ("l", armed + 1), ("l", armed + 2)] {
        update(&mut app, key(name), later);
    }
    let (decided, _) = update(&mut app, key("d"), armed + 3);
    assert_eq!(
        decided.requests,
        vec![Request::decide(7, Action::Deny, LifetimeSpec::Forever)]
    );
    assert_eq!(decided.close, vec![id]);
}

#[test]
fn answer_elsewhere_closes_prompt() {
    let mut app = app();
    let (_, opened) = update(&mut app, Message::Link(LinkEvent::Pending(burst())), 0);
    let id = opened[0];

    // Another interface answered: the requests left the pending list.
    let (effects, _) = update(&mut app, Message::Link(LinkEvent::Pending(Vec::new())), 900);
    assert_eq!(effects.close, vec![id]);
    assert!(effects.requests.is_empty());
}

#[test]
fn countdown_follows_daemon_timeout() {
    let mut app = app();
    let status = tollgate_proxy::protocol::StatusInfo {
        version: "0.1.0".into(),
        pid: 1,
        uptime_secs: 0,
        intercepting: true,
        pending_requests: 1,
        held_connections: 1,
        rules: 0,
        active_connections: 0,
        prompt_timeout_secs: 30,
        default_action: Action::Allow,
        names: None,
        mode: tollgate_proxy::config::Mode::Interactive,
        fast_path: false,
    };
    update(&mut app, Message::Link(LinkEvent::Status(status)), 0);
    let requests = vec![pending(1, "203.0.113.10:80")];
    let (_, opened) = update(&mut app, Message::Link(LinkEvent::Pending(requests)), 0);
    update(&mut app, Message::Tick, 12_500);

    let prompt = app.prompt_in(opened[0]).unwrap();
    let mut ui = simulate(view::view(prompt, app.countdown()));
    assert_shows(&mut ui, "Allowing in 18 s unless you answer");
}

#[test]
fn closed_prompt_stays_closed() {
    let mut app = app();
    let (_, opened) = update(&mut app, Message::Link(LinkEvent::Pending(burst())), 0);
    update(&mut app, Message::Closed(opened[0]), 100);
    let (_, reopened) = update(&mut app, Message::Link(LinkEvent::Pending(burst())), 1000);
    assert!(reopened.is_empty(), "left to the daemon's timeout");

    // A new request of the same application asks again.
    let mut more = burst();
    more.push(pending(9, "203.0.113.30:80"));
    let (_, reopened) = update(&mut app, Message::Link(LinkEvent::Pending(more)), 2000);
    let id = only_window(&app, &reopened, &WindowKind::Prompt(AppKey::Unknown));
    assert_eq!(app.prompt_in(id).unwrap().requests.len(), 1);
}

#[test]
fn failed_decision_returns_with_reason() {
    let mut app = app();
    let requests = vec![pending(1, "203.0.113.10:80")];
    let (_, opened) = update(
        &mut app,
        Message::Link(LinkEvent::Pending(requests.clone())),
        0,
    );
    let (answer, _) = update(
        &mut app,
        Message::Prompt(opened[0], PromptMessage::Decide(Action::Allow)),
        100,
    );
    let failed = LinkEvent::Failed {
        request: answer.requests[0].clone(),
        code: tollgate_proxy::protocol::ErrorCode::Internal,
        message: "failed to store rule: disk full".into(),
    };
    update(&mut app, Message::Link(failed), 200);
    let (_, reopened) = update(&mut app, Message::Link(LinkEvent::Pending(requests)), 300);
    let prompt = app.prompt_in(reopened[0]).unwrap();
    let mut ui = simulate(view::view(prompt, app.countdown()));
    assert_shows(&mut ui, "failed to store rule: disk full");
}

#[test]
fn daemon_restart_closes_prompts() {
    let mut app = app();
    let (_, opened) = update(&mut app, Message::Link(LinkEvent::Pending(burst())), 0);
    let down = LinkEvent::Disconnected("tollgated closed the connection".into());
    let (effects, _) = update(&mut app, Message::Link(down), 100);
    assert_eq!(effects.close, vec![opened[0]]);
}
