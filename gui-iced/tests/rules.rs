//! Headless tests of the rules window: listing, filtering, and the requests that enable,
//! disable, delete and re-time rules.

mod common;

use common::{app, assert_shows, rule, simulate, update};
use tollgate_proxy::protocol::{ErrorCode, Request, RuleChanges};
use tollgate_rules::{Lifetime, LifetimeSpec, RuleId};
use tollgate_ui::{
    app::{App, Message},
    link::LinkEvent,
    rules::{RuleLifetime, RulesMessage, view},
};

fn app_with_rules() -> App {
    let mut app = app();
    let mut disabled = rule(2, 443, Lifetime::UntilRestart);
    disabled.enabled = false;
    let rules = vec![rule(1, 80, Lifetime::Forever), disabled];
    update(&mut app, Message::Link(LinkEvent::Rules(rules)), 0);
    app
}

fn clicked(app: &App, label: &str) -> Vec<RulesMessage> {
    let mut ui = simulate(view::view(&app.rules, app.banner()));
    ui.click(label)
        .unwrap_or_else(|err| panic!("cannot click {label}: {err}"));
    ui.into_messages().collect()
}

#[test]
fn list_shows_every_rule() {
    let app = app_with_rules();
    let mut ui = simulate(view::view(&app.rules, app.banner()));
    assert_shows(&mut ui, "allow any process -> 203.0.113.10 port 80 tcp");
    assert_shows(&mut ui, "allow any process -> 203.0.113.10 port 443 tcp");
    assert_shows(&mut ui, "1");
    assert_shows(&mut ui, "2");
}

#[test]
fn filter_hides_other_rules() {
    let mut app = app_with_rules();
    update(
        &mut app,
        Message::Rules(RulesMessage::Filter("443".into())),
        10,
    );
    let mut ui = simulate(view::view(&app.rules, app.banner()));
    assert_shows(&mut ui, "allow any process -> 203.0.113.10 port 443 tcp");
    assert!(
        ui.find("allow any process -> 203.0.113.10 port 80 tcp")
            .is_err(),
        "filtered out"
    );
}

#[test]
fn buttons_send_rule_changes() {
    let mut app = app_with_rules();
    // Each label's first match belongs to rule 1.
    let cases = [
        (
            "1",
            Request::EditRule {
                id: RuleId(1),
                changes: Box::new(RuleChanges {
                    enabled: Some(false),
                    ..RuleChanges::default()
                }),
            },
        ),
        (
            "for an hour",
            Request::EditRule {
                id: RuleId(1),
                changes: Box::new(RuleChanges {
                    lifetime: Some(LifetimeSpec::For { secs: 3600 }),
                    ..RuleChanges::default()
                }),
            },
        ),
        (
            "until restart",
            Request::EditRule {
                id: RuleId(1),
                changes: Box::new(RuleChanges {
                    lifetime: Some(LifetimeSpec::UntilRestart),
                    ..RuleChanges::default()
                }),
            },
        ),
        ("Delete", Request::RemoveRule { id: RuleId(1) }),
    ];
    for (label, expected) in cases {
        let messages = clicked(&app, label);
        assert_eq!(messages.len(), 1, "{label}: {messages:?}");
        let (effects, _) = update(&mut app, Message::Rules(messages[0].clone()), 10);
        assert_eq!(effects.requests, vec![expected], "{label}");
    }
}

#[test]
fn disabled_rule_can_be_enabled() {
    let mut app = app_with_rules();
    let messages = clicked(&app, "2");
    assert_eq!(messages, vec![RulesMessage::SetEnabled(RuleId(2), true)]);
    let (effects, _) = update(&mut app, Message::Rules(messages[0].clone()), 10);
    assert_eq!(
        effects.requests,
        vec![Request::EditRule {
            id: RuleId(2),
            changes: Box::new(RuleChanges {
                enabled: Some(true),
                ..RuleChanges::default()
            }),
        }]
    );
    let forever = RulesMessage::SetLifetime(RuleId(2), RuleLifetime::Forever);
    let (effects, _) = update(&mut app, Message::Rules(forever), 20);
    assert_eq!(
        effects.requests,
        vec![Request::EditRule {
            id: RuleId(2),
            changes: Box::new(RuleChanges {
                lifetime: Some(LifetimeSpec::Forever),
                ..RuleChanges::default()
            }),
        }]
    );
}

#[test]
fn failed_change_shows_reason() {
    let mut app = app_with_rules();
    let failed = LinkEvent::Failed {
        request: Request::RemoveRule { id: RuleId(9) },
        code: ErrorCode::NotFound,
        message: "no rule with id 9; list them with `tollgate rules list`".into(),
    };
    update(&mut app, Message::Link(failed), 10);
    let mut ui = simulate(view::view(&app.rules, app.banner()));
    assert_shows(
        &mut ui,
        "no rule with id 9; list them with `tollgate rules list`",
    );
}
